//! Everything ferrokv keeps on disk: the Raft log (`wal`) and the key-value state machine (`mvcc`).

pub mod mvcc;
pub mod wal;
