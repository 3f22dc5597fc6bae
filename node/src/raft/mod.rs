//! The glue between ferrokv and openraft: the type configuration, the log store on the WAL,
//! the state machine on the MVCC store, and the peer network. The rest of the node talks to
//! Raft only through the `Raft` handle.

pub mod election;
pub mod log_store;
pub mod network;
pub mod peer;
pub mod state_machine;
pub mod types;
