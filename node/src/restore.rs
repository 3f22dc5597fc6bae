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
//!
//! The file may also be an object in S3-compatible storage ([`snapshot_source`]), and with
//! `--member-init` the command is a member's init step: it restores only into the empty data
//! dir of a member founding the cluster, so that a restarted member keeps its data and member ID
//! and a member joining a running cluster gets its data from the leader.
//!
//! With `--segments DIR --to-revision N` the snapshot is followed by the change log of
//! continuous backup: the changes after the snapshot's revision up to N are written at the
//! revisions they had (`storage::change_log`), so the new cluster is the old one as it was at
//! revision N. Segments that leave a revision out are refused before anything is written.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::{ClusterState, Config, NodeConfig};
use crate::run::{founding_identity, DB_FILE};
use crate::snapshot_source::{self, S3Source};
use crate::storage::change_log::{self, Segment};
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
    /// The snapshot file; with --s3-bucket, where the downloaded object is kept while it is
    /// restored (by default in --data-dir, removed afterwards).
    #[arg(required_unless_present = "s3_bucket")]
    pub file: Option<PathBuf>,
    /// The snapshot object to download instead of reading FILE.
    #[command(flatten)]
    pub s3: S3Source,
    /// The SHA-256 the whole file must have (lower-case hex), as a backup manifest records it.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Run as a member's init step: do nothing when the data dir is already initialised (a
    /// restarted member keeps its data and member ID) or when --initial-cluster-state is
    /// `existing` (a member joining a running cluster gets its data from the leader).
    #[arg(long)]
    pub member_init: bool,
    /// A directory of change-log segments (continuous backup) to replay after the snapshot, up
    /// to --to-revision: every file in it is read as a segment.
    #[arg(long, requires = "to_revision", conflicts_with = "segments_s3_prefix")]
    pub segments: Option<PathBuf>,
    /// The key prefix of the change-log segments in the bucket of --s3-bucket, instead of
    /// --segments: those up to --to-revision are downloaded (into --data-dir, removed after).
    #[arg(long, requires_all = ["to_revision", "s3_bucket"])]
    pub segments_s3_prefix: Option<String>,
    /// The revision to restore: the snapshot's, plus the changes of the segments up to this
    /// one, at the revisions they had. Refused unless the segments hold every revision in
    /// between.
    #[arg(long)]
    pub to_revision: Option<i64>,
    /// Restore a file without etcd's SHA-256 trailer (a database file copied out of a data dir),
    /// or without checking it.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Everything a member of the new cluster is started with: --name, --data-dir, --wal-dir,
    /// --initial-cluster, --initial-cluster-token, --initial-advertise-peer-urls.
    #[command(flatten)]
    pub member: Config,
}

/// What `ferrokv snapshot restore` did.
#[derive(Debug)]
pub enum Restored {
    /// The data dir now holds the snapshot, as this member of the new cluster.
    Member { source: String, identity: Identity },
    /// `--member-init` found nothing to do, for this reason.
    Skipped(String),
}

/// `ferrokv snapshot restore` with its arguments: fetches the snapshot when it is an object,
/// checks its SHA-256 when one is given, and restores it.
pub fn run_restore(args: &RestoreArgs, config: &NodeConfig) -> Result<Restored> {
    let hash_check = match args.skip_hash_check {
        true => HashCheck::Skip,
        false => HashCheck::Verify,
    };
    if args.member_init {
        if let Some(reason) = initialised(config)? {
            return Ok(Restored::Skipped(reason));
        }
        if config.initial_cluster_state == ClusterState::Existing {
            return Ok(Restored::Skipped(
                "--initial-cluster-state is existing: this member joins a running cluster and gets its data from the leader".to_string(),
            ));
        }
        // An earlier attempt that stopped before the end left a member dir without identity.
        let member_dir = identity::member_dir(&config.data_dir);
        if member_dir.exists() {
            std::fs::remove_dir_all(&member_dir).map_err(|e| {
                Error::DataDir(format!("cannot remove {}: {e}", member_dir.display()))
            })?;
        }
    }
    // Damaged segments are refused before the snapshot is fetched.
    let replay_to = replay_target(args, config)?;
    match args.s3.object() {
        Some((bucket, key)) => {
            let source = format!("s3://{bucket}/{key}");
            let file = args
                .file
                .clone()
                .unwrap_or_else(|| snapshot_source::download_path(&config.data_dir));
            let sha256 = snapshot_source::download(&args.s3, &file)?;
            let restored = snapshot_source::check_sha256(&source, &sha256, args.sha256.as_deref())
                .and_then(|()| restore(&file, config, hash_check, &replay_to));
            let _ = std::fs::remove_file(&file);
            Ok(Restored::Member {
                source,
                identity: restored?,
            })
        }
        None => {
            let file = args.file.as_deref().ok_or_else(|| {
                Error::Config("name a snapshot FILE or --s3-bucket and --s3-key".to_string())
            })?;
            let source = file.display().to_string();
            if args.sha256.is_some() {
                let sha256 = snapshot_source::file_sha256(file)?;
                snapshot_source::check_sha256(&source, &sha256, args.sha256.as_deref())?;
            }
            let identity = restore(file, config, hash_check, &replay_to)?;
            Ok(Restored::Member { source, identity })
        }
    }
}

/// The change log to replay after the snapshot, and up to which revision.
#[derive(Debug, Clone, Default)]
pub struct ReplayTarget {
    pub segments: Vec<Segment>,
    pub to_revision: Option<i64>,
}

/// Reads the segments `--segments` or `--segments-s3-prefix` names, each checked whole before
/// anything is written.
fn replay_target(args: &RestoreArgs, config: &NodeConfig) -> Result<ReplayTarget> {
    let Some(to_revision) = args.to_revision else {
        return Ok(ReplayTarget::default());
    };
    let segments = match (&args.segments, &args.segments_s3_prefix) {
        (Some(dir), _) => read_segments(dir)?,
        (None, Some(prefix)) => {
            let dir = config.data_dir.join("restore-segments");
            let read = snapshot_source::download_segments(&args.s3, prefix, to_revision, &dir)
                .and_then(|_| read_segments(&dir));
            let _ = std::fs::remove_dir_all(&dir);
            read?
        }
        (None, None) => {
            return Err(Error::Config(
                "--to-revision needs the change log: --segments or --segments-s3-prefix"
                    .to_string(),
            ))
        }
    };
    Ok(ReplayTarget {
        segments,
        to_revision: Some(to_revision),
    })
}

/// Every file in `dir`, decoded as a change-log segment, in name order.
pub fn read_segments(dir: &Path) -> Result<Vec<Segment>> {
    let unreadable = |e: std::io::Error| {
        Error::SnapshotSource(format!(
            "cannot read the segments in {}: {e}",
            dir.display()
        ))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(unreadable)?;
            let segment = change_log::decode_segment(&bytes)
                .map_err(|e| Error::SnapshotSource(format!("segment {}: {e}", path.display())))?;
            Ok(segment)
        })
        .collect()
}

/// Why the member's data dir counts as initialised, if it does: it holds a member identity,
/// or its WAL dir does.
fn initialised(config: &NodeConfig) -> Result<Option<String>> {
    let member_dir = identity::member_dir(&config.data_dir);
    for dir in [member_dir.as_path(), config.wal_dir.as_path()] {
        if let Some(found) = Identity::load(dir)? {
            return Ok(Some(format!(
                "{} already holds member {:x} of cluster {:x}; nothing restored",
                dir.display(),
                found.member_id,
                found.cluster_id
            )));
        }
    }
    Ok(None)
}

/// Whether `dir` is missing or has nothing in it (a freshly mounted volume is an empty dir).
fn missing_or_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

pub fn restore(
    file: &Path,
    config: &NodeConfig,
    hash_check: HashCheck,
    replay_to: &ReplayTarget,
) -> Result<Identity> {
    let member_dir = identity::member_dir(&config.data_dir);
    if member_dir.exists() || !missing_or_empty(&config.wal_dir) {
        return Err(Error::DataDir(format!(
            "{} exists or {} is not empty; restore only creates a new data dir",
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
    let replayed = match replay_to.to_revision {
        Some(to_revision) => Some(change_log::replay(
            &mut contents,
            &replay_to.segments,
            to_revision,
        )?),
        None => None,
    };

    let store = MvccStore::open(&member_dir.join(DB_FILE))?;
    store.restore_contents(contents)?;
    if let Some(revision) = snapshot.unfinished_compaction {
        // etcd finishes a compaction it had scheduled when it starts on the data; so does this.
        let mut write = store.begin_write()?;
        write.compact(revision)?;
        write.commit(true)?;
    }
    store.trim()?;
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
        replayed = ?replayed,
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        "restored snapshot"
    );
    Ok(identity)
}
