//! The PostgreSQL backend: several stateless nodes share one database (DESIGN §8).
//!
//! Every node serves every route. A write's data change and its *pending* events commit in one
//! transaction (durable at `COMMIT`: every session runs with `synchronous_commit = on`). One
//! node at a time, the one whose dedicated session holds the sequencer's advisory lock,
//! integrates pending events in batches through the injected [`Integrator`] (`sequencer.rs`):
//! seqs, leaves, Merkle nodes, history rows, and the head advanced by a compare-and-set on its
//! size, so a stale sequencer that lost its lock cannot advance the log. A write answers at
//! `COMMIT` unless its caller needs the seqs ([`Write::need_seqs`]: the erasure receipt); then
//! it waits until its events are integrated (woken in process when this node sequences, else by
//! an integration notice, `notify.rs`, or by polling `write_seqs`). The log readers (`head`,
//! `audit_events`, `audit_events_for_customer`) first wait until every event committed before
//! the call is integrated, so a caller reads its own writes (an export or an auditor's customer
//! filter never misses a recent access), and never show an event that is not in the tree.
//!
//! Erasure deletes the record row (which holds the wrapped data key) and every index row in the
//! transaction of the erasure event. Deleted rows linger in table pages and the WAL until
//! vacuum and WAL recycling; the epoch keys of the vault bound what they still open.
//!
//! The store opens lazily: [`PostgresStore::open`] only parses the settings; the first call
//! connects, migrates the schema (`schema.rs`) and starts the sequencer on the caller's runtime.

mod connect;
mod notify;
mod schema;
mod sequencer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Pool, StatementCache};
use secrecy::SecretString;
use tokio::sync::{Notify, OnceCell, oneshot, watch};
use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;

use self::connect::Connector;
use super::{
    CustomerChange, CustomerRecord, Hash, Integrator, MetaEquals, NodeId, Store, StoreError, TreeHead, Turn,
    Write, Written,
};
use crate::crypto::BlindIndex;
use crate::domain::CustomerId;

/// Advisory lock class held around schema migration. Advisory locks are per database; the
/// second key is a hash of the schema the session works in (its `search_path`), so deployments
/// in different schemas of one database never share a lock.
const MIGRATE_LOCK: i32 = 0x6375_6d01; // "cum" + 1
/// Advisory lock class held by the sequencer's session for as long as it sequences.
const SEQUENCER_LOCK: i32 = 0x6375_7301; // "cus" + 1
/// Advisory lock class of the background sweeps, one lock per sweep name.
const SWEEP_LOCK: i32 = 0x6375_7701; // "cuw" + 1
/// The lock's second key: the session's schema.
const LOCK_SCHEMA: &str = "pg_catalog.hashtext(pg_catalog.current_schema()::text)";
/// How often a writer whose events another node integrates looks for their seqs.
const SEQ_POLL: Duration = Duration::from_millis(20);
/// Longest a write waits for its events' seqs after its commit, and a log reader for the
/// integration of what was committed before it: at most this, and at most half the request
/// timeout, so the store answers before the HTTP layer gives up with 408 (which clients retry).
const SEQ_WAIT_MAX: Duration = Duration::from_secs(30);

/// How to reach the database (`CUSTODIA_DATABASE_*`).
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// A `postgres://` URL or `key=value` connection string (`CUSTODIA_DATABASE_URL`). Holds the
    /// password: a secret, printed `[REDACTED]`, never in an error.
    pub url: SecretString,
    /// Most connections this node opens for requests (`CUSTODIA_DATABASE_POOL_SIZE`); the
    /// sequencer holds one more.
    pub pool_size: usize,
    /// Longest wait to connect, or for a free connection (`CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// PEM file of the CA certificates trusted for the database's TLS certificate
    /// (`CUSTODIA_DATABASE_CA_FILE`); `None`: the system's roots. Used when the URL's `sslmode`
    /// is not `disable`; rustls always verifies the certificate.
    pub ca_file: Option<PathBuf>,
    /// The node's request timeout (`CUSTODIA_REQUEST_TIMEOUT_MS`): every session's statement,
    /// lock and idle-transaction timeouts are derived from it, below it.
    pub request_timeout: Duration,
}

/// Records, index rows, the log and metadata in one PostgreSQL database.
pub struct PostgresStore {
    shared: Arc<Shared>,
    ready: OnceCell<()>,
    /// The sequencer task, started by the first call.
    sequencer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the store's handle and its sequencer task share.
struct Shared {
    connector: Connector,
    pool: Pool,
    integrator: Arc<dyn Integrator>,
    /// Writers of this node waiting for their write's first seq, by write id.
    waiters: Mutex<HashMap<i64, oneshot::Sender<u64>>>,
    /// Wakes this node's sequencer when a write committed pending events.
    pending: Notify,
    /// Woken after each integrated batch (by this node's sequencer, or by a notice from
    /// another node's: `notify.rs`): writers waiting for seqs, readers waiting for integration.
    integrated: Notify,
    /// The listening session for integration notices is up (waiters then poll less often).
    listening: AtomicBool,
    /// `true` once the handle is closed or dropped: the sequencer stops.
    stop: watch::Sender<bool>,
    closed: AtomicBool,
    /// How long seq waiters and log readers wait (see [`SEQ_WAIT_MAX`]).
    seq_wait: Duration,
}

/// Changes the database refused: the write is not made, and nothing of it is kept.
enum Refused {
    Store(StoreError),
    Db(tokio_postgres::Error),
    /// A unique entry lost a race to a concurrent commit (the transaction is aborted): named by
    /// [`Shared::name_clash`] after the rollback.
    UniqueRace,
}

/// The field of the first unique entry ($2 fields, $3 indexes, $4 unique flags) that another
/// customer than $1 holds.
const CLASH: &str = "SELECT e.field FROM index_entries e \
                     JOIN ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bytea[]), pg_catalog.unnest($4::bool[])) AS n(field, index, uniq) \
                       ON e.field = n.field AND e.index = n.index \
                     WHERE n.uniq AND e.customer <> $1 LIMIT 1";

impl From<tokio_postgres::Error> for Refused {
    fn from(e: tokio_postgres::Error) -> Self {
        Refused::Db(e)
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// A database error as a store error. Messages carry the server's text and SQLSTATE only (never
/// a row's values: `DETAIL` is left out).
pub(super) fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("database: {} ({})", db.message(), db.code().code())),
        // tokio-postgres puts the cause (refused, timed out, TLS) in the source.
        None => match std::error::Error::source(&e) {
            Some(cause) => StoreError::Unavailable(format!("database: {e}: {cause}")),
            None => StoreError::Unavailable(format!("database: {e}")),
        },
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        e => StoreError::Unavailable(format!("database connection pool: {e}")),
    }
}

const NEXT_WRITE_ID: &str = "SELECT pg_catalog.nextval('write_ids')";
const INSERT_PENDING: &str = "INSERT INTO pending_events (write_id, pos, prefix, time, customer) \
                              SELECT $1, * FROM ROWS FROM (pg_catalog.unnest($2::int[]), pg_catalog.unnest($3::bytea[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::bytea[]))";

/// The columns of a write's pending events, as arrays for one `unnest` insert.
struct PendingRows<'a> {
    pos: Vec<i32>,
    prefixes: Vec<&'a [u8]>,
    times: Vec<&'a str>,
    customers: Vec<Option<&'a [u8]>>,
}

impl<'a> PendingRows<'a> {
    fn of(write: &'a Write) -> Self {
        PendingRows {
            pos: (0..write.events.len() as i32).collect(),
            prefixes: write.events.iter().map(|e| e.prefix.as_slice()).collect(),
            times: write.events.iter().map(|e| e.time.as_str()).collect(),
            customers: write
                .events
                .iter()
                .map(|e| e.customer.as_ref().map(|c| c.as_bytes().as_slice()))
                .collect(),
        }
    }

    fn params<'p>(&'p self, write_id: &'p i64) -> [&'p (dyn tokio_postgres::types::ToSql + Sync); 5] {
        [write_id, &self.pos, &self.prefixes, &self.times, &self.customers]
    }
}

/// A statement prepared once per connection.
async fn st(
    cache: &StatementCache,
    tx: &Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    cache.prepare(tx.client(), sql).await
}

fn id_of(bytes: &[u8]) -> Result<CustomerId, StoreError> {
    let bytes: [u8; 16] =
        bytes.try_into().map_err(|_| StoreError::Corrupt("a stored customer id is not 16 bytes".into()))?;
    Ok(CustomerId::from_bytes(bytes))
}

fn hash_of(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// A store over the database `settings` name, whose events `integrator` integrates. Connects
    /// on first use (on the caller's tokio runtime); a bad URL or CA file is refused here.
    pub fn open(settings: &PostgresSettings, integrator: Arc<dyn Integrator>) -> Result<Self, StoreError> {
        let connector = Connector::new(settings)?;
        let pool = connector.pool(settings)?;
        let (stop, _) = watch::channel(false);
        let shared = Shared {
            connector,
            pool,
            integrator,
            waiters: Mutex::new(HashMap::new()),
            pending: Notify::new(),
            integrated: Notify::new(),
            listening: AtomicBool::new(false),
            stop,
            closed: AtomicBool::new(false),
            seq_wait: SEQ_WAIT_MAX.min(settings.request_timeout / 2),
        };
        Ok(PostgresStore { shared: Arc::new(shared), ready: OnceCell::new(), sequencer: Mutex::new(None) })
    }

    /// Connects, migrates the schema and starts the sequencer, once; a failure is retried on the
    /// next call (the database may be back).
    async fn ready(&self) -> Result<&Shared, StoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.ready
            .get_or_try_init(|| async {
                let mut client = self.shared.pool.get().await.map_err(pool_error)?;
                schema::migrate(&mut client).await?;
                let task = tokio::spawn(sequencer::run(Arc::clone(&self.shared)));
                // Ends by itself when the store is closed or dropped.
                tokio::spawn(notify::run(Arc::clone(&self.shared)));
                *self.sequencer.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(&self.shared)
    }
}

/// Brings the database's schema to this build's version; returns (found, now). For `custodia
/// db migrate`.
pub async fn migrate(settings: &PostgresSettings) -> Result<(i32, i32), StoreError> {
    let connector = Connector::new(settings)?;
    let mut client = connector.connect().await?;
    let found = schema::migrate(&mut client).await?;
    Ok((found, schema::SCHEMA_VERSION))
}

/// One connection to the database `settings` names, outside any pool, its driver spawned on the
/// current runtime (the key database's: see `crypto::epoch`). Every session commits
/// synchronously, as the store's.
pub async fn connect_once(settings: &PostgresSettings) -> Result<tokio_postgres::Client, StoreError> {
    Connector::new(settings)?.connect().await
}

/// A database error as text: the server's message and SQLSTATE, never a row's values.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Which server, database and schema a connection to `settings` lands in, as one string
/// (the server's start time and port, the database, the schema): two settings with the same
/// identity name the same tables. Lets start-up refuse a key database that is the data database.
pub async fn identity(settings: &PostgresSettings) -> Result<(String, String), StoreError> {
    let client = connect_once(settings).await?;
    let sql = "SELECT pg_postmaster_start_time()::text || '/' || current_setting('port') || '/' || \
               current_database(), coalesce(current_schema()::text, '')";
    let row = client.query_one(sql, &[]).await.map_err(db_error)?;
    Ok((row.get(0), row.get(1)))
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

impl Shared {
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies `change` inside `tx`: the version check, the record row and its index rows.
    async fn apply_change(
        &self,
        cache: &StatementCache,
        tx: &Transaction<'_>,
        change: &CustomerChange,
    ) -> Result<(), Refused> {
        match change {
            CustomerChange::Put { record, expected_version } => {
                if record.version != expected_version.unwrap_or(0) + 1 {
                    return Err(StoreError::VersionConflict.into());
                }
                let id = record.id.as_bytes().as_slice();
                let encoded = record.encode()?;
                let version = to_i64(record.version);
                let changed = match expected_version {
                    None => {
                        let sql = "INSERT INTO customers (id, version, record) VALUES ($1, $2, $3) \
                                   ON CONFLICT (id) DO NOTHING";
                        tx.execute(&st(cache, tx, sql).await?, &[&id, &version, &encoded]).await?
                    }
                    Some(expected) => {
                        let sql =
                            "UPDATE customers SET version = $2, record = $3 WHERE id = $1 AND version = $4";
                        let expected = to_i64(*expected);
                        tx.execute(&st(cache, tx, sql).await?, &[&id, &version, &encoded, &expected]).await?
                    }
                };
                if changed != 1 {
                    return Err(StoreError::VersionConflict.into());
                }
                self.index_rows(cache, tx, record).await
            }
            CustomerChange::Delete { id, expected_version } => {
                let id = id.as_bytes().as_slice();
                let sql = "DELETE FROM customers WHERE id = $1 AND version = $2";
                let expected = to_i64(*expected_version);
                if tx.execute(&st(cache, tx, sql).await?, &[&id, &expected]).await? != 1 {
                    return Err(StoreError::VersionConflict.into());
                }
                let sql = "DELETE FROM index_entries WHERE customer = $1";
                tx.execute(&st(cache, tx, sql).await?, &[&id]).await?;
                Ok(())
            }
        }
    }

    /// Names the field of a unique race `record` lost, once its transaction or savepoint is
    /// rolled back: the winner has committed, so a new statement sees its row. Empty if the
    /// winner's row is gone again (erased meanwhile).
    async fn name_clash(
        client: &impl tokio_postgres::GenericClient,
        record: &CustomerRecord,
    ) -> Result<String, StoreError> {
        let id = record.id.as_bytes().as_slice();
        let fields: Vec<&str> = record.index_entries.iter().map(|e| e.field.as_str()).collect();
        let indexes: Vec<&[u8]> = record.index_entries.iter().map(|e| e.index.as_slice()).collect();
        let unique: Vec<bool> = record.index_entries.iter().map(|e| e.unique).collect();
        let row = client.query_opt(CLASH, &[&id, &fields, &indexes, &unique]).await.map_err(db_error)?;
        Ok(row.map(|r| r.get(0)).unwrap_or_default())
    }

    /// Replaces the index rows of `record`'s customer with its entries, inside `tx`.
    async fn index_rows(
        &self,
        cache: &StatementCache,
        tx: &Transaction<'_>,
        record: &CustomerRecord,
    ) -> Result<(), Refused> {
        let id = record.id.as_bytes().as_slice();
        let sql = "DELETE FROM index_entries WHERE customer = $1";
        tx.execute(&st(cache, tx, sql).await?, &[&id]).await?;
        if record.index_entries.is_empty() {
            return Ok(());
        }
        let fields: Vec<&str> = record.index_entries.iter().map(|e| e.field.as_str()).collect();
        let indexes: Vec<&[u8]> = record.index_entries.iter().map(|e| e.index.as_slice()).collect();
        let unique: Vec<bool> = record.index_entries.iter().map(|e| e.unique).collect();
        // A unique entry another customer holds (as a unique or plain entry) is a clash,
        // named by its field; racing inserts are caught by the unique index instead.
        if unique.iter().any(|u| *u) {
            let clash =
                tx.query_opt(&st(cache, tx, CLASH).await?, &[&id, &fields, &indexes, &unique]).await?;
            if let Some(row) = clash {
                return Err(StoreError::UniqueViolation { field: row.get(0) }.into());
            }
        }
        let sql = "INSERT INTO index_entries (field, index, customer, unique_entry) \
                   SELECT n.field, n.index, $1, n.uniq FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bytea[]), pg_catalog.unnest($4::bool[])) \
                     AS n(field, index, uniq) \
                   ON CONFLICT (field, index, customer) DO NOTHING";
        match tx.execute(&st(cache, tx, sql).await?, &[&id, &fields, &indexes, &unique]).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // Lost a race for a unique value. Which field is not in the error without its
                // DETAIL (which holds the index): the caller names it once this transaction
                // (or savepoint) is rolled back, from the winner's committed row.
                Err(Refused::UniqueRace)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts the write's pending events inside `tx`; their write id.
    async fn add_pending(
        &self,
        cache: &StatementCache,
        tx: &Transaction<'_>,
        write: &Write,
    ) -> Result<i64, tokio_postgres::Error> {
        let write_id: i64 = tx.query_one(&st(cache, tx, NEXT_WRITE_ID).await?, &[]).await?.get(0);
        let rows = PendingRows::of(write);
        tx.execute(&st(cache, tx, INSERT_PENDING).await?, &rows.params(&write_id)).await?;
        Ok(write_id)
    }

    /// A write of events only (a read's or a disclosure's audit): no transaction, one
    /// autocommitted insert (durable at its commit), the write id taken just before.
    async fn commit_events(&self, write: Write) -> Result<Written, StoreError> {
        let client = self.client().await?;
        let next = client.prepare_cached(NEXT_WRITE_ID).await.map_err(db_error)?;
        let write_id: i64 = client.query_one(&next, &[]).await.map_err(db_error)?.get(0);
        let rx = write.need_seqs.then(|| self.wait_for(write_id));
        let insert = client.prepare_cached(INSERT_PENDING).await.map_err(db_error)?;
        let rows = PendingRows::of(&write);
        if let Err(e) = client.execute(&insert, &rows.params(&write_id)).await {
            self.forget(&[write_id]);
            return Err(db_error(e));
        }
        drop(client);
        self.pending.notify_one();
        let Some(rx) = rx else { return Ok(Written { seqs: Vec::new() }) };
        let first = self.first_seq(write_id, rx).await?;
        Ok(Written { seqs: (first..first + write.events.len() as u64).collect() })
    }

    /// How long a waiter sleeps between looks when no notice wakes it.
    fn poll_interval(&self) -> Duration {
        if self.listening.load(Ordering::Acquire) { notify::SEQ_POLL_LISTENING } else { SEQ_POLL }
    }

    /// Waits until every event committed before this call is integrated (the log readers read
    /// their own writes, which answered at COMMIT): the newest pending write id now, then until
    /// no pending write at or below it remains. Woken by this node's sequencer, or polling.
    async fn integrated_barrier(&self) -> Result<(), StoreError> {
        let newest = {
            let client = self.client().await?;
            let sql = "SELECT pg_catalog.max(write_id) FROM pending_events";
            let newest = client.prepare_cached(sql).await.map_err(db_error)?;
            let newest: Option<i64> = client.query_one(&newest, &[]).await.map_err(db_error)?.get(0);
            match newest {
                Some(newest) => newest,
                None => return Ok(()),
            }
        };
        let deadline = tokio::time::Instant::now() + self.seq_wait;
        loop {
            // Registered before the look, so an integration in between still wakes it.
            let integrated = self.integrated.notified();
            // A pooled connection per look, returned while waiting: readers waiting on a stalled
            // sequencer must not hold the pool that every other request needs.
            let left = {
                let client = self.client().await?;
                let sql = "SELECT EXISTS (SELECT 1 FROM pending_events WHERE write_id <= $1)";
                let left = client.prepare_cached(sql).await.map_err(db_error)?;
                client.query_one(&left, &[&newest]).await.map_err(db_error)?.get::<_, bool>(0)
            };
            if !left {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Unavailable(
                    "the audit log's sequencer has not integrated the committed events yet".into(),
                ));
            }
            let _ = tokio::time::timeout(self.poll_interval(), integrated).await;
        }
    }

    /// Registers a waiter for `write_id`'s seqs before its commit, so the sequencer cannot
    /// integrate it unseen.
    fn wait_for(&self, write_id: i64) -> oneshot::Receiver<u64> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(write_id, tx);
        rx
    }

    fn forget(&self, write_ids: &[i64]) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for id in write_ids {
            waiters.remove(id);
        }
    }

    /// The first seq of a committed write: from this node's sequencer, or read from
    /// `write_seqs` when another node integrates it.
    async fn first_seq(&self, write_id: i64, mut rx: oneshot::Receiver<u64>) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + self.seq_wait;
        let mut sequenced_here = true;
        loop {
            let integrated = self.integrated.notified();
            tokio::select! {
                seq = &mut rx, if sequenced_here => match seq {
                    Ok(seq) => return Ok(seq),
                    // Another node integrates it: look on each notice (or poll).
                    Err(_) => sequenced_here = false,
                },
                () = integrated => {}
                () = tokio::time::sleep(self.poll_interval()) => {}
            }
            let client = self.client().await?;
            let sql = "SELECT first_seq FROM write_seqs WHERE write_id = $1";
            let st = client.prepare_cached(sql).await.map_err(db_error)?;
            if let Some(row) = client.query_opt(&st, &[&write_id]).await.map_err(db_error)? {
                self.forget(&[write_id]);
                return Ok(row.get::<_, i64>(0) as u64);
            }
            if tokio::time::Instant::now() > deadline {
                self.forget(&[write_id]);
                return Err(StoreError::CommittedUnsequenced);
            }
        }
    }

    /// Commits `writes` in one transaction, each under its own savepoint (its own outcome),
    /// then waits for the seqs of the events of those that need them ([`Write::need_seqs`]).
    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let mut client = self.client().await?;
        // Statements are prepared per connection: this connection's cache.
        let cache = Arc::clone(&client.statement_cache);
        let mut tx = client.transaction().await.map_err(db_error)?;
        let single = writes.len() == 1;
        // Per write: Ok(Some(write id, events)) with events, Ok(None) without, or why refused.
        let mut outcomes: Vec<Result<Option<(i64, usize)>, StoreError>> = Vec::with_capacity(writes.len());
        for write in &writes {
            let outcome = if single {
                self.apply_write(&cache, &tx, write).await
            } else {
                let savepoint = tx.savepoint("write").await.map_err(db_error)?;
                let outcome = self.apply_write(&cache, &savepoint, write).await;
                match &outcome {
                    Ok(_) => savepoint.commit().await.map_err(db_error)?,
                    Err(_) => savepoint.rollback().await.map_err(db_error)?,
                }
                outcome
            };
            match outcome {
                Ok(written) => outcomes.push(Ok(written)),
                Err(Refused::Store(
                    e @ (StoreError::VersionConflict
                    | StoreError::UniqueViolation { .. }
                    | StoreError::PreconditionFailed { .. }),
                )) => {
                    if single {
                        return Ok(vec![Err(e)]);
                    }
                    outcomes.push(Err(e));
                }
                Err(Refused::UniqueRace) => {
                    // invariant: only a put writes index rows.
                    let Some(CustomerChange::Put { record, .. }) = &write.change else {
                        return Err(StoreError::Corrupt("a unique race without a put".into()));
                    };
                    if single {
                        drop(tx);
                        let field = Self::name_clash(&**client, record).await?;
                        return Ok(vec![Err(StoreError::UniqueViolation { field })]);
                    }
                    // Its savepoint is rolled back: the transaction goes on.
                    outcomes.push(Err(StoreError::UniqueViolation {
                        field: Self::name_clash(&*tx, record).await?,
                    }));
                }
                Err(Refused::Store(e)) => return Err(e),
                Err(Refused::Db(e)) => return Err(db_error(e)),
            }
        }
        // Waiters only for the writes whose callers need their seqs; the others answer at COMMIT.
        let ids: Vec<i64> = outcomes
            .iter()
            .zip(&writes)
            .filter(|(_, w)| w.need_seqs)
            .filter_map(|(o, _)| o.as_ref().ok().copied().flatten())
            .map(|(id, _)| id)
            .collect();
        let any_events = outcomes.iter().any(|o| matches!(o, Ok(Some(_))));
        let receivers: Vec<_> = ids.iter().map(|id| self.wait_for(*id)).collect();
        if let Err(e) = tx.commit().await {
            self.forget(&ids);
            return Err(db_error(e));
        }
        // The connection goes back to the pool before the wait: waiting writers hold none.
        drop(client);
        if any_events {
            self.pending.notify_one();
        }
        let mut receivers = receivers.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for (outcome, write) in outcomes.into_iter().zip(&writes) {
            results.push(match outcome {
                Ok(None) => Ok(Written { seqs: Vec::new() }),
                Ok(Some(_)) if !write.need_seqs => Ok(Written { seqs: Vec::new() }),
                Ok(Some((id, count))) => {
                    let rx = receivers.next().expect("one receiver per write with events");
                    let first = self.first_seq(id, rx).await?;
                    Ok(Written { seqs: (first..first + count as u64).collect() })
                }
                Err(e) => Err(e),
            });
        }
        Ok(results)
    }

    async fn apply_write(
        &self,
        cache: &StatementCache,
        tx: &Transaction<'_>,
        write: &Write,
    ) -> Result<Option<(i64, usize)>, Refused> {
        if let Some(p) = &write.precondition {
            // FOR SHARE: a concurrent change of the value waits for this commit (and this one
            // for it), so the value holds until COMMIT.
            let sql = "SELECT value FROM meta WHERE name = $1 FOR SHARE";
            let row = tx.query_opt(&st(cache, tx, sql).await?, &[&p.name]).await?;
            if row.map(|r| r.get::<_, Vec<u8>>(0)) != p.value {
                return Err(StoreError::PreconditionFailed { name: p.name.clone() }.into());
            }
        }
        if let Some(change) = &write.change {
            self.apply_change(cache, tx, change).await?;
        }
        if write.events.is_empty() {
            return Ok(None);
        }
        let id = self.add_pending(cache, tx, write).await?;
        Ok(Some((id, write.events.len())))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError> {
        let client = self.ready().await?.client().await?;
        let st =
            client.prepare_cached("SELECT record FROM customers WHERE id = $1").await.map_err(db_error)?;
        let row = client.query_opt(&st, &[&id.as_bytes().as_slice()]).await.map_err(db_error)?;
        row.map(|r| CustomerRecord::decode(r.get::<_, &[u8]>(0))).transpose()
    }

    async fn lookup(&self, field: &str, index: &BlindIndex) -> Result<Vec<CustomerId>, StoreError> {
        let client = self.ready().await?.client().await?;
        let sql = "SELECT customer FROM index_entries WHERE field = $1 AND index = $2 ORDER BY customer";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let rows = client.query(&st, &[&field, &index.0.as_slice()]).await.map_err(db_error)?;
        rows.iter().map(|r| id_of(r.get(0))).collect()
    }

    async fn customer_ids(
        &self,
        after: Option<CustomerId>,
        limit_to: usize,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let client = self.ready().await?.client().await?;
        let sql = "SELECT id FROM customers WHERE id > $1 ORDER BY id LIMIT $2";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let after: &[u8] = after.as_ref().map_or(&[], |a| a.as_bytes().as_slice());
        let rows = client.query(&st, &[&after, &limit(limit_to)]).await.map_err(db_error)?;
        rows.iter().map(|r| id_of(r.get(0))).collect()
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        if write.change.is_none() && write.events.is_empty() {
            self.ready().await?;
            return Ok(Written { seqs: Vec::new() });
        }
        let shared = self.ready().await?;
        if write.change.is_none() && write.precondition.is_none() {
            return shared.commit_events(write).await;
        }
        shared.commit(vec![write]).await?.pop().expect("one outcome per write")
    }

    async fn write_many(&self, writes: Vec<Write>) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let shared = self.ready().await?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        shared.commit(writes).await
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.ready().await?.client().await?;
        let st = client.prepare_cached("SELECT value FROM meta WHERE name = $1").await.map_err(db_error)?;
        Ok(client.query_opt(&st, &[&name]).await.map_err(db_error)?.map(|r| r.get(0)))
    }

    async fn init_meta(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let client = self.ready().await?.client().await?;
        let sql = "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        client.execute(&st, &[&name, &value]).await.map_err(db_error)?;
        let st = client.prepare_cached("SELECT value FROM meta WHERE name = $1").await.map_err(db_error)?;
        Ok(client.query_one(&st, &[&name]).await.map_err(db_error)?.get(0))
    }

    async fn put_meta(&self, name: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let client = self.ready().await?.client().await?;
        let sql =
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        client.execute(&st, &[&name, &value]).await.map_err(db_error)?;
        Ok(())
    }

    async fn swap_meta(&self, current: MetaEquals, value: Vec<u8>) -> Result<bool, StoreError> {
        let client = self.ready().await?.client().await?;
        // One statement either way, so the comparison and the change are one atomic step: an
        // UPDATE re-checks its WHERE on the row it locks; an INSERT of a taken name does nothing.
        let rows = match &current.value {
            None => {
                let sql = "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
                let st = client.prepare_cached(sql).await.map_err(db_error)?;
                client.execute(&st, &[&current.name, &value]).await
            }
            Some(expected) => {
                let sql = "UPDATE meta SET value = $2 WHERE name = $1 AND value = $3";
                let st = client.prepare_cached(sql).await.map_err(db_error)?;
                client.execute(&st, &[&current.name, &value, expected]).await
            }
        };
        Ok(rows.map_err(db_error)? == 1)
    }

    async fn head(&self) -> Result<TreeHead, StoreError> {
        let shared = self.ready().await?;
        shared.integrated_barrier().await?;
        let client = shared.client().await?;
        sequencer::read_head(&**client).await
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError> {
        let client = self.ready().await?.client().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let levels: Vec<i16> = ids.iter().map(|(l, _)| i16::from(*l)).collect();
        let indexes: Vec<i64> = ids.iter().map(|(_, i)| to_i64(*i)).collect();
        let sql = "SELECT n.level, n.idx, n.hash FROM merkle_nodes n \
                   JOIN ROWS FROM (pg_catalog.unnest($1::smallint[]), pg_catalog.unnest($2::bigint[])) AS w(level, idx) \
                     ON n.level = w.level AND n.idx = w.idx";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let rows = client.query(&st, &[&levels, &indexes]).await.map_err(db_error)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let (level, idx): (i16, i64) = (row.get(0), row.get(1));
            found.insert((level as u8, idx as u64), hash_of(row.get(2))?);
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    async fn audit_events(&self, from: u64, limit_to: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let shared = self.ready().await?;
        shared.integrated_barrier().await?;
        let client = shared.client().await?;
        let sql = "SELECT seq, event FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let rows = client.query(&st, &[&to_i64(from), &limit(limit_to)]).await.map_err(db_error)?;
        Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect())
    }

    async fn audit_events_for_customer(
        &self,
        customer: &CustomerId,
        after: Option<u64>,
        limit_to: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let shared = self.ready().await?;
        shared.integrated_barrier().await?;
        let client = shared.client().await?;
        let sql = "SELECT h.seq, e.event FROM customer_history h JOIN audit_events e ON e.seq = h.seq \
                   WHERE h.customer = $1 AND h.seq > $2 ORDER BY h.seq LIMIT $3";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let after = after.map_or(-1, to_i64);
        let rows = client
            .query(&st, &[&customer.as_bytes().as_slice(), &after, &limit(limit_to)])
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect())
    }

    async fn put_checkpoint(&self, size: u64, note: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let client = self.ready().await?.client().await?;
        let sql = "INSERT INTO checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        client.execute(&st, &[&to_i64(size), &note]).await.map_err(db_error)?;
        let st =
            client.prepare_cached("SELECT note FROM checkpoints WHERE size = $1").await.map_err(db_error)?;
        Ok(client.query_one(&st, &[&to_i64(size)]).await.map_err(db_error)?.get(0))
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let client = self.ready().await?.client().await?;
        let sql = "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1";
        let st = client.prepare_cached(sql).await.map_err(db_error)?;
        let row = client.query_opt(&st, &[]).await.map_err(db_error)?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    async fn import(&self, record: CustomerRecord) -> Result<(), StoreError> {
        let shared = self.ready().await?;
        let mut client = shared.client().await?;
        let cache = Arc::clone(&client.statement_cache);
        let tx = client.transaction().await.map_err(db_error)?;
        // The record row first with its own version, then the index rows as a put would write
        // them (a put of version 1 over an absent customer).
        let id = record.id.as_bytes().as_slice();
        let sql =
            "INSERT INTO customers (id, version, record) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
        let encoded = record.encode()?;
        let inserted = tx
            .execute(
                &st(&cache, &tx, sql).await.map_err(db_error)?,
                &[&id, &to_i64(record.version), &encoded],
            )
            .await
            .map_err(db_error)?;
        if inserted != 1 {
            return Err(StoreError::VersionConflict);
        }
        match shared.index_rows(&cache, &tx, &record).await {
            Ok(()) => {}
            Err(Refused::UniqueRace) => {
                drop(tx);
                let field = Shared::name_clash(&**client, &record).await?;
                return Err(StoreError::UniqueViolation { field });
            }
            Err(Refused::Store(e)) => return Err(e),
            Err(Refused::Db(e)) => return Err(db_error(e)),
        }
        tx.commit().await.map_err(db_error)
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        schema::is_empty(&**self.ready().await?.client().await?).await
    }

    async fn exclusive(&self, task: &str) -> Result<Option<Turn>, StoreError> {
        let shared = self.ready().await?;
        // A session of its own: the lock lasts exactly as long as the turn (or the session).
        let client = shared.connector.connect().await?;
        let sql = "SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext(pg_catalog.concat(pg_catalog.current_schema(), '/', $2::text)))";
        let got: bool = client.query_one(sql, &[&SWEEP_LOCK, &task]).await.map_err(db_error)?.get(0);
        Ok(got.then(|| Turn::holding(TurnSession(client))))
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.stop.send_replace(true);
        // Wait for the sequencer to let go of its session (and so its lock), so the next
        // handle or node takes over at once.
        let task = self.sequencer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.shared.pool.close();
        Ok(())
    }
}

/// The session whose advisory lock is a sweep's turn: the lock lasts exactly as long as it.
struct TurnSession(tokio_postgres::Client);

impl crate::store::TurnHold for TurnSession {
    fn held(&self) -> bool {
        !self.0.is_closed()
    }
}
