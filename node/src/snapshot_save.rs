//! `ferrokv snapshot save`: streams a snapshot of a running member's keyspace into a file, as
//! `etcdctl snapshot save` does, checking its SHA-256 trailer as it arrives and keeping nothing
//! that fails the check.
//!
//! With `--backup-dir` it writes a backup as the operator writes one to object storage: the
//! snapshot `STAMP-rREVISION.db` and its manifest `STAMP-rREVISION.json`
//! ([`ferrokv_storage::backup_file::Manifest`]), then applies retention to the backups of that
//! directory (`--keep`, `--delete-before`; the newest is never deleted). This is the step the
//! operator runs in a pod that mounts a PersistentVolumeClaim, for `spec.backup.destination.volume`;
//! what it wrote is printed as JSON
//! ([`SavedBackup`]) on stdout and, under Kubernetes, as the
//! container's termination message, where the operator reads it.
//!
//! Every file is written under a temporary name, fsynced and renamed, so a crash leaves either
//! the whole backup or a hidden `.partial` file that the next run removes.
//!
//! Not here: restoring (`crate::restore`), where backups go in a bucket (the operator).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use ferrokv_storage::backup_file::{
    self, manifest_key, Manifest, SavedBackup, SnapshotDigest, MANIFEST_FORMAT,
};
use tokio::io::AsyncWriteExt;

use crate::{Error, Result};

/// The environment variable the password of `--user` is read from (never a flag, so that it
/// stays out of process listings and pod specs).
pub const PASSWORD_ENV: &str = "FERROKV_SNAPSHOT_PASSWORD";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot of a large database streams for minutes.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Suffix of files being written.
const PARTIAL: &str = ".partial";

#[derive(Debug, Parser)]
#[command(
    name = "ferrokv snapshot save",
    about = "Saves a snapshot of a running member's keyspace to a file, as `etcdctl snapshot save` does; with --backup-dir, as a backup with its manifest."
)]
pub struct SaveArgs {
    /// Where the snapshot goes (without --backup-dir).
    #[arg(required_unless_present = "backup_dir", conflicts_with = "backup_dir")]
    pub file: Option<PathBuf>,
    /// Client URL of the member the snapshot is taken from.
    #[arg(long)]
    pub endpoint: String,
    /// CA bundle that verifies the member's client certificate (turns TLS on).
    #[arg(long, requires_all = ["cert", "key"])]
    pub cacert: Option<PathBuf>,
    /// Client certificate presented to the member.
    #[arg(long, requires = "cacert")]
    pub cert: Option<PathBuf>,
    /// Key of --cert.
    #[arg(long, requires = "cacert")]
    pub key: Option<PathBuf>,
    /// User to authenticate as; the password is read from FERROKV_SNAPSHOT_PASSWORD.
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub backup: BackupTarget,
}

/// A backup written into a directory, with its manifest and retention.
#[derive(Debug, Clone, Args)]
pub struct BackupTarget {
    /// Write the snapshot as a backup into this directory: `STAMP-rREVISION.db` and its
    /// manifest `STAMP-rREVISION.json`.
    #[arg(long, requires_all = ["key_prefix", "time", "cluster"])]
    pub backup_dir: Option<PathBuf>,
    /// The directory's key, as manifests and restores name backups (e.g. `default/example/scheduled`).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Time of the backup, UTC to the second (`2026-12-06T14:00:00Z`); it names the file.
    #[arg(long)]
    pub time: Option<String>,
    /// `NAMESPACE/NAME` of the KVCluster, for the manifest.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Cluster ID (hex), for the manifest.
    #[arg(long, default_value = "")]
    pub cluster_id: String,
    /// Name of the member --endpoint is, for the manifest.
    #[arg(long, default_value = "")]
    pub member: String,
    /// Retention: keep at most this many backups in --backup-dir, the newest.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Retention: delete the backups of --backup-dir taken before this time (as --time), but
    /// never the newest.
    #[arg(long)]
    pub delete_before: Option<String>,
}

/// What was saved.
pub enum Saved {
    File {
        path: PathBuf,
        revision: i64,
        size: u64,
    },
    Backup(SavedBackup),
}

/// Runs `ferrokv snapshot save`.
pub fn run_save(args: &SaveArgs) -> Result<Saved> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::SnapshotSave(format!("cannot start: {e}")))?;
    runtime.block_on(save(args))
}

async fn save(args: &SaveArgs) -> Result<Saved> {
    let client = connect(args).await?;
    let Some(dir) = &args.backup.backup_dir else {
        let path = args
            .file
            .clone()
            .expect("clap requires FILE without --backup-dir");
        let partial = with_suffix(&path, PARTIAL);
        let taken = take(client, &partial).await?;
        publish(&partial, &path)?;
        return Ok(Saved::File {
            path,
            revision: taken.revision,
            size: taken.size,
        });
    };
    let target = &args.backup;
    let time = target.time.as_deref().unwrap_or_default();
    let delete_before = target.delete_before.as_deref().map(stamp).transpose()?;
    let stamp = stamp(time)?;
    std::fs::create_dir_all(dir).map_err(io("creating the backup directory"))?;
    remove_partials(dir)?;
    let partial = dir.join(format!(".{stamp}.db{PARTIAL}"));
    let taken = take(client, &partial).await?;
    let name = format!("{stamp}-r{}.db", taken.revision);
    let key_prefix = target.key_prefix.as_deref().unwrap_or_default();
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        cluster: target.cluster.clone().unwrap_or_default(),
        cluster_id: target.cluster_id.clone(),
        member: target.member.clone(),
        revision: taken.revision,
        time: time.to_string(),
        size: taken.size,
        sha256: taken.sha256,
        ferrokv_version: taken.version,
        snapshot_key: format!("{}/{name}", key_prefix.trim_end_matches('/')),
    };
    publish(&partial, &dir.join(&name))?;
    let manifest_name = manifest_key(&name);
    let manifest_partial = dir.join(format!(".{manifest_name}{PARTIAL}"));
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::SnapshotSave(format!("manifest: {e}")))?;
    std::fs::write(&manifest_partial, json).map_err(io("writing the manifest"))?;
    publish(&manifest_partial, &dir.join(&manifest_name))?;
    let deleted = apply_retention(dir, target.keep, delete_before.as_deref())?;
    Ok(Saved::Backup(SavedBackup { manifest, deleted }))
}

async fn connect(args: &SaveArgs) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(SNAPSHOT_TIMEOUT);
    if let (Some(ca), Some(cert), Some(key)) = (&args.cacert, &args.cert, &args.key) {
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| Error::SnapshotSave(format!("reading {}: {e}", path.display())))
        };
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?)),
        );
    }
    if let Some(user) = &args.user {
        let password = std::env::var(PASSWORD_ENV).map_err(|_| {
            Error::SnapshotSave(format!(
                "--user {user} needs its password in {PASSWORD_ENV}"
            ))
        })?;
        options = options.with_user(user, password.trim_end_matches(['\n', '\r']));
    }
    Client::connect([args.endpoint.as_str()], Some(options))
        .await
        .map_err(|e| Error::SnapshotSave(format!("connecting to {}: {e}", args.endpoint)))
}

/// A snapshot written to a file and checked.
struct Taken {
    revision: i64,
    version: String,
    size: u64,
    sha256: String,
}

/// Streams Maintenance.Snapshot into `file`, checking it as it goes; removes the file when the
/// snapshot fails.
async fn take(mut client: Client, file: &Path) -> Result<Taken> {
    let result = async {
        let etcd = |e: etcd_client::Error| Error::SnapshotSave(format!("etcd API: {e}"));
        // The snapshot holds at least this revision; its own header says exactly when it has one.
        let status = client.status().await.map_err(etcd)?;
        let mut revision = status.header().map_or(0, |h| h.revision());
        let version = status.version().to_string();
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(io("creating the snapshot file"))?;
        let mut digest = SnapshotDigest::new();
        let mut stream = client.snapshot().await.map_err(etcd)?;
        let mut first = true;
        while let Some(message) = stream.message().await.map_err(etcd)? {
            if first {
                if let Some(header) = message.header().filter(|h| h.revision() > 0) {
                    revision = header.revision();
                }
                first = false;
            }
            digest.update(message.blob());
            out.write_all(message.blob())
                .await
                .map_err(io("writing the snapshot"))?;
        }
        out.sync_all().await.map_err(io("syncing the snapshot"))?;
        let checked = digest
            .finish()
            .map_err(|e| Error::SnapshotSave(format!("snapshot refused: {e}")))?;
        Ok(Taken {
            revision,
            version,
            size: checked.size,
            sha256: checked.sha256,
        })
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    result
}

/// Renames the written `partial` to `path` and syncs the directory, so that the name survives
/// a crash.
fn publish(partial: &Path, path: &Path) -> Result<()> {
    std::fs::rename(partial, path).map_err(io("renaming into place"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory"))
}

/// Removes what an interrupted run left.
fn remove_partials(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("listing the backup directory"))? {
        let name = entry
            .map_err(io("listing the backup directory"))?
            .file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(PARTIAL) {
            std::fs::remove_file(dir.join(name.as_ref())).map_err(io("removing a partial file"))?;
        }
    }
    Ok(())
}

/// Deletes the backups of `dir` beyond the `keep` newest or taken before `delete_before` (a
/// stamp), never the newest; answers how many it deleted. Names start with their time stamp,
/// so they sort as the backups were taken.
fn apply_retention(dir: &Path, keep: Option<u32>, delete_before: Option<&str>) -> Result<usize> {
    if keep.is_none() && delete_before.is_none() {
        return Ok(0);
    }
    let mut snapshots: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("listing the backup directory"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && name.ends_with(".db"))
        .collect();
    snapshots.sort_by(|a, b| b.cmp(a));
    let doomed = expired(&snapshots, keep, delete_before);
    for name in &doomed {
        // The manifest first: a snapshot without one is never taken for a whole backup.
        for file in [manifest_key(name), name.clone()] {
            match std::fs::remove_file(dir.join(&file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::SnapshotSave(format!(
                        "retention: removing {file}: {e}"
                    )))
                }
            }
        }
    }
    if !doomed.is_empty() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory"))?;
    }
    Ok(doomed.len())
}

/// The names of `newest_first` that retention deletes; names begin with their time stamp, so
/// one taken before `delete_before` sorts before it.
fn expired(newest_first: &[String], keep: Option<u32>, delete_before: Option<&str>) -> Vec<String> {
    backup_file::expired(newest_first, keep, |name| {
        delete_before.is_some_and(|before| name.as_str() < before)
    })
    .into_iter()
    .cloned()
    .collect()
}

/// `20261206T140000Z` for `2026-12-06T14:00:00Z`: the time as backup names begin with it.
fn stamp(time: &str) -> Result<String> {
    let bytes = time.as_bytes();
    let shaped = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(Error::SnapshotSave(format!(
            "time {time:?} is not UTC to the second, like 2026-12-06T14:00:00Z"
        )));
    }
    Ok(time.replace(['-', ':'], ""))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::SnapshotSave(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn backup_time_becomes_the_name_stamp_and_bad_times_are_refused() {
        assert_eq!(stamp("2026-12-06T14:05:09Z").unwrap(), "20261206T140509Z");
        for bad in [
            "2026-12-06T14:05:09+01:00",
            "2026-12-06 14:05:09Z",
            "yesterday",
        ] {
            let error = stamp(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn retention_deletes_beyond_keep_and_before_the_cutoff_but_never_the_newest() {
        let all = names(&[
            "20261206T140000Z-r90.db",
            "20261206T130000Z-r70.db",
            "20261206T120000Z-r50.db",
        ]);
        assert_eq!(
            expired(&all, Some(2), None),
            names(&["20261206T120000Z-r50.db"])
        );
        assert_eq!(
            expired(&all, None, Some("20261206T130000Z")),
            names(&["20261206T120000Z-r50.db"])
        );
        // Everything is older than the cutoff: the newest stays.
        assert_eq!(
            expired(&all, None, Some("20271206T000000Z")),
            all[1..].to_vec()
        );
        assert!(expired(&all, Some(3), None).is_empty());
    }

    #[test]
    fn retention_removes_old_backups_with_their_manifests_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for stem in [
            "20261206T120000Z-r5",
            "20261206T130000Z-r7",
            "20261206T140000Z-r9",
        ] {
            std::fs::write(dir.path().join(format!("{stem}.db")), b"db").unwrap();
            std::fs::write(dir.path().join(format!("{stem}.json")), b"{}").unwrap();
        }
        std::fs::write(dir.path().join(".20261206T150000Z.db.partial"), b"x").unwrap();
        remove_partials(dir.path()).unwrap();
        assert_eq!(apply_retention(dir.path(), Some(2), None).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "20261206T130000Z-r7.db",
                "20261206T130000Z-r7.json",
                "20261206T140000Z-r9.db",
                "20261206T140000Z-r9.json"
            ]
        );
    }
}
