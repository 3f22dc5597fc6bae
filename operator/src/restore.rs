//! Restoring a new cluster from a backup: finding the snapshot `spec.bootstrap.restore` names
//! and checking it before any member exists, so that a missing or damaged snapshot leaves no
//! half-made cluster behind.
//!
//! An object is read once, as it streams, through the same checks a backup passes before it is
//! uploaded (bbolt's magic number and the SHA-256 trailer), and its SHA-256 and size are
//! compared with the manifest beside it. What was found goes into `status.restore`; the members
//! fetch the snapshot themselves, in the init step the pod template gets from
//! [`crate::children`], and check its SHA-256 again. A file on a claim cannot be read from here:
//! the claim is checked to exist, and each member's init step checks the file's trailer before
//! it writes anything — and, for a `KVClusterBackup` written to a volume, its SHA-256 against
//! the one the backup recorded.
//!
//! A point in time (`pointInTime`) is the newest full backup of the source cluster at or before
//! the revision (a time is first turned into the last revision the change log saw made by
//! then), and the change-log segments from it to the revision: they must hold every revision in
//! between, and each is read and checked whole (SHA-256 trailer, every revision present) here,
//! before any member exists. The members download the snapshot and the segments and replay
//! them (`ferrokv snapshot restore --segments-s3-prefix --to-revision`).
//!
//! Not here: taking backups ([`crate::backup`]).

use ferrokv_storage::change_log::{decode_segment, revision_at_time, Segment};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt};
use object_store::path::Path;
use object_store::ObjectStore;
use thiserror::Error;

use crate::backup::continuous::stream::snapshot_revisions;
use crate::backup::destination::open_bucket;
use crate::backup::manifest::{
    manifest_key, segment_revisions, BackupLayout, Manifest, MANIFEST_FORMAT,
};
use crate::backup::BackupError;
use crate::crd::{
    BackupPhase, KVCluster, KVClusterBackup, PointInTimeSource, RestoreSource, RestoreStatus,
    S3Object, VolumeFile,
};
use ferrokv_storage::backup_file::{SnapshotDigest, SnapshotFileError};

/// Why the snapshot to restore cannot be used. Every variant names the source and the problem;
/// the status carries them under the reason `RestoreSourceInvalid`.
#[derive(Error, Debug)]
pub enum RestoreError {
    #[error("spec.bootstrap.restore names none of backup, s3 or volume")]
    NoSource,
    #[error("KVClusterBackup {0} does not exist")]
    BackupNotFound(String),
    #[error("KVClusterBackup {name} has not succeeded (phase {phase}): it holds no backup")]
    BackupNotSucceeded { name: String, phase: String },
    #[error("KVClusterBackup {name} names no destination, and neither does its KVCluster {cluster}'s spec.backup")]
    BackupWithoutDestination { name: String, cluster: String },
    #[error("{object}: the bucket cannot be used: {problem}")]
    Bucket { object: String, problem: String },
    #[error("{0}: no such object")]
    ObjectNotFound(String),
    #[error("{object}: {error}")]
    Download {
        object: String,
        error: object_store::Error,
    },
    #[error("{object}: manifest {key} is not a ferrokv backup manifest: {problem}")]
    ManifestInvalid {
        object: String,
        key: String,
        problem: String,
    },
    #[error("{object}: {what} is {found}, but its manifest says {expected}: the object is not the snapshot that was backed up")]
    ManifestMismatch {
        object: String,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("{object}: not a valid snapshot: {problem}")]
    Snapshot {
        object: String,
        problem: SnapshotFileError,
    },
    #[error("PersistentVolumeClaim {0} does not exist")]
    ClaimNotFound(String),
    #[error("{object}: no full backup at or before revision {revision}")]
    NoSnapshotBefore { object: String, revision: i64 },
    #[error("{object}: the change log saw no revision made at or before {time}")]
    NoRevisionAtTime { object: String, time: String },
    #[error("{object}: the change log cannot take the backup of revision {snapshot} to revision {revision}: {problem}")]
    ChangeLogIncomplete {
        object: String,
        snapshot: i64,
        revision: i64,
        problem: String,
    },
    #[error("{object}: segment {key}: {problem}")]
    SegmentInvalid {
        object: String,
        key: String,
        problem: String,
    },
    /// The API server did not answer: not the source's fault; the reconcile fails and is
    /// retried.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Finds the snapshot `source` names for `kvc` and checks it.
pub async fn check_source(
    client: &Client,
    kvc: &KVCluster,
    source: &RestoreSource,
) -> Result<RestoreStatus, RestoreError> {
    let namespace = kvc.namespace().unwrap_or_default();
    if let Some(reference) = &source.backup {
        let (object, recorded_sha256) =
            match backup_location(client, &namespace, &reference.name).await? {
                BackupLocation::Bucket { object, sha256 } => (object, sha256),
                BackupLocation::Volume {
                    file,
                    revision,
                    size,
                    sha256,
                } => {
                    let mut restore = check_claim(client, &namespace, &file).await?;
                    restore.source = format!(
                        "KVClusterBackup {namespace}/{} ({})",
                        reference.name, restore.source
                    );
                    restore.revision = revision;
                    restore.size = size;
                    restore.sha256 = sha256;
                    return Ok(restore);
                }
            };
        let described = format!(
            "KVClusterBackup {namespace}/{} ({})",
            reference.name,
            object.url()
        );
        let mut status = check_object(client, &namespace, &object, &described).await?;
        if let Some(recorded) = recorded_sha256 {
            compare(
                &described,
                "its SHA-256",
                status.sha256.as_deref(),
                &recorded,
            )?;
        }
        status.source = described;
        return Ok(status);
    }
    if let Some(object) = &source.s3 {
        return check_object(client, &namespace, object, &object.url()).await;
    }
    if let Some(point) = &source.point_in_time {
        return check_point_in_time(client, &namespace, point).await;
    }
    let Some(file) = &source.volume else {
        // The CRD's rule requires one of the three; an API server without CEL lets it by.
        return Err(RestoreError::NoSource);
    };
    check_claim(client, &namespace, file).await
}

/// The newest full backup at or before the point, and every segment of the change log from it
/// to the point, each read and checked whole.
async fn check_point_in_time(
    client: &Client,
    namespace: &str,
    point: &PointInTimeSource,
) -> Result<RestoreStatus, RestoreError> {
    let cluster_namespace = point.namespace.as_deref().unwrap_or(namespace);
    let layout = BackupLayout::new(
        point.destination.prefix.as_deref(),
        cluster_namespace,
        &point.cluster,
    );
    let described = format!(
        "KVCluster {cluster_namespace}/{} at {} (s3://{}/{})",
        point.cluster,
        match (&point.revision, &point.time) {
            (Some(revision), _) => format!("revision {revision}"),
            (None, Some(time)) => format!("time {}", time.0),
            (None, None) => "no revision".to_string(),
        },
        point.destination.bucket,
        layout.segments_directory()
    );
    let bucket_error = |error: BackupError| match error {
        BackupError::Kube(error) => RestoreError::Kube(error),
        other => RestoreError::Bucket {
            object: described.clone(),
            problem: other.to_string(),
        },
    };
    let store = open_bucket(client, namespace, &point.destination)
        .await
        .map_err(bucket_error)?;
    let snapshots = snapshot_revisions(&store, &layout)
        .await
        .map_err(bucket_error)?;
    let listed: Vec<_> = store
        .list(Some(&Path::from(layout.segments_directory())))
        .try_collect()
        .await
        .map_err(|error| RestoreError::Download {
            object: described.clone(),
            error,
        })?;
    let mut segments: Vec<(i64, i64, String)> = listed
        .iter()
        .filter_map(|meta| {
            let key = meta.location.to_string();
            segment_revisions(&key).map(|(first, last)| (first, last, key))
        })
        .collect();
    segments.sort();

    let revision = match (point.revision, &point.time) {
        (Some(revision), _) => revision,
        (None, Some(time)) => {
            // The times revisions were seen are inside the segments after the oldest backup.
            let oldest = snapshots
                .first()
                .map_or(i64::MAX, |(revision, _)| *revision);
            let mut read = Vec::new();
            for (_, _, key) in segments.iter().filter(|(_, last, _)| *last > oldest) {
                read.push(read_segment(store.as_ref(), key, &described).await?);
            }
            revision_at_time(&read, time.0.as_millisecond()).ok_or_else(|| {
                RestoreError::NoRevisionAtTime {
                    object: described.clone(),
                    time: time.0.to_string(),
                }
            })?
        }
        (None, None) => return Err(RestoreError::NoSource),
    };
    let (snapshot, snapshot_key) = snapshots
        .iter()
        .rev()
        .find(|(snapshot, _)| *snapshot <= revision)
        .cloned()
        .ok_or_else(|| RestoreError::NoSnapshotBefore {
            object: described.clone(),
            revision,
        })?;
    let chain = segment_chain(&segments, snapshot, revision).map_err(|problem| {
        RestoreError::ChangeLogIncomplete {
            object: described.clone(),
            snapshot,
            revision,
            problem,
        }
    })?;
    for key in &chain {
        read_segment(store.as_ref(), key, &described).await?;
    }
    let object = S3Object::in_destination(&point.destination, &snapshot_key);
    let mut status = check_object(client, namespace, &object, &described).await?;
    status.to_revision = Some(revision);
    status.segments_prefix = Some(layout.segments_directory());
    status.segments = Some(chain.len() as i64);
    Ok(status)
}

/// The segment at `key`, read and checked whole.
async fn read_segment(
    store: &dyn ObjectStore,
    key: &str,
    source: &str,
) -> Result<Segment, RestoreError> {
    let bytes = match store.get(&Path::from(key)).await {
        Ok(found) => found.bytes().await,
        Err(error) => Err(error),
    }
    .map_err(|error| RestoreError::Download {
        object: format!("{source}: segment {key}"),
        error,
    })?;
    decode_segment(&bytes).map_err(|problem| RestoreError::SegmentInvalid {
        object: source.to_string(),
        key: key.to_string(),
        problem: problem.to_string(),
    })
}

/// The keys of the segments that take a snapshot of revision `snapshot` to `revision`, from
/// `(first, last, key)` in order; or which revisions none holds.
fn segment_chain(
    segments: &[(i64, i64, String)],
    snapshot: i64,
    revision: i64,
) -> Result<Vec<String>, String> {
    let mut covered = snapshot;
    let mut chain = Vec::new();
    for (first, last, key) in segments {
        if covered >= revision {
            break;
        }
        if *last <= covered {
            continue;
        }
        if *first > covered + 1 {
            return Err(format!(
                "no segment holds revisions {} to {}",
                covered + 1,
                first - 1
            ));
        }
        chain.push(key.clone());
        covered = *last;
    }
    if covered < revision {
        return Err(format!("the change log ends at revision {covered}",));
    }
    Ok(chain)
}

/// Where a succeeded `KVClusterBackup` put its snapshot.
enum BackupLocation {
    /// The object it uploaded, and the SHA-256 its status recorded.
    Bucket {
        object: S3Object,
        sha256: Option<String>,
    },
    /// The file it wrote on a claim, and the revision, size and SHA-256 its status recorded.
    Volume {
        file: VolumeFile,
        revision: Option<i64>,
        size: Option<i64>,
        sha256: Option<String>,
    },
}

/// Where the snapshot of a succeeded `KVClusterBackup` is.
async fn backup_location(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BackupLocation, RestoreError> {
    let full_name = format!("{namespace}/{name}");
    let backups: Api<KVClusterBackup> = Api::namespaced(client.clone(), namespace);
    let backup = backups
        .get_opt(name)
        .await?
        .ok_or_else(|| RestoreError::BackupNotFound(full_name.clone()))?;
    let status = backup.status.clone().unwrap_or_default();
    let key = match (status.phase, &status.key) {
        (Some(BackupPhase::Succeeded), Some(key)) => key.clone(),
        (phase, _) => {
            return Err(RestoreError::BackupNotSucceeded {
                name: full_name,
                phase: phase.map_or("none yet".to_string(), |p| format!("{p:?}")),
            })
        }
    };
    // Where it went; a backup taken before the status recorded it went where its spec or its
    // cluster said.
    let recorded = status
        .destination
        .clone()
        .or(backup.spec.destination.clone());
    let destination = match recorded {
        Some(destination) => Some(destination),
        None => {
            let clusters: Api<KVCluster> = Api::namespaced(client.clone(), namespace);
            clusters
                .get_opt(&backup.spec.cluster_name)
                .await?
                .and_then(|c| c.spec.backup)
                .map(|b| b.destination)
        }
    };
    match destination.map(|d| (d.s3, d.volume)) {
        Some((Some(s3), _)) => Ok(BackupLocation::Bucket {
            object: S3Object::in_destination(&s3, &key),
            sha256: status.sha256,
        }),
        Some((None, Some(volume))) => Ok(BackupLocation::Volume {
            file: VolumeFile {
                claim_name: volume.claim_name,
                path: key,
            },
            revision: status.revision,
            size: status.size,
            sha256: status.sha256,
        }),
        _ => Err(RestoreError::BackupWithoutDestination {
            name: full_name,
            cluster: backup.spec.cluster_name.clone(),
        }),
    }
}

/// Reads the object once through the snapshot checks and compares it with its manifest.
async fn check_object(
    client: &Client,
    namespace: &str,
    object: &S3Object,
    described: &str,
) -> Result<RestoreStatus, RestoreError> {
    let source = described.to_string();
    let store = open_bucket(client, namespace, &object.destination())
        .await
        .map_err(|error| match error {
            BackupError::Kube(error) => RestoreError::Kube(error),
            other => RestoreError::Bucket {
                object: source.clone(),
                problem: other.to_string(),
            },
        })?;
    let manifest = read_manifest(store.as_ref(), object, &source).await?;

    let download = |error| match error {
        object_store::Error::NotFound { .. } => RestoreError::ObjectNotFound(source.clone()),
        error => RestoreError::Download {
            object: source.clone(),
            error,
        },
    };
    let mut stream = store
        .get(&Path::from(object.key.as_str()))
        .await
        .map_err(download)?
        .into_stream();
    let mut digest = SnapshotDigest::new();
    while let Some(chunk) = stream.next().await {
        digest.update(&chunk.map_err(download)?);
    }
    let checked = digest.finish().map_err(|problem| RestoreError::Snapshot {
        object: source.clone(),
        problem,
    })?;
    if let Some(manifest) = &manifest {
        compare(
            &source,
            "its SHA-256",
            Some(&checked.sha256),
            &manifest.sha256,
        )?;
        compare(
            &source,
            "its size",
            Some(&checked.size.to_string()),
            &manifest.size.to_string(),
        )?;
    }
    Ok(RestoreStatus {
        source,
        s3: Some(object.clone()),
        volume: None,
        revision: manifest.as_ref().map(|m| m.revision),
        size: Some(checked.size as i64),
        sha256: Some(checked.sha256),
        verified_time: Time(Timestamp::now()),
        restored_time: None,
        to_revision: None,
        segments_prefix: None,
        segments: None,
    })
}

/// The manifest beside the object, when there is one. A snapshot uploaded by hand has none;
/// one the operator uploaded always has.
async fn read_manifest(
    store: &dyn ObjectStore,
    object: &S3Object,
    source: &str,
) -> Result<Option<Manifest>, RestoreError> {
    let key = manifest_key(&object.key);
    if key == object.key {
        return Ok(None);
    }
    let bytes = match store.get(&Path::from(key.as_str())).await {
        Ok(found) => found.bytes().await,
        Err(error) => Err(error),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => {
            return Err(RestoreError::Download {
                object: source.to_string(),
                error,
            })
        }
    };
    let invalid = |problem: String| RestoreError::ManifestInvalid {
        object: source.to_string(),
        key: key.clone(),
        problem,
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(invalid(format!(
            "format {:?}, not {MANIFEST_FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.snapshot_key != object.key {
        return Err(invalid(format!(
            "it describes {}, not {}",
            manifest.snapshot_key, object.key
        )));
    }
    Ok(Some(manifest))
}

fn compare(
    source: &str,
    what: &'static str,
    found: Option<&str>,
    expected: &str,
) -> Result<(), RestoreError> {
    match found {
        Some(found) if !found.eq_ignore_ascii_case(expected) => {
            Err(RestoreError::ManifestMismatch {
                object: source.to_string(),
                what,
                found: found.to_string(),
                expected: expected.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// A file on a claim: the claim must exist; its content is checked by each member's init step.
async fn check_claim(
    client: &Client,
    namespace: &str,
    file: &VolumeFile,
) -> Result<RestoreStatus, RestoreError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    claims
        .get_opt(&file.claim_name)
        .await?
        .filter(|claim| claim.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| RestoreError::ClaimNotFound(format!("{namespace}/{}", file.claim_name)))?;
    Ok(RestoreStatus {
        source: format!(
            "PersistentVolumeClaim {namespace}/{}, file {}",
            file.claim_name, file.path
        ),
        s3: None,
        volume: Some(file.clone()),
        revision: None,
        size: None,
        sha256: None,
        verified_time: Time(Timestamp::now()),
        restored_time: None,
        to_revision: None,
        segments_prefix: None,
        segments: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(ranges: &[(i64, i64)]) -> Vec<(i64, i64, String)> {
        ranges
            .iter()
            .map(|&(first, last)| (first, last, format!("{first}-{last}")))
            .collect()
    }

    #[test]
    fn restore_to_a_revision_takes_the_segments_from_the_snapshot_on() {
        let log = segments(&[(5, 9), (10, 14), (15, 20), (21, 30)]);
        assert_eq!(segment_chain(&log, 12, 18).unwrap(), ["10-14", "15-20"]);
        assert_eq!(segment_chain(&log, 14, 15).unwrap(), ["15-20"]);
        assert!(segment_chain(&log, 20, 20).unwrap().is_empty());
        assert_eq!(
            segment_chain(&log, 12, 31).unwrap_err(),
            "the change log ends at revision 30"
        );
        let holed = segments(&[(5, 9), (12, 14)]);
        assert_eq!(
            segment_chain(&holed, 6, 13).unwrap_err(),
            "no segment holds revisions 10 to 11"
        );
    }

    #[test]
    fn comparison_names_the_source_and_both_values() {
        compare("s3://b/k", "its SHA-256", Some("AB"), "ab").unwrap();
        let error = compare("s3://b/k", "its size", Some("10"), "12")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("s3://b/k") && error.contains("10") && error.contains("12"),
            "{error}"
        );
    }
}
