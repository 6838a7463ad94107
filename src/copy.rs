//! `custodia store copy`: moves everything a store holds into another, empty store (sled to
//! PostgreSQL), through the [`Store`] interface of both, and proves the copy before it reports
//! success.
//!
//! Records are imported as they are (versions, wrapped data keys, index entries); the log is
//! re-appended event by event, so the destination's sequencer integrates exactly the source's
//! leaves (an event's bytes are its pending prefix and its `seq` and `time`, RFC 8785 puts them
//! last) and rebuilds its Merkle nodes and per-customer history; the metadata the vault writes
//! ([`crate::vault::META_NAMES`]) and the newest signed checkpoint follow. Then the copied log's
//! head must equal the source's, and its root at the checkpoint's size must be the root the
//! checkpoint signed.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::audit::checkpoint::VerifierKey;
use crate::audit::proof::Plan;
use crate::domain::CustomerId;
use crate::store::{Hash, PendingEvent, Store, StoreError, Write};

/// Events re-appended per write (one write's events get adjacent seqs).
pub(crate) const EVENTS_PER_WRITE: usize = 500;
/// Customers read and imported per page.
const CUSTOMERS_PER_PAGE: usize = 200;

/// What a copy moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Customer records imported.
    pub customers: u64,
    /// Audit events re-appended (the log's size).
    pub events: u64,
    /// Metadata values copied.
    pub meta: usize,
    /// The size of the newest signed checkpoint, copied and verified against the copy.
    pub checkpoint: Option<u64>,
}

/// Why a copy stopped. The destination may hold part of the copy: start again on an empty one.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The copy is refused or does not prove out.
    #[error("store copy: {0}")]
    Refused(String),
}

/// Copies `from` into `to`, which must be empty, and verifies the copy against the newest
/// checkpoint's root. The note's signature is not checked: `custodia store copy` uses
/// [`copy_store_verified`].
pub async fn copy_store(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, CopyError> {
    copy(from, to, None).await
}

/// [`copy_store`], and first the source's newest checkpoint note must verify under `verifier`
/// (the source log's key and origin; C2SP signed-note): an altered source is refused before
/// anything is written.
pub async fn copy_store_verified(
    from: &dyn Store,
    to: &dyn Store,
    verifier: &VerifierKey,
) -> Result<CopyReport, CopyError> {
    copy(from, to, Some(verifier)).await
}

async fn copy(
    from: &dyn Store,
    to: &dyn Store,
    verifier: Option<&VerifierKey>,
) -> Result<CopyReport, CopyError> {
    refuse_unless_empty(to).await?;
    let source_head = from.head().await?;
    let checkpoint = from.latest_checkpoint().await?;
    // The root the newest checkpoint signs, its signature checked when a key is given.
    let signed = match (&checkpoint, verifier) {
        (None, _) => None,
        (Some((size, note)), None) => Some((*size, note_root(note, *size)?)),
        (Some((size, note)), Some(key)) => {
            let opened = std::str::from_utf8(note)
                .ok()
                .and_then(|n| key.open_checkpoint(n).ok())
                .ok_or_else(|| {
                    CopyError::Refused(format!(
                        "the source's newest checkpoint (size {size}) does not verify under its log's key and \
                         origin: was the source altered, or is CUSTODIA_AUDIT_ORIGIN not the source's?"
                    ))
                })?;
            if opened.size != *size {
                return Err(CopyError::Refused(format!(
                    "the checkpoint stored for size {size} names size {}",
                    opened.size
                )));
            }
            Some((*size, opened.root))
        }
    };

    // The log first: a customer's history rows come with its events.
    let mut next = 0u64;
    while next < source_head.size {
        let page = from.audit_events(next, EVENTS_PER_WRITE).await?;
        if page.is_empty() {
            return Err(CopyError::Refused(format!(
                "the source log ends at {next}, its head says {}",
                source_head.size
            )));
        }
        next = append_leaves(to, next, &page).await?;
    }

    let mut customers = 0u64;
    let mut after = None;
    loop {
        let ids = from.customer_ids(after, CUSTOMERS_PER_PAGE).await?;
        let Some(last) = ids.last().copied() else { break };
        for id in &ids {
            // A customer erased since the page was listed is simply not copied.
            if let Some(record) = from.customer(id).await? {
                to.import(record).await?;
                customers += 1;
            }
        }
        after = Some(last);
    }

    let mut meta = 0;
    for name in crate::vault::META_NAMES {
        if let Some(value) = from.meta(name).await? {
            to.put_meta(name, value).await?;
            meta += 1;
        }
    }

    // The proof: the same head, and the checkpoint's root recomputed from the copied nodes.
    let copied_head = to.head().await?;
    if copied_head != source_head {
        return Err(CopyError::Refused(format!(
            "the copied log's head (size {}) differs from the source's (size {})",
            copied_head.size, source_head.size
        )));
    }
    let checkpoint = match (checkpoint, signed) {
        (Some((size, note)), Some(_)) => {
            put_verified_checkpoint(to, size, note).await?;
            Some(size)
        }
        _ => None,
    };
    Ok(CopyReport { customers, events: source_head.size, meta, checkpoint })
}

/// Refuses a destination that is not empty: empty means empty, since a node started on it
/// leaves metadata, checkpoints or pending events that a copy or a restore would mix with its
/// own ([`Store::is_empty`], and every metadata name the vault writes).
pub(crate) async fn refuse_unless_empty(to: &dyn Store) -> Result<(), CopyError> {
    let mut empty = to.is_empty().await?;
    for name in crate::vault::META_NAMES {
        empty = empty && to.meta(name).await?.is_none();
    }
    if !empty {
        return Err(CopyError::Refused("the destination is not empty".into()));
    }
    Ok(())
}

/// Re-appends `leaves` (seq, stored canonical JSON), which must continue the destination's log
/// at `next` with adjacent seqs, as one write; returns the seq after the last.
pub(crate) async fn append_leaves(
    to: &dyn Store,
    next: u64,
    leaves: &[(u64, Vec<u8>)],
) -> Result<u64, CopyError> {
    let mut events = Vec::with_capacity(leaves.len());
    for (i, (seq, bytes)) in leaves.iter().enumerate() {
        if *seq != next + i as u64 {
            return Err(CopyError::Refused(format!("the source log skips seq {}", next + i as u64)));
        }
        events.push(pending_of(*seq, bytes)?);
    }
    let count = events.len() as u64;
    let written = to.write(Write { need_seqs: true, precondition: None, change: None, events }).await?;
    if written.seqs.first() != Some(&next) {
        return Err(CopyError::Refused(format!("the destination's log did not continue at seq {next}")));
    }
    Ok(next + count)
}

/// Stores the signed checkpoint `note` of `size` in `to` after recomputing, from the nodes `to`
/// holds, the root it signs: a copied or restored log proves itself before it is kept.
pub(crate) async fn put_verified_checkpoint(
    to: &dyn Store,
    size: u64,
    note: Vec<u8>,
) -> Result<(), CopyError> {
    let signed_root = note_root(&note, size)?;
    let plan = Plan::root(size);
    let ids = plan.nodes();
    let found = to.nodes(&ids).await?;
    let nodes: std::collections::HashMap<(u8, u64), Hash> =
        ids.into_iter().zip(found).filter_map(|(id, hash)| hash.map(|h| (id, h))).collect();
    let root = plan
        .assemble_root(&nodes)
        .map_err(|e| CopyError::Refused(format!("the copied log has no root at size {size}: {e}")))?;
    if root != signed_root {
        return Err(CopyError::Refused(format!(
            "the copied log's root at size {size} is not the one the newest signed checkpoint names"
        )));
    }
    if to.put_checkpoint(size, note.clone()).await? != note {
        return Err(CopyError::Refused(format!("the destination holds another checkpoint for size {size}")));
    }
    Ok(())
}

/// The pending event whose leaf at `seq` is `bytes`: the bytes without their trailing `seq` and
/// `time` members and closing brace.
fn pending_of(seq: u64, bytes: &[u8]) -> Result<PendingEvent, CopyError> {
    let bad = |why: &str| CopyError::Refused(format!("event {seq}: {why}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
    let time = value["time"].as_str().ok_or_else(|| bad("no time"))?.to_owned();
    let suffix = format!(",\"seq\":{seq},\"time\":{}}}", serde_json::Value::String(time.clone()));
    let prefix =
        bytes.strip_suffix(suffix.as_bytes()).ok_or_else(|| bad("does not end with its seq and time"))?;
    let customer = match value["customer_id"].as_str() {
        Some(id) => Some(CustomerId::from_str(id).map_err(|_| bad("customer_id is not a customer id"))?),
        None => None,
    };
    Ok(PendingEvent { prefix: prefix.to_vec(), time, customer })
}

/// The root hash a checkpoint note signs for `size` (C2SP tlog-checkpoint: origin, size, root).
fn note_root(note: &[u8], size: u64) -> Result<Hash, CopyError> {
    let bad = || CopyError::Refused("the newest checkpoint is not a checkpoint note".into());
    let text = std::str::from_utf8(note).map_err(|_| bad())?;
    let mut lines = text.lines();
    let (_origin, noted, root) = (lines.next(), lines.next().ok_or_else(bad)?, lines.next().ok_or_else(bad)?);
    if noted.parse::<u64>().ok() != Some(size) {
        return Err(CopyError::Refused(format!("the checkpoint stored for size {size} names size {noted}")));
    }
    STANDARD.decode(root).ok().and_then(|r| r.try_into().ok()).ok_or_else(bad)
}
