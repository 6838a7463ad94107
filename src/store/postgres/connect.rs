//! Settings to a connection pool: the URL parsed (never echoed: it holds the password), TLS
//! through rustls unless the URL says `sslmode=disable`, and every session set up by Custodia
//! itself after it connects (not through startup `options`, which poolers drop): a pinned
//! `search_path`, `synchronous_commit = on` (checked), and timeouts that bound how long a
//! statement, a lock wait, an idle transaction, or a frozen sequencer's session can last.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use super::PostgresSettings;
use crate::store::StoreError;

/// `idle_session_timeout` of the sequencer's session (PostgreSQL 14 and later): the server
/// ends the session, and so releases the sequencer's lock, when its node sends nothing for
/// this long (a frozen or partitioned node). The sequencer must send a statement more often
/// than this while it holds the lock; it polls every few milliseconds.
pub(super) const SEQUENCER_IDLE_LIMIT: Duration = Duration::from_secs(5);
/// TCP keepalive (both ends) and `tcp_user_timeout`: a peer that stops answering on the
/// network is given up after about 5 s (idle 2 s, then 3 probes 1 s apart; unacknowledged
/// data for 5 s).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection must answer an empty query this fast to be handed out again; one still
/// busy with a statement whose request was abandoned (a timed-out request) is dropped instead,
/// which ends its session on the server.
const RECYCLE_CHECK: Duration = Duration::from_secs(1);

/// The server-side limits of every session, derived from the request timeout (see
/// [`Limits::of`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `statement_timeout`: a statement running longer is cancelled.
    pub(super) statement: Duration,
    /// `lock_timeout`: a wait for a row, table or advisory lock longer than this fails.
    pub(super) lock: Duration,
    /// `idle_in_transaction_session_timeout`: a session idle inside a transaction this long is
    /// ended (its locks released).
    pub(super) idle_in_transaction: Duration,
}

impl Limits {
    /// Below the request timeout `t`, so a request answers 503 from the store before the HTTP
    /// layer gives up: statements `3t/4`, lock waits `t/4`, an idle transaction `t/2` (Custodia
    /// never leaves a transaction idle: its statements are pipelined). Each at least 100 ms.
    pub(super) fn of(request_timeout: Duration) -> Limits {
        let floor = |d: Duration| d.max(Duration::from_millis(100));
        Limits {
            statement: floor(request_timeout * 3 / 4),
            lock: floor(request_timeout / 4),
            idle_in_transaction: floor(request_timeout / 2),
        }
    }
}

/// What kind of session is being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Session {
    /// A pooled connection or a sweep's turn: the limits only.
    Plain,
    /// The sequencer's: also `idle_session_timeout` (its lock's expiry when its node freezes)
    /// and an idle transaction ended after [`SEQUENCER_IDLE_LIMIT`].
    Sequencer,
}

/// What every connection of a store is made from.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
    pub(super) limits: Limits,
}

impl Connector {
    /// Parses the settings. The error never contains the URL. Plain text only when the URL
    /// says `sslmode=disable`: `prefer` (also the default when `sslmode` is absent) is taken as
    /// `require`, so nobody on the path can answer "no TLS" and be handed the password.
    pub(super) fn new(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let url = settings.url.expose_secret();
        let mut config = tokio_postgres::Config::from_str(url).map_err(|_| {
            StoreError::Unavailable(
                "CUSTODIA_DATABASE_URL is not a valid PostgreSQL URL or key=value connection string".into(),
            )
        })?;
        match config.get_ssl_mode() {
            SslMode::Disable if settings.ca_file.is_some() => {
                return Err(StoreError::Unavailable(
                    "CUSTODIA_DATABASE_CA_FILE is set but CUSTODIA_DATABASE_URL says sslmode=disable: \
                     remove one of them"
                        .into(),
                ));
            }
            SslMode::Disable => {}
            _ => {
                config.ssl_mode(SslMode::Require);
                // With TLS and a password, SCRAM must bind to this TLS channel (SCRAM-SHA-256-PLUS),
                // so a man in the middle holding another trusted certificate cannot relay the
                // login; a URL that sets `channel_binding` itself keeps its choice.
                if config.get_password().is_some() && !url.contains("channel_binding") {
                    config.channel_binding(ChannelBinding::Require);
                }
            }
        }
        config.connect_timeout(settings.connect_timeout);
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("custodia");
        }
        let tls = if config.get_ssl_mode() == SslMode::Disable {
            // Never used, but the pool's connector type is one type.
            MakeRustlsConnect::new(client_config(RootCertStore::empty()))
        } else {
            MakeRustlsConnect::new(client_config(roots(settings)?))
        };
        Ok(Connector { config, tls, limits: Limits::of(settings.request_timeout) })
    }

    /// A pool of at most `settings.pool_size` connections; none is opened yet. Each new
    /// connection is set up by [`set_up`]; one that fails the check is refused.
    pub(super) fn pool(&self, settings: &PostgresSettings) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            // An empty query before a connection is handed out again: one still running an
            // abandoned statement does not answer within RECYCLE_CHECK and is dropped.
            ManagerConfig { recycling_method: RecyclingMethod::Verified },
        );
        let limits = Arc::new(self.limits);
        let hook = Hook::async_fn(move |client: &mut deadpool_postgres::ClientWrapper, _| {
            let limits = Arc::clone(&limits);
            Box::pin(async move {
                set_up(client, &limits, Session::Plain).await.map_err(|e| HookError::message(e.to_string()))
            })
        });
        Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            // A request that waited a quarter of its timeout for a connection answers 503: with
            // the lock wait (another quarter) and the audit of a refusal, the store still gives
            // up well before the HTTP layer's 408.
            .wait_timeout(Some(settings.connect_timeout.min(self.limits.lock)))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(RECYCLE_CHECK.min(settings.connect_timeout)))
            .post_create(hook)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the connection pool: {e}")))
    }

    /// One connection outside the pool (a sweep's turn, a migration), set up as a pooled one,
    /// its driver spawned on the current runtime.
    pub(super) async fn connect(&self) -> Result<Client, StoreError> {
        self.connect_as(Session::Plain).await
    }

    /// The sequencer's session: as [`Connector::connect`], and the server ends it after
    /// [`SEQUENCER_IDLE_LIMIT`] without a statement, which bounds how long a frozen node keeps
    /// the sequencer's lock.
    pub(super) async fn connect_sequencer(&self) -> Result<Client, StoreError> {
        self.connect_as(Session::Sequencer).await
    }

    async fn connect_as(&self, session: Session) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(super::db_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        set_up(&client, &self.limits, session).await?;
        Ok(client)
    }
}

/// Sets a new session up, in three round trips, with no function or table name left to the
/// `search_path` an attacker might write to (CVE-2018-1058):
/// 1. reads the schema the URL or the role selects (`current_schema()`) and the server version;
/// 2. pins `search_path` to that schema then `pg_temp`: nothing another role creates in another
///    schema is found, `pg_catalog` (not listed) is searched before both so nothing of the same
///    signature shadows the catalog, the temporary schema comes last, and tables are still
///    created in the schema; every function Custodia calls is schema-qualified besides,
///    sets `synchronous_commit = on` (a 2xx answer means durable: whatever the role's or the
///    database's default says) and the limits, plus `idle_session_timeout` for the sequencer
///    on PostgreSQL 14 and later;
/// 3. reads `synchronous_commit` back and refuses the session unless it is `on`,
///    `remote_write` or `remote_apply`: a transaction-pooling proxy that loses session
///    settings is refused rather than trusted (Custodia needs session pooling).
pub(super) async fn set_up(client: &Client, limits: &Limits, session: Session) -> Result<(), StoreError> {
    let rows = client
        .simple_query("SELECT pg_catalog.current_schema(), pg_catalog.current_setting('server_version_num')")
        .await
        .map_err(super::db_error)?;
    let (schema, version) = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                Some((row.get(0).map(str::to_owned), row.get(1).unwrap_or("0").to_owned()))
            }
            _ => None,
        })
        .ok_or_else(|| StoreError::Unavailable("database: no answer to the session set-up".into()))?;
    let Some(schema) = schema else {
        return Err(StoreError::Unavailable(
            "database: the session's search_path names no existing schema: create the schema Custodia \
             works in, or name it (options=-c search_path=<schema> in CUSTODIA_DATABASE_URL)"
                .into(),
        ));
    };
    let version: u32 = version.parse().unwrap_or(0);
    let ms = |d: Duration| d.as_millis().max(1);
    let idle_in_transaction = match session {
        Session::Plain => limits.idle_in_transaction,
        Session::Sequencer => limits.idle_in_transaction.min(SEQUENCER_IDLE_LIMIT),
    };
    let mut sql = format!(
        "SET search_path = {}, pg_temp; SET synchronous_commit = on; \
         SET client_min_messages = warning; SET statement_timeout = {}; SET lock_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}; SET tcp_keepalives_idle = {}; \
         SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {KEEPALIVE_RETRIES}; \
         SET tcp_user_timeout = {}",
        quote_ident(&schema),
        ms(limits.statement),
        ms(limits.lock),
        ms(idle_in_transaction),
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        ms(TCP_USER_TIMEOUT),
    );
    if session == Session::Sequencer {
        if version >= 140000 {
            sql.push_str(&format!("; SET idle_session_timeout = {}", ms(SEQUENCER_IDLE_LIMIT)));
        } else {
            tracing::warn!(
                "PostgreSQL before 14 has no idle_session_timeout: a frozen sequencer node keeps the \
                 sequencer's lock until it is stopped or its connection fails"
            );
        }
    }
    client.batch_execute(&sql).await.map_err(super::db_error)?;
    let rows = client
        .simple_query("SELECT pg_catalog.current_setting('synchronous_commit')")
        .await
        .map_err(super::db_error)?;
    let sync = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    match sync.as_deref() {
        Some("on" | "remote_write" | "remote_apply") => Ok(()),
        other => {
            let found = other.unwrap_or("unknown");
            tracing::error!(
                synchronous_commit = found,
                "refusing a database session: synchronous_commit is not on after Custodia set it (a \
                 transaction-pooling proxy?); Custodia needs session pooling"
            );
            Err(StoreError::Unavailable(format!(
                "database: synchronous_commit is {found} on a new session after Custodia set it to on \
                 (a transaction-pooling proxy?): refused, commits would not be durable; use session pooling"
            )))
        }
    }
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// rustls with the aws-lc-rs provider, as the listener.
fn client_config(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The CA file's certificates if one is set, else the system's roots.
fn roots(settings: &PostgresSettings) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &settings.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| StoreError::Unavailable(format!("reading {}: {e}", path.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(StoreError::Unavailable(format!("{} holds no CA certificate", path.display())));
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn settings(url: &str) -> PostgresSettings {
        PostgresSettings {
            url: SecretString::from(url.to_owned()),
            pool_size: 4,
            connect_timeout: Duration::from_secs(1),
            ca_file: None,
            request_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let Err(e) = Connector::new(&settings("postgres://u:hunter2@host:notaport/db")) else {
            panic!("a bad port parsed");
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn the_url_options_are_kept_and_nothing_is_added_to_them() {
        // Session settings are made after connecting (poolers drop startup options).
        let c = Connector::new(&settings("postgres://u@h/db?options=-c%20work_mem%3D4MB&sslmode=disable"))
            .unwrap();
        assert_eq!(c.config.get_options(), Some("-c work_mem=4MB"));
        let c = Connector::new(&settings("host=h user=u sslmode=disable")).unwrap();
        assert_eq!(c.config.get_options(), None);
    }

    #[test]
    fn plain_text_only_when_the_url_says_sslmode_disable() {
        for url in ["postgres://u:p@h/db", "postgres://u:p@h/db?sslmode=prefer", "host=h user=u password=p"] {
            let c = Connector::new(&settings(url)).unwrap();
            assert_eq!(c.config.get_ssl_mode(), SslMode::Require, "{url}");
            assert_eq!(c.config.get_channel_binding(), ChannelBinding::Require, "{url}");
        }
        let c = Connector::new(&settings("postgres://u@h/db")).unwrap();
        assert_eq!(c.config.get_ssl_mode(), SslMode::Require);
        let c = Connector::new(&settings("postgres://u:p@h/db?channel_binding=prefer")).unwrap();
        assert_eq!(c.config.get_channel_binding(), ChannelBinding::Prefer);
        let c = Connector::new(&settings("postgres://u:p@h/db?sslmode=disable")).unwrap();
        assert_eq!(c.config.get_ssl_mode(), SslMode::Disable);
        // A CA file with plain text is a contradiction, refused.
        let mut s = settings("postgres://u:hunter2@h/db?sslmode=disable");
        s.ca_file = Some("/etc/ssl/ca.pem".into());
        let Err(e) = Connector::new(&s) else { panic!("a CA file with sslmode=disable was accepted") };
        assert!(e.to_string().contains("sslmode=disable") && !e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn the_limits_are_below_the_request_timeout() {
        let l = Limits::of(Duration::from_secs(10));
        assert_eq!(l.statement, Duration::from_millis(7500));
        assert_eq!(l.lock, Duration::from_millis(2500));
        assert_eq!(l.idle_in_transaction, Duration::from_secs(5));
        assert_eq!(Limits::of(Duration::ZERO).lock, Duration::from_millis(100));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("t_1"), "\"t_1\"");
        assert_eq!(quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
    }

    #[test]
    fn settings_never_print_the_url() {
        let s = settings("postgres://u:hunter2@h/db");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
