//! The KV hash of `Maintenance.HashKV`: a checksum of the kept history up to a revision, equal on
//! members whose history is equal, so corruption checks can compare members.
//!
//! It covers every change kept in `kv_history` with a main revision at or before the requested
//! one: key, revision, and the version written (create revision, version, lease, value) or the
//! deletion — what the record means, not how it is laid out, so members whose files hold the
//! same history in different record layouts (written before and after the lean layout) agree. Compaction runs in the same applied order on every member and
//! removes the same records, so equal histories give equal hashes after compaction too.

use redb::ReadableTable;

use super::tables::{ChunkSource, HistoryKey, HistoryRecord};
use crate::Result;

pub(super) fn hash_history<H>(history: &H, values: &dyn ChunkSource, revision: i64) -> Result<u32>
where
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    let mut hasher = crc32fast::Hasher::new();
    for entry in history.iter()? {
        let (k, record) = entry?;
        let (key, main, sub) = k.value();
        if main > revision {
            continue;
        }
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update(&main.to_be_bytes());
        hasher.update(&sub.to_be_bytes());
        match HistoryRecord::load(key, main, sub, record.value(), values)? {
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
