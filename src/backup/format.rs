//! The backup file: writing it line by line with its running checksum, and reading it back
//! with every check `custodia backup verify` makes.
//!
//! ```text
//! custodia-backup 1
//! {"kind":"header","backup_point":H1,"created":"2026-11-30T19:00:00.000Z","verifier_key":"…"}
//! {"kind":"record","id":"<customer id>","record":"<base64>"}          (0..n, ascending ids)
//! {"kind":"meta","name":"system_keys","value":"<base64>"}            (1..n, names of META_NAMES)
//! {"kind":"checkpoint","size":N,"note":"<signed note>"}              (0 or 1)
//! {"kind":"event","seq":0,"event":"<canonical JSON of event 0>"}     (seq 0..H2-1, in order)
//! {"kind":"trailer","backup_point":H1,"size":H2,"root":"<base64>","records":n,"meta":n,"sha256":"<hex>","signature":"<signed note>"}
//! ```
//!
//! A record is the store's own encoding ([`CustomerRecord::encode`]): sealed values, the wrapped
//! data key, blind-index entries; never decrypted. An event is the exact stored bytes its leaf
//! hashes. `sha256` covers every byte before the trailer line (the magic line included).
//!
//! The trailer's `signature` is a C2SP signed note by the vault's audit signing key (the key
//! that signs checkpoints) over [`statement`]: a fixed context line (so it can never be read as
//! a checkpoint, whose first line is an origin without spaces), the verifier key, the creation
//! time and every trailer value, the checksum included. So nothing in the file (a record, a
//! metadata value, the backup point, an event past the checkpoint) can change without the
//! vault's key; an unkeyed checksum alone could be recomputed by anyone.

use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::checkpoint::VerifierKey;
use crate::audit::jcs;
use crate::audit::merkle::{Frontier, Hash};
use crate::audit::verify::event_leaf;
use crate::crypto::Sha256Stream;
use crate::domain::CustomerId;
use crate::store::CustomerRecord;

/// The longest line a reader accepts, newline included (64 MiB): far above any record the
/// vault writes (a base64 record with its consent history and payment methods is kilobytes),
/// and the bound on what reading one line may allocate.
pub const MAX_LINE: u64 = 64 << 20;

/// The first line of every backup file (format version 1).
pub const MAGIC: &str = "custodia-backup 1";

/// One line of the file after the magic line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// What the backup is: its backup point, when it was taken, the log's verifier key.
    Header {
        /// The log's size read before the records (the backup point).
        backup_point: u64,
        /// When the backup started, RFC 3339 UTC.
        created: String,
        /// The verifier key the checkpoint is signed with (C2SP signed-note key string).
        verifier_key: String,
    },
    /// A vault metadata value (wrapped system keys, epoch list…), base64.
    Meta {
        /// One of [`crate::vault::META_NAMES`].
        name: String,
        /// The stored bytes, base64.
        value: String,
    },
    /// A customer record as stored, base64 of [`CustomerRecord::encode`].
    Record {
        /// The customer id (equal to the record's own).
        id: String,
        /// The encoded record, base64.
        record: String,
    },
    /// The newest signed checkpoint at the time of the backup.
    Checkpoint {
        /// Its tree size.
        size: u64,
        /// The signed note (C2SP tlog-checkpoint).
        note: String,
    },
    /// One audit event: the exact canonical JSON its leaf hashes.
    Event {
        /// Its leaf index.
        seq: u64,
        /// The stored canonical JSON.
        event: String,
    },
    /// What the file holds and its checksum.
    Trailer {
        /// As in the header.
        backup_point: u64,
        /// Events in the file (the log's size read after the records).
        size: u64,
        /// The Merkle root of those events, base64.
        root: String,
        /// Record lines.
        records: u64,
        /// Meta lines.
        meta: u64,
        /// SHA-256 of every byte before this line, hex.
        sha256: String,
        /// The signed note of [`statement`] by the vault's audit signing key.
        signature: String,
    },
}

/// The context line every backup statement starts with (domain separation from checkpoints).
pub const STATEMENT_CONTEXT: &str = "custodia backup statement v1";

/// The text the trailer's signature signs (newline-terminated lines):
/// `custodia backup statement v1`, `format <MAGIC>`, `key <verifier key>`, `created <time>`,
/// `backup_point N`, `size N`, `root <base64>`, `records N`, `meta N`, `sha256 <hex>`.
#[allow(clippy::too_many_arguments)]
pub fn statement(
    key: &str,
    created: &str,
    backup_point: u64,
    size: u64,
    root: &str,
    records: u64,
    meta: u64,
    sha256: &str,
) -> String {
    format!(
        "{STATEMENT_CONTEXT}\nformat {MAGIC}\nkey {key}\ncreated {created}\nbackup_point {backup_point}\n\
         size {size}\nroot {root}\nrecords {records}\nmeta {meta}\nsha256 {sha256}\n"
    )
}

/// Renders lines and keeps the checksum over them.
#[derive(Default)]
pub struct Lines {
    hash: Sha256Stream,
    frontier: Frontier,
    records: u64,
    meta: u64,
}

impl Lines {
    /// The magic line.
    pub fn magic(&mut self) -> Vec<u8> {
        self.hashed(format!("{MAGIC}\n").into_bytes())
    }

    /// The text of `line`, newline-terminated, counted into the checksum and the totals.
    pub fn line(&mut self, line: &Line) -> Vec<u8> {
        match line {
            Line::Record { .. } => self.records += 1,
            Line::Meta { .. } => self.meta += 1,
            Line::Event { event, .. } => {
                self.frontier.push(crate::audit::merkle::leaf_hash(event.as_bytes()));
            }
            _ => {}
        }
        // invariant: a `Line` is strings and integers; it always serialises.
        let mut text = serde_json::to_vec(line).expect("backup line serialises");
        text.push(b'\n');
        self.hashed(text)
    }

    /// The trailer line (not itself hashed), its [`statement`] signed by `sign` (which returns
    /// the signed note); `key` and `created` are the header's.
    pub fn trailer(
        &mut self,
        backup_point: u64,
        key: &str,
        created: &str,
        sign: impl FnOnce(&str) -> String,
    ) -> Vec<u8> {
        let (size, root, sha256) =
            (self.frontier.size(), STANDARD.encode(self.frontier.root()), self.hash.hex());
        let signature =
            sign(&statement(key, created, backup_point, size, &root, self.records, self.meta, &sha256));
        let trailer = Line::Trailer {
            backup_point,
            size,
            root,
            records: self.records,
            meta: self.meta,
            sha256,
            signature,
        };
        // invariant: as in `line`.
        let mut text = serde_json::to_vec(&trailer).expect("backup line serialises");
        text.push(b'\n');
        text
    }

    /// Events rendered so far.
    pub fn events(&self) -> u64 {
        self.frontier.size()
    }

    fn hashed(&mut self, text: Vec<u8>) -> Vec<u8> {
        self.hash.update(&text);
        text
    }
}

/// What a read found, once the whole file checked out.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The backup point: the log's size when the records began to be read.
    pub backup_point: u64,
    /// The events in the file.
    pub size: u64,
    /// Their Merkle root.
    pub root: Hash,
    /// Customer records.
    pub records: u64,
    /// Metadata values.
    pub meta: u64,
    /// The signed checkpoint's size (its root and signature verified).
    pub checkpoint: Option<u64>,
    /// The verifier key in the file.
    pub key: VerifierKey,
    /// When the backup was taken.
    pub created: String,
    /// The root at the size asked for with [`Reader::root_at`], if the file reaches it.
    pub root_at: Option<Hash>,
    /// The wrapped system keys the file holds (postcard of `WrappedSystemKeys`; wrapped under
    /// the master key, so no secret): a restore unwraps them to learn the vault's own key.
    pub system_keys: Vec<u8>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: backup of {} taken {}: {} customer records, {} metadata values, {} audit events (backup point {}), root {}",
            self.key.name(),
            self.created,
            self.records,
            self.meta,
            self.size,
            self.backup_point,
            STANDARD.encode(self.root)
        )?;
        match self.checkpoint {
            Some(size) => {
                write!(f, "; the root at size {size} matches the signed checkpoint, signed by {}", self.key)?
            }
            None => f.write_str("; the log was empty (no checkpoint)")?,
        }
        write!(f, "; the trailer's signature verifies under {}", self.key)
    }
}

/// One verified item, handed to the caller as the file is read.
#[derive(Debug)]
pub enum Item {
    /// A metadata value.
    Meta(String, Vec<u8>),
    /// A customer record (decoded: its structure checked).
    Record(Box<CustomerRecord>),
    /// The signed checkpoint (size, note), verified under the file's key.
    Checkpoint(u64, Vec<u8>),
    /// An event (seq, canonical bytes), well-formed at its seq.
    Event(u64, Vec<u8>),
}

/// Where and why a file failed a check.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Invalid {
    /// The line, counting from 1 (the magic line).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Which section the reader is in (sections come in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Start,
    Records,
    Meta,
    Checkpoint,
    Events,
}

/// Reads a backup file and checks it as it goes. Every check of `backup verify` is made here:
/// the magic line, the order of sections, every line's shape, record decoding and id order,
/// meta names, event seqs and well-formedness (RFC 8785 canonical, DESIGN §6 members), the
/// checkpoint's signature under the file's key (and a pinned key, if given) and its root
/// recomputed from the events, the trailer's counts, root and checksum.
pub struct Reader<R> {
    input: R,
    line_no: u64,
    hash: Sha256Stream,
    frontier: Frontier,
    section: Section,
    header: Option<(u64, String, VerifierKey)>,
    pinned: Option<VerifierKey>,
    checkpoint: Option<(u64, Hash)>,
    checkpoint_ok: bool,
    last_id: Option<CustomerId>,
    meta_seen: Vec<String>,
    system_keys: Option<Vec<u8>>,
    records: u64,
    root_at: Option<(u64, Option<Hash>)>,
    summary: Option<Summary>,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `input`; `pinned`, if given, must be the key the file names.
    pub fn new(input: R, pinned: Option<VerifierKey>) -> Self {
        Reader {
            input,
            line_no: 0,
            hash: Sha256Stream::default(),
            frontier: Frontier::default(),
            section: Section::Start,
            header: None,
            pinned,
            checkpoint: None,
            checkpoint_ok: false,
            last_id: None,
            meta_seen: Vec::new(),
            system_keys: None,
            records: 0,
            root_at: None,
            summary: None,
        }
    }

    /// Also computes the root of the file's first `size` events ([`Summary::root_at`]).
    pub fn root_at(mut self, size: u64) -> Self {
        self.root_at = Some((size, if size == 0 { Some(crate::audit::merkle::empty_root()) } else { None }));
        self
    }

    /// The header's backup point and verifier key, once read.
    pub fn header(&self) -> Option<(u64, &VerifierKey)> {
        self.header.as_ref().map(|(point, _, key)| (*point, key))
    }

    /// The next item, `None` after a trailer that checked out (then [`Reader::summary`]).
    pub fn next_item(&mut self) -> Result<Option<Item>, Invalid> {
        loop {
            if self.summary.is_some() {
                // Nothing may follow the trailer.
                let mut rest = Vec::new();
                self.read_line(&mut rest)?;
                if !rest.is_empty() {
                    return Err(self.invalid("bytes after the trailer"));
                }
                return Ok(None);
            }
            let mut raw = Vec::new();
            if !self.read_line(&mut raw)? {
                return Err(self.invalid("the file ends before its trailer (truncated)"));
            }
            if self.line_no == 1 {
                if raw != format!("{MAGIC}\n").as_bytes() {
                    return Err(
                        self.invalid(format!("not a Custodia backup of format 1 (expected {MAGIC:?})"))
                    );
                }
                self.hash.update(&raw);
                continue;
            }
            let line: Line = serde_json::from_slice(&raw)
                .map_err(|e| self.invalid(format!("not a well-formed backup line ({e})")))?;
            if !matches!(line, Line::Trailer { .. }) {
                self.hash.update(&raw);
            }
            if let Some(item) = self.check(line)? {
                return Ok(Some(item));
            }
        }
    }

    /// The summary, after [`Reader::next_item`] returned `None`.
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// Reads the whole file; its summary if every check passed.
    pub fn verify(mut self) -> Result<Summary, Invalid> {
        while self.next_item()?.is_some() {}
        self.summary.ok_or_else(|| Invalid { line: 0, reason: "no trailer".into() })
    }

    fn read_line(&mut self, into: &mut Vec<u8>) -> Result<bool, Invalid> {
        use std::io::Read;
        // At most MAX_LINE bytes and its newline are read: memory stays bounded whatever the
        // file holds.
        let n = (&mut self.input)
            .take(MAX_LINE + 1)
            .read_until(b'\n', into)
            .map_err(|e| Invalid { line: self.line_no + 1, reason: format!("cannot read: {e}") })?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        if n as u64 > MAX_LINE {
            return Err(self.invalid(format!("the line is longer than {MAX_LINE} bytes")));
        }
        if into.last() != Some(&b'\n') && self.summary.is_none() {
            return Err(self.invalid("the line has no newline (truncated)"));
        }
        Ok(true)
    }

    fn invalid(&self, reason: impl Into<String>) -> Invalid {
        Invalid { line: self.line_no, reason: reason.into() }
    }

    fn enter(&mut self, section: Section, what: &str) -> Result<(), Invalid> {
        if self.header.is_none() {
            return Err(self.invalid(format!("{what} before the header")));
        }
        if section < self.section {
            return Err(self.invalid(format!("{what} out of order")));
        }
        self.section = section;
        Ok(())
    }

    fn check(&mut self, line: Line) -> Result<Option<Item>, Invalid> {
        match line {
            Line::Header { backup_point, created, verifier_key } => {
                if self.header.is_some() {
                    return Err(self.invalid("a second header"));
                }
                let key = VerifierKey::parse(&verifier_key)
                    .map_err(|e| self.invalid(format!("the verifier key is unusable: {e}")))?;
                if let Some(pinned) = &self.pinned
                    && pinned.to_string() != key.to_string()
                {
                    return Err(
                        self.invalid(format!("the file's verifier key {key} is not the pinned key {pinned}"))
                    );
                }
                self.header = Some((backup_point, created, key));
                self.section = Section::Records;
                Ok(None)
            }
            Line::Meta { name, value } => {
                self.enter(Section::Meta, "a meta line")?;
                if !crate::vault::META_NAMES.contains(&name.as_str()) {
                    return Err(self.invalid(format!("unknown metadata name {name:?}")));
                }
                if self.meta_seen.contains(&name) {
                    return Err(self.invalid(format!("metadata {name:?} twice")));
                }
                let value = STANDARD.decode(&value).map_err(|_| self.invalid("the value is not base64"))?;
                self.meta_seen.push(name.clone());
                if name == crate::vault::SYSTEM_KEYS {
                    self.system_keys = Some(value.clone());
                }
                Ok(Some(Item::Meta(name, value)))
            }
            Line::Record { id, record } => {
                self.enter(Section::Records, "a record")?;
                let bytes = STANDARD.decode(&record).map_err(|_| self.invalid("the record is not base64"))?;
                let record = CustomerRecord::decode(&bytes)
                    .map_err(|e| self.invalid(format!("the record does not decode ({e})")))?;
                if record.id.to_string() != id {
                    return Err(self.invalid("the record's id is not the line's"));
                }
                if self.last_id.is_some_and(|last| last >= record.id) {
                    return Err(self.invalid("records out of id order (or repeated)"));
                }
                self.last_id = Some(record.id);
                self.records += 1;
                Ok(Some(Item::Record(Box::new(record))))
            }
            Line::Checkpoint { size, note } => {
                self.enter(Section::Checkpoint, "the checkpoint")?;
                if self.checkpoint.is_some() {
                    return Err(self.invalid("a second checkpoint"));
                }
                let opened = match &self.header {
                    Some((_, _, key)) => key.open_checkpoint(&note),
                    None => return Err(self.invalid("the checkpoint before the header")),
                };
                let checkpoint = opened.map_err(|e| {
                    self.invalid(format!("the checkpoint does not verify under the file's key: {e}"))
                })?;
                if checkpoint.size != size {
                    return Err(self.invalid(format!(
                        "the checkpoint signs size {}, the line says {size}",
                        checkpoint.size
                    )));
                }
                self.checkpoint = Some((size, checkpoint.root));
                self.section = Section::Events;
                Ok(Some(Item::Checkpoint(size, note.into_bytes())))
            }
            Line::Event { seq, event } => {
                self.enter(Section::Events, "an event")?;
                if seq != self.frontier.size() {
                    return Err(self.invalid(format!("event seq {seq}, expected {}", self.frontier.size())));
                }
                let leaf = event_leaf(event.as_bytes(), seq)
                    .map_err(|e| self.invalid(format!("event {seq}: {e}")))?;
                let value: Value =
                    serde_json::from_str(&event).map_err(|_| self.invalid("event: not JSON"))?;
                if jcs::canonical(&value) != event.as_bytes() {
                    return Err(self.invalid(format!("event {seq}: not in RFC 8785 canonical form")));
                }
                self.frontier.push(leaf);
                let size = self.frontier.size();
                if let Some((at, None)) = self.root_at
                    && at == size
                {
                    self.root_at = Some((at, Some(self.frontier.root())));
                }
                if let Some((cp_size, cp_root)) = self.checkpoint
                    && cp_size == size
                {
                    if self.frontier.root() != cp_root {
                        return Err(self.invalid(format!(
                            "the first {size} events do not hash to the root the signed checkpoint names \
                             (an event was altered)"
                        )));
                    }
                    self.checkpoint_ok = true;
                }
                Ok(Some(Item::Event(seq, event.into_bytes())))
            }
            Line::Trailer { backup_point, size, root, records, meta, sha256, signature } => {
                let Some((header_point, created, key)) = self.header.clone() else {
                    return Err(self.invalid("the trailer before the header"));
                };
                if sha256 != self.hash.hex() {
                    return Err(self.invalid(
                        "checksum mismatch: the bytes before the trailer are not the ones the backup wrote",
                    ));
                }
                if backup_point != header_point || backup_point > size {
                    return Err(self.invalid("the trailer's backup point does not match the header"));
                }
                if size != self.frontier.size() {
                    return Err(self.invalid(format!(
                        "the trailer says {size} events, the file holds {}",
                        self.frontier.size()
                    )));
                }
                if records != self.records || meta != self.meta_seen.len() as u64 {
                    return Err(self.invalid("the trailer's counts do not match the file"));
                }
                if root != STANDARD.encode(self.frontier.root()) {
                    return Err(self.invalid("the trailer's root is not the root of the events"));
                }
                let checkpoint = match self.checkpoint {
                    Some((cp_size, _)) if !self.checkpoint_ok => {
                        return Err(self.invalid(format!(
                            "the signed checkpoint covers {cp_size} events, the file holds {size}"
                        )));
                    }
                    Some((cp_size, _)) => Some(cp_size),
                    None if size > 0 => return Err(self.invalid("events but no signed checkpoint")),
                    None => None,
                };
                let Some(system_keys) = self.system_keys.clone() else {
                    return Err(self.invalid("the file holds no system keys: not a backup of a vault"));
                };
                // Last, over values all checked above: the statement must be signed by the
                // file's key (which a pinned key, if any, already had to equal).
                let signed = key.open_note(&signature).map_err(|e| {
                    self.invalid(format!("the trailer's signature does not verify under {key}: {e}"))
                })?;
                let expected =
                    statement(&key.to_string(), &created, backup_point, size, &root, records, meta, &sha256);
                if signed != expected {
                    return Err(self.invalid(
                        "the trailer's signature is over other values than the trailer's (the file was altered)",
                    ));
                }
                self.summary = Some(Summary {
                    backup_point,
                    size,
                    root: self.frontier.root(),
                    records,
                    meta,
                    checkpoint,
                    key,
                    created,
                    root_at: self.root_at.and_then(|(_, r)| r),
                    system_keys,
                });
                Ok(None)
            }
        }
    }
}

/// The `Line::Record` of `record`.
pub fn record_line(record: &CustomerRecord) -> Result<Line, crate::store::StoreError> {
    Ok(Line::Record { id: record.id.to_string(), record: STANDARD.encode(record.encode()?) })
}

/// The `Line::Meta` of a value.
pub fn meta_line(name: &str, value: &[u8]) -> Line {
    Line::Meta { name: name.to_owned(), value: STANDARD.encode(value) }
}
