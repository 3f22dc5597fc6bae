//! `ferrokv snapshot restore`: builds a new member's data dir from a snapshot file, for a new
//! cluster holding the snapshot's keys (what `etcdutl snapshot restore` does for etcd).
//!
//! Every member of the new cluster is restored from the same file with its own `--name`; the
//! new cluster's identity comes from `--initial-cluster` and `--initial-cluster-token`, and the
//! keys, their revisions and the leases come from the snapshot. Nothing of the old cluster's
//! membership or Raft state is kept.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, NodeConfig};
use crate::run::{founding_identity, DB_FILE};
use crate::storage::identity::{self, Identity};
use crate::storage::mvcc::MvccStore;
use crate::storage::snapshot_file;
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
    /// Everything a member of the new cluster is started with: --name, --data-dir, --wal-dir,
    /// --initial-cluster, --initial-cluster-token, --initial-advertise-peer-urls.
    #[command(flatten)]
    pub member: Config,
}

pub fn restore(file: &std::path::Path, config: &NodeConfig) -> Result<Identity> {
    let member_dir = identity::member_dir(&config.data_dir);
    if member_dir.exists() || config.wal_dir.exists() {
        return Err(Error::DataDir(format!(
            "{} or {} already exists; restore only creates a new data dir",
            member_dir.display(),
            config.wal_dir.display()
        )));
    }
    let bytes = std::fs::read(file)
        .map_err(|e| Error::DataDir(format!("cannot read {}: {e}", file.display())))?;
    let dump = snapshot_file::decode(&bytes)?;

    let store = MvccStore::open(&member_dir.join(DB_FILE))?;
    store.restore(dump)?;
    let mut write = store.begin_write()?;
    for prefix in FOREIGN_META_PREFIXES {
        for (key, _) in store.meta_with_prefix(prefix)? {
            write.delete_meta(&key)?;
        }
    }
    write.commit(true)?;
    let revision = store.current_revision()?;
    drop(store);

    config.check_bootstrap_urls().map_err(Error::Config)?;
    let identity = founding_identity(config);
    identity.store(&member_dir)?;
    std::fs::create_dir_all(&config.wal_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", config.wal_dir.display())))?;
    identity.store(&config.wal_dir)?;
    tracing::info!(
        file = %file.display(),
        data_dir = %config.data_dir.display(),
        revision,
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        "restored snapshot"
    );
    Ok(identity)
}
