//! ferrokv-raft, consensus: tikv's `raft` crate (etcd's Raft algorithm) driven the way etcd's
//! raftNode drives etcd's raft. It builds on `ferrokv-storage` alone; the layer above serves
//! the leader's duties (`transport::LeaderDuties`) without this crate knowing it.
//!
//! - `node`: the Ready loop, one thread owning the `RawNode`; the rest of the member talks to
//!   Raft only through its `RaftHandle`.
//! - `log`: the Raft log (`raft::Storage`) on the WAL.
//! - `apply`: the apply stage, applying committed entries to the MVCC store on its own thread,
//!   building and installing snapshots.
//! - `transport`: streams of Raft messages and snapshot chunks between members, and the unary
//!   calls only a leader answers.
//! - `members`: names and peer URLs of the members, from applied configuration changes.
//! - `size`: the store's size in use, measured on a thread of its own.
//! - `stages`: the write path's per-stage latency histograms.
//! - `types`: what entries carry, what applying them yields, and the payloads of the calls a
//!   follower makes to the leader.

pub mod apply;
pub mod log;
pub mod members;
pub mod node;
pub mod size;
pub mod stages;
pub mod tokens;
pub mod transport;
pub mod types;

mod error;

pub use error::{RaftError, Result};
