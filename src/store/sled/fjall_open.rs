//! Opening a fjall database of the sled backend (the history index, the customer records),
//! and the compaction both trees use.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::compaction::Leveled;
use fjall::{Database, DatabaseBuilder};

use crate::store::StoreError;

/// The builder of a plain (non-transactional) database.
type Builder = DatabaseBuilder<Database>;

/// Sorted tables in level 0 before they are merged into the level below.
///
/// Why not fjall's 4: both trees take random keys, so each table of level 0 overlaps the whole
/// of the level below, and a merge rewrites all of it. At 4 tables that is a rewrite of every
/// entry of the tree each 4 memtables, a cost per write that grows with the store (at 1,000,000
/// customers a merge of the record file took most of a second of CPU about every 90,000
/// creates). At 12 the same rewrite comes a third as often, a point read consults at most 12
/// level-0 bloom filters (pinned in memory), and fjall's write stall (at 20 tables) is 8 tables
/// of lag away. fjall keeps a keyspace's settings from its creation: stores made before this
/// setting keep 4.
const L0_TABLES: u8 = 12;

/// The compaction strategy of both trees: fjall's leveled compaction with [`L0_TABLES`].
pub(super) fn compaction() -> Arc<Leveled> {
    Arc::new(Leveled::default().with_l0_threshold(L0_TABLES))
}

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
