//! The key database: the epoch keys of a PostgreSQL deployment, shared by every node, in a
//! PostgreSQL database of their own (`CUSTODIA_KEY_DATABASE_URL`).
//!
//! Why not the data database: its backups, base backups, WAL archives and delayed replicas keep
//! every row they ever saw, so a destroyed epoch key would survive there, next to the data it
//! opens, for anyone who also holds the master key. The operator keeps this database out of
//! backups and WAL archives (streaming replicas are fine: they apply the deletes). One table,
//! one row per epoch, holding exactly what a file slot holds: the epoch key sealed under the
//! master key (never plain), with its id, creation time and the master key's id.
//!
//! Destroying an epoch is `DELETE` then `VACUUM FULL` of the (few-row) table: the table is
//! rewritten into a new file and the old file unlinked, so no page of the live table keeps the
//! dead row. What lingers, all still sealed under the master key: the freed disk blocks of the
//! old file until the filesystem reuses them, and the WAL records of the insert until their
//! segment is recycled (`max_wal_size`, `wal_keep_size`). A re-wrap under a new master key is
//! one `UPDATE` (atomic: there is always exactly one valid row), vacuumed the same way.
//!
//! Every call is a blocking database round trip on the server's runtime (`Handle::block_on`),
//! so it must run off the async workers (`crypto::off_async_workers`); the connection is opened
//! on first use and again after it drops.

use std::path::PathBuf;

use tokio::runtime::Handle;
use tokio_postgres::Client;

use super::{EpochError, EpochStore, MissingFile, SEALED_LEN, StoredEpoch};
use crate::crypto::KeyId;
use crate::crypto::keys::EPOCH_PREFIX;
use crate::store::PostgresSettings;

/// The setting's name: what messages show instead of the URL (which holds a password).
pub(super) const PLACE: &str = "the key database (CUSTODIA_KEY_DATABASE_URL)";
/// Advisory lock class held while the table is created (two nodes starting at once).
const CREATE_LOCK: i32 = 0x6375_6b01; // "cuk" + 1

const CREATE: &str = "CREATE TABLE IF NOT EXISTS epoch_keys (
    id bytea PRIMARY KEY,
    created_ms bigint NOT NULL,
    master bytea NOT NULL,
    -- version ‖ nonce ‖ the epoch key sealed under the master key ‖ tag: never plain.
    sealed bytea NOT NULL
)";

/// The key database as an epoch-key store.
pub(super) struct KeyDatabase {
    settings: PostgresSettings,
    runtime: Handle,
    client: Option<Client>,
}

fn db(op: &str, e: impl std::fmt::Display) -> EpochError {
    EpochError::Invalid { path: PathBuf::from(PLACE), detail: format!("{op}: {e}") }
}

impl KeyDatabase {
    /// Connects, creates the table if needed, moves the epochs of the epoch-key file at
    /// `import_from` into an empty table (a deployment moving from the file), and with
    /// [`MissingFile::Refuse`] refuses a table still empty (the data lists epochs: starting over
    /// would make every customer unreadable). Returns how many epochs were imported.
    pub(super) fn open(
        settings: PostgresSettings,
        runtime: Handle,
        missing: MissingFile,
        import_from: Option<&std::path::Path>,
    ) -> Result<(Self, usize), EpochError> {
        let mut this = KeyDatabase { settings, runtime, client: None };
        let count: i64 = this.run("creating the epoch_keys table in", |client| {
            Box::pin(async move {
                client
                    .execute("SELECT pg_catalog.pg_advisory_lock($1, pg_catalog.hashtext(pg_catalog.current_schema()::text))", &[&CREATE_LOCK])
                    .await?;
                let created = client.batch_execute(CREATE).await;
                client
                    .execute("SELECT pg_catalog.pg_advisory_unlock($1, pg_catalog.hashtext(pg_catalog.current_schema()::text))", &[&CREATE_LOCK])
                    .await?;
                created?;
                Ok(client.query_one("SELECT pg_catalog.count(*) FROM epoch_keys", &[]).await?.get(0))
            })
        })?;
        let mut imported = 0;
        if let Some(path) = import_from.filter(|p| count == 0 && p.exists()) {
            // The same sealed bytes as the file's slots (their associated data names no place):
            // the newest copy of each epoch. The keyring unwraps them next, so a file that does
            // not open under the configured master keys stops the start.
            let (mut file, _) = super::EpochFile::open(path, MissingFile::Refuse)?;
            let mut newest: std::collections::BTreeMap<[u8; 8], StoredEpoch> = Default::default();
            for (_, copy) in file.load()? {
                if newest.get(&copy.id).is_none_or(|kept| kept.generation < copy.generation) {
                    newest.insert(copy.id, copy);
                }
            }
            for (_, mut copy) in newest {
                copy.generation = 0;
                this.add(copy, false)?;
                imported += 1;
            }
        }
        if count == 0 && imported == 0 && missing == MissingFile::Refuse {
            return Err(EpochError::KeyDatabaseEmpty);
        }
        Ok((this, imported))
    }

    /// Runs `work` on a live connection (opening one if needed) on the server's runtime.
    fn run<T>(
        &mut self,
        op: &str,
        work: impl for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    ) -> Result<T, EpochError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let settings = self.settings.clone();
            let client = self
                .runtime
                .block_on(async move { crate::store::connect_postgres(&settings).await })
                .map_err(|e| db(&format!("{op} connecting to"), e))?;
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        let out = self.runtime.block_on(work(client));
        if out.is_err() {
            // A broken session is replaced on the next call.
            self.client = None;
        }
        out.map_err(|e| db(op, crate::store::describe_postgres_error(&e)))
    }

    fn vacuum(&mut self) -> Result<(), EpochError> {
        self.run("vacuuming epoch_keys in", |client| {
            // Outside a transaction block (VACUUM refuses one); FULL rewrites the table into a
            // new file and unlinks the old, so no page of the live table keeps a dead row.
            Box::pin(async move { client.batch_execute("VACUUM FULL epoch_keys").await })
        })
    }
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], EpochError> {
    bytes.try_into().map_err(|_| db("reading", format!("a stored {what} has the wrong length")))
}

impl EpochStore for KeyDatabase {
    fn place(&self) -> PathBuf {
        PathBuf::from(PLACE)
    }

    fn load(&mut self) -> Result<Vec<(usize, StoredEpoch)>, EpochError> {
        let rows = self.run("reading", |client| {
            Box::pin(async move {
                client.query("SELECT id, created_ms, master, sealed FROM epoch_keys", &[]).await
            })
        })?;
        rows.iter()
            .map(|row| {
                let sealed: [u8; SEALED_LEN] = fixed(row.get(3), "sealed key")?;
                Ok((
                    0,
                    StoredEpoch {
                        id: fixed(row.get(0), "epoch id")?,
                        created_ms: row.get(1),
                        generation: 0,
                        master: fixed(row.get(2), "master key id")?,
                        sealed,
                    },
                ))
            })
            .collect()
    }

    fn add(&mut self, entry: StoredEpoch, only_if_empty: bool) -> Result<bool, EpochError> {
        self.run("storing an epoch key in", |client| {
            Box::pin(async move {
                // One statement, so one snapshot: with `only_if_empty` two nodes opening an
                // empty database at once may both see it empty, and the table lock makes the
                // second wait and then find the first's row.
                let mut sql = String::from(
                    "INSERT INTO epoch_keys (id, created_ms, master, sealed) SELECT $1, $2, $3, $4",
                );
                if only_if_empty {
                    client.batch_execute("BEGIN; LOCK TABLE epoch_keys IN SHARE ROW EXCLUSIVE MODE").await?;
                    sql.push_str(" WHERE NOT EXISTS (SELECT 1 FROM epoch_keys)");
                }
                let added = client
                    .execute(
                        &sql,
                        &[
                            &entry.id.as_slice(),
                            &entry.created_ms,
                            &entry.master.as_slice(),
                            &entry.sealed.as_slice(),
                        ],
                    )
                    .await;
                if only_if_empty {
                    match &added {
                        Ok(_) => client.batch_execute("COMMIT").await?,
                        Err(_) => client.batch_execute("ROLLBACK").await?,
                    }
                }
                Ok(added? == 1)
            })
        })
    }

    fn supersede(&mut self, handles: &[usize]) -> Result<Vec<usize>, EpochError> {
        // One row per epoch: nothing is ever superseded.
        debug_assert!(handles.is_empty());
        Ok(Vec::new())
    }

    fn destroy(&mut self, id: &KeyId) -> Result<bool, EpochError> {
        let raw = id.raw(EPOCH_PREFIX).ok_or_else(|| db("destroying", "a malformed epoch id"))?;
        let deleted = self.run("destroying an epoch key in", |client| {
            Box::pin(async move {
                client.execute("DELETE FROM epoch_keys WHERE id = $1", &[&raw.as_slice()]).await
            })
        })?;
        self.vacuum()?;
        Ok(deleted > 0)
    }

    fn replace(&mut self, entry: StoredEpoch) -> Result<(), EpochError> {
        self.run("re-wrapping an epoch key in", |client| {
            Box::pin(async move {
                client
                    .execute(
                        "UPDATE epoch_keys SET master = $2, sealed = $3 WHERE id = $1",
                        &[&entry.id.as_slice(), &entry.master.as_slice(), &entry.sealed.as_slice()],
                    )
                    .await
            })
        })?;
        self.vacuum()
    }
}
