//! Settings: built-in defaults, then an optional TOML file, then `CUSTODIA_*` environment
//! variables, each overriding the one before. Unknown keys in the file are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`CUSTODIA_LISTEN`).
    pub listen: String,
    /// Directory of the embedded database and dev keys (`CUSTODIA_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Directory of policy `*.toml` files (`CUSTODIA_POLICIES`).
    pub policies: PathBuf,
    /// Base64 of the 32-byte master key (`CUSTODIA_MASTER_KEY`).
    pub master_key: Option<SecretString>,
    /// A file holding the base64 master key (`CUSTODIA_MASTER_KEY_FILE`).
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, still needed until a rotation has re-wrapped everything under the
    /// current one (`CUSTODIA_PREVIOUS_MASTER_KEYS`, comma-separated): base64 file keys, or
    /// `pkcs11:<key label>` for a key in the configured PKCS#11 token.
    pub previous_master_keys: Vec<SecretString>,
    /// The PKCS#11 module (`.so`) of the HSM holding the master key
    /// (`CUSTODIA_MASTER_KEY_PKCS11_MODULE`).
    pub master_key_pkcs11_module: Option<PathBuf>,
    /// The label of the token holding the master key (`CUSTODIA_MASTER_KEY_PKCS11_TOKEN`).
    pub master_key_pkcs11_token: Option<String>,
    /// The label (`CKA_LABEL`) of the master key in the token; set, it is the current master key
    /// (`CUSTODIA_MASTER_KEY_PKCS11_KEY`).
    pub master_key_pkcs11_key: Option<String>,
    /// The token's user PIN (`CUSTODIA_MASTER_KEY_PKCS11_PIN`).
    pub master_key_pkcs11_pin: Option<SecretString>,
    /// A file holding the token's user PIN (`CUSTODIA_MASTER_KEY_PKCS11_PIN_FILE`).
    pub master_key_pkcs11_pin_file: Option<PathBuf>,
    /// Pause between pages of a master key rotation, in milliseconds (`CUSTODIA_ROTATION_PAUSE_MS`).
    pub rotation_pause_ms: u64,
    /// The epoch-key file (`CUSTODIA_KEY_EPOCH_FILE`); `None`: `<data dir>.epoch-keys` beside
    /// the data directory (see [`Settings::key_epoch_file`]).
    pub key_epoch_file: Option<PathBuf>,
    /// Seconds an epoch key is current before the next one starts (`CUSTODIA_KEY_EPOCH_SECONDS`,
    /// at least 1).
    pub key_epoch_seconds: u64,
    /// Previous epochs kept after a re-wrap completes (`CUSTODIA_KEY_EPOCHS_KEPT`); backups older
    /// than the oldest kept epoch cannot be restored.
    pub key_epochs_kept: u32,
    /// HS256 secret for bearer tokens (`CUSTODIA_JWT_HS256_SECRET`).
    pub jwt_hs256_secret: Option<SecretString>,
    /// PEM or JWKS file of token verification keys (`CUSTODIA_JWT_PUBLIC_KEYS`).
    pub jwt_public_keys: Option<PathBuf>,
    /// Required `iss` (`CUSTODIA_JWT_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// Required `aud` (`CUSTODIA_JWT_AUDIENCE`).
    pub jwt_audience: Option<String>,
    /// Longest token lifetime accepted, in seconds; 0 turns the bound off
    /// (`CUSTODIA_JWT_MAX_LIFETIME_SECS`). When set, tokens must carry `iat`, and `exp - iat`
    /// and `exp - now` must not exceed it.
    pub jwt_max_lifetime_secs: u64,
    /// The audit log's origin line in checkpoints (`CUSTODIA_AUDIT_ORIGIN`).
    pub audit_origin: String,
    /// sled page cache in MiB (`CUSTODIA_CACHE_MB`).
    pub cache_mb: u64,
    /// Largest accepted request body in bytes (`CUSTODIA_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Longest a request may take, in milliseconds (`CUSTODIA_REQUEST_TIMEOUT_MS`).
    pub request_timeout_ms: u64,
    /// `text` or `json` (`CUSTODIA_LOG_FORMAT`).
    pub log_format: String,
    /// Seconds between retention sweeps; 0 disables them (`CUSTODIA_RETENTION_SWEEP_SECS`).
    pub retention_sweep_secs: u64,
    /// Requests per second allowed per caller; 0 turns limiting off (`CUSTODIA_RATE_LIMIT_PER_SECOND`).
    pub rate_limit_per_second: u32,
    /// Burst allowed above the rate (`CUSTODIA_RATE_LIMIT_BURST`).
    pub rate_limit_burst: u32,
    /// Requests per second allowed per peer address on the routes anyone may call without a
    /// token: `/portal*`, `/transparency*` and `/v1/transparency`; 0 turns that limit off
    /// (`CUSTODIA_PUBLIC_RATE_LIMIT_PER_SECOND`).
    pub public_rate_limit_per_second: u32,
    /// Burst allowed above the public rate (`CUSTODIA_PUBLIC_RATE_LIMIT_BURST`).
    pub public_rate_limit_burst: u32,
    /// Seconds between background refreshes of the transparency report, at least 1
    /// (`CUSTODIA_TRANSPARENCY_REFRESH_SECS`); the first runs at start.
    pub transparency_refresh_secs: u64,
    /// PEM certificate chain served over TLS (`CUSTODIA_TLS_CERT`); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (`CUSTODIA_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates are required (mutual TLS, `CUSTODIA_TLS_CLIENT_CA`).
    pub tls_client_ca: Option<PathBuf>,
    /// CRL files (PEM or DER) of the client CA; clients whose certificates they revoke are
    /// refused (`CUSTODIA_TLS_CLIENT_CRL`, comma-separated; reloaded on SIGHUP).
    pub tls_client_crl: Vec<PathBuf>,
    /// Serve plain HTTP on a non-loopback address outside `--dev`, for a TLS-terminating proxy
    /// in front (`CUSTODIA_ALLOW_PLAINTEXT`).
    pub allow_plaintext: bool,
    /// Longest wait for a whole request head, a TLS handshake or the next request on an idle
    /// HTTP/1 connection, in milliseconds (`CUSTODIA_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout_ms: u64,
    /// Most connections served at once; more wait to be accepted (`CUSTODIA_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Most connections served at once from one IP address; more from it are closed at once
    /// (`CUSTODIA_MAX_CONNECTIONS_PER_ADDRESS`).
    pub max_connections_per_address: usize,
    /// Longest a connection may stay open with no request in progress (an HTTP/2 connection
    /// with no open stream, an HTTP/1 keep-alive between requests), in milliseconds; then it
    /// is closed, HTTP/2 with GOAWAY (`CUSTODIA_IDLE_TIMEOUT_MS`).
    pub idle_timeout_ms: u64,
    /// Largest request head in bytes, at least 8192 (`CUSTODIA_MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection (`CUSTODIA_HTTP2_MAX_STREAMS`).
    pub http2_max_streams: u32,
    /// A JSON-lines file every committed audit event is appended to, one per line
    /// (`CUSTODIA_AUDIT_STREAM_FILE`; see `audit::stream`).
    pub audit_stream_file: Option<PathBuf>,
    /// Size in bytes past which the stream file is rotated, at least 1
    /// (`CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES`).
    pub audit_stream_file_max_bytes: u64,
    /// Rotated stream files kept (`PATH.1` … `PATH.N`); 0 keeps none
    /// (`CUSTODIA_AUDIT_STREAM_FILE_KEEP`).
    pub audit_stream_file_keep: u32,
    /// A directory the server writes scheduled backups to (`CUSTODIA_BACKUP_DIR`; none: no
    /// scheduled backups; see `backup::schedule`).
    pub backup_dir: Option<PathBuf>,
    /// Seconds between scheduled backups, at least 1 (`CUSTODIA_BACKUP_INTERVAL_SECS`).
    pub backup_interval_secs: u64,
    /// Scheduled backups kept in the directory, at least 1 (`CUSTODIA_BACKUP_KEEP`).
    pub backup_keep: u32,
    /// A syslog receiver every committed audit event is sent to, RFC 5424, as
    /// `tcp://host:port` or `udp://host:port` (`CUSTODIA_AUDIT_STREAM_SYSLOG`).
    pub audit_stream_syslog: Option<String>,
    /// The storage backend: `sled` (the embedded default) or `postgres` (`CUSTODIA_STORE`).
    pub store: StoreKind,
    /// The PostgreSQL connection URL or `key=value` string (`CUSTODIA_DATABASE_URL`); a secret
    /// (it holds the password).
    pub database_url: Option<SecretString>,
    /// Most database connections per node (`CUSTODIA_DATABASE_POOL_SIZE`, at least 1).
    pub database_pool_size: usize,
    /// The key database (`CUSTODIA_KEY_DATABASE_URL`): a PostgreSQL database of its own, kept out
    /// of backups and WAL archives, holding the epoch keys every node shares (instead of the
    /// epoch-key file). A secret, as `database_url`.
    pub key_database_url: Option<SecretString>,
    /// Longest wait to connect to the database or for a free connection, in milliseconds
    /// (`CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS`, at least 1).
    pub database_connect_timeout_ms: u64,
    /// PEM file of the CA certificates trusted for the database's TLS certificate
    /// (`CUSTODIA_DATABASE_CA_FILE`); unset: the system's roots.
    pub database_ca_file: Option<PathBuf>,
    /// Generate missing keys into the data directory (`serve --dev`).
    pub dev: bool,
    /// The clock audit events are stamped with. Not a configuration setting (no file key, no
    /// environment variable): the system clock, unless code embedding the server (the tests)
    /// shifts it to drive the transparency report's month boundaries.
    pub audit_clock: crate::domain::Clock,
}

/// Which storage backend (`CUSTODIA_STORE`, DESIGN §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// sled in `<data dir>/store`: one node, nothing else to run.
    Sled,
    /// PostgreSQL at `CUSTODIA_DATABASE_URL`: several nodes may share it.
    Postgres,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            policies: PathBuf::from("./policies"),
            master_key: None,
            master_key_file: None,
            master_key_pkcs11_module: None,
            master_key_pkcs11_token: None,
            master_key_pkcs11_key: None,
            master_key_pkcs11_pin: None,
            master_key_pkcs11_pin_file: None,
            previous_master_keys: Vec::new(),
            rotation_pause_ms: 0,
            key_epoch_file: None,
            key_epoch_seconds: 86_400,
            key_epochs_kept: 0,
            jwt_hs256_secret: None,
            jwt_public_keys: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_max_lifetime_secs: 0,
            audit_origin: "custodia.localhost/audit".into(),
            cache_mb: 32,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            log_format: "text".into(),
            retention_sweep_secs: 3600,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            public_rate_limit_per_second: 10,
            public_rate_limit_burst: 60,
            transparency_refresh_secs: 5,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_crl: Vec::new(),
            allow_plaintext: false,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            max_connections_per_address: 256,
            idle_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            http2_max_streams: 128,
            audit_stream_file: None,
            audit_stream_file_max_bytes: 100 * 1024 * 1024,
            audit_stream_file_keep: 5,
            backup_dir: None,
            backup_interval_secs: 86_400,
            backup_keep: 7,
            audit_stream_syslog: None,
            store: StoreKind::Sled,
            database_url: None,
            database_pool_size: 16,
            key_database_url: None,
            database_connect_timeout_ms: 5_000,
            database_ca_file: None,
            dev: false,
            audit_clock: crate::domain::Clock::default(),
        }
    }
}

/// Settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// An environment variable has an invalid value.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A setting of the config file has an invalid value (and no environment variable
    /// overrides it).
    #[error("config file setting {key}: {message}")]
    FileValue {
        /// The file's key, e.g. `idle_timeout_ms`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The config file's keys: the environment variable names without `CUSTODIA_`, lower-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    policies: Option<PathBuf>,
    master_key: Option<String>,
    master_key_file: Option<PathBuf>,
    master_key_pkcs11_module: Option<PathBuf>,
    master_key_pkcs11_token: Option<String>,
    master_key_pkcs11_key: Option<String>,
    master_key_pkcs11_pin: Option<String>,
    master_key_pkcs11_pin_file: Option<PathBuf>,
    previous_master_keys: Option<Vec<String>>,
    rotation_pause_ms: Option<u64>,
    key_epoch_file: Option<PathBuf>,
    key_epoch_seconds: Option<u64>,
    key_epochs_kept: Option<u32>,
    jwt_hs256_secret: Option<String>,
    jwt_public_keys: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_max_lifetime_secs: Option<u64>,
    audit_origin: Option<String>,
    cache_mb: Option<u64>,
    max_body_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    log_format: Option<String>,
    retention_sweep_secs: Option<u64>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    public_rate_limit_per_second: Option<u32>,
    public_rate_limit_burst: Option<u32>,
    transparency_refresh_secs: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_client_crl: Option<Vec<PathBuf>>,
    allow_plaintext: Option<bool>,
    header_read_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    idle_timeout_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    http2_max_streams: Option<u32>,
    audit_stream_file: Option<PathBuf>,
    audit_stream_file_max_bytes: Option<u64>,
    audit_stream_file_keep: Option<u32>,
    backup_dir: Option<PathBuf>,
    backup_interval_secs: Option<u64>,
    backup_keep: Option<u32>,
    audit_stream_syslog: Option<String>,
    store: Option<StoreKind>,
    database_url: Option<String>,
    database_pool_size: Option<usize>,
    key_database_url: Option<String>,
    database_connect_timeout_ms: Option<u64>,
    database_ca_file: Option<PathBuf>,
}

/// A config file's parse error without any of the file's text: the file holds secrets
/// (`database_url`, `jwt_hs256_secret`, `master_key`, PINs), and `toml`'s own rendering quotes
/// the offending line while serde's messages quote the offending value. Says the parser's
/// message with every quoted value taken out, the line and column, and the key of that line.
fn parse_message(e: &toml::de::Error, text: &str) -> String {
    let message = value_free(e.message().trim());
    let Some(span) = e.span() else { return message };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    // The key the line sets, if it looks like `key = …` (a bare key is [A-Za-z0-9_-]).
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    match key {
        Some(key) => format!("{message} (line {line}, column {column}, key {key})"),
        None => format!("{message} (line {line}, column {column})"),
    }
}

/// `message` with the values it quotes replaced by `…`: every `"…"` string, and the
/// backquoted value after serde's `integer`, `floating point`, `boolean` or `character`. Key
/// names (`unknown field `x``) and tokens (`expected `=``) stay.
fn value_free(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let quote = rest.find('"');
        let tick = ["integer `", "floating point `", "boolean `", "character `"]
            .iter()
            .filter_map(|w| rest.find(w).map(|i| i + w.len() - 1))
            .min();
        let (at, close) = match (quote, tick) {
            (Some(q), Some(t)) if t < q => (t, '`'),
            (Some(q), _) => (q, '"'),
            (None, Some(t)) => (t, '`'),
            (None, None) => break,
        };
        out.push_str(&rest[..=at]);
        out.push('…');
        // An unclosed quote hides everything after it.
        match rest[at + 1..].rfind(close).filter(|_| close == '"').or_else(|| rest[at + 1..].find(close)) {
            Some(end) => {
                out.push(close);
                rest = &rest[at + 1 + end + 1..];
            }
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// As [`Settings::load`], reading variables through `env` (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            let f: FileSettings = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: parse_message(&e, &text),
            })?;
            s.apply_file(f);
        }
        s.apply_env(env)?;
        Ok(s)
    }

    fn apply_file(&mut self, f: FileSettings) {
        macro_rules! set {
            ($($name:ident),*) => { $( if let Some(v) = f.$name { self.$name = v; } )* };
        }
        set!(
            listen,
            data_dir,
            policies,
            audit_origin,
            cache_mb,
            max_body_bytes,
            request_timeout_ms,
            log_format,
            retention_sweep_secs,
            rotation_pause_ms,
            key_epoch_seconds,
            key_epochs_kept,
            rate_limit_per_second,
            rate_limit_burst,
            public_rate_limit_per_second,
            public_rate_limit_burst,
            transparency_refresh_secs,
            jwt_max_lifetime_secs,
            allow_plaintext,
            header_read_timeout_ms,
            max_connections,
            max_connections_per_address,
            idle_timeout_ms,
            max_header_bytes,
            http2_max_streams,
            tls_client_crl,
            audit_stream_file_max_bytes,
            audit_stream_file_keep,
            backup_interval_secs,
            backup_keep,
            store,
            database_pool_size,
            database_connect_timeout_ms
        );
        macro_rules! set_opt {
            ($($name:ident),*) => { $( if f.$name.is_some() { self.$name = f.$name; } )* };
        }
        set_opt!(
            master_key_file,
            master_key_pkcs11_module,
            master_key_pkcs11_token,
            master_key_pkcs11_key,
            master_key_pkcs11_pin_file,
            key_epoch_file,
            jwt_public_keys,
            jwt_issuer,
            jwt_audience,
            tls_cert,
            tls_key,
            tls_client_ca,
            audit_stream_file,
            audit_stream_syslog,
            backup_dir,
            database_ca_file
        );
        if let Some(url) = f.database_url {
            self.database_url = Some(SecretString::from(url));
        }
        if let Some(url) = f.key_database_url {
            self.key_database_url = Some(SecretString::from(url));
        }
        if let Some(k) = f.master_key {
            self.master_key = Some(SecretString::from(k));
        }
        if let Some(pin) = f.master_key_pkcs11_pin {
            self.master_key_pkcs11_pin = Some(SecretString::from(pin));
        }
        if let Some(keys) = f.previous_master_keys {
            self.previous_master_keys = keys.into_iter().map(SecretString::from).collect();
        }
        if let Some(k) = f.jwt_hs256_secret {
            self.jwt_hs256_secret = Some(SecretString::from(k));
        }
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = get("CUSTODIA_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("CUSTODIA_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("CUSTODIA_POLICIES") {
            self.policies = v.into();
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY") {
            self.master_key = Some(SecretString::from(v));
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_FILE") {
            self.master_key_file = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_PKCS11_MODULE") {
            self.master_key_pkcs11_module = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_PKCS11_TOKEN") {
            self.master_key_pkcs11_token = Some(v);
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_PKCS11_KEY") {
            self.master_key_pkcs11_key = Some(v);
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_PKCS11_PIN") {
            self.master_key_pkcs11_pin = Some(SecretString::from(v));
        }
        if let Some(v) = get("CUSTODIA_MASTER_KEY_PKCS11_PIN_FILE") {
            self.master_key_pkcs11_pin_file = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_PREVIOUS_MASTER_KEYS") {
            self.previous_master_keys = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| SecretString::from(k.to_owned()))
                .collect();
        }
        if let Some(v) = get("CUSTODIA_RATE_LIMIT_PER_SECOND") {
            self.rate_limit_per_second = number("CUSTODIA_RATE_LIMIT_PER_SECOND", v)?;
        }
        if let Some(v) = get("CUSTODIA_RATE_LIMIT_BURST") {
            self.rate_limit_burst = number("CUSTODIA_RATE_LIMIT_BURST", v)?;
        }
        if let Some(v) = get("CUSTODIA_PUBLIC_RATE_LIMIT_PER_SECOND") {
            self.public_rate_limit_per_second = number("CUSTODIA_PUBLIC_RATE_LIMIT_PER_SECOND", v)?;
        }
        if let Some(v) = get("CUSTODIA_PUBLIC_RATE_LIMIT_BURST") {
            self.public_rate_limit_burst = number("CUSTODIA_PUBLIC_RATE_LIMIT_BURST", v)?;
        }
        if let Some(v) = get("CUSTODIA_TRANSPARENCY_REFRESH_SECS") {
            self.transparency_refresh_secs = number("CUSTODIA_TRANSPARENCY_REFRESH_SECS", v)?;
        }
        if let Some(v) = get("CUSTODIA_ROTATION_PAUSE_MS") {
            self.rotation_pause_ms = number("CUSTODIA_ROTATION_PAUSE_MS", v)?;
        }
        if let Some(v) = get("CUSTODIA_JWT_HS256_SECRET") {
            self.jwt_hs256_secret = Some(SecretString::from(v));
        }
        if let Some(v) = get("CUSTODIA_JWT_PUBLIC_KEYS") {
            self.jwt_public_keys = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_JWT_ISSUER") {
            self.jwt_issuer = Some(v);
        }
        if let Some(v) = get("CUSTODIA_JWT_AUDIENCE") {
            self.jwt_audience = Some(v);
        }
        if let Some(v) = get("CUSTODIA_AUDIT_ORIGIN") {
            self.audit_origin = v;
        }
        if let Some(v) = get("CUSTODIA_LOG_FORMAT") {
            self.log_format = v;
        }
        fn number<T: std::str::FromStr>(name: &'static str, v: String) -> Result<T, ConfigError> {
            v.parse().map_err(|_| ConfigError::Env { name, message: "must be a whole number".into() })
        }
        if let Some(v) = get("CUSTODIA_CACHE_MB") {
            self.cache_mb = number("CUSTODIA_CACHE_MB", v)?;
        }
        if let Some(v) = get("CUSTODIA_MAX_BODY_BYTES") {
            self.max_body_bytes = number("CUSTODIA_MAX_BODY_BYTES", v)?;
        }
        if let Some(v) = get("CUSTODIA_REQUEST_TIMEOUT_MS") {
            self.request_timeout_ms = number("CUSTODIA_REQUEST_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("CUSTODIA_JWT_MAX_LIFETIME_SECS") {
            self.jwt_max_lifetime_secs = number("CUSTODIA_JWT_MAX_LIFETIME_SECS", v)?;
        }
        if let Some(v) = get("CUSTODIA_RETENTION_SWEEP_SECS") {
            self.retention_sweep_secs = number("CUSTODIA_RETENTION_SWEEP_SECS", v)?;
        }
        if let Some(v) = get("CUSTODIA_TLS_CERT") {
            self.tls_cert = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_TLS_KEY") {
            self.tls_key = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_TLS_CLIENT_CA") {
            self.tls_client_ca = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_TLS_CLIENT_CRL") {
            self.tls_client_crl =
                v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        }
        if let Some(v) = get("CUSTODIA_ALLOW_PLAINTEXT") {
            self.allow_plaintext = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::Env {
                        name: "CUSTODIA_ALLOW_PLAINTEXT",
                        message: "must be true or false".into(),
                    });
                }
            };
        }
        if let Some(v) = get("CUSTODIA_HEADER_READ_TIMEOUT_MS") {
            self.header_read_timeout_ms = number("CUSTODIA_HEADER_READ_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("CUSTODIA_MAX_CONNECTIONS") {
            self.max_connections = number("CUSTODIA_MAX_CONNECTIONS", v)?;
        }
        if let Some(v) = get("CUSTODIA_MAX_CONNECTIONS_PER_ADDRESS") {
            self.max_connections_per_address = number("CUSTODIA_MAX_CONNECTIONS_PER_ADDRESS", v)?;
        }
        if let Some(v) = get("CUSTODIA_IDLE_TIMEOUT_MS") {
            self.idle_timeout_ms = number("CUSTODIA_IDLE_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("CUSTODIA_MAX_HEADER_BYTES") {
            self.max_header_bytes = number("CUSTODIA_MAX_HEADER_BYTES", v)?;
        }
        if let Some(v) = get("CUSTODIA_HTTP2_MAX_STREAMS") {
            self.http2_max_streams = number("CUSTODIA_HTTP2_MAX_STREAMS", v)?;
        }
        if let Some(v) = get("CUSTODIA_KEY_EPOCH_FILE") {
            self.key_epoch_file = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_KEY_EPOCH_SECONDS") {
            self.key_epoch_seconds = number("CUSTODIA_KEY_EPOCH_SECONDS", v)?;
        }
        if let Some(v) = get("CUSTODIA_KEY_EPOCHS_KEPT") {
            self.key_epochs_kept = number("CUSTODIA_KEY_EPOCHS_KEPT", v)?;
        }
        if let Some(v) = get("CUSTODIA_AUDIT_STREAM_FILE") {
            self.audit_stream_file = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES") {
            self.audit_stream_file_max_bytes = number("CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES", v)?;
        }
        if let Some(v) = get("CUSTODIA_AUDIT_STREAM_FILE_KEEP") {
            self.audit_stream_file_keep = number("CUSTODIA_AUDIT_STREAM_FILE_KEEP", v)?;
        }
        if let Some(v) = get("CUSTODIA_BACKUP_DIR") {
            self.backup_dir = Some(v.into());
        }
        if let Some(v) = get("CUSTODIA_BACKUP_INTERVAL_SECS") {
            self.backup_interval_secs = number("CUSTODIA_BACKUP_INTERVAL_SECS", v)?;
        }
        if let Some(v) = get("CUSTODIA_BACKUP_KEEP") {
            self.backup_keep = number("CUSTODIA_BACKUP_KEEP", v)?;
        }
        if let Some(v) = get("CUSTODIA_AUDIT_STREAM_SYSLOG") {
            self.audit_stream_syslog = Some(v);
        }
        // A value checked below came from the environment if the variable is set, otherwise from
        // the file (defaults are valid): the error names the one the operator wrote.
        let invalid = |name: &'static str, message: String| {
            if get(name).is_some() {
                ConfigError::Env { name, message }
            } else {
                ConfigError::FileValue {
                    key: name.trim_start_matches("CUSTODIA_").to_ascii_lowercase(),
                    message,
                }
            }
        };
        if let Some(target) = &self.audit_stream_syslog {
            target
                .parse::<crate::audit::stream::SyslogTarget>()
                .map_err(|message| invalid("CUSTODIA_AUDIT_STREAM_SYSLOG", message))?;
        }
        if let Some(v) = get("CUSTODIA_STORE") {
            self.store = match v.as_str() {
                "sled" => StoreKind::Sled,
                "postgres" => StoreKind::Postgres,
                _ => {
                    return Err(ConfigError::Env {
                        name: "CUSTODIA_STORE",
                        message: "must be sled or postgres".into(),
                    });
                }
            };
        }
        if let Some(v) = get("CUSTODIA_DATABASE_URL") {
            self.database_url = Some(SecretString::from(v));
        }
        if let Some(v) = get("CUSTODIA_KEY_DATABASE_URL") {
            self.key_database_url = Some(SecretString::from(v));
        }
        if let Some(v) = get("CUSTODIA_DATABASE_POOL_SIZE") {
            self.database_pool_size = number("CUSTODIA_DATABASE_POOL_SIZE", v)?;
        }
        if let Some(v) = get("CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS") {
            self.database_connect_timeout_ms = number("CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("CUSTODIA_DATABASE_CA_FILE") {
            self.database_ca_file = Some(v.into());
        }
        if self.store == StoreKind::Postgres && self.database_url.is_none() {
            return Err(ConfigError::Env {
                name: "CUSTODIA_DATABASE_URL",
                message: "must be set when CUSTODIA_STORE is postgres".into(),
            });
        }
        if self.key_epoch_seconds == 0 {
            return Err(invalid("CUSTODIA_KEY_EPOCH_SECONDS", "must be at least 1".into()));
        }
        if let Some(dir) = &self.backup_dir {
            crate::backup::refuse_inside_data_dir(&self.data_dir, dir)
                .map_err(|e| invalid("CUSTODIA_BACKUP_DIR", e.to_string()))?;
        }
        // Listener limits: a zero would turn a bound off or refuse everything; refuse it by name.
        for (name, zero) in [
            ("CUSTODIA_HEADER_READ_TIMEOUT_MS", self.header_read_timeout_ms == 0),
            ("CUSTODIA_MAX_CONNECTIONS", self.max_connections == 0),
            ("CUSTODIA_MAX_CONNECTIONS_PER_ADDRESS", self.max_connections_per_address == 0),
            ("CUSTODIA_IDLE_TIMEOUT_MS", self.idle_timeout_ms == 0),
            ("CUSTODIA_HTTP2_MAX_STREAMS", self.http2_max_streams == 0),
            ("CUSTODIA_TRANSPARENCY_REFRESH_SECS", self.transparency_refresh_secs == 0),
            ("CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES", self.audit_stream_file_max_bytes == 0),
            ("CUSTODIA_DATABASE_POOL_SIZE", self.database_pool_size == 0),
            ("CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS", self.database_connect_timeout_ms == 0),
            ("CUSTODIA_BACKUP_INTERVAL_SECS", self.backup_interval_secs == 0),
            ("CUSTODIA_BACKUP_KEEP", self.backup_keep == 0),
        ] {
            if zero {
                return Err(invalid(name, "must be at least 1".into()));
            }
        }
        if self.max_header_bytes < 8192 {
            return Err(invalid("CUSTODIA_MAX_HEADER_BYTES", "must be at least 8192".into()));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid("CUSTODIA_LOG_FORMAT", "must be text or json".into()));
        }
        Ok(())
    }

    /// The storage backend these settings select: sled under `data_dir/store`, its cache
    /// bounded by `cache_mb`, or PostgreSQL at `database_url`.
    pub fn storage(&self) -> crate::store::StorageSettings {
        match (self.store, &self.database_url) {
            (StoreKind::Postgres, Some(url)) => crate::store::StorageSettings::Postgres(self.postgres(url)),
            _ => crate::store::StorageSettings::Sled {
                dir: self.data_dir.join("store"),
                cache_bytes: self.cache_mb * 1024 * 1024,
            },
        }
    }

    /// The PostgreSQL settings for `url` with this configuration's pool, timeout and CA.
    pub fn postgres(&self, url: &SecretString) -> crate::store::PostgresSettings {
        crate::store::PostgresSettings {
            url: url.clone(),
            pool_size: self.database_pool_size,
            connect_timeout: Duration::from_millis(self.database_connect_timeout_ms),
            ca_file: self.database_ca_file.clone(),
            request_timeout: self.request_timeout(),
        }
    }

    /// The epoch-key file: the configured path, or by default a sibling of the data directory
    /// named `<data dir name>.epoch-keys` (so a copy of the data directory does not carry it).
    pub fn key_epoch_file(&self) -> PathBuf {
        if let Some(path) = &self.key_epoch_file {
            return path.clone();
        }
        let dir = std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        let name = dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
        let parent = dir.parent().map(Path::to_owned).unwrap_or_default();
        parent.join(format!("{name}.epoch-keys"))
    }

    /// How long an epoch key is current.
    pub fn key_epoch_period(&self) -> Duration {
        Duration::from_secs(self.key_epoch_seconds.max(1))
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The listener's limits.
    pub fn listener_limits(&self) -> crate::listener::ListenerLimits {
        crate::listener::ListenerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes.max(8192),
            http2_max_streams: self.http2_max_streams.max(1),
            response_deadline: self.request_timeout()
                + Duration::from_millis(self.header_read_timeout_ms.max(1)),
        }
    }

    /// The TLS files, if TLS is configured; an error names the missing half of the pair.
    pub fn tls_files(&self) -> Result<Option<crate::listener::TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::listener::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                client_crls: self.tls_client_crl.clone(),
            })),
            _ if !self.tls_client_crl.is_empty() && self.tls_client_ca.is_none() => Err(ConfigError::Env {
                name: "CUSTODIA_TLS_CLIENT_CRL",
                message: "needs CUSTODIA_TLS_CLIENT_CA".into(),
            }),
            (None, None) if self.tls_client_ca.is_some() => Err(ConfigError::Env {
                name: "CUSTODIA_TLS_CLIENT_CA",
                message: "needs CUSTODIA_TLS_CERT and CUSTODIA_TLS_KEY".into(),
            }),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::Env {
                name: "CUSTODIA_TLS_KEY",
                message: "is needed with CUSTODIA_TLS_CERT".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Env {
                name: "CUSTODIA_TLS_CERT",
                message: "is needed with CUSTODIA_TLS_KEY".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/custodia\"\n").unwrap();
        let s = Settings::load_from(Some(&file), |name| {
            (name == "CUSTODIA_DATA_DIR").then(|| "/srv/custodia".to_owned())
        })
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.data_dir, PathBuf::from("/srv/custodia"));
        assert_eq!(s.policies, PathBuf::from("./policies"));
    }

    #[test]
    fn an_invalid_value_is_reported_under_the_name_it_was_given_by() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        for (text, key) in [
            ("idle_timeout_ms = 0\n", "idle_timeout_ms"),
            ("max_header_bytes = 100\n", "max_header_bytes"),
            ("log_format = \"xml\"\n", "log_format"),
            ("key_epoch_seconds = 0\n", "key_epoch_seconds"),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Settings::load_from(Some(&file), |_| None).unwrap_err().to_string();
            assert!(
                err.contains(&format!("config file setting {key}:")) && !err.contains("CUSTODIA_"),
                "{err}"
            );
        }
        std::fs::write(&file, "idle_timeout_ms = 5\n").unwrap();
        let err = Settings::load_from(Some(&file), |name| {
            (name == "CUSTODIA_IDLE_TIMEOUT_MS").then(|| "0".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("environment variable CUSTODIA_IDLE_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn a_malformed_config_file_never_quotes_a_secret_in_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        let secret = "hunter2";
        let url = format!("postgres://custodia:{secret}@db.internal/custodia?sslmode=require");
        let files = [
            // An unterminated string on the secret's line.
            format!("listen = \"127.0.0.1:9000\"\ndatabase_url = \"{url}\n"),
            // A syntax error on the line after it.
            format!("database_url = \"{url}\"\nlisten = = 1\n"),
            // Wrong types, where serde's message quotes the value.
            format!("database_url = [\"{url}\"]\n"),
            format!("previous_master_keys = \"{secret}\"\n"),
            format!("master_key_pkcs11_pin = 4711{secret}\n"),
            "master_key_pkcs11_pin = 4711\n".to_owned(),
            format!("jwt_hs256_secret = {{ value = \"{secret}\" }}\n"),
            format!("jwt_hs256_secret = '''{secret}\n"),
            format!("master_key = \"\"\"\n{secret}\n"),
            format!("database_url = \"{url}\" junk\n"),
        ];
        for text in files {
            std::fs::write(&file, &text).unwrap();
            let err = Settings::load_from(Some(&file), |_| None).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(secret) && !shown.contains("4711"), "{text:?} gave {shown}");
            assert!(shown.contains("line "), "{shown}");
        }
        // The message still says what is wrong and where.
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nmax_body_bytes = \"lots\"\n").unwrap();
        let err = Settings::load_from(Some(&file), |_| None).unwrap_err().to_string();
        assert!(
            err.contains("invalid type") && err.contains("line 2") && err.contains("max_body_bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        let err = Settings::load_from(Some(&file), |_| None).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn the_example_file_names_every_setting_and_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("custodia.example.toml");
        let s = Settings::load_from(Some(&path), |_| None).unwrap();
        assert_eq!(s.listen, Settings::default().listen);
        let text = std::fs::read_to_string(&path).unwrap();
        for key in [
            "listen",
            "data_dir",
            "policies",
            "master_key",
            "master_key_file",
            "master_key_pkcs11_module",
            "master_key_pkcs11_token",
            "master_key_pkcs11_key",
            "master_key_pkcs11_pin",
            "master_key_pkcs11_pin_file",
            "jwt_hs256_secret",
            "jwt_public_keys",
            "jwt_issuer",
            "jwt_audience",
            "jwt_max_lifetime_secs",
            "audit_origin",
            "cache_mb",
            "max_body_bytes",
            "request_timeout_ms",
            "log_format",
            "retention_sweep_secs",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
            "allow_plaintext",
            "header_read_timeout_ms",
            "max_connections",
            "max_connections_per_address",
            "idle_timeout_ms",
            "tls_client_crl",
            "max_header_bytes",
            "http2_max_streams",
            "key_epoch_file",
            "key_epoch_seconds",
            "key_epochs_kept",
            "public_rate_limit_per_second",
            "public_rate_limit_burst",
            "transparency_refresh_secs",
            "audit_stream_file",
            "audit_stream_file_max_bytes",
            "audit_stream_file_keep",
            "backup_dir",
            "backup_interval_secs",
            "backup_keep",
            "audit_stream_syslog",
            "store",
            "database_url",
            "key_database_url",
            "database_pool_size",
            "database_connect_timeout_ms",
            "database_ca_file",
        ] {
            assert!(text.contains(&format!("{key} = ")), "{key} is not documented in the example");
        }
    }

    #[test]
    fn the_maximum_token_lifetime_is_off_by_default_and_set_by_file_or_environment() {
        assert_eq!(Settings::load_from(None, |_| None).unwrap().jwt_max_lifetime_secs, 0);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custodia.toml");
        std::fs::write(&file, "jwt_max_lifetime_secs = 900\n").unwrap();
        assert_eq!(Settings::load_from(Some(&file), |_| None).unwrap().jwt_max_lifetime_secs, 900);
        let env = |value: &'static str| {
            move |name: &str| (name == "CUSTODIA_JWT_MAX_LIFETIME_SECS").then(|| value.to_owned())
        };
        assert_eq!(Settings::load_from(Some(&file), env("300")).unwrap().jwt_max_lifetime_secs, 300);
        let err = Settings::load_from(None, env("15m")).unwrap_err().to_string();
        assert!(err.contains("CUSTODIA_JWT_MAX_LIFETIME_SECS"), "{err}");
    }

    #[test]
    fn postgres_is_chosen_by_environment_and_needs_a_url_that_never_prints() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(matches!(
            Settings::load_from(None, |_| None).unwrap().storage(),
            crate::store::StorageSettings::Sled { .. }
        ));
        let err = Settings::load_from(None, env(&[("CUSTODIA_STORE", "postgres")])).unwrap_err().to_string();
        assert!(err.contains("CUSTODIA_DATABASE_URL"), "{err}");
        let err = Settings::load_from(None, env(&[("CUSTODIA_STORE", "mysql")])).unwrap_err().to_string();
        assert!(err.contains("CUSTODIA_STORE"), "{err}");
        let s = Settings::load_from(
            None,
            env(&[
                ("CUSTODIA_STORE", "postgres"),
                ("CUSTODIA_DATABASE_URL", "postgres://u:hunter2@db/custodia"),
                ("CUSTODIA_DATABASE_POOL_SIZE", "4"),
                ("CUSTODIA_DATABASE_CONNECT_TIMEOUT_MS", "250"),
            ]),
        )
        .unwrap();
        let crate::store::StorageSettings::Postgres(pg) = s.storage() else { panic!("not postgres") };
        assert_eq!((pg.pool_size, pg.connect_timeout), (4, Duration::from_millis(250)));
        assert_eq!(pg.url.expose_secret(), "postgres://u:hunter2@db/custodia");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{:?}", s.storage()).contains("hunter2"));
        let err =
            Settings::load_from(None, env(&[("CUSTODIA_DATABASE_POOL_SIZE", "0")])).unwrap_err().to_string();
        assert!(err.contains("CUSTODIA_DATABASE_POOL_SIZE"), "{err}");
    }

    #[test]
    fn a_backup_directory_inside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let load = |backups: PathBuf| {
            let data = data.to_str().unwrap().to_owned();
            Settings::load_from(None, move |name| match name {
                "CUSTODIA_DATA_DIR" => Some(data.clone()),
                "CUSTODIA_BACKUP_DIR" => Some(backups.to_str().unwrap().to_owned()),
                _ => None,
            })
        };
        for inside in [data.join("backups"), data.clone(), dir.path().join("x/../data/b")] {
            let err = load(inside.clone()).unwrap_err().to_string();
            assert!(
                err.contains("CUSTODIA_BACKUP_DIR") && err.contains("inside the data directory"),
                "{err}"
            );
        }
        // Through a symlink to the data directory, too.
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("link")).unwrap();
        assert!(load(dir.path().join("link/backups")).is_err());
        assert!(load(dir.path().join("backups")).is_ok());
        assert!(load(dir.path().join("data-backups")).is_ok());
    }

    #[test]
    fn the_epoch_file_defaults_to_a_sibling_of_the_data_directory() {
        let s = Settings::load_from(None, |name| {
            (name == "CUSTODIA_DATA_DIR").then(|| "/srv/custodia/data/".to_owned())
        })
        .unwrap();
        assert_eq!(s.key_epoch_file(), PathBuf::from("/srv/custodia/data.epoch-keys"));
        assert_eq!((s.key_epoch_seconds, s.key_epochs_kept), (86_400, 0));
        let s = Settings::load_from(None, |name| match name {
            "CUSTODIA_KEY_EPOCH_FILE" => Some("/keys/epochs".to_owned()),
            "CUSTODIA_KEY_EPOCH_SECONDS" => Some("2".to_owned()),
            "CUSTODIA_KEY_EPOCHS_KEPT" => Some("3".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.key_epoch_file(), PathBuf::from("/keys/epochs"));
        assert_eq!((s.key_epoch_period(), s.key_epochs_kept), (Duration::from_secs(2), 3));
        let err =
            Settings::load_from(None, |name| (name == "CUSTODIA_KEY_EPOCH_SECONDS").then(|| "0".to_owned()))
                .unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn audit_stream_settings_load_and_bad_ones_name_the_setting() {
        let s = Settings::load_from(None, |name| match name {
            "CUSTODIA_AUDIT_STREAM_FILE" => Some("/var/log/custodia/audit.jsonl".to_owned()),
            "CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES" => Some("4096".to_owned()),
            "CUSTODIA_AUDIT_STREAM_FILE_KEEP" => Some("3".to_owned()),
            "CUSTODIA_AUDIT_STREAM_SYSLOG" => Some("udp://logs.example.com:514".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.audit_stream_file, Some(PathBuf::from("/var/log/custodia/audit.jsonl")));
        assert_eq!((s.audit_stream_file_max_bytes, s.audit_stream_file_keep), (4096, 3));
        assert_eq!(s.audit_stream_syslog.as_deref(), Some("udp://logs.example.com:514"));
        for (name, value) in [
            ("CUSTODIA_AUDIT_STREAM_SYSLOG", "http://logs.example.com:514"),
            ("CUSTODIA_AUDIT_STREAM_SYSLOG", "tcp://logs.example.com"),
            ("CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES", "0"),
            ("CUSTODIA_AUDIT_STREAM_FILE_MAX_BYTES", "1MB"),
            ("CUSTODIA_AUDIT_STREAM_FILE_KEEP", "-1"),
        ] {
            let err = Settings::load_from(None, |n| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.to_string().contains(name), "{value}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::load_from(None, |name| match name {
            "CUSTODIA_MASTER_KEY" => Some("c2VjcmV0LW1hc3Rlci1rZXk=".to_owned()),
            "CUSTODIA_MASTER_KEY_PKCS11_PIN" => Some("pin-4711-secret".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.master_key.as_ref().unwrap().expose_secret(), "c2VjcmV0LW1hc3Rlci1rZXk=");
        assert_eq!(s.master_key_pkcs11_pin.as_ref().unwrap().expose_secret(), "pin-4711-secret");
        assert!(!format!("{s:?}").contains("c2VjcmV0"));
        assert!(!format!("{s:?}").contains("4711"));
    }
}
