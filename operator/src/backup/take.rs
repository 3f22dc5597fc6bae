//! Taking one backup: a snapshot streamed from a healthy member into a temporary file while it
//! is hashed and checked, then uploaded in parts with its manifest beside it. Nothing holds the
//! whole snapshot in memory.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Client, ResourceExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::destination::open_bucket;
use super::manifest::{manifest_key, BackupKind, BackupLayout, Manifest, MANIFEST_FORMAT};
use super::retention::Retention;
use super::scheduled::BackupDeps;
use super::volume::take_volume_backup;
use super::BackupError;
use crate::crd::{BackupDestination, BackupRecord, KVCluster, MemberStatus, S3Destination};
use crate::etcd_access::{self, EtcdAccess};
use ferrokv_storage::backup_file::SnapshotDigest;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot of a large database streams for minutes.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bytes read from the temporary file per uploaded piece, and parts uploaded at once.
const UPLOAD_CHUNK: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 2;

/// A backup that is in its destination.
#[derive(Clone, Debug, PartialEq)]
pub struct TakenBackup {
    pub record: BackupRecord,
    pub manifest: Manifest,
    pub took: Duration,
    /// How many older backups retention deleted with it, when it was applied there (on a
    /// volume); a bucket's retention is applied after.
    pub retention_deleted: Option<usize>,
}

/// Takes a backup of `kvc` to `destination`, a bucket or a volume; `retention` is applied with
/// it on a volume.
pub async fn take_backup_to(
    deps: &BackupDeps,
    kvc: &KVCluster,
    destination: &BackupDestination,
    kind: BackupKind,
    retention: Option<&Retention>,
) -> Result<TakenBackup, BackupError> {
    match (&destination.s3, &destination.volume) {
        (Some(s3), _) => take_backup(&deps.client, kvc, s3, kind).await,
        (None, Some(volume)) => take_volume_backup(deps, kvc, volume, kind, retention).await,
        (None, None) => Err(BackupError::Destination(
            "the destination names neither s3 nor volume".to_string(),
        )),
    }
}

/// The member to take a snapshot from: a healthy follower when there is one (a snapshot
/// reads the whole database, and the leader has the most to do), else the healthy leader.
/// Learners are skipped: they may not have caught up.
pub fn snapshot_source(members: &[MemberStatus]) -> Option<&MemberStatus> {
    let candidates = || {
        members
            .iter()
            .filter(|m| m.healthy && !m.learner && !m.client_url.is_empty())
    };
    candidates()
        .find(|m| !m.leader)
        .or_else(|| candidates().next())
}

/// Takes a snapshot of `kvc` and uploads it to `destination` as a backup of `kind`.
pub async fn take_backup(
    client: &Client,
    kvc: &KVCluster,
    destination: &S3Destination,
    kind: BackupKind,
) -> Result<TakenBackup, BackupError> {
    let started = Instant::now();
    let namespace = kvc.namespace().unwrap_or_default();
    let status = kvc.status.clone().unwrap_or_default();
    let member = snapshot_source(&status.members).ok_or(BackupError::NoHealthyMember)?;
    let store = open_bucket(client, &namespace, destination).await?;
    let layout = BackupLayout::new(destination.prefix.as_deref(), &namespace, &kvc.name_any());
    // Refused credentials or a missing bucket show here, before the cluster does any work.
    store
        .put(
            &Path::from(format!("{}/.write-check", layout.directory(kind))),
            PutPayload::from_static(b"ferrokv-operator"),
        )
        .await
        .map_err(BackupError::Upload)?;

    let access = etcd_access::current(client, kvc, &namespace)
        .await
        .map_err(|e| BackupError::ClusterAccess(e.to_string()))?;
    let temp = tempfile::NamedTempFile::new()?;
    let saved = save_snapshot(&access, &member.client_url, temp.path())
        .await
        .map_err(|error| match error {
            BackupError::Etcd(source) => BackupError::Snapshot {
                member: member.name.clone(),
                source,
            },
            other => other,
        })?;
    let time = Timestamp::now();
    let key = layout.snapshot_key(kind, time, saved.revision);
    upload_file(&store, &key, temp.path()).await?;

    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        cluster: format!("{namespace}/{}", kvc.name_any()),
        cluster_id: status.cluster_id.clone().unwrap_or_default(),
        member: member.name.clone(),
        revision: saved.revision,
        time: time.to_string(),
        size: saved.size,
        sha256: saved.sha256,
        ferrokv_version: saved.version,
        snapshot_key: key.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    store
        .put(&Path::from(manifest_key(&key)), PutPayload::from(json))
        .await
        .map_err(BackupError::Upload)?;
    Ok(TakenBackup {
        record: BackupRecord {
            time: Time(time),
            key,
            revision: manifest.revision,
            size: manifest.size as i64,
        },
        manifest,
        took: started.elapsed(),
        retention_deleted: None,
    })
}

/// A snapshot saved to a file and checked.
struct SavedSnapshot {
    revision: i64,
    version: String,
    size: u64,
    sha256: String,
}

/// Streams Maintenance.Snapshot of the member at `url` into `file`, checking it as it goes.
async fn save_snapshot(
    access: &EtcdAccess,
    url: &str,
    file: &FsPath,
) -> Result<SavedSnapshot, BackupError> {
    let mut etcd = access
        .connect(&[url.to_string()], CONNECT_TIMEOUT, SNAPSHOT_TIMEOUT)
        .await?;
    // The snapshot holds at least this revision; its own header says exactly when it has one.
    let status = etcd.status().await?;
    let mut revision = status.header().map_or(0, |h| h.revision());
    let version = status.version().to_string();

    let mut out = tokio::fs::File::create(file).await?;
    let mut digest = SnapshotDigest::new();
    let mut stream = etcd.snapshot().await?;
    let mut first = true;
    while let Some(message) = stream.message().await? {
        if first {
            if let Some(header) = message.header().filter(|h| h.revision() > 0) {
                revision = header.revision();
            }
            first = false;
        }
        digest.update(message.blob());
        out.write_all(message.blob()).await?;
    }
    out.sync_all().await?;
    let checked = digest.finish()?;
    Ok(SavedSnapshot {
        revision,
        version,
        size: checked.size,
        sha256: checked.sha256,
    })
}

/// Uploads `file` to `key` in parts.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    file: &FsPath,
) -> Result<(), BackupError> {
    let upload = store
        .put_multipart(&Path::from(key))
        .await
        .map_err(BackupError::Upload)?;
    let mut writer = WriteMultipart::new(upload);
    let mut input = tokio::fs::File::open(file).await?;
    let mut buffer = vec![0u8; UPLOAD_CHUNK];
    loop {
        let read = input.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        writer
            .wait_for_capacity(UPLOAD_CONCURRENCY)
            .await
            .map_err(BackupError::Upload)?;
        writer.write(&buffer[..read]);
    }
    writer.finish().await.map_err(BackupError::Upload)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, healthy: bool, leader: bool, learner: bool) -> MemberStatus {
        MemberStatus {
            name: name.to_string(),
            id: "1".to_string(),
            peer_url: String::new(),
            client_url: format!("http://{name}:2379"),
            healthy,
            leader,
            learner,
            db_size: None,
            db_size_in_use: None,
            last_defragmentation_time: None,
            last_defragmentation_reclaimed_bytes: None,
        }
    }

    #[test]
    fn backup_source_is_a_healthy_follower_then_the_leader() {
        let members = [
            member("a", true, true, false),
            member("b", false, false, false),
            member("c", true, false, false),
        ];
        assert_eq!(snapshot_source(&members).unwrap().name, "c");
        let alone = [
            member("a", true, true, false),
            member("d", true, false, true),
        ];
        assert_eq!(snapshot_source(&alone).unwrap().name, "a");
        assert!(snapshot_source(&[member("b", false, false, false)]).is_none());
    }
}
