//! Domain values that are valid by construction: ids, callers, times and field values.
//!
//! Everything here is plain data with parsing at the edge; nothing here does I/O, crypto or
//! policy decisions.

pub mod card;
pub mod customer_id;
pub mod field_value;
pub mod principal;
pub mod timestamp;
pub mod unicode;

pub use customer_id::CustomerId;
pub use principal::{Principal, Role};
pub use timestamp::{Clock, Timestamp};
