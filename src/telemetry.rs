//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//! Values never reach a log line: spans carry route templates and request ids only.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are ignored (tests start many apps).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}
