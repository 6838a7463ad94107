//! A fresh PostgreSQL schema per test, made in the database of `CUSTODIA_TEST_DATABASE_URL` (a
//! server the tests may create schemas on; `tools/pg-cluster` starts one, `.ci/run` always
//! does). The test's URL selects it through `search_path` (the store's advisory locks are keyed
//! by schema, so tests in parallel never share a sequencer) and names its sessions after it.
//!
//! Without that variable a PostgreSQL test prints `skipped: CUSTODIA_TEST_DATABASE_URL not set`
//! and returns; with `CUSTODIA_REQUIRE_POSTGRES=1` (as `.ci/run` sets) it panics instead.

#![allow(dead_code)]

use std::time::Duration;

use custodia::store::PostgresSettings;
use secrecy::SecretString;

/// A schema created for one test, dropped (with its sessions) when this is dropped.
pub struct Database {
    admin_url: String,
    /// The schema's name, also the `application_name` of the test's sessions.
    pub name: String,
    /// Its URL.
    pub url: String,
}

/// The server's URL, or `None` after printing that the test was skipped.
pub fn server_url() -> Option<String> {
    match std::env::var("CUSTODIA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CUSTODIA_REQUIRE_POSTGRES").is_err(),
                "CUSTODIA_REQUIRE_POSTGRES is set but CUSTODIA_TEST_DATABASE_URL is not"
            );
            println!("skipped: CUSTODIA_TEST_DATABASE_URL not set");
            None
        }
    }
}

/// Runs `sql` on the server (outside any runtime the caller is in: a thread of its own).
fn admin(url: &str, sql: String) {
    query(url, sql);
}

/// Runs `work` on a connection to `url`, on a thread and runtime of its own (so it works from
/// inside or outside any runtime the caller is in, drops included).
fn on_connection<T, F>(url: &str, work: impl FnOnce(tokio_postgres::Client) -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
            tokio::spawn(conn);
            work(client).await
        })
    })
    .join()
    .expect("database thread")
}

/// The first column of every row of `sql` run at `url`, as text.
fn column(url: &str, sql: String) -> Vec<String> {
    on_connection(url, move |client| async move {
        let rows = client.simple_query(&sql).await.expect("statement");
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    })
}

/// Runs `sql` at `url`; the first column of the first row as an `i64`, if any.
fn query(url: &str, sql: String) -> Option<i64> {
    column(url, sql).first().and_then(|v| v.parse().ok())
}

impl Database {
    /// A new, empty schema, or `None` (skipped) without a server.
    pub fn create() -> Option<Database> {
        let admin_url = server_url()?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin(&admin_url, format!("CREATE SCHEMA {name}"));
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}&application_name={name}");
        Some(Database { admin_url, name, url })
    }

    /// Runs `sql` as the server's administrator (outside this schema's `search_path`); the
    /// first column of its first row as a number, if any.
    pub fn admin(&self, sql: &str) -> Option<i64> {
        query(&self.admin_url, sql.to_owned())
    }

    /// The first column of the first row of `sql` run in this database, as a number.
    pub fn number(&self, sql: &str) -> Option<i64> {
        query(&self.url, sql.to_owned())
    }

    /// The first column of every row of `sql` run in this database, as text.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        column(&self.url, sql.to_owned())
    }

    /// Every text and byte value stored in this schema's tables, concatenated, as the
    /// database returns them (raw bytes, not hex): for scans that no plaintext reached it.
    pub fn stored_bytes(&self) -> Vec<u8> {
        let schema = self.name.clone();
        on_connection(&self.url, move |client| async move {
            let tables = client
                .query(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                    &[&schema],
                )
                .await
                .expect("list tables");
            let mut out = Vec::new();
            for table in tables {
                let table: String = table.get(0);
                for row in client.query(&format!("SELECT * FROM {schema}.{table}"), &[]).await.expect("read")
                {
                    for (i, column) in row.columns().iter().enumerate() {
                        let ty = column.type_();
                        if *ty == tokio_postgres::types::Type::BYTEA {
                            out.extend(row.get::<_, Option<Vec<u8>>>(i).unwrap_or_default());
                        } else if *ty == tokio_postgres::types::Type::TEXT {
                            out.extend(row.get::<_, Option<String>>(i).unwrap_or_default().into_bytes());
                        }
                    }
                }
            }
            assert!(!out.is_empty(), "the scan reads the database");
            out
        })
    }

    /// Store settings for this database.
    pub fn settings(&self) -> PostgresSettings {
        settings(&self.url)
    }
}

/// Store settings for `url`: a small pool, a short connect timeout.
pub fn settings(url: &str) -> PostgresSettings {
    PostgresSettings {
        url: SecretString::from(url.to_owned()),
        pool_size: 8,
        connect_timeout: Duration::from_secs(5),
        ca_file: None,
        request_timeout: Duration::from_secs(10),
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // The test's sessions may still be open (a sequencer mid-batch on a runtime that is
        // now blocked in this drop): end them, then drop the schema.
        let name = &self.name;
        admin(
            &self.admin_url,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'; \
                 DROP SCHEMA IF EXISTS {name} CASCADE"
            ),
        );
    }
}
