//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//! Values never reach a log line: spans carry route templates and request ids only.
//!
//! Lines are formatted on the thread that logs them and handed to one writer thread
//! (`tracing-appender`'s non-blocking writer) through a queue of [`BUFFERED_LINES`] lines, so a
//! slow or stalled stderr (a full pipe, a slow log shipper) does not hold up a request while
//! the queue has room. The queue is not lossy: when it is full, the logging thread waits for
//! room rather than dropping the line. A request log line can be the only record of a request
//! (429 refusals are not audited), so losing lines silently would be worse than the
//! back-pressure, which is what every line paid before and now only a stall of more than
//! [`BUFFERED_LINES`] lines does.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the queue to the writer thread holds (tracing-appender's default): about 1.7 s of
/// request lines at the 72,000 requests/s `healthz` reaches on the development VM, and at most
/// some 30 MB of memory at ~250 bytes a line, spent only while stderr is stalled.
pub const BUFFERED_LINES: usize = 128_000;

/// Keeps the log writer thread running; dropping it writes out every queued line (waiting at
/// most about a second) and stops the thread. Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// Installs the global subscriber once; later calls install nothing (tests start many apps)
/// and return a guard of a writer that nothing uses. `format` is `json` or anything else for
/// text.
pub fn init(format: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("custodia-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
    LogGuard { _worker: worker }
}
