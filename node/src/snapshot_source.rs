//! Where `ferrokv snapshot restore` gets its snapshot: a local file, or an object in
//! S3-compatible storage downloaded into a local file first. Either way the file's SHA-256 can be
//! checked against the one a manifest recorded (`--sha256`) before anything is restored.
//!
//! The download streams to disk while it is hashed, so a snapshot of any size is never held in
//! memory here. Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), where the operator's init container puts them
//! from the credentials Secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use crate::storage::change_log;
use crate::{Error, Result};

/// A snapshot object in an S3-compatible bucket.
#[derive(Debug, Clone, Args)]
pub struct S3Source {
    /// Download the snapshot from this S3 bucket instead of reading FILE.
    #[arg(long, requires = "s3_key")]
    pub s3_bucket: Option<String>,
    /// Key of the snapshot object in --s3-bucket.
    #[arg(long, requires = "s3_bucket")]
    pub s3_key: Option<String>,
    /// URL of an S3-compatible server; AWS S3 when unset.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// Address the bucket as ENDPOINT/BUCKET rather than BUCKET.ENDPOINT.
    #[arg(long)]
    pub s3_force_path_style: bool,
}

impl S3Source {
    /// The bucket and key, when the snapshot comes from object storage.
    pub fn object(&self) -> Option<(&str, &str)> {
        Some((self.s3_bucket.as_deref()?, self.s3_key.as_deref()?))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::SnapshotSource(format!("cannot start the download: {e}")))
}

/// A client of the bucket `source` names.
fn open_bucket(source: &S3Source, bucket: &str) -> Result<impl ObjectStore> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&source.s3_region)
        .with_virtual_hosted_style_request(!source.s3_force_path_style)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        })
        .with_client_options(ClientOptions::new().with_connect_timeout(Duration::from_secs(5)));
    if let Some(endpoint) = &source.s3_endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder
        .build()
        .map_err(|e| Error::SnapshotSource(format!("bucket {bucket}: {e}")))
}

/// Downloads the object `S3Source` names into `file`; answers its SHA-256 (lower-case hex).
pub fn download(source: &S3Source, file: &Path) -> Result<String> {
    let (bucket, key) = source
        .object()
        .ok_or_else(|| Error::Config("--s3-bucket and --s3-key name the object".to_string()))?;
    runtime()?.block_on(async {
        let store = open_bucket(source, bucket)?;
        let where_ = format!("s3://{bucket}/{key}");
        let object = store
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| Error::SnapshotSource(format!("downloading {where_}: {e}")))?;
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", file.display())))?;
        let mut hash = Sha256::new();
        let mut stream = object.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Error::SnapshotSource(format!("downloading {where_}: {e}")))?;
            hash.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::DataDir(format!("cannot write {}: {e}", file.display())))?;
        }
        out.sync_all()
            .await
            .map_err(|e| Error::DataDir(format!("cannot write {}: {e}", file.display())))?;
        Ok(hex(&hash.finalize()))
    })
}

/// Downloads the change-log segments under `prefix` in the bucket of `source` that hold
/// revisions up to `to_revision` into `dir`; answers how many.
pub fn download_segments(
    source: &S3Source,
    prefix: &str,
    to_revision: i64,
    dir: &Path,
) -> Result<usize> {
    let bucket = source
        .s3_bucket
        .as_deref()
        .ok_or_else(|| Error::Config("--segments-s3-prefix needs --s3-bucket".to_string()))?;
    let where_ = format!("s3://{bucket}/{prefix}");
    let failed = |e: object_store::Error| {
        Error::SnapshotSource(format!("downloading the segments under {where_}: {e}"))
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", dir.display())))?;
    runtime()?.block_on(async {
        let store = open_bucket(source, bucket)?;
        let listed: Vec<_> = store
            .list(Some(&ObjectPath::from(prefix)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(failed)?;
        let mut count = 0;
        for meta in listed {
            let key = meta.location.to_string();
            let Some((first, _)) = change_log::segment_file_revisions(&key) else {
                continue;
            };
            if first > to_revision {
                continue;
            }
            let bytes = store
                .get(&meta.location)
                .await
                .map_err(failed)?
                .bytes()
                .await
                .map_err(failed)?;
            let name = key.rsplit('/').next().unwrap_or(&key);
            let file = dir.join(name);
            std::fs::write(&file, &bytes)
                .map_err(|e| Error::DataDir(format!("cannot write {}: {e}", file.display())))?;
            count += 1;
        }
        Ok(count)
    })
}

/// The SHA-256 of a local file, read in pieces.
pub fn file_sha256(file: &Path) -> Result<String> {
    let mut input = std::fs::File::open(file)
        .map_err(|e| Error::SnapshotSource(format!("cannot read {}: {e}", file.display())))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut input, &mut hash)
        .map_err(|e| Error::SnapshotSource(format!("cannot read {}: {e}", file.display())))?;
    Ok(hex(&hash.finalize()))
}

/// Refuses a snapshot whose SHA-256 is not the expected one.
pub fn check_sha256(what: &str, actual: &str, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => {
            Err(Error::SnapshotSource(format!(
                "{what} has SHA-256 {actual}, not {} as its manifest says: it is not the snapshot that was backed up",
                expected.to_ascii_lowercase()
            )))
        }
        _ => Ok(()),
    }
}

/// Where a downloaded snapshot is kept while it is restored: beside the member dir in the data
/// dir, whose volume is sized for the database.
pub fn download_path(data_dir: &Path) -> PathBuf {
    data_dir.join("restore-source.db")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_check_names_both_hashes_and_ignores_case() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        std::fs::write(&file, b"abc").unwrap();
        let actual = file_sha256(&file).unwrap();
        assert_eq!(
            actual,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        check_sha256("s.db", &actual, None).unwrap();
        check_sha256("s.db", &actual, Some(&actual.to_ascii_uppercase())).unwrap();
        let error = check_sha256("s.db", &actual, Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&actual) && error.contains(&"0".repeat(64)),
            "{error}"
        );
    }
}
