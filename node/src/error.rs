//! The errors of the `ferrokv` binary: whatever the server reports, and the conditions of
//! starting a member (flags, data dirs, discovery, bootstrap).

use std::path::PathBuf;

use crate::raft::RaftError;
use crate::server::ServerError;
use crate::storage::StorageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the server, Raft or storage reported, with its own message.
    #[error(transparent)]
    Server(#[from] ServerError),
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
    /// A TLS flag or file that cannot be used; the message names the flag.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Discovery bootstrap failed; the message is etcd's (`discovery: cluster is full`, ...).
    #[error("{0}")]
    Discovery(String),
    /// The snapshot a restore starts from cannot be had or is not the one expected: the object
    /// storage refused it, or its SHA-256 is not the one given.
    #[error("snapshot source: {0}")]
    SnapshotSource(String),
    /// `ferrokv snapshot save` could not take, check or write the snapshot; the message says
    /// which step failed.
    #[error("snapshot save: {0}")]
    SnapshotSave(String),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        Error::Server(e.into())
    }
}

impl From<RaftError> for Error {
    fn from(e: RaftError) -> Error {
        Error::Server(e.into())
    }
}

impl Error {
    /// Raft itself failed, as the server words it (`etcdserver: raft: ...`).
    pub fn raft(message: impl Into<String>) -> Error {
        Error::Server(ServerError::Raft(message.into()))
    }
}
