//! The command line: `serve`, `policy check`, `policy explain`, `policy record`, `keys generate`,
//! `keys rotate`, `keys hsm-generate`, `audit export`, `audit verify`, `audit report`, `db migrate`,
//! `store copy`, `backup`, `backup verify`, `restore`, `dev-token`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::error::Error;
use crate::policy::PolicySet;
use crate::startup::{self, App};

/// Custodia: a privacy vault for customer data.
#[derive(Debug, Parser)]
#[command(name = "custodia", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the HTTP server.
    Serve {
        /// A TOML config file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Generate a master key and a JWT secret into the data directory if none are configured.
        #[arg(long)]
        dev: bool,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage master keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Export and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Move a store to another backend.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Back up the store to one file (`backup --out FILE`), or check a backup file offline
    /// (`backup verify FILE`).
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// The file to write (written to a temporary file beside it, verified, synced, renamed).
        /// A running server over the configured data directory is asked for the backup over its
        /// control socket; without one the store is opened directly.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A TOML config file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Restore a backup into an empty data directory or database, re-applying every erasure
    /// and retention purge recorded after the backup point (in the backup's log and in --log),
    /// and re-appending the newer events of --log so the log stays consistent with every
    /// checkpoint signed before the loss. Needs the master key and the epoch-key file.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The newest `audit export` directory available (events.ndjson, checkpoint.txt,
        /// leaves.txt), verified under the backup's key before it is used. Required unless
        /// --without-log.
        #[arg(long, conflicts_with = "without_log")]
        log: Option<PathBuf>,
        /// Restore with no newer log, knowingly: erasures made after the backup cannot be
        /// re-applied (those customers come back) and the log forks from every checkpoint
        /// signed after the backup.
        #[arg(long)]
        without_log: bool,
        /// A TOML config file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Work with the PostgreSQL database (`CUSTODIA_STORE=postgres`).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Mint a token signed with the configured HS256 secret (or the --dev one).
    DevToken {
        /// merchant, customer or auditor.
        #[arg(long)]
        role: String,
        /// The subject: a service name, or the customer id for role customer.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// A TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy the sled store of a stopped server into the empty PostgreSQL database named by
    /// CUSTODIA_DATABASE_URL (not an argument: a URL holds a password, and arguments are visible
    /// to every user), then verify the copy: the same log head, and its root at the newest
    /// signed checkpoint's size equal to the root that checkpoint signs.
    Copy {
        /// The stopped server's data directory (its store is `DIR/store`).
        #[arg(long)]
        from_dir: PathBuf,
        /// A TOML config file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Check a backup file offline: structure, checksum, every event's leaf, the root at the
    /// signed checkpoint's size and its signature. Exit 0 with a summary, else 1 naming the line
    /// and the check that failed.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// The verifier key string (name+id+key), or a file holding it, pinned out of band: the
        /// file must name this key.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create or migrate the schema to this build's version (servers also do it on start;
    /// safe while other nodes run or start).
    Migrate {
        /// A TOML config file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a new random master key (base64 of 32 bytes).
    Generate,
    /// Re-wrap every key under the configured master key, offline (the server must be
    /// stopped; a running server does the same in the background on start). Configure the new
    /// key as CUSTODIA_MASTER_KEY and the old one in CUSTODIA_PREVIOUS_MASTER_KEYS.
    Rotate {
        /// A TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Generate an AES-256 master key inside a PKCS#11 token (HSM), which never lets it out:
    /// sensitive, not extractable, encrypt/decrypt only, with a random CKA_ID. Uses the
    /// CUSTODIA_MASTER_KEY_PKCS11_* settings (module, token, PIN; the key label unless --label).
    HsmGenerate {
        /// The key's label (default: CUSTODIA_MASTER_KEY_PKCS11_KEY).
        #[arg(long)]
        label: Option<String>,
        /// A TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate every *.toml file in DIR; exits non-zero naming each problem.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Print the GDPR Art. 30 record of processing activities generated from the policy files
    /// in DIR, as Markdown (or JSON with --json).
    Record {
        /// The policy directory.
        dir: PathBuf,
        /// Print JSON (the same document the transparency report embeds) instead of Markdown.
        #[arg(long)]
        json: bool,
    },
    /// Explain whether a field may go to a recipient for a purpose, rule by rule.
    Explain {
        /// The recipient.
        #[arg(long)]
        recipient: String,
        /// The purpose.
        #[arg(long)]
        purpose: String,
        /// The field.
        #[arg(long)]
        field: String,
        /// The policy directory (default: CUSTODIA_POLICIES or ./policies).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Fetch the newest signed checkpoint, every event it covers, their leaf hashes and the key
    /// into DIR (events.ndjson, checkpoint.txt, leaves.txt, key.txt). https:// with the system's
    /// roots or --ca; plain http:// only to a loopback address unless --insecure-http;
    /// --client-cert and --client-key for a server that requires client certificates.
    Export {
        /// The vault's base URL, e.g. https://vault.example:8443 or http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// PEM CA certificate(s) to trust instead of the system's roots.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Allow plain http:// to a host that is not loopback.
        #[arg(long)]
        insecure_http: bool,
        /// PEM client certificate (chain, leaf first) for a server that requires mutual TLS
        /// (CUSTODIA_TLS_CLIENT_CA); with --client-key.
        #[arg(long, requires = "client_key")]
        client_cert: Option<PathBuf>,
        /// PEM private key of --client-cert.
        #[arg(long, requires = "client_cert")]
        client_key: Option<PathBuf>,
        /// An auditor token (role = "auditor").
        #[arg(long, env = "CUSTODIA_AUDIT_TOKEN", hide_env_values = true)]
        token: String,
        /// The directory to write to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an export offline: every event's leaf, the root, the checkpoint's signature and,
    /// with --previous, consistency with an earlier checkpoint. Exit 0 with a one-line summary,
    /// else 1 naming the first bad event or check.
    Verify {
        /// The events, one JSON object per line (events.ndjson).
        #[arg(long)]
        events: PathBuf,
        /// The signed checkpoint note (checkpoint.txt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The verifier key string (name+id+key), or a file holding it. Pin it out of band.
        #[arg(long)]
        key: String,
        /// An earlier signed checkpoint of the same log, to check consistency with.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// The leaf hashes (leaves.txt), to name an altered event rather than only detect it.
        #[arg(long)]
        leaves: Option<PathBuf>,
    },
    /// Recompute the transparency report's monthly counts offline from an export (after
    /// verifying it as `verify` does) and print them as JSON; with --report, compare them
    /// with a saved `GET /v1/transparency` answer and exit 1 naming the first difference.
    Report {
        /// The events, one JSON object per line (events.ndjson).
        #[arg(long)]
        events: PathBuf,
        /// The export's signed checkpoint note (checkpoint.txt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The verifier key string (name+id+key), or a file holding it. Pin it out of band.
        #[arg(long)]
        key: String,
        /// A saved transparency report (JSON) to check.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Without --report: the policy directory whose grid of cells every month lists (as the
        /// server's report does); with --report the report's own record gives it.
        #[arg(long)]
        policies: Option<PathBuf>,
    },
}

impl Cli {
    /// Runs the command and returns the process exit code.
    pub async fn run(self) -> ExitCode {
        match self.command {
            Command::Serve { config, dev } => report(serve(config, dev).await),
            Command::Policy { command: PolicyCommand::Check { dir } } => match PolicySet::load(&dir) {
                Ok(set) => {
                    println!("{}: ok — {}", dir.display(), set.summary());
                    for warning in set.warnings() {
                        println!("warning: {warning}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid\n{e}", dir.display());
                    ExitCode::FAILURE
                }
            },
            Command::Policy { command: PolicyCommand::Record { dir, json } } => match PolicySet::load(&dir) {
                Ok(set) => {
                    let record = crate::policy::ProcessingRecord::of(&set);
                    if json {
                        // invariant: the record is plain strings, numbers and lists.
                        println!("{}", serde_json::to_string_pretty(&record).expect("record serialises"));
                    } else {
                        print!("{}", record.to_markdown());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid\n{e}", dir.display());
                    ExitCode::FAILURE
                }
            },
            Command::Policy { command: PolicyCommand::Explain { recipient, purpose, field, policies } } => {
                let dir =
                    policies.unwrap_or_else(|| Settings::load(None).map(|s| s.policies).unwrap_or_default());
                match PolicySet::load(&dir) {
                    Ok(set) => {
                        println!("{}", crate::policy::explain(&set, &recipient, &purpose, &field).trim_end());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{}: invalid\n{e}", dir.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Keys { command: KeysCommand::Generate } => {
                match crate::crypto::MasterKey::generate_base64() {
                    Ok(key) => {
                        println!("{}", key.as_str());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Keys { command: KeysCommand::Rotate { config } } => report(rotate(config).await),
            Command::Db { command: DbCommand::Migrate { config } } => report(db_migrate(config).await),
            Command::Store { command: StoreCommand::Copy { from_dir, config } } => {
                report(store_copy(from_dir, config).await)
            }
            Command::Backup { command: Some(BackupCommand::Verify { file, key }), .. } => {
                match backup_verify(&file, key.as_deref()) {
                    Ok(summary) => {
                        println!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("FAILED: {}: {e}", file.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Backup { command: None, out: Some(out), config } => report(backup(out, config).await),
            Command::Backup { command: None, out: None, .. } => {
                eprintln!("error: name the file to write with --out FILE (or check one: backup verify FILE)");
                ExitCode::FAILURE
            }
            Command::Restore { log: None, without_log: false, .. } => {
                eprintln!(
                    "error: name the newest audit log with --log DIR (an `audit export` directory), or \
                     restore without one with --without-log: erasures made after the backup are then \
                     undone and the log forks from checkpoints signed after it. Nothing was changed."
                );
                ExitCode::FAILURE
            }
            Command::Restore { from, log, config, .. } => report(restore(from, log, config).await),
            Command::Keys { command: KeysCommand::HsmGenerate { label, config } } => {
                report(crate::crypto::off_async_workers(move || hsm_generate(label, config)).await)
            }
            Command::Audit {
                command: AuditCommand::Export { url, token, out, ca, insecure_http, client_cert, client_key },
            } => {
                let transport = crate::auditor::Transport { ca, insecure_http, client_cert, client_key };
                match crate::auditor::export(&url, &token, &out, &transport).await {
                    Ok(done) => {
                        println!(
                            "exported {} events with their leaf hashes, the signed checkpoint of that size \
                             and the server's key to {}; compare the key with the one you pinned: {}",
                            done.size,
                            done.dir.display(),
                            done.key
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::Audit {
                command: AuditCommand::Verify { events, checkpoint, key, previous, leaves },
            } => match crate::auditor::verify_files(
                &events,
                &checkpoint,
                &key,
                previous.as_deref(),
                leaves.as_deref(),
            ) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    eprintln!("FAILED: {failure}");
                    ExitCode::FAILURE
                }
            },
            Command::Audit {
                command: AuditCommand::Report { events, checkpoint, key, report, policies },
            } => {
                match crate::auditor::report_files(
                    &events,
                    &checkpoint,
                    &key,
                    report.as_deref(),
                    policies.as_deref(),
                ) {
                    Ok(done) if report.is_some() => {
                        println!(
                            "ok: the report's counts agree with the first {} events of the log \
                             (export verified at tree size {})",
                            done.tree_size, done.verified_size
                        );
                        ExitCode::SUCCESS
                    }
                    Ok(done) => {
                        let out = serde_json::json!({
                            "tree_size": done.tree_size,
                            "in_progress": done.in_progress,
                            "months": done.months,
                        });
                        // invariant: a serde_json::Value always serialises.
                        println!("{}", serde_json::to_string_pretty(&out).expect("JSON serialises"));
                        ExitCode::SUCCESS
                    }
                    Err(reason) => {
                        eprintln!("FAILED: {reason}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::DevToken { role, sub, ttl, config } => match dev_token(&role, &sub, ttl, config) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
        }
    }
}

fn report(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, dev: bool) -> Result<(), Error> {
    let mut settings = Settings::load(config.as_deref())?;
    settings.dev = dev;
    // Held to the end of `serve`: dropping it (after shutdown, or on a start-up error) writes
    // out the queued log lines before the process exits.
    let _log = crate::telemetry::init(&settings.log_format);
    let app = App::build(settings).await?;
    tracing::info!(addr = %app.local_addr(), mode = app.mode(), "custodia listening");
    // The URL stays the last word: scripts and tests read it from there.
    println!("custodia listening ({}) on {}://{}", app.mode(), app.scheme(), app.local_addr());
    app.run_until_stopped().await
}

async fn rotate(config: Option<PathBuf>) -> Result<(), Error> {
    let settings = Settings::load(config.as_deref())?;
    let (vault, store, _) = startup::open_vault(&settings).await?;
    let rewrapped = vault
        .rotate_master_key(std::time::Duration::ZERO)
        .await
        .map_err(|e| Error::MissingKeys(format!("rotation failed: {e}")))?;
    store.close().await?;
    println!(
        "rotation complete: {rewrapped} customer keys re-wrapped; the previous master keys can now be removed"
    );
    Ok(())
}

async fn db_migrate(config: Option<PathBuf>) -> Result<(), Error> {
    let settings = Settings::load(config.as_deref())?;
    let crate::store::StorageSettings::Postgres(pg) = settings.storage() else {
        return Err(Error::Config(crate::config::ConfigError::Env {
            name: "CUSTODIA_STORE",
            message: "must be postgres for db migrate (sled needs no migration)".into(),
        }));
    };
    let (found, now) = crate::store::migrate_postgres(&pg).await?;
    if found == now {
        println!("database schema already at version {now}");
    } else {
        println!("database schema migrated from version {found} to {now}");
    }
    Ok(())
}

async fn store_copy(from_dir: PathBuf, config: Option<PathBuf>) -> Result<(), Error> {
    use crate::store::StorageSettings;
    let settings = Settings::load(config.as_deref())?;
    let Some(url) = &settings.database_url else {
        return Err(Error::Config(crate::config::ConfigError::Env {
            name: "CUSTODIA_DATABASE_URL",
            message: "must name the empty PostgreSQL database to copy into".into(),
        }));
    };
    let dir = from_dir.join("store");
    if !dir.is_dir() {
        return Err(Error::Copy(crate::copy::CopyError::Refused(format!(
            "{} holds no store (give the data directory of a stopped server)",
            from_dir.display()
        ))));
    }
    let tree = std::sync::Arc::new(crate::audit::tree::Tree);
    let cache_bytes = settings.cache_mb * 1024 * 1024;
    let from = crate::store::open(&StorageSettings::Sled { dir, cache_bytes }, tree.clone())?;
    let to = crate::store::open(&StorageSettings::Postgres(settings.postgres(url)), tree)?;
    // The source's log key checks its newest checkpoint's signature before anything is copied.
    let copied = match startup::log_verifier(&settings, &from).await {
        Ok(Some(key)) => crate::copy::copy_store_verified(from.as_ref(), to.as_ref(), &key).await,
        // No system keys: a store no server opened, which has no checkpoint to check either.
        Ok(None) => match from.latest_checkpoint().await {
            Ok(None) => crate::copy::copy_store(from.as_ref(), to.as_ref()).await,
            Ok(Some(_)) => Err(crate::copy::CopyError::Refused(
                "the source holds a signed checkpoint but no log key to check it with".into(),
            )),
            Err(e) => Err(e.into()),
        },
        Err(e) => {
            from.close().await?;
            to.close().await?;
            return Err(e);
        }
    };
    from.close().await?;
    to.close().await?;
    let copied = copied?;
    println!(
        "copied {} customers, {} audit events and {} metadata values; {}",
        copied.customers,
        copied.events,
        copied.meta,
        match copied.checkpoint {
            Some(size) =>
                format!("the copied log's root at size {size} matches the newest signed checkpoint"),
            None => "the source had no signed checkpoint".to_owned(),
        }
    );
    Ok(())
}

fn backup_verify(file: &std::path::Path, key: Option<&str>) -> Result<crate::backup::Summary, String> {
    let pinned = key
        .map(|key| {
            let text = if std::path::Path::new(key).is_file() {
                std::fs::read_to_string(key).map_err(|e| format!("--key {key}: {e}"))?
            } else {
                key.to_owned()
            };
            crate::audit::checkpoint::VerifierKey::parse(text.trim()).map_err(|e| format!("--key: {e}"))
        })
        .transpose()?;
    crate::backup::verify(file, pinned.as_ref()).map_err(|e| e.to_string())
}

async fn backup(out: PathBuf, config: Option<PathBuf>) -> Result<(), Error> {
    let settings = Settings::load(config.as_deref())?;
    crate::backup::refuse_inside_data_dir(&settings.data_dir, &out)?;
    let started = std::time::Instant::now();
    let (summary, bytes, how) =
        match crate::backup::control::backup_from_server(&settings.data_dir, &out).await? {
            Some((summary, bytes)) => (summary, bytes, "from the running server"),
            None => {
                let (vault, store, _) = startup::open_vault(&settings).await?;
                let written = crate::backup::write_file(&vault, &out).await;
                drop(vault);
                store.close().await?;
                let (taken, summary) = written?;
                (summary, taken.bytes, "from the store (no server was running)")
            }
        };
    println!(
        "backup written to {} {how} in {:.1} s: {} bytes, {} customer records, {} audit events \
         (backup point {}), root {}; verified",
        out.display(),
        started.elapsed().as_secs_f64(),
        bytes,
        summary.records,
        summary.size,
        summary.backup_point,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, summary.root),
    );
    Ok(())
}

async fn restore(from: PathBuf, log: Option<PathBuf>, config: Option<PathBuf>) -> Result<(), Error> {
    let settings = Settings::load(config.as_deref())?;
    let done = crate::backup::restore::restore(&settings, &from, log.as_deref()).await?;
    println!(
        "restored {} customer records and {} audit events (backup point {}) from {}",
        done.records,
        done.backup_size,
        done.backup_point,
        from.display()
    );
    match &log {
        Some(dir) => println!("replayed {} newer events from the export in {}", done.replayed, dir.display()),
        None => println!(
            "WARNING: restored without a newer log (--without-log): erasures made after {} are \
             undone (those customers are back), and the log forks at {} events from every checkpoint \
             signed after the backup",
            done.created, done.backup_size
        ),
    }
    println!(
        "erasures re-applied: {} (customer.erase events after the backup point; {} records of the \
         backup left out), retention purges re-applied: {}",
        done.erasures, done.erased_records, done.purges
    );
    println!("{} events describe changes this restore could not bring back", done.not_restored);
    if done.unopenable > 0 {
        println!(
            "warning: {} customer records are under key epochs the epoch-key file no longer holds \
             (destroyed since the backup): they cannot be opened (README: the backup trade-off)",
            done.unopenable
        );
    }
    println!(
        "payment-method deletions, objections and restrictions after the backup point re-applied: {}",
        done.reapplied
    );
    if !done.restricted.is_empty() {
        println!(
            "put under restriction of processing (a consent withdrawal after the backup point could not \
             be restored; review and lift through the API): {} customers: {}",
            done.restricted.len(),
            done.restricted.join(" ")
        );
    }
    println!(
        "the log holds {} events with the store.restore event; {}",
        done.size,
        match done.checkpoint {
            Some(size) => format!("its root at size {size} matches the newest signed checkpoint restored"),
            None => "the backup's log was empty".to_owned(),
        }
    );
    Ok(())
}

fn hsm_generate(label: Option<String>, config: Option<PathBuf>) -> Result<(), Error> {
    let settings = Settings::load(config.as_deref())?;
    let label = label.or_else(|| settings.master_key_pkcs11_key.clone()).ok_or_else(|| {
        crate::config::ConfigError::Env {
            name: crate::crypto::PKCS11_KEY_SETTING,
            message: "name the key: --label or CUSTODIA_MASTER_KEY_PKCS11_KEY".into(),
        }
    })?;
    let (token, id) = startup::generate_hsm_key(&settings, &label)?;
    println!(
        "generated AES-256 key {label:?} in token {token:?} (master key id {id}); it cannot leave the token. \
         Start the server with CUSTODIA_MASTER_KEY_PKCS11_KEY={label} (and the old key in \
         CUSTODIA_PREVIOUS_MASTER_KEYS to rotate from it)"
    );
    Ok(())
}

fn dev_token(role: &str, sub: &str, ttl: u64, config: Option<PathBuf>) -> Result<String, String> {
    if crate::domain::Role::from_claim(role).is_none() {
        return Err("--role must be merchant, customer or auditor".into());
    }
    let settings = Settings::load(config.as_deref()).map_err(|e| e.to_string())?;
    let secret = match &settings.jwt_hs256_secret {
        Some(s) => s.clone(),
        None => startup::dev_jwt_secret(&settings.data_dir).map_err(|e| e.to_string())?,
    };
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({ "sub": sub, "role": role, "iat": now, "exp": now + ttl as i64 });
    if let Some(iss) = &settings.jwt_issuer {
        claims["iss"] = iss.clone().into();
    }
    if let Some(aud) = &settings.jwt_audience {
        claims["aud"] = aud.clone().into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .map_err(|e| format!("signing failed: {e}"))
}
