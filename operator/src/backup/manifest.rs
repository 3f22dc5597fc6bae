//! What a backup is in object storage: the snapshot object, the JSON manifest beside it, and
//! the keys both live at.
//!
//! Objects of a cluster live under `PREFIX/NAMESPACE/CLUSTER/`: scheduled backups under
//! `scheduled/` (the only ones retention deletes), those of a `KVClusterBackup` under
//! `on-demand/`. A snapshot is `TIME-rREVISION.db` and its manifest the same name with `.json`.
//! The change log of continuous backup lives under `segments/`, one object per segment named
//! `FIRST-LAST.seg` after its revisions, zero-padded so that names sort as revisions do.

use k8s_openapi::jiff::Timestamp;

/// Which backups a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Scheduled,
    OnDemand,
}

impl BackupKind {
    /// The kind as keys and names spell it: `scheduled`, `on-demand`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Scheduled => "scheduled",
            BackupKind::OnDemand => "on-demand",
        }
    }
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
        format!("{}/{}", self.base, kind.as_str())
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

pub use ferrokv_storage::backup_file::{manifest_key, Manifest, MANIFEST_FORMAT};
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
