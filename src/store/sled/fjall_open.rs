//! Opening a fjall database of the sled backend (the history index, the customer records).

use std::path::Path;
use std::time::{Duration, Instant};

use fjall::{Database, DatabaseBuilder};

use crate::store::StoreError;

/// The builder of a plain (non-transactional) database.
type Builder = DatabaseBuilder<Database>;

/// How long opening waits for the directory lock of a handle still being dropped.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the database in `dir` with the settings `configure` applies. The outer error is a
/// directory still locked after [`LOCK_WAIT`] (another process); the inner one is fjall's
/// answer to files it cannot open, for the caller to judge.
pub(super) fn open_database(
    dir: &Path,
    configure: impl Fn(Builder) -> Builder,
) -> Result<Result<Database, fjall::Error>, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match configure(Database::builder(dir)).open() {
            // The previous handle's threads may hold the lock for a moment after it is dropped
            // (a restart in the same process).
            Err(fjall::Error::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(fjall::Error::Locked) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is locked by another process",
                    dir.display()
                )));
            }
            opened => return Ok(opened),
        }
    }
}
