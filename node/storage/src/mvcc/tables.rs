//! The on-disk layout of the MVCC store: the redb tables and how their values are encoded.
//!
//! Everything the store knows lives in these tables, and every table is written only inside the
//! write transaction of a batch, so one redb commit moves all of them (and the Raft state
//! machine's metadata) together:
//!
//! - `kv_latest`: key → the revision (main, sub) of the key's live version in `kv_history`
//!   (absent once deleted): an index, so every value is stored once. Serves reads at the current
//!   revision without scanning history.
//! - `kv_history`: (key, main revision, sub revision) → every version and tombstone, kept until
//!   compaction. Serves reads at older revisions and the `prev_kv` of replayed events.
//! - `kv_events`: (main revision, sub revision) → key, the order in which changes happened.
//!   Serves watch replay and tells compaction which keys changed before the compaction point.
//! - `leases`: lease ID → granted TTL in seconds; `lease_keys`: (lease ID, key) → ().
//! - `revisions`: the current and the compacted revision.
//! - `meta`: opaque values of the Raft state machine (applied log ID, membership).

use etcd_client::proto::PbKeyValue;
use prost::Message;
use redb::{Table, TableDefinition};

use crate::{Result, StorageError as Error};

/// A key of `kv_history`: the user key, then the main and sub revision of the change.
pub(super) type HistoryKey = (&'static [u8], i64, i64);

/// `kv_latest` and `kv_history` opened for writing.
pub(super) type LatestTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
pub(super) type HistoryTable<'t> = Table<'t, HistoryKey, &'static [u8]>;

pub(super) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_latest");
pub(super) const HISTORY: TableDefinition<HistoryKey, &[u8]> = TableDefinition::new("kv_history");
pub(super) const EVENTS: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("kv_events");
pub(super) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
pub(super) const REVISIONS: TableDefinition<&str, i64> = TableDefinition::new("revisions");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Key in `revisions` of the revision of the last change.
pub(super) const CURRENT_REVISION: &str = "current";
/// Key in `revisions` of the revision of the last compaction.
pub(super) const COMPACT_REVISION: &str = "compacted";

/// etcd starts counting at 1: an empty store reports revision 1 and the first change gets 2.
pub const INITIAL_REVISION: i64 = 1;
/// etcd reports -1 as the compacted revision of a store that was never compacted.
pub const NEVER_COMPACTED: i64 = -1;

/// One entry of `kv_history`: a version of a key, or the tombstone its deletion left.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HistoryRecord {
    Put(PbKeyValue),
    Tombstone,
}

const TAG_TOMBSTONE: u8 = 0;
const TAG_PUT: u8 = 1;

impl HistoryRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            HistoryRecord::Tombstone => vec![TAG_TOMBSTONE],
            HistoryRecord::Put(kv) => {
                let mut buf = Vec::with_capacity(1 + kv.encoded_len());
                buf.push(TAG_PUT);
                kv.encode(&mut buf).expect("a Vec grows to fit any message");
                buf
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<HistoryRecord> {
        match bytes.split_first() {
            Some((&TAG_TOMBSTONE, [])) => Ok(HistoryRecord::Tombstone),
            Some((&TAG_PUT, kv)) => Ok(HistoryRecord::Put(decode_kv(kv)?)),
            _ => Err(Error::MvccCorrupt(format!(
                "history record with unknown tag or trailing bytes: {:?}",
                bytes.first()
            ))),
        }
    }

    pub(super) fn into_kv(self) -> Option<PbKeyValue> {
        match self {
            HistoryRecord::Put(kv) => Some(kv),
            HistoryRecord::Tombstone => None,
        }
    }
}

/// Encodes a value of `kv_latest`: where in `kv_history` the live version is.
pub(super) fn encode_latest(main: i64, sub: i64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&main.to_be_bytes());
    bytes[8..].copy_from_slice(&sub.to_be_bytes());
    bytes
}

/// Decodes a value of `kv_latest`.
pub(super) fn decode_latest(bytes: &[u8]) -> Result<(i64, i64)> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::MvccCorrupt(format!(
            "kv_latest value of {} bytes, not a revision",
            bytes.len()
        ))
    })?;
    let main = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let sub = i64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    Ok((main, sub))
}

/// Decodes the body of a history record.
pub(super) fn decode_kv(bytes: &[u8]) -> Result<PbKeyValue> {
    PbKeyValue::decode(bytes).map_err(|e| Error::MvccCorrupt(format!("key-value: {e}")))
}
