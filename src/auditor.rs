//! The auditor's tools. `custodia audit export` fetches, over the HTTP API, the log's key, its
//! newest signed checkpoint, every event that checkpoint covers and their leaf hashes into a
//! directory; `custodia audit verify` reads such files and runs the offline check.
//!
//! File and network handling only: the checks themselves live in [`crate::audit::verify`], and
//! export trusts nothing it downloads (verification is a separate, offline step). The client
//! speaks plain HTTP only (reqwest without a TLS backend); reach a remote vault through a
//! trusted network or a TLS-terminating tunnel.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::audit::checkpoint::{CheckpointError, VerifierKey};
use crate::audit::verify::{Failure, Summary, verify_export};

/// The events, one per line exactly as `GET /v1/audit/events` returns them.
pub const EVENTS_FILE: &str = "events.ndjson";
/// The signed checkpoint note.
pub const CHECKPOINT_FILE: &str = "checkpoint.txt";
/// The verifier key string, as the server reports it (pin your own copy).
pub const KEY_FILE: &str = "key.txt";
/// One base64 leaf hash per line (lets `verify --leaves` name an altered event).
pub const LEAVES_FILE: &str = "leaves.txt";

const EVENTS_PAGE: usize = 1000;
const LEAVES_PAGE: usize = 10_000;

/// An export did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The URL is not usable: not `https://`, or plain `http://` to a host that is not
    /// loopback without `--insecure-http`, or a CA file that cannot be read.
    #[error("{0}")]
    Url(String),
    /// The server could not be reached or answered with something that is not JSON.
    #[error("{0}")]
    Network(String),
    /// The server answered with an error.
    #[error("GET {path}: {status} {message}")]
    Http {
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The error message from the body.
        message: String,
    },
    /// The server's answers do not fit together (files were written for inspection).
    #[error("{0}")]
    Inconsistent(String),
    /// A file could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being written.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The directory written to.
    pub dir: PathBuf,
    /// The checkpoint's tree size (and the number of events and leaf hashes written).
    pub size: u64,
    /// The verifier key the server reported.
    pub key: String,
}

/// How `audit export` reaches the vault.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// PEM CA certificates to trust instead of the system's roots (`--ca FILE`).
    pub ca: Option<PathBuf>,
    /// Allow plain `http://` to a host that is not loopback (`--insecure-http`).
    pub insecure_http: bool,
    /// A PEM client certificate chain, leaf first, for a server that requires mutual TLS
    /// (`--client-cert FILE`); with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (`--client-key FILE`).
    pub client_key: Option<PathBuf>,
}

/// An HTTP client for `url`: `https://` with the system's roots or `transport.ca`; `http://`
/// only to a loopback host unless `transport.insecure_http` (tokens and events would cross the
/// network in clear otherwise).
pub fn client_for(url: &str, transport: &Transport) -> Result<reqwest::Client, ExportError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ExportError::Url(format!("{url:?}: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback || transport.insecure_http => {}
        "http" => {
            return Err(ExportError::Url(format!(
                "{url:?}: plain http:// is only used for a loopback address; use https://, or \
                 --insecure-http if the network in between is yours"
            )));
        }
        other => return Err(ExportError::Url(format!("{url:?}: unsupported scheme {other:?}"))),
    }
    // No proxy from the environment (it would see the token, in clear over http://) and no
    // redirects (they could lead to plain HTTP on another host).
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &transport.ca {
        let pem = std::fs::read(ca).map_err(|e| ExportError::Url(format!("--ca {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ExportError::Url(format!("--ca {}: no usable PEM certificate ({e})", ca.display()))
        })?;
        builder = builder.tls_certs_only(certs);
    }
    match (&transport.client_cert, &transport.client_key) {
        (Some(cert), Some(key)) => builder = builder.identity(identity(cert, key)?),
        (None, None) => {}
        (Some(_), None) => return Err(ExportError::Url("--client-cert needs --client-key".into())),
        (None, Some(_)) => return Err(ExportError::Url("--client-key needs --client-cert".into())),
    }
    builder.build().map_err(|e| ExportError::Network(e.to_string()))
}

/// The client identity from a PEM certificate chain and its PEM key. Errors name the file,
/// never its contents; the key bytes are wiped after use.
fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, ExportError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ExportError::Url(format!("{flag} {}: {e}", path.display())))
    };
    let mut pem = read("--client-cert", cert)?;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(&read("--client-key", key)?);
    reqwest::Identity::from_pem(&pem).map_err(|_| {
        ExportError::Url(format!(
            "--client-cert {} with --client-key {}: not a PEM certificate and private key",
            cert.display(),
            key.display()
        ))
    })
}

/// Exports the log at `url` (e.g. `https://vault.example:8443`) with an auditor `token` into
/// `out`, reaching it as `transport` says.
pub async fn export(
    url: &str,
    token: &str,
    out: &Path,
    transport: &Transport,
) -> Result<Exported, ExportError> {
    let base = url.trim_end_matches('/');
    let client = client_for(base, transport)?;
    let get = |path: String| fetch(&client, base, token, path);

    let key_text = text_member(&get("/v1/audit/key".into()).await?, "verifier_key")?;
    let key = VerifierKey::parse(&key_text)
        .map_err(|e| ExportError::Inconsistent(format!("the server's verifier key is unusable: {e}")))?;
    let note = text_member(&get("/v1/audit/checkpoint".into()).await?, "note")?;
    let checkpoint = key.open_checkpoint(&note).map_err(|e| {
        ExportError::Inconsistent(format!("the server's checkpoint does not verify under its own key: {e}"))
    })?;
    let size = checkpoint.size;

    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    write_file(&out.join(KEY_FILE), format!("{key}\n").as_bytes())?;
    write_file(&out.join(CHECKPOINT_FILE), note.as_bytes())?;

    let events_path = out.join(EVENTS_FILE);
    let mut events = BufWriter::new(
        File::create(&events_path).map_err(io(format!("creating {}", events_path.display())))?,
    );
    let mut written = 0u64;
    let mut after: Option<u64> = None;
    while written < size {
        let path = match after {
            Some(a) => format!("/v1/audit/events?limit={EVENTS_PAGE}&after={a}"),
            None => format!("/v1/audit/events?limit={EVENTS_PAGE}"),
        };
        let page = get(path).await?;
        let list = page["events"].as_array().ok_or_else(|| malformed("events"))?;
        for event in list.iter().take((size - written) as usize) {
            let line = serde_json::to_string(event).map_err(|e| ExportError::Network(e.to_string()))?;
            events
                .write_all(line.as_bytes())
                .and_then(|()| events.write_all(b"\n"))
                .map_err(io(format!("writing {}", events_path.display())))?;
            written += 1;
        }
        match page["next_after"].as_u64() {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            _ => break,
        }
    }
    events.flush().map_err(io(format!("writing {}", events_path.display())))?;

    let mut leaves = String::new();
    let mut count = 0u64;
    while count < size {
        let page = get(format!("/v1/audit/leaves?from={count}&limit={LEAVES_PAGE}")).await?;
        let list = page["leaf_hashes"].as_array().ok_or_else(|| malformed("leaf_hashes"))?;
        if list.is_empty() {
            break;
        }
        for hash in list.iter().take((size - count) as usize) {
            leaves.push_str(hash.as_str().ok_or_else(|| malformed("leaf_hashes"))?);
            leaves.push('\n');
            count += 1;
        }
    }
    write_file(&out.join(LEAVES_FILE), leaves.as_bytes())?;

    if written != size || count != size {
        return Err(ExportError::Inconsistent(format!(
            "the checkpoint covers {size} events but the server returned {written} events and {count} \
             leaf hashes; the files in {} are incomplete",
            out.display()
        )));
    }
    Ok(Exported { dir: out.to_owned(), size, key: key.to_string() })
}

/// Reads the files of an export and verifies them. `key` is a verifier key string or the path
/// of a file holding one.
pub fn verify_files(
    events: &Path,
    checkpoint: &Path,
    key: &str,
    previous: Option<&Path>,
    leaves: Option<&Path>,
) -> Result<Summary, Failure> {
    let key_text = if Path::new(key).is_file() { read(Path::new(key))? } else { key.to_owned() };
    let key = VerifierKey::parse(&key_text).map_err(Failure::Key)?;
    let checkpoint = read_note(checkpoint, Failure::Checkpoint)?;
    let previous = previous.map(|path| read_note(path, Failure::Previous)).transpose()?;
    let leaves = leaves.map(read).transpose()?;
    let file = File::open(events).map_err(|e| Failure::Io(format!("{}: {e}", events.display())))?;
    verify_export(BufReader::new(file), &checkpoint, &key, previous.as_deref(), leaves.as_deref())
}

async fn fetch(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    path: String,
) -> Result<Value, ExportError> {
    let res = client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| ExportError::Network(format!("GET {path}: {e}")))?;
    let status = res.status();
    let body: Value = res
        .json()
        .await
        .map_err(|e| ExportError::Network(format!("GET {path}: the answer is not JSON ({e})")))?;
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        return Err(ExportError::Http { path, status: status.as_u16(), message });
    }
    Ok(body)
}

fn text_member(body: &Value, name: &str) -> Result<String, ExportError> {
    body[name].as_str().map(str::to_owned).ok_or_else(|| malformed(name))
}

fn malformed(member: &str) -> ExportError {
    ExportError::Network(format!("the server's answer lacks `{member}`"))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    std::fs::write(path, bytes).map_err(io(format!("writing {}", path.display())))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ExportError {
    move |source| ExportError::Io { context, source }
}

/// A note file, with extra trailing newlines (as `jq -r .note > file` leaves) reduced to the
/// one the note ends with; the signature covers only the text above its blank line. A file that
/// is not UTF-8 is a malformed note (C2SP signed-note), not an I/O failure.
/// `failure` says which note it is (checkpoint or previous).
fn read_note(path: &Path, failure: fn(CheckpointError) -> Failure) -> Result<String, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    let text =
        String::from_utf8(bytes).map_err(|_| failure(CheckpointError::MalformedNote("it is not UTF-8")))?;
    let trimmed = text.trim_end_matches('\n');
    Ok(if trimmed.len() < text.len() { format!("{trimmed}\n") } else { text })
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))
}

/// What `custodia audit report` recomputed.
#[derive(Debug)]
pub struct Recomputed {
    /// The number of events the counts cover (the report's tree size, or the export's).
    pub tree_size: u64,
    /// The counts as the transparency report publishes them: closed months, newest first.
    pub months: Vec<crate::audit::counters::PublishedMonth>,
    /// The month still open at that size (in progress, not published).
    pub in_progress: Option<String>,
    /// The size of the export's checkpoint, which was verified in full first.
    pub verified_size: u64,
}

/// Recomputes the transparency report's counts offline (`custodia audit report`).
///
/// First the export is verified in full against its checkpoint and the key (as `audit
/// verify`): counts of events that do not verify mean nothing. Without `report`, the counts
/// cover every event of the export. With `report` (a saved `GET /v1/transparency` answer), the
/// report's own checkpoint must be signed by the key, and the first `tree_size` events of the
/// export must hash to its root; the counts of those events (distinct customers per cell, closed
/// months only, as the server computes them) must then equal the report's, month by month, and
/// the month in progress must be the same, else the error names the first difference. Every
/// month lists the same grid of cells, taken from the report's `record`, or without a report
/// from the policy files in `policies` (without either, only the cells the log counted).
pub fn report_files(
    events: &Path,
    checkpoint: &Path,
    key: &str,
    report: Option<&Path>,
    policies: Option<&Path>,
) -> Result<Recomputed, String> {
    use std::io::BufRead;

    use crate::audit::counters::{Counters, Grid, Member};
    use crate::audit::merkle::Frontier;
    use crate::audit::verify::event_leaf;

    let summary = verify_files(events, checkpoint, key, None, None)
        .map_err(|f| format!("the export does not verify: {f}"))?;
    let verified_size = summary.checkpoint.size;
    let key_text = if Path::new(key).is_file() {
        read(Path::new(key)).map_err(|f| f.to_string())?
    } else {
        key.to_owned()
    };
    let key = VerifierKey::parse(&key_text).map_err(|e| format!("key: {e}"))?;

    let given: Option<Value> = report
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON ({e})", path.display()))
        })
        .transpose()?;
    let (size, signed_root) = match &given {
        None => (verified_size, None),
        Some(r) => {
            let size = r["tree_size"].as_u64().ok_or("the report has no `tree_size`")?;
            if size > verified_size {
                return Err(format!(
                    "the report covers {size} events but the export only {verified_size}: export again"
                ));
            }
            let root = match r["checkpoint"]["note"].as_str() {
                Some(note) => {
                    let cp =
                        key.open_checkpoint(note).map_err(|e| format!("the report's checkpoint: {e}"))?;
                    if cp.size != size {
                        return Err(format!(
                            "the report's checkpoint is of size {}, its counts claim {size}",
                            cp.size
                        ));
                    }
                    Some(cp.root)
                }
                None if size == 0 => None,
                None => return Err("the report names no signed checkpoint".into()),
            };
            (size, root)
        }
    };

    let file = File::open(events).map_err(|e| format!("{}: {e}", events.display()))?;
    let mut counters = Counters::default();
    // The report's choices where the server's clock decided (see `counters::HORIZON_DAYS`);
    // without a report no event is held back.
    if let Some(r) = &given {
        for seq in r["held_back"].as_array().into_iter().flatten() {
            let seq = seq.as_u64().ok_or("the report's `held_back` holds something else than seqs")?;
            counters.held_back.insert(seq);
        }
    }
    // The grid of cells every month lists: from the report's record, else from `policies`.
    let grid = match (&given, policies) {
        (Some(r), _) => Grid::of_record(&r["record"]),
        (None, Some(dir)) => {
            let set = crate::policy::PolicySet::load(dir).map_err(|e| format!("policies: {e}"))?;
            // invariant: the record is names, texts and numbers; it always serialises.
            Grid::of_record(&serde_json::to_value(crate::policy::ProcessingRecord::of(&set)).expect("record"))
        }
        (None, None) => Grid::default(),
    };
    // Only distinctness matters to the counts, so any key gives the server's numbers.
    let member_key = crate::crypto::MemberKey::random().map_err(|e| e.to_string())?;
    let member = |text: &str| Member(member_key.digest(text));
    let mut frontier = Frontier::default();
    for (seq, line) in (0..size).zip(BufReader::new(file).split(b'\n')) {
        let line = line.map_err(|e| format!("{}: {e}", events.display()))?;
        frontier.push(event_leaf(&line, seq).map_err(|e| format!("event {seq}: {e}"))?);
        let event: crate::audit::Event =
            serde_json::from_slice(&line).map_err(|e| format!("event {seq}: {e}"))?;
        counters.fold(&event, member, None).map_err(|e| e.to_string())?;
    }
    if counters.size != size {
        return Err(format!("the export ends after {} events, the report covers {size}", counters.size));
    }
    if let Some(root) = signed_root
        && frontier.root() != root
    {
        return Err(format!(
            "the first {size} events of the export do not hash to the root the report's checkpoint signs"
        ));
    }
    let months = counters.published(&grid);
    if let Some(r) = &given {
        let theirs = r["months"].as_array().cloned().unwrap_or_default();
        // invariant: published months are plain strings and counts; they always serialise.
        let ours: Vec<Value> =
            months.iter().map(|m| serde_json::to_value(m).expect("months serialise")).collect();
        let month_of = |v: &Value| v["month"].as_str().unwrap_or("?").to_owned();
        for m in &ours {
            match theirs.iter().find(|t| month_of(t) == month_of(m)) {
                None => return Err(format!("month {}: missing from the report", month_of(m))),
                Some(t) if t != m => {
                    return Err(format!(
                        "month {}: the report's counts differ from the log's\n  report:     {t}\n  recomputed: {m}",
                        month_of(m)
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = theirs.iter().find(|t| !ours.iter().any(|m| month_of(m) == month_of(t))) {
            return Err(format!(
                "month {}: in the report but not a closed month of the log at this size",
                month_of(extra)
            ));
        }
        // Every month once, in the log's order: a second copy of a month (with other counts)
        // would be shown by a reader of the report while the first copy passed the check.
        if theirs != ours {
            return Err(
                "the report's months are not exactly the recomputed ones (a month repeated or out of order)"
                    .into(),
            );
        }
    }
    if let Some(r) = &given {
        let theirs = r["in_progress"].as_str();
        if theirs != counters.in_progress() {
            return Err(format!(
                "the report says month {theirs:?} is in progress, the log at this size {:?}",
                counters.in_progress()
            ));
        }
    }
    let in_progress = counters.in_progress().map(str::to_owned);
    Ok(Recomputed { tree_size: size, months, in_progress, verified_size })
}
