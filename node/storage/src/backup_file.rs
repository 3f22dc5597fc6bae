//! What a backup is on disk and in object storage, for the operator that takes and restores
//! backups and for `ferrokv snapshot save`, which writes them to a volume: the checks a snapshot
//! file passes ([`SnapshotDigest`]) and the JSON manifest beside it ([`Manifest`]).
//!
//! etcd's snapshot format is a bbolt database followed by a 32-byte trailer, the SHA-256 of
//! everything before it. [`SnapshotDigest`] is fed the file in pieces as they arrive, so that a
//! snapshot of any size is checked without being held in memory. It also hashes the whole file,
//! trailer included: that is the `sha256` the manifest records and a restore compares.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 32;

/// bbolt's magic number, in the meta page that opens the file (after the 16-byte page header).
const BBOLT_MAGIC: u32 = 0xED0C_DAED;
const BBOLT_MAGIC_OFFSET: usize = 16;

/// Why a snapshot file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{0} bytes is too short for a snapshot")]
    TooShort(u64),
    #[error("not a bbolt database: no magic number in its first page")]
    NotBbolt,
    #[error("SHA-256 trailer {trailer} does not match the body's hash {body}: the file is corrupt or truncated")]
    TrailerMismatch { trailer: String, body: String },
}

/// What a checked snapshot file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSnapshot {
    /// Bytes of the whole file.
    pub size: u64,
    /// SHA-256 of the whole file, in lower-case hex.
    pub sha256: String,
}

/// Hashes a snapshot file as it streams by and checks it at the end.
#[derive(Default)]
pub struct SnapshotDigest {
    /// Hash of every byte that can no longer be part of the trailer.
    body: Sha256,
    whole: Sha256,
    /// The last bytes seen, up to [`TRAILER_LEN`]: the trailer once the file ends.
    tail: Vec<u8>,
    /// The first bytes, up to the end of the bbolt magic.
    head: Vec<u8>,
    size: u64,
}

impl SnapshotDigest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.whole.update(chunk);
        self.size += chunk.len() as u64;
        let head_missing = (BBOLT_MAGIC_OFFSET + 4).saturating_sub(self.head.len());
        self.head
            .extend_from_slice(&chunk[..head_missing.min(chunk.len())]);
        if chunk.len() >= TRAILER_LEN {
            self.body.update(&self.tail);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.body.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(chunk);
            let surplus = self.tail.len().saturating_sub(TRAILER_LEN);
            self.body.update(&self.tail[..surplus]);
            self.tail.drain(..surplus);
        }
    }

    /// The file's size and hash, or why it is not a valid snapshot.
    pub fn finish(self) -> Result<CheckedSnapshot, SnapshotFileError> {
        if self.tail.len() < TRAILER_LEN || self.head.len() < BBOLT_MAGIC_OFFSET + 4 {
            return Err(SnapshotFileError::TooShort(self.size));
        }
        let magic = u32::from_le_bytes(
            self.head[BBOLT_MAGIC_OFFSET..BBOLT_MAGIC_OFFSET + 4]
                .try_into()
                .expect("four bytes"),
        );
        if magic != BBOLT_MAGIC {
            return Err(SnapshotFileError::NotBbolt);
        }
        let body = self.body.finalize();
        if body.as_slice() != self.tail.as_slice() {
            return Err(SnapshotFileError::TrailerMismatch {
                trailer: hex(&self.tail),
                body: hex(&body),
            });
        }
        Ok(CheckedSnapshot {
            size: self.size,
            sha256: hex(&self.whole.finalize()),
        })
    }
}

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

/// What `ferrokv snapshot save --backup-dir` wrote, as it prints it and leaves it in its
/// container's termination message for the operator: the manifest of the new backup, and how
/// many older backups retention deleted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavedBackup {
    pub manifest: Manifest,
    pub deleted: usize,
}

/// Key of the manifest of the snapshot at `snapshot_key`.
pub fn manifest_key(snapshot_key: &str) -> String {
    let stem = snapshot_key.strip_suffix(".db").unwrap_or(snapshot_key);
    format!("{stem}.json")
}

/// Retention's rule, for backups in a bucket and in a directory alike: of `newest_first`, those
/// beyond the `keep` newest and those `too_old` picks out, but never the newest, so that
/// retention never leaves nothing.
pub fn expired<T>(newest_first: &[T], keep: Option<u32>, too_old: impl Fn(&T) -> bool) -> Vec<&T> {
    newest_first
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(index, backup)| {
            keep.is_some_and(|keep| *index >= keep as usize) || too_old(backup)
        })
        .map(|(_, backup)| backup)
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    /// A file that passes: a page with bbolt's magic, some body, the body's SHA-256.
    fn snapshot(body_len: usize) -> Vec<u8> {
        let mut body = vec![0u8; body_len.max(BBOLT_MAGIC_OFFSET + 4)];
        body[BBOLT_MAGIC_OFFSET..BBOLT_MAGIC_OFFSET + 4]
            .copy_from_slice(&BBOLT_MAGIC.to_le_bytes());
        for (i, b) in body.iter_mut().enumerate().skip(BBOLT_MAGIC_OFFSET + 4) {
            *b = (i % 251) as u8;
        }
        let trailer = Sha256::digest(&body);
        body.extend_from_slice(&trailer);
        body
    }

    fn check_in_chunks(file: &[u8], chunk: usize) -> Result<CheckedSnapshot, SnapshotFileError> {
        let mut digest = SnapshotDigest::new();
        for piece in file.chunks(chunk) {
            digest.update(piece);
        }
        digest.finish()
    }

    #[test]
    fn trailer_check_passes_a_good_file_whatever_the_chunk_size() {
        let file = snapshot(10_000);
        let expected = hex(&Sha256::digest(&file));
        for chunk in [1, 7, 31, 32, 33, 4096, file.len()] {
            let checked = check_in_chunks(&file, chunk).unwrap();
            assert_eq!(checked.size, file.len() as u64, "chunk {chunk}");
            assert_eq!(checked.sha256, expected, "chunk {chunk}");
        }
    }

    #[test]
    fn trailer_check_refuses_a_flipped_byte() {
        let mut file = snapshot(5_000);
        file[3_000] ^= 1;
        assert!(matches!(
            check_in_chunks(&file, 1000),
            Err(SnapshotFileError::TrailerMismatch { .. })
        ));
    }

    #[test]
    fn trailer_check_refuses_a_truncated_file() {
        let file = snapshot(5_000);
        assert!(matches!(
            check_in_chunks(&file[..file.len() - 100], 512),
            Err(SnapshotFileError::TrailerMismatch { .. })
        ));
        assert_eq!(
            check_in_chunks(&file[..10], 4),
            Err(SnapshotFileError::TooShort(10))
        );
    }

    #[test]
    fn trailer_check_refuses_what_is_not_bbolt() {
        let mut body = vec![7u8; 1000];
        let trailer = Sha256::digest(&body);
        body.extend_from_slice(&trailer);
        assert_eq!(
            check_in_chunks(&body, 100),
            Err(SnapshotFileError::NotBbolt)
        );
    }
}
