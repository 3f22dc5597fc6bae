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
//! it writes anything.
//!
//! Not here: taking backups ([`crate::backup`]).

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client, ResourceExt};
use object_store::path::Path;
use object_store::ObjectStore;
use thiserror::Error;

use crate::backup::destination::open_bucket;
use crate::backup::manifest::{manifest_key, Manifest, MANIFEST_FORMAT};
use crate::backup::snapshot_file::{SnapshotDigest, SnapshotFileError};
use crate::backup::BackupError;
use crate::crd::{
    BackupPhase, KVCluster, KVClusterBackup, RestoreSource, RestoreStatus, S3Object, VolumeFile,
};

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
        let (object, recorded_sha256) = backup_object(client, &namespace, &reference.name).await?;
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
    let Some(file) = &source.volume else {
        // The CRD's rule requires one of the three; an API server without CEL lets it by.
        return Err(RestoreError::NoSource);
    };
    check_claim(client, &namespace, file).await
}

/// The object a succeeded `KVClusterBackup` uploaded, and the SHA-256 its status recorded.
async fn backup_object(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(S3Object, Option<String>), RestoreError> {
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
    let destination = match recorded.and_then(|d| d.s3) {
        Some(s3) => Some(s3),
        None => {
            let clusters: Api<KVCluster> = Api::namespaced(client.clone(), namespace);
            clusters
                .get_opt(&backup.spec.cluster_name)
                .await?
                .and_then(|c| c.spec.backup)
                .and_then(|b| b.destination.s3)
        }
    };
    let destination = destination.ok_or_else(|| RestoreError::BackupWithoutDestination {
        name: full_name,
        cluster: backup.spec.cluster_name.clone(),
    })?;
    Ok((S3Object::in_destination(&destination, &key), status.sha256))
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
