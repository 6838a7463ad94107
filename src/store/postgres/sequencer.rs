//! The sequencer: one node at a time integrates pending events into the log.
//!
//! Every node runs this task. It opens a session of its own and tries the sequencer's advisory
//! lock; the node that gets it integrates, the others retry every [`TAKEOVER_RETRY`], so when
//! the sequencing node dies (its session ends and the lock with it) another takes over within
//! about that long. The lock alone is not trusted for correctness: each batch advances the head
//! with a compare-and-set on its size, and the seqs and nodes it inserts are primary keys, so a
//! stale sequencer (one that lost its session but not yet its loop) fails its transaction and
//! writes nothing.
//!
//! A batch takes up to [`BATCH_WRITES`] whole writes in (write id, position) order: seq order is
//! integration order, and the events of one write stay adjacent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{GenericClient, Statement};

use super::{LOCK_SCHEMA, SEQUENCER_LOCK, Shared, db_error, hash_of, id_of, to_i64};
use crate::store::{PendingEvent, StoreError, TreeHead};

/// How often a node that does not sequence tries to take over.
const TAKEOVER_RETRY: Duration = Duration::from_millis(500);
/// How often the sequencer looks for events committed by other nodes when nothing woke it.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Most writes integrated in one transaction.
const BATCH_WRITES: i64 = 512;
/// How long `write_seqs` rows are kept for writers waiting on another node.
const WRITE_SEQS_KEPT: &str = "10 minutes";

/// Runs until the store is closed or dropped.
pub(super) async fn run(shared: Arc<Shared>) {
    // Present on every node from the start: 0 until this node takes the lock.
    crate::metric::audit_sequencer(false);
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        match lead(&shared, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "audit log sequencer: lost its database session; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(TAKEOVER_RETRY) => {}
        }
    }
}

/// Takes the lock (waiting while another node holds it), then integrates until stopped. `Ok`
/// only when stopped.
async fn lead(shared: &Shared, stop: &mut watch::Receiver<bool>) -> Result<(), StoreError> {
    let mut client = shared.connector.connect_sequencer().await?;
    loop {
        let row = client
            .query_one(
                &format!("SELECT pg_catalog.pg_try_advisory_lock($1, {LOCK_SCHEMA})"),
                &[&SEQUENCER_LOCK],
            )
            .await
            .map_err(db_error)?;
        if row.get::<_, bool>(0) {
            break;
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(TAKEOVER_RETRY) => {}
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
    tracing::info!("this node now sequences the audit log");
    crate::metric::audit_sequencer(true);
    let result = integrate_until_stopped(shared, &mut client, stop).await;
    crate::metric::audit_sequencer(false);
    // Let go at once rather than when the session ends, so a successor need not wait.
    let _ = client
        .execute(&format!("SELECT pg_catalog.pg_advisory_unlock($1, {LOCK_SCHEMA})"), &[&SEQUENCER_LOCK])
        .await;
    result
}

/// The sequencer's statements, prepared once per session (each is then one round trip).
struct Statements {
    head: Statement,
    pending: Statement,
    events: Statement,
    nodes: Statement,
    history: Statement,
    integrated: Statement,
    seqs: Statement,
    advance: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(client: &tokio_postgres::Client) -> Result<Self, StoreError> {
        let prepare = |sql: &'static str| async move { client.prepare(sql).await.map_err(db_error) };
        Ok(Statements {
            head: prepare(HEAD).await?,
            pending: prepare(
                "SELECT write_id, prefix, time, customer FROM pending_events \
                 WHERE write_id IN (SELECT DISTINCT write_id FROM pending_events ORDER BY write_id LIMIT $1) \
                 ORDER BY write_id, pos",
            )
            .await?,
            events: prepare("INSERT INTO audit_events (seq, event) SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::bytea[]))")
                .await?,
            nodes: prepare(
                "INSERT INTO merkle_nodes (level, idx, hash) \
                 SELECT * FROM ROWS FROM (pg_catalog.unnest($1::smallint[]), pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bytea[]))",
            )
            .await?,
            history: prepare(
                "INSERT INTO customer_history (customer, seq) SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bytea[]), pg_catalog.unnest($2::bigint[]))",
            )
            .await?,
            integrated: prepare("DELETE FROM pending_events WHERE write_id = ANY($1)").await?,
            seqs: prepare(
                "INSERT INTO write_seqs (write_id, first_seq) SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::bigint[]))",
            )
            .await?,
            advance: prepare("UPDATE log_head SET size = $1, roots = $2 WHERE size = $3").await?,
            // Delivered at the batch's commit, to every node listening (`notify.rs`).
            notify: client
                .prepare(&format!("SELECT pg_notify({}, $1::bigint::text)", super::notify::CHANNEL))
                .await
                .map_err(db_error)?,
        })
    }
}

const HEAD: &str = "SELECT size, roots FROM log_head";

async fn integrate_until_stopped(
    shared: &Shared,
    client: &mut tokio_postgres::Client,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let statements = Statements::prepare(client).await?;
    let mut pruned = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if integrate_batch(shared, client, &statements).await? > 0 {
            continue;
        }
        if pruned.elapsed() > Duration::from_secs(60) {
            let sql = format!(
                "DELETE FROM write_seqs WHERE integrated_at < pg_catalog.now() - interval '{WRITE_SEQS_KEPT}'"
            );
            client.execute(sql.as_str(), &[]).await.map_err(db_error)?;
            pruned = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = shared.pending.notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}

/// The head as stored.
pub(super) async fn read_head(client: &impl GenericClient) -> Result<TreeHead, StoreError> {
    let row = client.query_one(HEAD, &[]).await.map_err(db_error)?;
    head_of(&row)
}

fn head_of(row: &tokio_postgres::Row) -> Result<TreeHead, StoreError> {
    let roots: &[u8] = row.get(1);
    if !roots.len().is_multiple_of(32) {
        return Err(StoreError::Corrupt("the stored log head's roots are not whole hashes".into()));
    }
    Ok(TreeHead {
        size: row.get::<_, i64>(0) as u64,
        roots: roots.chunks_exact(32).map(hash_of).collect::<Result<_, _>>()?,
    })
}

/// Integrates one batch of pending writes in one transaction; how many events.
async fn integrate_batch(
    shared: &Shared,
    client: &mut tokio_postgres::Client,
    st: &Statements,
) -> Result<usize, StoreError> {
    let started = std::time::Instant::now();
    // Outside a transaction first: an idle poll is one round trip.
    let rows = client.query(&st.pending, &[&BATCH_WRITES]).await.map_err(db_error)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let tx = client.transaction().await.map_err(db_error)?;
    let head = head_of(&tx.query_one(&st.head, &[]).await.map_err(db_error)?)?;
    // (write id, first seq) of each write, in order.
    let mut writes: Vec<(i64, u64)> = Vec::new();
    let mut pending = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let write_id: i64 = row.get(0);
        if writes.last().is_none_or(|(id, _)| *id != write_id) {
            writes.push((write_id, head.size + i as u64));
        }
        let customer: Option<&[u8]> = row.get(3);
        pending.push(PendingEvent {
            prefix: row.get(1),
            time: row.get(2),
            customer: customer.map(id_of).transpose()?,
        });
    }
    let count = pending.len();
    // Decision times (RFC 3339, ms), for the decision → seq delay measured after the commit.
    let decided: Vec<i64> = pending
        .iter()
        .filter_map(|p| crate::domain::Timestamp::parse_rfc3339(&p.time))
        .map(|t| t.millis())
        .collect();
    let (leaves, next) = shared.integrator.integrate(&head, pending);

    let mut seqs = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(count);
    let (mut levels, mut indexes, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut history_customers, mut history_seqs) = (Vec::new(), Vec::new());
    for leaf in &leaves {
        seqs.push(to_i64(leaf.seq));
        events.push(leaf.event.as_slice());
        for (level, index, hash) in &leaf.nodes {
            levels.push(i16::from(*level));
            indexes.push(to_i64(*index));
            hashes.push(hash.as_slice());
        }
        if let Some(customer) = &leaf.customer {
            history_customers.push(customer.as_bytes().as_slice());
            history_seqs.push(to_i64(leaf.seq));
        }
    }
    let write_ids: Vec<i64> = writes.iter().map(|(id, _)| *id).collect();
    let first_seqs: Vec<i64> = writes.iter().map(|(_, seq)| to_i64(*seq)).collect();
    let roots: Vec<u8> = next.roots.concat();

    // One round trip: tokio-postgres pipelines statements issued together on one session; the
    // transaction makes them one step, the head's compare-and-set decides whether it commits.
    let no_history = history_seqs.is_empty();
    let (size, old_size) = (to_i64(next.size), to_i64(head.size));
    let (_, _, _, _, _, advanced, _) = tokio::try_join!(
        async { tx.execute(&st.events, &[&seqs, &events]).await },
        async { tx.execute(&st.nodes, &[&levels, &indexes, &hashes]).await },
        async {
            if no_history {
                Ok(0)
            } else {
                tx.execute(&st.history, &[&history_customers, &history_seqs]).await
            }
        },
        async { tx.execute(&st.integrated, &[&write_ids]).await },
        async { tx.execute(&st.seqs, &[&write_ids, &first_seqs]).await },
        // The fence: only the sequencer that read this size may advance it.
        async { tx.execute(&st.advance, &[&size, &roots, &old_size]).await },
        // Sent only if the batch commits.
        async { tx.query_one(&st.notify, &[&size]).await },
    )
    .map_err(db_error)?;
    if advanced != 1 {
        return Err(StoreError::Unavailable("the log head moved under this sequencer: fenced".into()));
    }
    tx.commit().await.map_err(db_error)?;
    crate::metric::audit_integrated(count, started.elapsed());
    // Every event's delay from its decision (its `time`, taken on the node that decided) to its
    // seq: what an auditor waits to see an access, whether or not its writer waited.
    let now = crate::domain::Timestamp::now().millis();
    for ms in decided {
        crate::metric::audit_integration_delay(std::time::Duration::from_millis(
            now.saturating_sub(ms).max(0) as u64,
        ));
    }
    // Writes that answered at COMMIT never learn their seqs: the gauge follows the head here.
    crate::metric::audit_tree_size(next.size);
    shared.integrated.notify_waiters();

    let mut waiters = shared.waiters.lock().unwrap_or_else(|p| p.into_inner());
    for (id, first) in writes {
        if let Some(waiter) = waiters.remove(&id) {
            let _ = waiter.send(first);
        }
    }
    Ok(count)
}
