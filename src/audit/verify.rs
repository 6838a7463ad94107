//! The offline check behind `custodia audit verify`: an export of events (NDJSON, one event per
//! line exactly as the API returns it) against a signed checkpoint and the log's public key,
//! optionally against an earlier checkpoint (consistency) and the log's leaf hashes (to name an
//! altered event).
//!
//! Checks, in order; the first failure is reported:
//! 1. the checkpoint's signature by the given key (and the earlier checkpoint's, if any);
//! 2. the leaf hash file, if given: exactly one hash per event of the checkpoint, hashing to the
//!    signed root; once it does, it is as trustworthy as the signature itself;
//! 3. every event: a well-formed event of DESIGN §6 with no unknown or duplicate members, its
//!    `seq` equal to its line number, within the checkpoint, and (with leaf hashes) its leaf
//!    hash SHA-256(0x00 ‖ JCS(event)) equal to the signed one;
//! 4. no event of the checkpoint missing;
//! 5. the root of the recomputed tree equal to the signed root;
//! 6. with an earlier checkpoint, a consistency proof computed from the events, verified with
//!    the RFC 9162 verifier against both signed roots.
//!
//! This module reads only what it is handed: no network, no store.

use std::fmt;
use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::Event;
use super::checkpoint::{Checkpoint, CheckpointError, VerifierKey};
use super::jcs;
use super::merkle::{Frontier, Hash, leaf_hash};
use super::proof::{self, MemoryTree};

/// What a successful verification covered.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The verified checkpoint.
    pub checkpoint: Checkpoint,
    /// The key it is signed with.
    pub key: String,
    /// The earlier checkpoint proved consistent, if one was given.
    pub previous: Option<Checkpoint>,
    /// Whether a leaf hash file was checked too.
    pub leaves_checked: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} events of {} verified; root {} signed by {}",
            self.checkpoint.size,
            self.checkpoint.origin,
            STANDARD.encode(self.checkpoint.root),
            self.key
        )?;
        if let Some(previous) = &self.previous {
            write!(f, "; consistent with the earlier checkpoint of size {}", previous.size)?;
        }
        if self.leaves_checked {
            f.write_str("; leaf hashes match")?;
        }
        Ok(())
    }
}

/// The first check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The verifier key is malformed.
    Key(CheckpointError),
    /// The checkpoint is malformed or not signed by the key.
    Checkpoint(CheckpointError),
    /// The earlier checkpoint is malformed or not signed by the key.
    Previous(CheckpointError),
    /// The leaf hash file is malformed or does not hash to the signed root.
    Leaves(String),
    /// An event is bad; `seq` is its line number counting from 0.
    Event {
        /// The event's position (its expected seq).
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The events file ends before the checkpoint's last event.
    Missing {
        /// The first missing seq.
        seq: u64,
        /// The checkpoint's tree size.
        size: u64,
    },
    /// The events do not hash to the signed root.
    Root {
        /// The checkpoint's tree size.
        size: u64,
    },
    /// The earlier checkpoint is not a prefix of this one.
    Consistency {
        /// The earlier size.
        from: u64,
        /// The later size.
        to: u64,
        /// Why the proof failed.
        reason: String,
    },
    /// A file could not be read.
    Io(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Key(e) => write!(f, "key: {e}"),
            Failure::Checkpoint(e) => write!(f, "checkpoint: {e}"),
            Failure::Previous(e) => write!(f, "previous checkpoint: {e}"),
            Failure::Leaves(reason) => write!(f, "leaf hashes: {reason}"),
            Failure::Event { seq, reason } => write!(f, "event {seq}: {reason}"),
            Failure::Missing { seq, size } => write!(
                f,
                "event {seq}: missing (the events file ends after {seq} events, the checkpoint covers {size})"
            ),
            Failure::Root { size } => write!(
                f,
                "root: the {size} events do not hash to the checkpoint's signed root (an event was altered, \
                 added or removed; pass the leaf hash file from `audit export` with --leaves to name it)"
            ),
            Failure::Consistency { from, to, reason } => {
                write!(f, "consistency proof from size {from} to {to}: {reason}")
            }
            Failure::Io(e) => write!(f, "cannot read input: {e}"),
        }
    }
}

/// Verifies an export. `events` yields the NDJSON lines; `checkpoint` and `previous` are signed
/// notes; `leaves`, if given, holds one base64 leaf hash per line.
pub fn verify_export<R: BufRead>(
    events: R,
    checkpoint: &str,
    key: &VerifierKey,
    previous: Option<&str>,
    leaves: Option<&str>,
) -> Result<Summary, Failure> {
    let current = key.open_checkpoint(checkpoint).map_err(Failure::Checkpoint)?;
    let previous = previous.map(|note| key.open_checkpoint(note).map_err(Failure::Previous)).transpose()?;
    let trusted = leaves.map(|text| trusted_leaves(text, &current)).transpose()?;

    let mut tree = MemoryTree::new();
    for (i, line) in events.split(b'\n').enumerate() {
        let seq = i as u64;
        let line = line.map_err(|e| Failure::Io(e.to_string()))?;
        if seq >= current.size {
            return Err(Failure::Event {
                seq,
                reason: format!(
                    "beyond the checkpoint's tree size {}: not covered by its signature",
                    current.size
                ),
            });
        }
        let leaf = event_leaf(&line, seq).map_err(|reason| Failure::Event { seq, reason })?;
        if trusted.as_ref().and_then(|t| t.get(i)).is_some_and(|signed| *signed != leaf) {
            return Err(Failure::Event {
                seq,
                reason: "altered: its leaf hash differs from the one the signed root commits to".into(),
            });
        }
        tree.push(leaf);
    }
    if tree.size() < current.size {
        return Err(Failure::Missing { seq: tree.size(), size: current.size });
    }
    let root = proof::root(&tree, current.size).map_err(|e| Failure::Io(e.to_string()))?;
    if root != current.root {
        return Err(Failure::Root { size: current.size });
    }
    if let Some(previous) = &previous {
        let (from, to) = (previous.size, current.size);
        let failed = |reason: String| Failure::Consistency { from, to, reason };
        let proof = proof::consistency_proof(&tree, from, to).map_err(|e| failed(e.to_string()))?;
        proof::verify_consistency(from, to, &previous.root, &current.root, &proof)
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(Summary { checkpoint: current, key: key.to_string(), previous, leaves_checked: trusted.is_some() })
}

/// The leaf hash of one NDJSON line, after checking it is a well-formed event at `seq`.
pub fn event_leaf(line: &[u8], seq: u64) -> Result<Hash, String> {
    // Parsing into `Event` rejects unknown members, duplicate members (which would let two
    // readers see two different events behind one leaf) and wrong types.
    let event: Event = serde_json::from_slice(line).map_err(|e| format!("not a valid audit event ({e})"))?;
    if event.seq != seq {
        return Err(format!("its seq is {}, but it is on line {} (counting from 0)", event.seq, seq));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    Ok(leaf_hash(&jcs::canonical(&value)))
}

/// Parses the leaf hash file and checks it against the signed root.
fn trusted_leaves(text: &str, checkpoint: &Checkpoint) -> Result<Vec<Hash>, Failure> {
    let mut leaves = Vec::new();
    let mut frontier = Frontier::default();
    for (i, line) in text.lines().enumerate() {
        let hash = STANDARD
            .decode(line.trim())
            .ok()
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| Failure::Leaves(format!("line {i} is not base64 of 32 bytes")))?;
        frontier.push(hash);
        leaves.push(hash);
    }
    if leaves.len() as u64 != checkpoint.size {
        return Err(Failure::Leaves(format!(
            "the file holds {} hashes, the checkpoint covers {}",
            leaves.len(),
            checkpoint.size
        )));
    }
    if frontier.root() != checkpoint.root {
        return Err(Failure::Leaves("they do not hash to the checkpoint's signed root".into()));
    }
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::CheckpointSigner;
    use crate::crypto::SigningKey;

    fn line(seq: u64, outcome: &str) -> String {
        format!(
            r#"{{"action":"customer.read","actor":{{"role":"merchant","sub":"shop"}},"outcome":"{outcome}","request_id":"r{seq}","seq":{seq},"time":"2026-11-22T10:00:00.000Z"}}"#
        )
    }

    struct Fixture {
        lines: Vec<String>,
        signer: CheckpointSigner,
        leaves: Vec<Hash>,
    }

    impl Fixture {
        fn new(n: u64) -> Self {
            let lines: Vec<String> = (0..n).map(|i| line(i, "allowed")).collect();
            let leaves =
                lines.iter().enumerate().map(|(i, l)| event_leaf(l.as_bytes(), i as u64).unwrap()).collect();
            let signer =
                CheckpointSigner::new("test.example/log", SigningKey::from_seed(&[5; 32]).unwrap()).unwrap();
            Fixture { lines, signer, leaves }
        }

        fn note(&self, size: usize) -> String {
            let tree = MemoryTree::from_leaves(self.leaves[..size].to_vec());
            self.signer.sign(size as u64, proof::root(&tree, size as u64).unwrap()).note
        }

        fn leaves_text(&self) -> String {
            self.leaves.iter().map(|l| format!("{}\n", STANDARD.encode(l))).collect()
        }

        fn run(
            &self,
            lines: &[String],
            previous: Option<&str>,
            leaves: Option<&str>,
        ) -> Result<Summary, Failure> {
            let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let key = VerifierKey::parse(&self.signer.verifier_key().to_string()).unwrap();
            verify_export(ndjson.as_bytes(), &self.note(self.lines.len()), &key, previous, leaves)
        }
    }

    #[test]
    fn an_intact_export_verifies_with_and_without_extras() {
        let f = Fixture::new(37);
        let summary = f.run(&f.lines, None, None).unwrap();
        assert_eq!(summary.checkpoint.size, 37);
        assert!(summary.to_string().starts_with("ok: 37 events"));
        let previous = f.note(20);
        let summary = f.run(&f.lines, Some(&previous), Some(&f.leaves_text())).unwrap();
        assert_eq!(summary.previous.unwrap().size, 20);
        assert!(f.run(&f.lines, Some(&f.note(37)), None).is_ok());
    }

    #[test]
    fn an_altered_event_is_named_with_leaf_hashes_and_caught_without() {
        let f = Fixture::new(37);
        let mut lines = f.lines.clone();
        lines[11] = line(11, "denied");
        assert_eq!(f.run(&lines, None, None).unwrap_err(), Failure::Root { size: 37 });
        match f.run(&lines, None, Some(&f.leaves_text())).unwrap_err() {
            Failure::Event { seq: 11, .. } => {}
            other => panic!("{other:?}"),
        }
        // Reformatting a line (member order, spaces) changes nothing: the leaf is over JCS.
        let mut lines = f.lines.clone();
        let v: Value = serde_json::from_str(&lines[3]).unwrap();
        lines[3] = serde_json::to_string_pretty(&v).unwrap().replace('\n', " ");
        assert!(f.run(&lines, None, Some(&f.leaves_text())).is_ok());
    }

    #[test]
    fn malformed_missing_extra_and_reordered_events_are_named() {
        let f = Fixture::new(10);
        let cases: Vec<(Vec<String>, Failure)> = vec![
            (f.lines[..9].to_vec(), Failure::Missing { seq: 9, size: 10 }),
            (
                [f.lines.clone(), vec![line(10, "allowed")]].concat(),
                Failure::Event { seq: 10, reason: String::new() },
            ),
            (
                {
                    let mut l = f.lines.clone();
                    l.swap(2, 3);
                    l
                },
                Failure::Event { seq: 2, reason: String::new() },
            ),
            (
                {
                    let mut l = f.lines.clone();
                    l[4] = l[4].replacen('{', r#"{"outcome":"denied","#, 1);
                    l
                },
                Failure::Event { seq: 4, reason: String::new() },
            ),
            (
                {
                    let mut l = f.lines.clone();
                    l[5] = l[5].replacen('{', r#"{"extra":1,"#, 1);
                    l
                },
                Failure::Event { seq: 5, reason: String::new() },
            ),
            (
                {
                    let mut l = f.lines.clone();
                    l[6] = "\u{0}\u{ff}garbage".into();
                    l
                },
                Failure::Event { seq: 6, reason: String::new() },
            ),
        ];
        for (lines, expected) in cases {
            let got = f.run(&lines, None, None).unwrap_err();
            match (&got, &expected) {
                (Failure::Event { seq: a, .. }, Failure::Event { seq: b, .. }) => assert_eq!(a, b, "{got}"),
                _ => assert_eq!(got, expected),
            }
        }
    }

    #[test]
    fn bad_signatures_leaves_and_inconsistent_history_fail() {
        let f = Fixture::new(12);
        let other = Fixture {
            signer: CheckpointSigner::new("test.example/log", SigningKey::from_seed(&[6; 32]).unwrap())
                .unwrap(),
            ..Fixture::new(12)
        };
        assert!(matches!(f.run(&f.lines, Some(&other.note(5)), None), Err(Failure::Previous(_))));
        let mut leaves = f.leaves_text();
        leaves.insert_str(0, "AAAA\n");
        assert!(matches!(f.run(&f.lines, None, Some(&leaves)), Err(Failure::Leaves(_))));
        // An earlier checkpoint of a different history (signed by the same key) is inconsistent.
        let forked = Fixture::new(12);
        let mut fork_lines = forked.lines.clone();
        fork_lines[1] = line(1, "failed");
        let fork_leaves: Vec<Hash> =
            fork_lines.iter().enumerate().map(|(i, l)| event_leaf(l.as_bytes(), i as u64).unwrap()).collect();
        let fork = Fixture { leaves: fork_leaves, ..forked };
        match f.run(&f.lines, Some(&fork.note(6)), None).unwrap_err() {
            Failure::Consistency { from: 6, to: 12, .. } => {}
            other => panic!("{other:?}"),
        }
        let key = VerifierKey::parse(&f.signer.verifier_key().to_string()).unwrap();
        let tampered = f.note(12).replacen("\n12\n", "\n11\n", 1);
        assert!(matches!(
            verify_export(&b""[..], &tampered, &key, None, None),
            Err(Failure::Checkpoint(CheckpointError::BadSignature(_)))
        ));
    }
}
