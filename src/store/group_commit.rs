//! Group commit: one flush makes many concurrent writes durable.
//!
//! A writer first applies its write (in memory), then registers as a waiter. A dedicated thread
//! takes all waiters registered so far, runs one flush, and answers each of them with its
//! result. Invariant: a waiter is only answered by a flush that *started after* it registered,
//! hence after its write, so an `Ok` really covers the write. Writes that arrive during a flush
//! wait for the next one, which is what batches them.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use tokio::sync::oneshot;

use super::StoreError;

type Flush = Box<dyn Fn() -> Result<(), String> + Send + 'static>;
type Waiter = oneshot::Sender<Result<(), String>>;

/// A group-commit flusher around a backend's flush function.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    stopping: bool,
}

impl GroupCommit {
    /// Starts the flusher thread. `flush` must make every write applied before the call durable.
    pub fn start(name: &str, flush: Flush) -> Self {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new() });
        let worker = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("{name}-group-commit"))
            .spawn(move || run(&worker, flush))
            // invariant: spawning a thread only fails when the OS is out of resources at startup.
            .expect("spawn group-commit thread");
        GroupCommit { shared, thread: Some(thread) }
    }

    /// Waits until a flush that started after this call has finished.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().map_err(|_| poisoned())?;
            if state.stopping {
                return Err(StoreError::Unavailable("store is shutting down".into()));
            }
            state.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Unavailable("flusher stopped".into())),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stopping = true;
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, flush: Flush) {
    loop {
        let (batch, stopping) = {
            let Ok(mut state) = shared.state.lock() else { return };
            while state.waiters.is_empty() && !state.stopping {
                state = match shared.wake.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            (std::mem::take(&mut state.waiters), state.stopping)
        };
        let started = std::time::Instant::now();
        let result = flush();
        metrics::histogram!("custodia_group_commit_batch_size").record(batch.len() as f64);
        metrics::histogram!("custodia_group_commit_flush_seconds").record(started.elapsed().as_secs_f64());
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
        if stopping {
            return;
        }
    }
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("group commit state poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_waiters_share_flushes_and_see_failures() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&flushes);
        let gc = Arc::new(GroupCommit::start(
            "test",
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            }),
        ));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let gc = Arc::clone(&gc);
            tasks.push(tokio::spawn(async move { gc.wait_durable().await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "200 waiters took {n} flushes");

        let failing = GroupCommit::start("fail", Box::new(|| Err("disk full".into())));
        assert!(matches!(failing.wait_durable().await, Err(StoreError::Unavailable(_))));
    }
}
