//! The one error type of the node. Variants are named after the condition (as etcd names
//! `ErrCompacted`, `ErrFutureRev`), and their messages are the exact strings etcd clients match
//! on wherever etcd has one. The `api` layer maps each variant to its gRPC status.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A copy of this error for each caller that shared the request that failed (a batch of
    /// proposals, a round of reads): the conditions callers act on keep their variant, any
    /// other is carried as its message (a Raft error's own message, not its prefixed Display).
    pub fn for_each_waiter(&self) -> Error {
        match self {
            Error::NoLeader => Error::NoLeader,
            Error::Timeout => Error::Timeout,
            Error::Raft(message) => Error::Raft(message.clone()),
            other => Error::Raft(other.to_string()),
        }
    }
}

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

    // ---- server and api -----------------------------------------------------------------
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy(String),
    #[error("etcdserver: a membership change is already in progress")]
    MembershipInProgress,
    #[error("etcdserver: invalid peer URL: {0}")]
    BadPeerUrl(String),
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Raft itself failed (shutting down, or an unexpected protocol error).
    #[error("etcdserver: raft: {0}")]
    Raft(String),
    /// A founding member with an empty data dir whom the cluster knows as one that has run: it
    /// lost its data. The message starts with the phrase the operator recognises.
    #[error("data dir empty but member {name} is registered as ID {member_id:x} in cluster {cluster_id:x} (member already bootstrapped): remove it with `etcdctl member remove {member_id:x}`, add it again with `etcdctl member add`, and start it with --initial-cluster-state=existing")]
    AlreadyBootstrapped {
        name: String,
        member_id: u64,
        cluster_id: u64,
    },
    /// A member whose data dir is empty while its separate WAL dir still holds its log: the data
    /// volume alone was lost. The log cannot rebuild the data (entries before the last snapshot
    /// are purged), so the member is replaced, and the replacement needs an empty WAL dir too.
    /// The message starts with the phrase the operator recognises; "holds the log of member"
    /// tells it that the WAL volume must be discarded as well.
    #[error("data dir empty but --wal-dir {} holds the log of member {name} (ID {member_id:x}) of cluster {cluster_id:x}, whose data in --data-dir {} is lost and cannot be rebuilt from the log: remove the member with `etcdctl member remove {member_id:x}`, add it again with `etcdctl member add {name} --peer-urls={peer_urls}`, empty {}, and start it with --initial-cluster-state=existing", wal_dir.display(), data_dir.display(), wal_dir.display())]
    WalWithoutData {
        name: String,
        member_id: u64,
        cluster_id: u64,
        data_dir: PathBuf,
        wal_dir: PathBuf,
        /// `--initial-advertise-peer-urls`, comma-separated, for the `member add` to run.
        peer_urls: String,
    },
    /// Flags that cannot work together for what this member is about to do.
    #[error("{0}")]
    Config(String),
    /// The data dir or WAL dir cannot be used: unreadable, of another cluster, of a removed member.
    #[error("data dir: {0}")]
    DataDir(String),
    /// Discovery bootstrap failed; the message is etcd's (`discovery: cluster is full`, ...).
    #[error("{0}")]
    Discovery(String),
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
