//! ferrokv-storage: everything ferrokv keeps on disk: the Raft log (`wal`), the key-value state
//! machine (`mvcc`), the member's identity and snapshot files.

pub mod auth;
pub mod identity;
pub mod mvcc;
pub mod snapshot_file;
pub mod wal;

mod error;

pub use error::{Result, StorageError};
