//! The one error type of the node. Variants are named after the condition (as etcd names
//! `ErrCompacted`, `ErrFutureRev`), and their messages are the exact strings etcd clients match
//! on wherever etcd has one. The `api` layer maps each variant to its gRPC status.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- storage: WAL -------------------------------------------------------------------
    /// A record in the middle of the log failed its checksum or could not be decoded: the node
    /// refuses to start and leaves the files as they are.
    #[error("wal: corrupt record in {} at offset {offset}: {reason}; refusing to start, the files are left untouched", segment.display())]
    WalCorrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("wal: {context}: {source}")]
    WalIo { context: String, source: io::Error },

    // ---- storage: MVCC ------------------------------------------------------------------
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// redb failed underneath the MVCC store.
    #[error("mvcc: backend: {0}")]
    Backend(String),
    /// A value read back from the MVCC store's tables does not decode: the file was damaged or
    /// written by an incompatible version.
    #[error("mvcc: stored data is corrupt: {0}")]
    MvccCorrupt(String),
    /// A state machine snapshot handed to `restore` is not one `snapshot` wrote.
    #[error("mvcc: invalid snapshot: {0}")]
    SnapshotInvalid(String),
}

// redb reports failures through one error type per step (open, begin, table, commit); to the
// store they are all the same condition: the backend failed.
macro_rules! backend_error_from {
    ($($source:ty),+) => {$(
        impl From<$source> for Error {
            fn from(e: $source) -> Error {
                Error::Backend(e.to_string())
            }
        }
    )+};
}
backend_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
