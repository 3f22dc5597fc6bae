//! Who this member is: its member ID, its cluster's ID and token, kept in the data dir (and
//! mirrored in the WAL dir) so that a copied or re-attached data dir restarts as the same member.
//!
//! IDs are computed as etcd computes them: a member's ID from its sorted peer URLs and the
//! cluster token, the cluster ID from the sorted member IDs — so every founding member derives
//! the same IDs from the same `--initial-cluster` without talking to the others.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Result, StorageError as Error};

const FILE_NAME: &str = "identity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
    /// The founding members (name → peer URLs) this member bootstraps the cluster with, until
    /// its Raft log records that it has; empty for a member that joins a running cluster.
    #[serde(default)]
    pub initial_cluster: BTreeMap<String, Vec<String>>,
}

/// The member ID of a member with `peer_urls` in the cluster named by `token`; `salt` makes the
/// ID of a member added later unique (etcd mixes in the current time).
pub fn member_id(peer_urls: &[String], token: &str, salt: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = Sha256::new();
    hasher.update(urls.join("").as_bytes());
    hasher.update(token.as_bytes());
    if let Some(salt) = salt {
        hasher.update(salt.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

/// The cluster ID of a cluster founded by `member_ids`.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(hash: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    // 0 means "no member" on etcd's wire, so it is never an ID.
    u64::from_be_bytes(b).max(1)
}

/// Where the identity is kept inside a data dir.
pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

impl Identity {
    /// Reads the identity kept in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        let path = dir.join(FILE_NAME);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::DataDir(format!("{} is unreadable: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::DataDir(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the identity into `dir` durably (write to a temp file, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| {
            Error::DataDir(format!("cannot write identity in {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("identity serialises"))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, dir.join(FILE_NAME)).map_err(io)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_urls_and_token_only() {
        let a = member_id(&["http://a:2380".into(), "http://b:2380".into()], "t", None);
        let b = member_id(&["http://b:2380".into(), "http://a:2380".into()], "t", None);
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:2380".into(), "http://b:2380".into()], "u", None)
        );
        assert_eq!(cluster_id(&[1, 2, 3]), cluster_id(&[3, 1, 2]));
    }

    #[test]
    fn identity_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let id = Identity {
            name: "infra1".into(),
            member_id: 7,
            cluster_id: 9,
            cluster_token: "tok".into(),
            initial_cluster: BTreeMap::from([("infra1".into(), vec!["http://a:2380".into()])]),
        };
        id.store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
    }
}
