//! Taking a backup: online, through the [`Store`] interface, while writers run.
//!
//! Consistency is defined by the log, as a PostgreSQL base backup is by its WAL: the log's size
//! `H1` is read before the records and `H2` after them; the file holds every event up to `H2`,
//! a checkpoint signed at exactly `H2`, and a trailer signed by the same key over the whole
//! file's checksum ([`super::format::statement`]). Every change recorded at a seq below `H1`
//! is in the records; a change recorded in `[H1, H2)` may or may not be. The restore treats
//! that window like the time after the backup: it counts the changes recorded from `H1` on as
//! possibly lost (and re-applies every erasure and purge of the whole log).

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::BackupError;
use super::format::{Line, Lines, meta_line, record_line};
use crate::audit::AuditLog;
use crate::store::Store;

/// Customers read per page.
const CUSTOMERS_PER_PAGE: usize = 500;
/// Events read per page.
const EVENTS_PER_PAGE: usize = 2000;

/// What a backup wrote.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The log's size before the records were read.
    pub backup_point: u64,
    /// Events written (the log's size after the records).
    pub size: u64,
    /// Customer records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes a backup of `store` (whose log is `audit`) to `out`, flushing it at the end. The
/// caller makes `out` durable (fsync and rename) and may verify it with [`super::verify`].
pub async fn take<W: AsyncWrite + Unpin>(
    store: &dyn Store,
    audit: &AuditLog,
    out: W,
) -> Result<Taken, BackupError> {
    let mut out = Out { writer: tokio::io::BufWriter::with_capacity(1 << 20, out), bytes: 0 };
    let mut lines = Lines::default();

    let backup_point = store.head().await?.size;
    out.put(lines.magic()).await?;
    let (created, key) = (crate::domain::Timestamp::now().to_rfc3339(), audit.verifier_key().to_string());
    let header = Line::Header { backup_point, created: created.clone(), verifier_key: key.clone() };
    out.put(lines.line(&header)).await?;

    let mut records = 0u64;
    let mut after = None;
    loop {
        let ids = store.customer_ids(after, CUSTOMERS_PER_PAGE).await?;
        let Some(last) = ids.last().copied() else { break };
        for id in &ids {
            // A customer erased since the page was listed is simply not in the backup.
            if let Some(record) = store.customer(id).await? {
                out.put(lines.line(&record_line(&record)?)).await?;
                records += 1;
            }
        }
        after = Some(last);
    }
    // After the records: the epoch list and system keys are at least as new as what the
    // records were written under.
    for name in crate::vault::META_NAMES {
        if let Some(value) = store.meta(name).await? {
            out.put(lines.line(&meta_line(name, &value))).await?;
        }
    }

    // `H2`, and a checkpoint signed at exactly `H2`: every event in the file is under it (and
    // the trailer's signature covers the whole file besides).
    let size = store.head().await?.size;
    let checkpoint = if size > 0 { Some(audit.checkpoint_at(size).await?) } else { None };
    if let Some(signed) = &checkpoint {
        let line = Line::Checkpoint { size: signed.checkpoint.size, note: signed.note.clone() };
        out.put(lines.line(&line)).await?;
    }
    let mut next = 0u64;
    while next < size {
        let page = store.audit_events(next, EVENTS_PER_PAGE.min((size - next) as usize)).await?;
        if page.is_empty() {
            return Err(BackupError::Refused(format!("the log ends at {next}, its head said {size}")));
        }
        for (seq, event) in page {
            if seq != next {
                return Err(BackupError::Refused(format!("the log skips seq {next}")));
            }
            let event = String::from_utf8(event)
                .map_err(|_| BackupError::Refused(format!("stored event {seq} is not UTF-8")))?;
            out.put(lines.line(&Line::Event { seq, event })).await?;
            next += 1;
        }
    }
    let mut signing = None;
    let trailer =
        lines.trailer(backup_point, &key, &created, |text| match audit.sign_backup_statement(text) {
            Ok(note) => note,
            Err(e) => {
                signing = Some(e);
                String::new()
            }
        });
    if let Some(e) = signing {
        return Err(e.into());
    }
    out.put(trailer).await?;
    out.writer.flush().await.map_err(|e| BackupError::Io(format!("writing the backup: {e}")))?;
    Ok(Taken { backup_point, size, records, bytes: out.bytes })
}

struct Out<W> {
    writer: tokio::io::BufWriter<W>,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    async fn put(&mut self, text: Vec<u8>) -> Result<(), BackupError> {
        self.bytes += text.len() as u64;
        self.writer.write_all(&text).await.map_err(|e| BackupError::Io(format!("writing the backup: {e}")))
    }
}
