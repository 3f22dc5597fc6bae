//! ferrokv-storage: everything ferrokv keeps on disk: the Raft log (`wal`), the key-value state
//! machine (`mvcc`), the member's identity, snapshot files, and the change log of continuous
//! backup (`change_log`).

pub mod auth;
pub mod backup_file;
pub mod change_log;
pub mod identity;
pub mod mvcc;
pub mod snapshot_file;
pub mod wal;

mod error;

pub use error::{Result, StorageError};
