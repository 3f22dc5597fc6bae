//! Backups of a cluster's keyspace to object storage or a volume: scheduled ones declared in
//! `spec.backup` ([`scheduled`]) and on-demand ones as `KVClusterBackup` resources
//! ([`on_demand`]); between them, the change log of continuous backup ([`continuous`]).
//!
//! A backup is a snapshot from a healthy member, checked against its SHA-256 trailer, uploaded
//! with a JSON manifest ([`manifest`]) to an S3-compatible bucket ([`destination`], [`take`]),
//! or written with it to a PersistentVolumeClaim by a pod that mounts it ([`volume`]). It runs in
//! a task of its own, never inside a reconcile, and at most one runs per cluster
//! ([`BackupSlots`]). Restoring is not here: see [`crate::restore`].

pub mod continuous;
pub mod destination;
pub mod manifest;
pub mod metrics;
pub mod on_demand;
pub mod retention;
pub mod schedule;
pub mod scheduled;
pub mod take;
pub mod tasks;
pub mod volume;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use ferrokv_storage::backup_file::SnapshotFileError;

/// The field manager of the operator's backup status writes, apart from the reconcile's so
/// that neither removes the other's fields.
pub const BACKUP_FIELD_MANAGER: &str = "ferrokv-operator-backup";

/// Why a backup failed; [`BackupError::reason`] is the stable code status and Events carry.
#[derive(Error, Debug)]
pub enum BackupError {
    #[error("no healthy voting member to take a snapshot from")]
    NoHealthyMember,
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("destination: {0}")]
    Destination(String),
    #[error("etcd API: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("snapshot from {member}: {source}")]
    Snapshot {
        member: String,
        source: etcd_client::Error,
    },
    #[error("snapshot refused: {0}")]
    SnapshotInvalid(#[from] SnapshotFileError),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("object storage: {0}")]
    Upload(object_store::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    #[error("credentials of the cluster: {0}")]
    ClusterAccess(String),
    #[error("continuous backup waits for a first full backup (a schedule or a KVClusterBackup) to go on from")]
    NoFullBackup,
    #[error("the change log has a gap: revisions from {from} were compacted (compaction at {compacted}) before the follower's watch delivered them; restores to revisions from {from} up to the next full backup are not possible")]
    ChangeLogGap { from: i64, compacted: i64 },
    #[error("the follower's watch ended")]
    WatchEnded,
    #[error("segment: {0}")]
    Segment(#[from] ferrokv_storage::StorageError),
    #[error("backup pod {pod} {problem}")]
    BackupPod { pod: String, problem: String },
}

impl BackupError {
    /// A stable reason code, before the human text.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoHealthyMember => "NoHealthyMember",
            Self::Credentials(_) => "CredentialsInvalid",
            Self::Destination(_) => "DestinationInvalid",
            Self::Etcd(_) | Self::Snapshot { .. } => "SnapshotFailed",
            Self::SnapshotInvalid(_) => "SnapshotInvalid",
            Self::Io(_) => "TemporaryFileFailed",
            Self::Upload(object_store::Error::PermissionDenied { .. })
            | Self::Upload(object_store::Error::Unauthenticated { .. }) => "CredentialsRejected",
            Self::Upload(object_store::Error::NotFound { .. }) => "BucketNotFound",
            Self::Upload(_) => "UploadFailed",
            Self::Kube(_) => "KubernetesAPIFailed",
            Self::Manifest(_) => "ManifestInvalid",
            Self::ClusterAccess(_) => "ClusterAccessFailed",
            Self::NoFullBackup => "WaitingForFullBackup",
            Self::ChangeLogGap { .. } => "ChangeLogGap",
            Self::WatchEnded => "WatchEnded",
            Self::Segment(_) => "SegmentInvalid",
            Self::BackupPod { .. } => "BackupPodFailed",
        }
    }
}

/// The clusters (`NAMESPACE/NAME`) with a backup under way: at most one each.
#[derive(Clone, Default)]
pub struct BackupSlots {
    busy: Arc<Mutex<HashSet<String>>>,
}

impl BackupSlots {
    /// The cluster's slot, or `None` while another backup of it runs.
    pub fn claim(&self, cluster: &str) -> Option<BackupSlot> {
        let mut busy = self.busy.lock().expect("slots lock");
        busy.insert(cluster.to_string()).then(|| BackupSlot {
            slots: self.clone(),
            cluster: cluster.to_string(),
        })
    }
}

/// A claimed slot, given back when dropped.
pub struct BackupSlot {
    slots: BackupSlots,
    cluster: String,
}

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.slots
            .busy
            .lock()
            .expect("slots lock")
            .remove(&self.cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_slots_allow_one_backup_per_cluster() {
        let slots = BackupSlots::default();
        let first = slots.claim("ns/a").expect("free");
        assert!(slots.claim("ns/a").is_none());
        assert!(slots.claim("ns/b").is_some());
        drop(first);
        assert!(slots.claim("ns/a").is_some());
    }
}
