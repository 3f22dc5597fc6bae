//! The errors of the server, as the client API sees them: etcd's etcdserver errors with the
//! exact messages etcd's clients match on, the MVCC conditions a request can run into, and any
//! other storage failure as the storage layer words it.

use ferrokv_raft::types::{ApplyError, WireError};
use ferrokv_raft::RaftError;
use ferrokv_storage::auth::AuthFailure;
use ferrokv_storage::StorageError;

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // ---- storage conditions a request can meet ------------------------------------------
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
    /// Any other failure of the storage underneath (the WAL, a corrupt store, ...).
    #[error(transparent)]
    Storage(StorageError),

    /// Auth refused the request (etcd's auth errors, with their messages).
    #[error(transparent)]
    Auth(#[from] AuthFailure),
    /// Authenticate on a member given only the JWT public key (etcd's ErrVerifyOnly).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnlyKey,
    /// Signing a JWT token failed.
    #[error("auth: signing a token: {0}")]
    TokenSigning(String),

    // ---- server ------------------------------------------------------------------------
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
}

impl ServerError {
    /// A copy of this error for each caller that shared the request that failed (a batch of
    /// proposals, a round of reads): the conditions callers act on keep their variant, any
    /// other is carried as its message (a Raft error's own message, not its prefixed Display).
    pub fn for_each_waiter(&self) -> ServerError {
        match self {
            ServerError::NoLeader => ServerError::NoLeader,
            ServerError::Timeout => ServerError::Timeout,
            ServerError::Raft(message) => ServerError::Raft(message.clone()),
            other => ServerError::Raft(other.to_string()),
        }
    }
}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> ServerError {
        match e {
            StorageError::Compacted => ServerError::Compacted,
            StorageError::FutureRev => ServerError::FutureRev,
            StorageError::LeaseNotFound => ServerError::LeaseNotFound,
            StorageError::LeaseExists => ServerError::LeaseExists,
            StorageError::KeyNotFound => ServerError::KeyNotFound,
            StorageError::Backend(message) => ServerError::Backend(message),
            StorageError::Auth(failure) => ServerError::Auth(failure),
            other => ServerError::Storage(other),
        }
    }
}

impl From<RaftError> for ServerError {
    fn from(e: RaftError) -> ServerError {
        match e {
            RaftError::Storage(e) => e.into(),
            RaftError::NoLeader => ServerError::NoLeader,
            RaftError::Timeout => ServerError::Timeout,
            RaftError::Raft(message) => ServerError::Raft(message),
        }
    }
}

impl From<ApplyError> for ServerError {
    fn from(e: ApplyError) -> ServerError {
        match e {
            ApplyError::Auth(failure) => ServerError::Auth(failure),
            ApplyError::Compacted => ServerError::Compacted,
            ApplyError::FutureRev => ServerError::FutureRev,
            ApplyError::LeaseNotFound => ServerError::LeaseNotFound,
            ApplyError::LeaseExists => ServerError::LeaseExists,
            ApplyError::KeyNotFound => ServerError::KeyNotFound,
            ApplyError::NoSpace => ServerError::NoSpace,
        }
    }
}

impl From<ServerError> for WireError {
    fn from(e: ServerError) -> WireError {
        match e {
            ServerError::NotLeader => WireError::NotLeader,
            ServerError::NoLeader => WireError::NoLeader,
            ServerError::Timeout => WireError::Timeout,
            ServerError::LeaseNotFound => WireError::LeaseNotFound,
            ServerError::MemberNotFound => WireError::MemberNotFound,
            ServerError::MemberNotLearner => WireError::MemberNotLearner,
            ServerError::LearnerNotReady => WireError::LearnerNotReady,
            ServerError::PeerUrlExists => WireError::PeerUrlExists,
            ServerError::MembershipInProgress => WireError::MembershipInProgress,
            ServerError::Unhealthy(why) => WireError::Unhealthy(why),
            ServerError::BadPeerUrl(url) => WireError::BadPeerUrl(url),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for ServerError {
    fn from(e: WireError) -> ServerError {
        match e {
            WireError::NotLeader => ServerError::NotLeader,
            WireError::NoLeader => ServerError::NoLeader,
            WireError::Timeout => ServerError::Timeout,
            WireError::LeaseNotFound => ServerError::LeaseNotFound,
            WireError::MemberNotFound => ServerError::MemberNotFound,
            WireError::MemberNotLearner => ServerError::MemberNotLearner,
            WireError::LearnerNotReady => ServerError::LearnerNotReady,
            WireError::PeerUrlExists => ServerError::PeerUrlExists,
            WireError::MembershipInProgress => ServerError::MembershipInProgress,
            WireError::Unhealthy(why) => ServerError::Unhealthy(why),
            WireError::BadPeerUrl(url) => ServerError::BadPeerUrl(url),
            WireError::Other(message) => ServerError::Raft(message),
        }
    }
}
