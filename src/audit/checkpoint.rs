//! Checkpoints: C2SP `tlog-checkpoint` bodies signed as C2SP `signed-note` with Ed25519, and the
//! verifier key string that names the public half.
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root>\n          the body (what is signed, final newline included)
//! \n
//! — <key name> <base64(key id ‖ signature)>\n   one signature line (Custodia writes one)
//! ```
//!
//! Notes are read by one rule, [`VerifierKey::open_note`]: other keys' lines are ignored, every
//! line by the trusted key must verify, whatever the order of the lines.
//!
//! The key name is the origin. key id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4]; the
//! verifier key is `<name>+<hex key id>+<base64(0x01 ‖ public key)>`. This module formats and
//! parses; key material stays in `crypto` ([`SigningKey`]).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::merkle::Hash;
use crate::crypto::{SigningKey, sha256, verify_ed25519};

/// The signature type byte of Ed25519 in C2SP signed-note.
const ED25519_TYPE: u8 = 0x01;
/// The prefix of a signature line: U+2014 EM DASH and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Go's note.Open refuses more signature lines than this; so do we.
const MAX_SIGNATURES: usize = 100;

/// A checkpoint or key could not be made, parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The origin (the key name) is empty or contains a space or `+`.
    #[error("invalid origin / key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidName(String),
    /// The verifier key string is malformed.
    #[error("malformed verifier key: {0}")]
    MalformedKey(&'static str),
    /// The note is not a well-formed signed note.
    #[error("malformed signed note: {0}")]
    MalformedNote(&'static str),
    /// No signature line of the note is by the given key.
    #[error("the note carries no signature by key {0}")]
    NotSigned(String),
    /// The signature by the given key does not verify.
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
    /// The note's text is not a tlog-checkpoint body.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
}

/// A tree head: origin, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (CUSTODIA_AUDIT_ORIGIN).
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The root hash of the first `size` leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The tlog-checkpoint body: origin, decimal size and base64 root, each ending in a newline.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Parses a tlog-checkpoint body. Extension lines after the root are allowed and ignored.
    pub fn parse(body: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = CheckpointError::MalformedCheckpoint;
        let text = body.strip_suffix('\n').ok_or(malformed("the body must end with a newline"))?;
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(malformed("empty origin line"))?;
        let size_text = lines.next().ok_or(malformed("missing tree size line"))?;
        let canonical = size_text == "0" || (!size_text.starts_with('0') && !size_text.is_empty());
        if !canonical || !size_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the tree size must be a decimal number without leading zeros"));
        }
        let size = size_text.parse().map_err(|_| malformed("the tree size does not fit 64 bits"))?;
        let root_text = lines.next().ok_or(malformed("missing root hash line"))?;
        let root = STANDARD
            .decode(root_text)
            .ok()
            .and_then(|bytes| Hash::try_from(bytes.as_slice()).ok())
            .ok_or(malformed("the root hash must be base64 of 32 bytes"))?;
        if lines.any(str::is_empty) {
            return Err(malformed("empty extension line"));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }
}

/// A checkpoint and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What was signed.
    pub checkpoint: Checkpoint,
    /// The C2SP signed note: body, blank line, signature line.
    pub note: String,
}

/// Signs checkpoints with the log's key; the key name is the origin.
#[derive(Debug)]
pub struct CheckpointSigner {
    key: SigningKey,
    verifier: VerifierKey,
}

impl CheckpointSigner {
    /// A signer for `origin`. Fails if the origin is not a valid key name.
    pub fn new(origin: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        let verifier = VerifierKey::new(origin, key.public_key())?;
        Ok(CheckpointSigner { key, verifier })
    }

    /// The log's origin (and key name).
    pub fn origin(&self) -> &str {
        &self.verifier.name
    }

    /// The public half, as auditors pin it.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Signs the checkpoint of a tree of `size` leaves with root `root`.
    pub fn sign(&self, size: u64, root: Hash) -> SignedCheckpoint {
        let checkpoint = Checkpoint { origin: self.verifier.name.clone(), size, root };
        let note = self.sign_note(&checkpoint.body());
        SignedCheckpoint { checkpoint, note }
    }

    /// Signs any note text (which must end in a newline): text, blank line, signature line.
    pub fn sign_note(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.verifier.key_id);
        blob.extend_from_slice(&signature);
        format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", self.verifier.name, STANDARD.encode(blob))
    }
}

/// The public half of the checkpoint key, as `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl VerifierKey {
    /// The verifier key of `public_key` under `name`.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::InvalidName(name.to_owned()));
        }
        Ok(VerifierKey { name: name.to_owned(), key_id: key_id(name, &public_key), public_key })
    }

    /// Parses a verifier key string; the key id must match the name and key.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedKey;
        // Split at the first two '+' only: names and ids have none, but base64 keys may.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("expected <name>+<key id>+<key>"));
        };
        if !valid_name(name) {
            return Err(malformed("the name must be non-empty, without spaces"));
        }
        let id = parse_hex8(id_hex).ok_or(malformed("the key id must be 8 lower-case hex digits"))?;
        let key = STANDARD.decode(key_b64).map_err(|_| malformed("the key is not base64"))?;
        let (&kind, public) = key.split_first().ok_or(malformed("the key is empty"))?;
        if kind != ED25519_TYPE {
            return Err(malformed("only Ed25519 keys (type 0x01) are supported"));
        }
        let public_key: [u8; 32] = public.try_into().map_err(|_| malformed("an Ed25519 key is 32 bytes"))?;
        let parsed = VerifierKey::new(name, public_key)?;
        if parsed.key_id != id {
            return Err(malformed("the key id does not match the name and key"));
        }
        Ok(parsed)
    }

    /// The key name (the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Checks `note` as a C2SP signed note trusted under this key alone, and returns the signed
    /// text (the part before the last blank line, final newline included).
    ///
    /// The one rule every reader of Custodia's notes applies (server startup, `audit export`,
    /// `audit verify`), whatever the order of the signature lines:
    /// - the note is text ending in a newline, a blank line, then 1 to 100 signature lines
    ///   `— <name> <base64(key id (4) ‖ signature)>`; it contains no ASCII control character
    ///   but newline. Any line that breaks this (no `— ` prefix, invalid key name, bad base64,
    ///   a blob under 5 bytes) makes the whole note [`CheckpointError::MalformedNote`];
    /// - lines whose name or key id differ from this key's are ignored (C2SP: other keys);
    /// - every line with this key's name and key id must verify, else
    ///   [`CheckpointError::BadSignature`]; repeating a valid line is harmless;
    /// - at least one must, else [`CheckpointError::NotSigned`].
    ///
    /// Lines are all parsed before any is verified, so a malformed line is reported as such
    /// even after a bad signature.
    pub fn open_note<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        let (text, signatures) = parse_note(note)?;
        let mut verified = false;
        for SignatureLine { name, blob } in signatures {
            if name != self.name || blob[..4] != self.key_id {
                continue;
            }
            if !verify_ed25519(&self.public_key, text.as_bytes(), &blob[4..]) {
                return Err(CheckpointError::BadSignature(self.to_string()));
            }
            verified = true;
        }
        if !verified {
            return Err(CheckpointError::NotSigned(self.to_string()));
        }
        Ok(text)
    }

    /// As [`VerifierKey::open_note`] for raw bytes: a note that is not UTF-8 is malformed.
    pub fn open_note_bytes<'a>(&self, note: &'a [u8]) -> Result<&'a str, CheckpointError> {
        let note =
            std::str::from_utf8(note).map_err(|_| CheckpointError::MalformedNote("it is not UTF-8"))?;
        self.open_note(note)
    }

    /// Verifies a signed checkpoint note and parses its body. The checkpoint's origin must be
    /// this key's name.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let checkpoint = Checkpoint::parse(self.open_note(note)?)?;
        if checkpoint.origin != self.name {
            return Err(CheckpointError::MalformedCheckpoint("its origin is not the key's name"));
        }
        Ok(checkpoint)
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(ED25519_TYPE);
        key.extend_from_slice(&self.public_key);
        write!(f, "{}+{}+{}", self.name, hex(&self.key_id), STANDARD.encode(key))
    }
}

/// One signature line of a note: the key name and the decoded blob, at least 5 bytes long
/// (key id and one more).
struct SignatureLine<'a> {
    name: &'a str,
    blob: Vec<u8>,
}

/// Splits a signed note into its text and its signature lines, checking the C2SP signed-note
/// syntax only.
fn parse_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), CheckpointError> {
    let malformed = CheckpointError::MalformedNote;
    if note.chars().any(|c| c != '\n' && c < ' ') {
        return Err(malformed("it contains a control character other than newline"));
    }
    if !note.ends_with('\n') {
        return Err(malformed("it must end with a newline"));
    }
    // The text may hold blank lines itself: the signatures follow the last one.
    let split = note.rfind("\n\n").ok_or(malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    let mut parsed = Vec::new();
    for line in signatures.split_terminator('\n') {
        if parsed.len() == MAX_SIGNATURES {
            return Err(malformed("too many signature lines"));
        }
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(malformed("a signature line must start with '\u{2014} '"))?;
        let (name, blob) =
            rest.split_once(' ').ok_or(malformed("a signature line needs a name and a signature"))?;
        if !valid_name(name) {
            return Err(malformed("a signature line's key name is empty or holds a space or '+'"));
        }
        let blob = STANDARD.decode(blob).map_err(|_| malformed("a signature is not base64"))?;
        if blob.len() < 5 {
            return Err(malformed("a signature is shorter than a key id and a signature"));
        }
        parsed.push(SignatureLine { name, blob });
    }
    if parsed.is_empty() {
        return Err(malformed("no signature lines"));
    }
    Ok((text, parsed))
}

/// C2SP signed-note key names: non-empty, no Unicode white space, no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = sha256(&[name.as_bytes(), &[0x0A, ED25519_TYPE], public_key]);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex8(text: &str) -> Option<[u8; 4]> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 4];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference vector of golang.org/x/mod/sumdb/note (note_test.go, and the C2SP spec).
    const PETER_SKEY_SEED_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn peter() -> CheckpointSigner {
        let seed = STANDARD.decode(PETER_SKEY_SEED_B64).unwrap();
        assert_eq!(seed[0], ED25519_TYPE);
        CheckpointSigner::new("PeterNeumann", SigningKey::from_seed(&seed[1..]).unwrap()).unwrap()
    }

    #[test]
    fn the_go_reference_note_is_reproduced_byte_for_byte() {
        let signer = peter();
        assert_eq!(signer.verifier_key().to_string(), PETER_VKEY);
        let note = signer.sign_note(PETER_TEXT);
        assert_eq!(note, format!("{PETER_TEXT}\n{PETER_NOTE_SIG}"));
        let key = VerifierKey::parse(PETER_VKEY).unwrap();
        assert_eq!(key.open_note(&note).unwrap(), PETER_TEXT);
    }

    #[test]
    fn a_checkpoint_round_trips_and_tampering_is_refused() {
        let signer =
            CheckpointSigner::new("custodia.example/audit", SigningKey::from_seed(&[7; 32]).unwrap())
                .unwrap();
        let signed = signer.sign(42, [3u8; 32]);
        assert_eq!(
            signed.note.split("\n\n").next().unwrap(),
            format!("custodia.example/audit\n42\n{}", STANDARD.encode([3u8; 32]))
        );
        let key = VerifierKey::parse(&signer.verifier_key().to_string()).unwrap();
        assert_eq!(key.open_checkpoint(&signed.note).unwrap(), signed.checkpoint);

        let altered = signed.note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(key.open_checkpoint(&altered), Err(CheckpointError::BadSignature(_))));
        let other = VerifierKey::new("custodia.example/audit", [1u8; 32]).unwrap();
        assert!(matches!(other.open_checkpoint(&signed.note), Err(CheckpointError::NotSigned(_))));
        // Another key's signature line is ignored; ours still decides.
        let mut cosigned = signed.note.clone();
        cosigned.push_str(peter().sign_note("x\n").lines().last().unwrap());
        cosigned.push('\n');
        assert!(key.open_checkpoint(&cosigned).is_ok());
        for bad in ["", "no newline", "a\n1\nAA==\n", &signed.note[..signed.note.len() - 1]] {
            assert!(key.open_checkpoint(bad).is_err(), "{bad:?}");
        }
    }

    /// A signature line `— name base64(id ‖ sig)`.
    fn line(name: &str, id: &[u8], sig: &[u8]) -> String {
        format!("\u{2014} {name} {}\n", STANDARD.encode([id, sig].concat()))
    }

    /// The note with `extra` inserted before (`first`) or after its signature line.
    fn with_line(note: &str, extra: &str, first: bool) -> String {
        let (text, sig) = note.rsplit_once("\n\n").unwrap();
        if first { format!("{text}\n\n{extra}{sig}") } else { format!("{text}\n\n{sig}{extra}") }
    }

    #[test]
    fn every_signature_line_by_the_trusted_key_must_verify_whatever_the_order() {
        let signer =
            CheckpointSigner::new("o.example/log", SigningKey::from_seed(&[9; 32]).unwrap()).unwrap();
        let key = signer.verifier_key().clone();
        let signed = signer.sign(3, [1u8; 32]);
        let note = signed.note;
        let good_line = note.rsplit_once("\n\n").unwrap().1.to_owned();
        let id = key.key_id();
        let mut other_id = id;
        other_id[0] ^= 1;
        let kind = |e: &CheckpointError| match e {
            CheckpointError::BadSignature(_) => "bad",
            CheckpointError::MalformedNote(_) => "malformed",
            _ => "other",
        };
        let cases: [(&str, String, Option<&str>); 8] = [
            ("zero signature by our key", line("o.example/log", &id, &[0; 64]), Some("bad")),
            ("short signature by our key", line("o.example/log", &id, &[7; 10]), Some("bad")),
            (
                "our signature over another text",
                line(
                    "o.example/log",
                    &id,
                    &STANDARD.decode(signer.sign_note("x\n").rsplit_once(' ').unwrap().1.trim_end()).unwrap()
                        [4..],
                ),
                Some("bad"),
            ),
            ("a second good signature", good_line.clone(), None),
            ("another key id under our name", line("o.example/log", &other_id, &[0; 64]), None),
            ("a bad signature under another name", line("other.example/log", &id, &[0; 64]), None),
            ("a truncated blob", line("o.example/log", &id, &[]), Some("malformed")),
            ("not base64", "\u{2014} o.example/log AAA*\n".to_owned(), Some("malformed")),
        ];
        for (what, extra, refused) in &cases {
            for first in [false, true] {
                let altered = with_line(&note, extra, first);
                let got = key.open_checkpoint(&altered);
                match refused {
                    None => assert_eq!(got.as_ref().ok(), Some(&signed.checkpoint), "{what}, first: {first}"),
                    Some(expected) => {
                        assert!(
                            got.as_ref().is_err_and(|e| kind(e) == *expected),
                            "{what}, first: {first}: {got:?}"
                        )
                    }
                }
            }
        }
        // A malformed line wins over a bad signature, whichever comes first.
        for first in [false, true] {
            let both = with_line(
                &with_line(&note, &line("o.example/log", &id, &[0; 64]), first),
                "garbage\n",
                !first,
            );
            assert!(matches!(key.open_note(&both), Err(CheckpointError::MalformedNote(_))), "{both}");
        }
    }

    #[test]
    fn malformed_notes_are_refused_before_any_signature_is_checked() {
        let signer = CheckpointSigner::new("o", SigningKey::from_seed(&[4; 32]).unwrap()).unwrap();
        let key = signer.verifier_key().clone();
        let note = signer.sign_note("hello\n\nworld\n");
        assert_eq!(key.open_note(&note).unwrap(), "hello\n\nworld\n", "the text may hold blank lines");
        let sig_line = note.rsplit_once("\n\n").unwrap().1;
        let too_many = format!("hello\n\nworld\n\n{}{sig_line}", sig_line.repeat(MAX_SIGNATURES));
        for bad in [
            "hello\nworld\n".to_owned(),                  // no blank line
            "hello\n\n".to_owned(),                       // no signature lines
            note.replace('\u{2014}', "-"),                // not an em dash
            note.replace("\u{2014} o ", "\u{2014}  o "),  // empty key name
            note.replace("\u{2014} o ", "\u{2014} o+x "), // '+' in the name
            note.trim_end().to_owned(),                   // no final newline
            note.replace("world", "wor\tld"),             // a control character
            note.replace("world", "wor\rld"),
            format!("{note}\n"), // blank line at the end
            too_many,
        ] {
            assert!(matches!(key.open_note(&bad), Err(CheckpointError::MalformedNote(_))), "{bad:?}");
        }
        let mut bytes = note.clone().into_bytes();
        bytes[1] = 0xff;
        assert!(matches!(key.open_note_bytes(&bytes), Err(CheckpointError::MalformedNote(_))));
        assert!(key.open_note_bytes(note.as_bytes()).is_ok());
        let mut enough = note.clone();
        enough.push_str(&sig_line.repeat(MAX_SIGNATURES - 1));
        assert!(key.open_note(&enough).is_ok(), "100 lines (C2SP asks for at least 16) are accepted");
    }

    #[test]
    fn checkpoint_bodies_are_parsed_strictly() {
        let root = STANDARD.encode([0u8; 32]);
        assert_eq!(Checkpoint::parse(&format!("o\n0\n{root}\n")).unwrap().size, 0);
        assert!(Checkpoint::parse(&format!("o\n7\n{root}\next\n")).is_ok());
        for bad in [
            format!("o\n07\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("o\n99999999999999999999\n{root}\n"),
            format!("\n1\n{root}\n"),
            format!("o\n1\n{root}"),
            "o\n1\nAAAA\n".to_owned(),
            format!("o\n1\n{root}\n\n"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verifier_keys_are_parsed_strictly() {
        assert!(VerifierKey::parse(PETER_VKEY).is_ok());
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
            "PeterNeumann+c74f20a3+ApwtchUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad}");
        }
        assert!(CheckpointSigner::new("has space", SigningKey::from_seed(&[1; 32]).unwrap()).is_err());
        // Base64 keys often contain '+': every key must round-trip through its string.
        let mut with_plus = 0;
        for seed in 0..64u8 {
            let signer = CheckpointSigner::new("o", SigningKey::from_seed(&[seed; 32]).unwrap()).unwrap();
            let text = signer.verifier_key().to_string();
            with_plus += usize::from(text.matches('+').count() > 2);
            assert_eq!(&VerifierKey::parse(&text).unwrap(), signer.verifier_key(), "{text}");
        }
        assert!(with_plus > 0, "the round trip never met a key containing '+'");
        assert!(CheckpointSigner::new("a+b", SigningKey::from_seed(&[1; 32]).unwrap()).is_err());
        assert!(CheckpointSigner::new("", SigningKey::from_seed(&[1; 32]).unwrap()).is_err());
    }
}
