//! The errors of the Raft layer: its own conditions, and the storage errors underneath it.

use ferrokv_storage::StorageError;

pub type Result<T, E = RaftError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The WAL or the MVCC store failed underneath Raft; its message as the storage layer
    /// words it.
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Raft itself failed (shutting down, or an unexpected protocol error).
    #[error("etcdserver: raft: {0}")]
    Raft(String),
}
