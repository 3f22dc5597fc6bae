//! ferrokv: one member of a Raft-replicated key-value store that speaks etcd's v3 API.
//!
//! Layers, from the wire down, each a crate of its own that depends only on the ones below it
//! (the compiler enforces the layering):
//! `ferrokv-api` (gRPC and plain HTTP) → `ferrokv-server` (proposals, reads, leases, watches,
//! membership) → `ferrokv-raft` (tikv's Raft driven by a Ready loop: log on the WAL, apply
//! stage, peer transport) → `ferrokv-storage` (WAL, MVCC store, member identity).
//! This package is the `ferrokv` binary around them: `config` parses the flags, `run` wires the
//! layers together, `restore` builds a data dir from a snapshot file
//! (`snapshot_source` fetches and checks it), `snapshot_save` takes one from a running member
//! (into a file, or as a backup into a directory), `discovery` bootstraps a
//! cluster through a discovery service, `tls_setup` builds the member's TLS from its flags;
//! `failpoints` (failpoint builds only) arms the crash points of the robustness suite.

pub mod config;
pub mod discovery;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod restore;
pub mod run;
pub mod snapshot_save;
pub mod snapshot_source;
pub mod tls_setup;

pub use error::{Error, Result};
pub use ferrokv_api as api;
pub use ferrokv_raft as raft;
pub use ferrokv_server as server;
pub use ferrokv_storage as storage;
pub use ferrokv_tls as tls;
