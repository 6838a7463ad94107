//! Settings to a connection pool: the URL parsed (never echoed: it holds the password), every
//! session with `synchronous_commit = on`, TLS through rustls when the URL asks for it.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use super::PostgresSettings;
use crate::store::StoreError;

/// What every connection of a store is made from.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
}

impl Connector {
    /// Parses the settings. The error never contains the URL.
    pub(super) fn new(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(settings.url.expose_secret()).map_err(|_| {
            StoreError::Unavailable(
                "CUSTODIA_DATABASE_URL is not a valid PostgreSQL URL or key=value connection string".into(),
            )
        })?;
        // A 2xx answer means durable: the commit must wait for the WAL flush whatever the
        // server's or role's default says.
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => {
                format!("{o} -c synchronous_commit=on -c client_min_messages=warning")
            }
            _ => "-c synchronous_commit=on -c client_min_messages=warning".to_owned(),
        };
        config.options(options);
        config.connect_timeout(settings.connect_timeout);
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("custodia");
        }
        let tls = if config.get_ssl_mode() == SslMode::Disable {
            // Never used, but the pool's connector type is one type.
            MakeRustlsConnect::new(client_config(RootCertStore::empty()))
        } else {
            MakeRustlsConnect::new(client_config(roots(settings)?))
        };
        Ok(Connector { config, tls })
    }

    /// A pool of at most `settings.pool_size` connections; none is opened yet.
    pub(super) fn pool(&self, settings: &PostgresSettings) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the connection pool: {e}")))
    }

    /// One connection outside the pool (the sequencer's, whose session holds its lock), its
    /// driver spawned on the current runtime.
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(super::db_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }
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
    fn every_session_commits_synchronously() {
        let c = Connector::new(&settings("postgres://u@h/db?options=-c%20work_mem%3D4MB&sslmode=disable"))
            .unwrap();
        let sync = "-c synchronous_commit=on -c client_min_messages=warning";
        assert_eq!(c.config.get_options(), Some(format!("-c work_mem=4MB {sync}").as_str()));
        let c = Connector::new(&settings("host=h user=u sslmode=disable")).unwrap();
        assert_eq!(c.config.get_options(), Some(sync));
    }

    #[test]
    fn settings_never_print_the_url() {
        let s = settings("postgres://u:hunter2@h/db");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
