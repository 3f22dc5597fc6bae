//! Everything ferrokv keeps on disk: the Raft log (`wal`), the key-value state machine
//! (`mvcc`) and the member's identity.

pub mod identity;
pub mod mvcc;
pub mod snapshot_file;
pub mod wal;
