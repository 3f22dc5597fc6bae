//! `ferrokv snapshot restore`: builds a new member's data dir from a snapshot file, for a new
//! cluster holding the snapshot's keys (what `etcdutl snapshot restore` does for etcd).
//!
//! Every member of the new cluster is restored from the same file with its own `--name`; the
//! new cluster's identity comes from `--initial-cluster` and `--initial-cluster-token`, and the
//! keys, their revisions, the compaction point and the leases come from the snapshot. Nothing of
//! the old cluster's membership or Raft state is kept.
//!
//! The file is a snapshot saved from etcd (3.4 to 3.7) or ferrokv — both write etcd's format —
//! or from a ferrokv release before that (`FERROKV1`). It is read and checked in full before
//! anything is written, so a damaged file leaves no data dir behind.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, NodeConfig};
use crate::run::{founding_identity, DB_FILE};
use crate::storage::identity::{self, Identity};
use crate::storage::mvcc::MvccStore;
use crate::storage::snapshot_file::{self, HashCheck};
use crate::{Error, Result};

/// Metadata of the old cluster that a restored store must not carry over.
const FOREIGN_META_PREFIXES: &[&str] = &["raft/", "member/", "alarm/"];

#[derive(Debug, Parser)]
#[command(
    name = "ferrokv snapshot restore",
    about = "Restores a snapshot file (from `etcdctl snapshot save`) into a new data dir for a new cluster."
)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Restore a file without etcd's SHA-256 trailer (a database file copied out of a data dir),
    /// or without checking it.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Everything a member of the new cluster is started with: --name, --data-dir, --wal-dir,
    /// --initial-cluster, --initial-cluster-token, --initial-advertise-peer-urls.
    #[command(flatten)]
    pub member: Config,
}

pub fn restore(
    file: &std::path::Path,
    config: &NodeConfig,
    hash_check: HashCheck,
) -> Result<Identity> {
    let member_dir = identity::member_dir(&config.data_dir);
    if member_dir.exists() || config.wal_dir.exists() {
        return Err(Error::DataDir(format!(
            "{} or {} already exists; restore only creates a new data dir",
            member_dir.display(),
            config.wal_dir.display()
        )));
    }
    config.check_bootstrap_urls().map_err(Error::Config)?;
    let bytes = std::fs::read(file)
        .map_err(|e| Error::DataDir(format!("cannot read {}: {e}", file.display())))?;
    let snapshot = snapshot_file::decode(&bytes, hash_check)?;
    drop(bytes);
    let mut contents = snapshot.contents;
    contents
        .meta
        .retain(|(key, _)| !FOREIGN_META_PREFIXES.iter().any(|p| key.starts_with(p)));

    let store = MvccStore::open(&member_dir.join(DB_FILE))?;
    store.restore_contents(contents)?;
    if let Some(revision) = snapshot.unfinished_compaction {
        // etcd finishes a compaction it had scheduled when it starts on the data; so does this.
        let mut write = store.begin_write()?;
        write.compact(revision)?;
        write.commit(true)?;
    }
    let revision = store.current_revision()?;
    drop(store);

    let identity = founding_identity(config);
    identity.store(&member_dir)?;
    std::fs::create_dir_all(&config.wal_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", config.wal_dir.display())))?;
    identity.store(&config.wal_dir)?;
    tracing::info!(
        file = %file.display(),
        data_dir = %config.data_dir.display(),
        revision,
        format = ?snapshot.format,
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        "restored snapshot"
    );
    Ok(identity)
}
