//! The schema, created and migrated in order when a node opens the store (or by `custodia db
//! migrate`). Each migration runs in its own transaction with its row in `schema_version`, so
//! it is applied whole or not at all; a session advisory lock around the whole run makes two
//! nodes starting at once take turns (the second finds nothing left to do).

use tokio_postgres::Client;

use super::{LOCK_SCHEMA, MIGRATE_LOCK, db_error};
use crate::store::StoreError;

/// The migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Append only; a shipped migration never changes.
const MIGRATIONS: &[&str] = &[
    // 1: records, blind indexes, the log (pending events, leaves, nodes, per-customer history,
    // head), checkpoints and metadata.
    r"
    CREATE TABLE customers (
        id bytea PRIMARY KEY,
        version bigint NOT NULL,
        -- CustomerRecord::encode: sealed values, the wrapped data key, index entries.
        record bytea NOT NULL
    );
    CREATE TABLE index_entries (
        field text NOT NULL,
        index bytea NOT NULL,
        customer bytea NOT NULL,
        unique_entry boolean NOT NULL,
        PRIMARY KEY (field, index, customer)
    );
    -- A unique entry belongs to one customer: the database refuses a second, even when two
    -- transactions race.
    CREATE UNIQUE INDEX index_entries_unique ON index_entries (field, index) WHERE unique_entry;
    CREATE INDEX index_entries_customer ON index_entries (customer);

    CREATE SEQUENCE write_ids;
    -- Events committed with their change, not yet given a seq; the sequencer integrates them
    -- in (write_id, pos) order, one write's events together.
    CREATE TABLE pending_events (
        write_id bigint NOT NULL,
        pos integer NOT NULL,
        prefix bytea NOT NULL,
        time text NOT NULL,
        customer bytea,
        PRIMARY KEY (write_id, pos)
    );
    -- The first seq of each integrated write, for writers waiting on another node's sequencer;
    -- pruned by the sequencer after a while.
    CREATE TABLE write_seqs (
        write_id bigint PRIMARY KEY,
        first_seq bigint NOT NULL,
        integrated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE audit_events (
        seq bigint PRIMARY KEY,
        event bytea NOT NULL
    );
    CREATE TABLE merkle_nodes (
        level smallint NOT NULL,
        idx bigint NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY (level, idx)
    );
    CREATE TABLE customer_history (
        customer bytea NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (customer, seq)
    );
    -- One row: the tree's size and frontier. Advanced only by a compare-and-set on `size`,
    -- which fences a stale sequencer.
    CREATE TABLE log_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        size bigint NOT NULL,
        roots bytea NOT NULL
    );
    INSERT INTO log_head (size, roots) VALUES (0, ''::bytea);
    CREATE TABLE checkpoints (
        size bigint PRIMARY KEY,
        note bytea NOT NULL
    );
    CREATE TABLE meta (
        name text PRIMARY KEY,
        value bytea NOT NULL
    );
    ",
];

/// The schema version this build writes and reads.
pub(super) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema to [`SCHEMA_VERSION`]; returns the version found before. Refuses a
/// database migrated by a newer build.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    client
        .execute(&format!("SELECT pg_catalog.pg_advisory_lock($1, {LOCK_SCHEMA})"), &[&MIGRATE_LOCK])
        .await
        .map_err(db_error)?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute(&format!("SELECT pg_catalog.pg_advisory_unlock($1, {LOCK_SCHEMA})"), &[&MIGRATE_LOCK])
        .await;
    let found = result?;
    unlock.map_err(db_error)?;
    Ok(found)
}

async fn migrate_locked(client: &mut Client) -> Result<i32, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db_error)?;
    let row = client
        .query_one("SELECT coalesce(pg_catalog.max(version), 0) FROM schema_version", &[])
        .await
        .map_err(db_error)?;
    let found: i32 = row.get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database schema is at version {found}, newer than this build's {SCHEMA_VERSION}: \
             run a newer custodia"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        let tx = client.transaction().await.map_err(db_error)?;
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version])
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(found)
}

/// Whether every table of the schema is empty and the head at size 0 (one query): a `store
/// copy` destination must be. A table a later migration adds belongs here too.
pub(super) async fn is_empty(client: &Client) -> Result<bool, StoreError> {
    let sql = "SELECT NOT (EXISTS (SELECT FROM customers) OR EXISTS (SELECT FROM index_entries) \
               OR EXISTS (SELECT FROM pending_events) OR EXISTS (SELECT FROM write_seqs) \
               OR EXISTS (SELECT FROM audit_events) OR EXISTS (SELECT FROM merkle_nodes) \
               OR EXISTS (SELECT FROM customer_history) OR EXISTS (SELECT FROM checkpoints) \
               OR EXISTS (SELECT FROM meta) OR EXISTS (SELECT FROM log_head WHERE size <> 0))";
    Ok(client.query_one(sql, &[]).await.map_err(db_error)?.get(0))
}
