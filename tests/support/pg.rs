//! A fresh PostgreSQL database per test, made from `CUSTODIA_TEST_DATABASE_URL` (a server the
//! tests may create databases on; `tools/pg-cluster` starts one, `.ci/run` always does).
//!
//! Without that variable a PostgreSQL test prints `skipped: CUSTODIA_TEST_DATABASE_URL not set`
//! and returns; with `CUSTODIA_REQUIRE_POSTGRES=1` (as `.ci/run` sets) it panics instead.

#![allow(dead_code)]

use std::time::Duration;

use custodia::store::PostgresSettings;
use secrecy::SecretString;

/// A database created for one test, dropped (with its connections) when this is dropped.
pub struct Database {
    admin_url: String,
    name: String,
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

/// `url` with its database name replaced by `name` (a `postgres://host/db?params` URL).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `sql` on the server (outside any runtime the caller is in: a thread of its own).
fn admin(url: &str, sql: String) {
    query(url, sql);
}

/// Runs `sql` at `url`; the first column of the first row as an `i64`, if any.
fn query(url: &str, sql: String) -> Option<i64> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
            tokio::spawn(conn);
            let rows = client.simple_query(&sql).await.expect("admin statement");
            rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
        })
    })
    .join()
    .expect("admin thread")
}

impl Database {
    /// A new, empty database, or `None` (skipped) without a server.
    pub fn create() -> Option<Database> {
        let admin_url = server_url()?;
        let name = format!("custodia_t_{}", uuid::Uuid::new_v4().simple());
        admin(&admin_url, format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Some(Database { admin_url, name, url })
    }

    /// The first column of the first row of `sql` run in this database, as a number.
    pub fn number(&self, sql: &str) -> Option<i64> {
        query(&self.url, sql.to_owned())
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
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        admin(&self.admin_url, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

#[test]
fn a_database_name_replaces_the_urls() {
    assert_eq!(
        with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
        "postgres://u@h:5/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    assert_eq!(with_database("postgresql://u:p@h/db", "x"), "postgresql://u:p@h/x");
}
