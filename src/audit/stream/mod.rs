//! The audit stream: every committed event copied, in seq order, to a sink the operator
//! controls (PCI DSS 10.3.3, ASVS 16.4.3): a JSON-lines file with size-based rotation
//! ([`file`]), or a syslog receiver, RFC 5424 over TCP or UDP ([`syslog`]).
//!
//! The log is the source of truth. A [`Follower`] per sink reads committed events from the log
//! (never from the request path), delivers them in batches and keeps, durably in the vault's
//! metadata, the seq up to which the sink is known to have them. After a restart or an outage
//! it resumes from there, so nothing is lost while a sink is down: delivery is at least once.
//! Requests never wait for a sink and never fail because of one; a failing sink is retried
//! with exponential backoff and shows in the metrics (lag, failures).
//!
//! Events hold names, codes and opaque ids, never a customer's value (see [`super::Event`]), and
//! the stream carries each event exactly as stored: its RFC 8785 canonical JSON, the bytes its
//! Merkle leaf hashes, so a receiver can check what it got against the log.

pub mod file;
pub mod syslog;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AuditError, AuditLog};
use crate::config::{ConfigError, Settings};
pub use file::FileSink;
pub use syslog::{SyslogSink, SyslogTarget, Transport};

/// The setting naming the stream file.
pub const FILE_SETTING: &str = "CUSTODIA_AUDIT_STREAM_FILE";
/// The setting bounding the stream file's size.
pub const FILE_MAX_BYTES_SETTING: &str = "CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES";
/// The setting naming how many rotated stream files are kept.
pub const FILE_KEEP_SETTING: &str = "CUSTODIA_AUDIT_STREAM_FILE_KEEP";
/// The setting naming the syslog receiver.
pub const SYSLOG_SETTING: &str = "CUSTODIA_AUDIT_STREAM_SYSLOG";

/// Events read from the log and delivered per step.
const BATCH: usize = 500;
/// How often a follower that has delivered everything looks at the log's head again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// The first wait after a failure; each further failure in a row doubles it, up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between retries of a failing sink.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The prefix of the metadata names positions are kept under; the sink's identity follows.
const POSITION_PREFIX: &str = "audit_stream.delivered.";

/// The sinks `settings` configure, ready to follow the log: the file is opened (and a line a
/// crash cut short is removed), the syslog target parsed (it is connected to only when there is
/// something to send, so a receiver that is down at start is not an error). A bad setting is an
/// error naming it.
pub fn configured(settings: &Settings) -> Result<Vec<Sink>, ConfigError> {
    let mut sinks = Vec::new();
    if let Some(path) = &settings.audit_stream_file {
        if settings.audit_stream_file_max_bytes == 0 {
            return Err(ConfigError::Env {
                name: FILE_MAX_BYTES_SETTING,
                message: "must be at least 1".into(),
            });
        }
        let sink =
            FileSink::open(path, settings.audit_stream_file_max_bytes, settings.audit_stream_file_keep)
                .map_err(|e| ConfigError::Env {
                    name: FILE_SETTING,
                    message: format!("cannot append to {}: {e}", path.display()),
                })?;
        sinks.push(Sink::File(sink));
    }
    if let Some(target) = &settings.audit_stream_syslog {
        let target: SyslogTarget =
            target.parse().map_err(|message| ConfigError::Env { name: SYSLOG_SETTING, message })?;
        sinks.push(Sink::Syslog(SyslogSink::new(target)));
    }
    Ok(sinks)
}

/// Where events go.
#[derive(Debug)]
pub enum Sink {
    /// A JSON-lines file.
    File(FileSink),
    /// A syslog receiver.
    Syslog(SyslogSink),
}

impl Sink {
    /// The `sink` label of its metrics: `file` or `syslog`.
    pub fn label(&self) -> &'static str {
        match self {
            Sink::File(_) => "file",
            Sink::Syslog(_) => "syslog",
        }
    }

    /// The sink's identity (`file:<absolute path>`, `syslog:tcp://host:port`): its position is
    /// kept under this name, so a sink configured anew starts from the beginning of the log.
    pub fn identity(&self) -> String {
        match self {
            Sink::File(f) => format!("file:{}", f.path().display()),
            Sink::Syslog(s) => format!("syslog:{}", s.target()),
        }
    }

    /// The seq after the last event the sink itself shows it holds, if it can tell (the file's
    /// last complete line).
    fn holds_through(&self) -> Option<u64> {
        match self {
            Sink::File(f) => f.next_seq(),
            Sink::Syslog(_) => None,
        }
    }

    /// Whether a delivered batch is known to be held once `deliver` returns (a synced file),
    /// rather than only after a later [`Sink::settle`] (a connection that may have been closed
    /// while the batch was in flight).
    fn held_on_return(&self) -> bool {
        matches!(self, Sink::File(_))
    }

    async fn deliver(&mut self, events: Vec<(u64, Vec<u8>)>) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.deliver(events).await,
            Sink::Syslog(s) => s.deliver(&events).await,
        }
    }

    async fn settle(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(_) => Ok(()),
            Sink::Syslog(s) => s.settle(),
        }
    }

    async fn reset(&mut self) {
        match self {
            Sink::File(f) => f.reset().await,
            Sink::Syslog(s) => s.reset(),
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// Reading the log or keeping the position failed (the store); retried.
    #[error("{0}")]
    Log(#[from] AuditError),
    /// The sink refused or lost what was sent; retried from the last position it is known to
    /// hold.
    #[error("{0}")]
    Sink(#[from] std::io::Error),
}

/// Follows the log into one sink. Positions are seqs of the next event: `confirmed` events are
/// known to be held by the sink (and kept durably, see [`AuditLog::set_consumer_position`]);
/// events up to `next` were sent and await confirmation.
#[derive(Debug)]
pub struct Follower {
    sink: Sink,
    label: &'static str,
    key: String,
    /// `None` until the kept position was read.
    confirmed: Option<u64>,
    next: u64,
    kept: u64,
    backoff: Duration,
}

impl Follower {
    /// A follower of `sink`; it reads its kept position on its first step.
    pub fn new(sink: Sink) -> Self {
        let key = format!("{POSITION_PREFIX}{}", sink.identity());
        Follower { label: sink.label(), sink, key, confirmed: None, next: 0, kept: 0, backoff: MIN_BACKOFF }
    }

    /// One step: confirms what the sink holds, keeps the position, then delivers the next batch
    /// if the log has one. Returns how long to wait before the next step (zero while behind).
    /// Never fails: a failure is logged, counted, and retried after a backoff from the last
    /// confirmed position.
    pub async fn step(&mut self, log: &AuditLog) -> Duration {
        match self.try_step(log).await {
            Ok(wait) => {
                self.backoff = MIN_BACKOFF;
                wait
            }
            Err(e) => {
                let wait = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                if matches!(e, StepError::Sink(_)) {
                    crate::metric::audit_stream_failure(self.label);
                }
                tracing::warn!(
                    sink = %self.sink.identity(),
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "audit stream: delivery failed; resuming from the last delivered event"
                );
                self.sink.reset().await;
                if let Some(confirmed) = self.confirmed {
                    self.next = confirmed;
                }
                wait
            }
        }
    }

    async fn try_step(&mut self, log: &AuditLog) -> Result<Duration, StepError> {
        let head = log.head().await?.0;
        let confirmed = match self.confirmed {
            Some(c) => c,
            None => self.resume_position(log, head).await?,
        };
        // Every step, not only after a delivery: a connection the receiver closed while idle is
        // dropped before anything is written into it.
        self.sink.settle().await?;
        if self.next > confirmed {
            self.confirm(self.next);
        }
        self.keep(log).await?;
        let delivered = self.confirmed.unwrap_or(0);
        crate::metric::audit_stream_lag(self.label, head.saturating_sub(delivered));
        if self.next >= head {
            return Ok(IDLE_POLL);
        }
        let events = log.stored_events(self.next, BATCH).await?;
        let Some(&(last, _)) = events.last() else { return Ok(IDLE_POLL) };
        self.sink.deliver(events).await?;
        self.next = last + 1;
        if self.sink.held_on_return() {
            self.confirm(self.next);
            self.keep(log).await?;
        }
        Ok(Duration::ZERO)
    }

    /// The kept position, moved past what the sink shows it already holds, and back to the
    /// log's head if the log is shorter (a store replaced by an older copy: later events reuse
    /// seqs, and are delivered as what they are).
    async fn resume_position(&mut self, log: &AuditLog, head: u64) -> Result<u64, StepError> {
        let kept = log.consumer_position(&self.key).await?.unwrap_or(0);
        let mut position = kept.max(self.sink.holds_through().unwrap_or(0));
        if position > head {
            tracing::warn!(
                sink = %self.sink.identity(),
                delivered = position,
                log_size = head,
                "audit stream: the sink was given more events than the log now holds (was the store restored from an older copy?); continuing at the log's head"
            );
            position = head;
        }
        tracing::info!(sink = %self.sink.identity(), from_seq = position, "audit stream: following the log");
        self.confirmed = Some(position);
        self.next = position;
        self.kept = kept;
        Ok(position)
    }

    fn confirm(&mut self, position: u64) {
        let before = self.confirmed.unwrap_or(0);
        if position > before {
            crate::metric::audit_stream_delivered(self.label, position - before, unix_seconds());
        }
        self.confirmed = Some(position);
    }

    /// Keeps the confirmed position durably when it moved.
    async fn keep(&mut self, log: &AuditLog) -> Result<(), StepError> {
        let Some(confirmed) = self.confirmed else { return Ok(()) };
        if confirmed != self.kept {
            log.set_consumer_position(&self.key, confirmed).await?;
            self.kept = confirmed;
        }
        Ok(())
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
