//! The errors of the storage layer. Variants are named after the condition (as etcd names
//! `ErrCompacted`, `ErrFutureRev`), and their messages are the exact strings etcd clients match
//! on wherever etcd has one.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
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
    /// An append would leave a hole in the log: entries are contiguous.
    #[error("wal: entry {got} does not follow the log, whose next index is {expected}")]
    WalIndexGap { expected: u64, got: u64 },
    /// An append, truncation or purge reaches at or below the purge point.
    #[error("wal: index {index} is at or below the purge point {purged}")]
    WalBelowPurge { index: u64, purged: u64 },
    /// A write or fdatasync failed; the WAL accepts nothing more from then on, since the kernel
    /// may have dropped the failed pages and a retry could claim durability that is not there.
    #[error(
        "wal: a write failed ({reason}); the log accepts no further writes, restart the member"
    )]
    WalFailed { reason: String },
    /// Another process (or another open WAL in this one) holds the WAL directory.
    #[error("wal: {} is in use by another process", dir.display())]
    WalLocked { dir: PathBuf },
    /// The WAL's writer thread has stopped.
    #[error("wal: closed")]
    WalClosed,

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

    /// An auth operation or a permission check refused (`crate::auth`).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthFailure),

    // ---- storage: snapshot files ----------------------------------------------------------
    /// A snapshot file cannot be restored: damaged, cut short, or not a snapshot.
    #[error("snapshot file: {0}")]
    SnapshotFile(String),
    /// The bbolt database inside a snapshot file is damaged, or cannot be written.
    #[error("snapshot file: {0}")]
    SnapshotDb(#[from] ferrokv_bbolt::BboltError),

    // ---- storage: change-log segments of continuous backup ------------------------------------
    /// A change-log segment is damaged, of an unknown format, or does not fit the history it is
    /// replayed onto.
    #[error("change log: {0}")]
    SegmentInvalid(String),
    /// The change log does not cover every revision between the snapshot and the target.
    #[error("change log: {0}")]
    SegmentsIncomplete(String),

    /// The data dir or WAL dir cannot be used: unreadable, of another cluster, of a removed member.
    #[error("data dir: {0}")]
    DataDir(String),
}

// redb reports failures through one error type per step (open, begin, table, commit); to the
// store they are all the same condition: the backend failed.
macro_rules! backend_error_from {
    ($($source:ty),+) => {$(
        impl From<$source> for StorageError {
            fn from(e: $source) -> StorageError {
                StorageError::Backend(e.to_string())
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
