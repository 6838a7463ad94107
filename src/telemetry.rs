//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//! Values never reach a log line: spans carry route templates and request ids only.
//!
//! Lines are formatted on the thread that logs them and handed to one writer thread
//! (`tracing-appender`'s non-blocking writer) through a queue of [`BUFFERED_LINES`] lines, so a
//! slow or stalled stderr (a full pipe, a slow log shipper) does not hold up a request while
//! the queue has room. The queue is not lossy: when it is full, the logging thread waits for
//! room rather than dropping the line. A request log line can be the only record of a request
//! (429 refusals are not audited), so losing lines silently would be worse than the
//! back-pressure, which every line paid before and now only a stall of more than
//! [`BUFFERED_LINES`] lines does. For the same reason the [`LogGuard`] waits, at shutdown,
//! until the queue is written out (up to [`DRAIN_WAIT`]), where tracing-appender's own guard
//! gives up after about a second.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue to the writer thread holds (tracing-appender's default): about 1.7 s of
/// request lines at the 72,000 requests/s `healthz` reaches on the development VM, and at most
/// some 30 MB of memory at ~250 bytes a line, spent only while stderr is stalled.
pub const BUFFERED_LINES: usize = 128_000;

/// How long dropping the [`LogGuard`] waits for queued lines to reach stderr. Past it (stderr
/// stalled for that long at shutdown) the remaining lines are lost with the process.
pub const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Lines handed to the queue and lines the writer thread has finished with (written, or
/// failed to write), so shutdown can tell when the queue is empty.
#[derive(Default)]
struct Progress {
    queued: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    fn drained(&self) -> bool {
        self.done.load(Ordering::Acquire) >= self.queued.load(Ordering::Acquire)
    }
}

/// The writer the logging threads use: the queue, counting each line handed to it.
#[derive(Clone)]
struct QueueWriter {
    queue: NonBlocking,
    progress: Arc<Progress>,
}

impl Write for QueueWriter {
    // invariant: NonBlocking takes each call's whole buffer as one line (tracing-subscriber
    // writes one event per `write_all`), so one call is one queued line.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.queue.write(buf)?;
        self.progress.queued.fetch_add(1, Ordering::AcqRel);
        Ok(written)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.queue.write_all(buf)?;
        self.progress.queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queue.flush()
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Stderr as the writer thread sees it: each line it takes from the queue, counted when done.
struct CountedStderr {
    progress: Arc<Progress>,
}

impl Write for CountedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf)
    }

    // The writer thread writes each queued line with one `write_all`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = io::stderr().write_all(buf);
        self.progress.done.fetch_add(1, Ordering::AcqRel);
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Keeps the log writer thread running; dropping it waits until every line queued so far is
/// written (at most [`DRAIN_WAIT`]), then stops the thread. Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    progress: Arc<Progress>,
    worker: Option<WorkerGuard>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while !self.progress.drained() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Stops the writer thread (it flushes what it holds, waiting at most about a second).
        drop(self.worker.take());
    }
}

/// Installs the global subscriber once; later calls install nothing (tests start many apps)
/// and return a guard of a writer that nothing uses. `format` is `json` or anything else for
/// text.
pub fn init(format: &str) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let progress = Arc::new(Progress::default());
    let (queue, worker) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("custodia-log")
        .finish(CountedStderr { progress: Arc::clone(&progress) });
    let writer = QueueWriter { queue, progress: Arc::clone(&progress) };
    // Colours only for a terminal: a log redirected to a file or a shipper stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
    LogGuard { progress, worker: Some(worker) }
}
