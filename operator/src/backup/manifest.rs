//! What a backup is in object storage: the snapshot object, the JSON manifest beside it, and
//! the keys both live at.
//!
//! Objects of a cluster live under `PREFIX/NAMESPACE/CLUSTER/`: scheduled backups under
//! `scheduled/` (the only ones retention deletes), those of a `KVClusterBackup` under
//! `on-demand/`. A snapshot is `TIME-rREVISION.db` and its manifest the same name with `.json`.
//! The change log of continuous backup lives under `segments/`, one object per segment named
//! `FIRST-LAST.seg` after its revisions, zero-padded so that names sort as revisions do.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The manifest's `format`: a restore refuses manifests of another format.
pub const MANIFEST_FORMAT: &str = "ferrokv.io/backup-manifest/v1";

/// The JSON object uploaded next to each snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    /// `NAMESPACE/NAME` of the KVCluster.
    pub cluster: String,
    /// Cluster ID as etcd prints it (hex).
    pub cluster_id: String,
    /// Name of the member the snapshot was taken from.
    pub member: String,
    /// Revision of the keyspace the snapshot holds.
    pub revision: i64,
    /// When the snapshot was taken (RFC 3339).
    pub time: String,
    /// Bytes of the snapshot object.
    pub size: u64,
    /// SHA-256 of the snapshot object, lower-case hex.
    pub sha256: String,
    /// The version the member reported.
    pub ferrokv_version: String,
    /// Key of the snapshot object.
    pub snapshot_key: String,
}

/// Which backups a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Scheduled,
    OnDemand,
}

/// The object keys of a cluster's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLayout {
    /// `PREFIX/NAMESPACE/CLUSTER`, without a trailing slash.
    base: String,
}

impl BackupLayout {
    pub fn new(prefix: Option<&str>, namespace: &str, cluster: &str) -> Self {
        let prefix = prefix.unwrap_or_default().trim_matches('/');
        let base = if prefix.is_empty() {
            format!("{namespace}/{cluster}")
        } else {
            format!("{prefix}/{namespace}/{cluster}")
        };
        Self { base }
    }

    /// Where backups of `kind` go.
    pub fn directory(&self, kind: BackupKind) -> String {
        match kind {
            BackupKind::Scheduled => format!("{}/scheduled", self.base),
            BackupKind::OnDemand => format!("{}/on-demand", self.base),
        }
    }

    /// Where the change log's segments go.
    pub fn segments_directory(&self) -> String {
        format!("{}/segments", self.base)
    }

    /// Key of the segment of revisions `first..=last`.
    pub fn segment_key(&self, first: i64, last: i64) -> String {
        format!(
            "{}/{}",
            self.segments_directory(),
            ferrokv_storage::change_log::segment_file_name(first, last)
        )
    }

    /// Key of a snapshot taken at `time` at `revision`.
    pub fn snapshot_key(&self, kind: BackupKind, time: Timestamp, revision: i64) -> String {
        let stamp = time.strftime("%Y%m%dT%H%M%SZ");
        format!("{}/{stamp}-r{revision}.db", self.directory(kind))
    }
}

/// Key of the manifest of the snapshot at `snapshot_key`.
pub fn manifest_key(snapshot_key: &str) -> String {
    let stem = snapshot_key.strip_suffix(".db").unwrap_or(snapshot_key);
    format!("{stem}.json")
}

pub use ferrokv_storage::change_log::segment_file_revisions as segment_revisions;

/// The revision in the name of the snapshot at `key` (`TIME-rREVISION.db`).
pub fn snapshot_revision(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?.strip_suffix(".db")?;
    name.rsplit_once("-r")?.1.parse().ok()
}

/// Key of the snapshot a manifest describes, when `key` is a manifest's.
pub fn snapshot_key_of_manifest(key: &str) -> Option<String> {
    key.strip_suffix(".json").map(|stem| format!("{stem}.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_serializes_with_camel_case_fields_and_round_trips() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_string(),
            cluster: "default/example".to_string(),
            cluster_id: "c0ffee".to_string(),
            member: "example-1".to_string(),
            revision: 42,
            time: "2026-12-05T23:00:00Z".to_string(),
            size: 20480,
            sha256: "ab".repeat(32),
            ferrokv_version: "3.5.0".to_string(),
            snapshot_key: "p/default/example/scheduled/20261205T230000Z-r42.db".to_string(),
        };
        let json = serde_json::to_value(&manifest).unwrap();
        assert_eq!(json["ferrokvVersion"], "3.5.0");
        assert_eq!(json["snapshotKey"], manifest.snapshot_key);
        assert_eq!(json["revision"], 42);
        let back: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, manifest);
    }

    #[test]
    fn backup_keys_sort_by_time_under_the_cluster_directory() {
        let layout = BackupLayout::new(Some("/backups/"), "prod", "example");
        let time: Timestamp = "2026-12-05T23:04:05Z".parse().unwrap();
        let key = layout.snapshot_key(BackupKind::Scheduled, time, 1234);
        assert_eq!(
            key,
            "backups/prod/example/scheduled/20261205T230405Z-r1234.db"
        );
        assert_eq!(
            manifest_key(&key),
            "backups/prod/example/scheduled/20261205T230405Z-r1234.json"
        );
        assert_eq!(snapshot_revision(&key), Some(1234));
        assert_eq!(
            snapshot_key_of_manifest(&manifest_key(&key)),
            Some(key.clone())
        );
        let segment = layout.segment_key(1235, 1300);
        assert_eq!(
            segment,
            "backups/prod/example/segments/00000000000000001235-00000000000000001300.seg"
        );
        assert_eq!(segment_revisions(&segment), Some((1235, 1300)));
        assert_eq!(segment_revisions(&key), None);
        let bare = BackupLayout::new(None, "prod", "example");
        assert_eq!(
            bare.directory(BackupKind::OnDemand),
            "prod/example/on-demand"
        );
    }
}
