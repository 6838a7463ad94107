//! Store contract tests: written once against `dyn Store`, run per backend.
//! Only sled exists today; a new backend adds one `backend!` line.

mod contract;

use std::sync::Arc;

use custodia::store::{SledStore, Store};

/// A fresh sled store in a temporary directory (kept alive by the returned guard).
pub fn sled_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store"), 8 * 1024 * 1024).unwrap();
    (Arc::new(store), dir)
}

macro_rules! backend {
    ($backend:ident, $make:path) => {
        mod $backend {
            contract_tests!($make);
        }
    };
}

macro_rules! contract_tests {
    ($make:path) => {
        macro_rules! case {
            ($name:ident) => {
                #[tokio::test]
                async fn $name() {
                    let (store, _guard) = $make();
                    crate::contract::$name(store).await;
                }
            };
        }
        case!(a_created_record_reads_back);
        case!(a_stale_version_is_a_conflict_and_writes_nothing);
        case!(unique_index_entries_belong_to_one_customer);
        case!(index_entries_follow_updates_and_deletion);
        case!(audit_appends_must_be_dense_and_read_back_in_order);
        case!(merkle_nodes_are_stored_with_their_leaf);
        case!(init_meta_keeps_the_first_value);
        case!(a_rewrap_commit_without_event_keeps_the_log_as_it_is);
        case!(customer_history_and_id_listing_are_served_by_indexes);
        case!(sync_returns_after_commits);
        case!(checkpoints_are_kept_per_size_and_the_latest_is_found);
    };
}

backend!(sled, crate::sled_store);
