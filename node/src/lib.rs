//! ferrokv: one member of a Raft-replicated key-value store that speaks etcd's v3 API.
//!
//! Layers, from the wire down; each talks only to the one below it:
//! `api` (gRPC and plain HTTP) → `server` (proposals, reads) → `raft` (tikv's Raft driven by a
//! Ready loop: log on the WAL, apply stage, peer transport) → `storage` (WAL, MVCC store,
//! member identity).
//! `config` parses the flags, `run` wires the layers together, `restore` builds a data dir
//! from a snapshot file.

pub mod api;
pub mod config;
pub mod discovery;
pub mod error;
pub mod metrics;
pub mod raft;
pub mod restore;
pub mod run;
pub mod server;
pub mod storage;

pub use error::{Error, Result};
