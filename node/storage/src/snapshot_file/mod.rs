//! The snapshot file: what `Maintenance.Snapshot` streams and `etcdctl snapshot save` writes,
//! and what `ferrokv snapshot restore` reads back.
//!
//! The file is etcd's: a bbolt database holding etcd's buckets (`etcd`), followed by the SHA-256
//! of the database bytes. So etcd's tools accept ferrokv's snapshots (`etcdctl snapshot status`,
//! `etcdctl`/`etcdutl snapshot restore`), and ferrokv restores snapshots saved from etcd.
//! Snapshots of earlier ferrokv releases (magic `FERROKV1`, `legacy`) are still read.
//!
//! The trailer rule is etcd's: a file of 512·n + 32 bytes ends with the SHA-256 of what comes
//! before it, which must match; a file of any other size has no trailer and is read only when
//! the caller skips the hash check (a database file copied out of a data dir).

mod etcd;
mod legacy;

use sha2::{Digest, Sha256};

use crate::mvcc::StoreContents;
use crate::{Result, StorageError as Error};

const DIGEST_LEN: usize = 32;
const TRAILER_ALIGN: usize = 512;

/// What a snapshot carries about the cluster it was saved from, beside the keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The Raft index the store had applied (etcd's consistent index).
    pub consistent_index: u64,
    /// The Raft term of that entry; 0 if unknown (etcd before 3.5 does not record it).
    pub term: u64,
    pub members: Vec<SnapshotMember>,
    /// IDs of removed members.
    pub removed: Vec<u64>,
}

/// A member as etcd records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Where a snapshot file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFormat {
    /// A bbolt database with etcd's buckets: saved from etcd, or from ferrokv since it writes
    /// etcd's format.
    Etcd,
    /// ferrokv's first format (`FERROKV1`).
    FerrokvV1,
}

/// Whether to check the SHA-256 trailer (etcd's `--skip-hash-check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashCheck {
    Verify,
    Skip,
}

/// A snapshot file read back.
#[derive(Debug)]
pub struct Snapshot {
    pub format: SnapshotFormat,
    pub contents: StoreContents,
    /// A compaction the source had scheduled but not finished; the restore finishes it, as
    /// etcd does when it starts.
    pub unfinished_compaction: Option<i64>,
    pub cluster: ClusterState,
}

/// The snapshot file of `contents`: etcd's database and its SHA-256 trailer.
pub fn encode(contents: &StoreContents, cluster: &ClusterState) -> Result<Vec<u8>> {
    let mut file = etcd::write(contents, cluster)?;
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    Ok(file)
}

/// Checks a snapshot file and reads it.
pub fn decode(file: &[u8], hash_check: HashCheck) -> Result<Snapshot> {
    let has_trailer = file.len() % TRAILER_ALIGN == DIGEST_LEN;
    let body = match (has_trailer, hash_check) {
        (true, HashCheck::Verify) => {
            let (body, digest) = file.split_at(file.len() - DIGEST_LEN);
            if Sha256::digest(body).as_slice() != digest {
                return Err(Error::SnapshotFile(
                    "sha256 checksum mismatch: the file is damaged".to_string(),
                ));
            }
            body
        }
        (true, HashCheck::Skip) => &file[..file.len() - DIGEST_LEN],
        (false, HashCheck::Verify) => {
            return Err(Error::SnapshotFile(format!(
                "no sha256 trailer ({} bytes is not 512*n + 32): the file is truncated, or is a database file copied without one (restore that with --skip-hash-check)",
                file.len()
            )))
        }
        (false, HashCheck::Skip) => file,
    };
    if body.starts_with(legacy::MAGIC) {
        return Ok(Snapshot {
            format: SnapshotFormat::FerrokvV1,
            contents: legacy::read(body)?,
            unfinished_compaction: None,
            cluster: ClusterState::default(),
        });
    }
    let read = etcd::read(body)?;
    Ok(Snapshot {
        format: SnapshotFormat::Etcd,
        contents: read.contents,
        unfinished_compaction: read.unfinished_compaction,
        cluster: read.cluster,
    })
}

#[cfg(test)]
mod tests;
