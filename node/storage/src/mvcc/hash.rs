//! The KV hash of `Maintenance.HashKV`: a checksum of the kept history up to a revision, equal on
//! members whose history is equal, so corruption checks can compare members.
//!
//! It covers every kept change with a main revision at or before the requested one, in (key,
//! main, sub) order: key, revision, and the version written (create revision, version, lease,
//! value) or the deletion — what the record means, not how it is laid out, so members whose
//! files hold the same history in different layouts (every layout of earlier releases) agree.
//! Compaction runs in the same applied order on every member and removes the same records, so
//! equal histories give equal hashes after compaction too.

use redb::ReadableTable;

use super::index::{KeyIndex, Rev};
use super::read::load;
use super::tables::{ChunkSource, HistoryRecord, RevKey, RevValue};
use crate::Result;

/// The kept versions at or before `revision`, in (key, main, sub) order: what `hash_history`
/// reads. Found in the index, so the caller holds the index only this long.
pub(super) fn versions_to_hash(index: &KeyIndex, revision: i64) -> Vec<(Vec<u8>, Rev)> {
    let mut versions = Vec::new();
    for (key, kept) in index.iter() {
        for version in kept.iter().take_while(|v| v.rev.0 <= revision) {
            versions.push((key.to_vec(), version.rev));
        }
    }
    versions
}

pub(super) fn hash_history<R>(
    versions: Vec<(Vec<u8>, Rev)>,
    revs: &R,
    values: &dyn ChunkSource,
) -> Result<u32>
where
    R: ReadableTable<RevKey, RevValue>,
{
    let mut hasher = crc32fast::Hasher::new();
    for (key, rev) in versions {
        let (main, sub) = rev;
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(&key);
        hasher.update(&main.to_be_bytes());
        hasher.update(&sub.to_be_bytes());
        match load(revs, values, &key, rev)? {
            HistoryRecord::Tombstone => hasher.update(&[0]),
            HistoryRecord::Put(kv) => {
                hasher.update(&[1]);
                hasher.update(&kv.create_revision.to_be_bytes());
                hasher.update(&kv.version.to_be_bytes());
                hasher.update(&kv.lease.to_be_bytes());
                hasher.update(&(kv.value.len() as u64).to_be_bytes());
                hasher.update(&kv.value);
            }
        }
    }
    Ok(hasher.finalize())
}
