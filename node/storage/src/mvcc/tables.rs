//! The on-disk layout of the MVCC store: the redb tables and how their values are encoded.
//!
//! Everything the store knows lives in these tables, and every table is written only inside the
//! write transaction of a batch, so one redb commit moves all of them (and the Raft state
//! machine's metadata) together:
//!
//! - `kv_revs`: (main revision, sub revision) → (key, record): every version and tombstone,
//!   kept until compaction, in the order the changes happened — etcd's `key` bucket. New
//!   versions append at the end of the table, so writes to random keys dirty few pages. Which
//!   revisions hold a key's versions is the in-memory key index's business (`index`), rebuilt
//!   from this table when the store opens. Serves reads, watch replay (`prev_kv` included) and
//!   `HashKV`.
//!   A version's value is kept in its record when small; a larger value is cut into chunks of
//!   just under 256 KiB kept in `kv_values`, so that it fills whole runs of pages instead of one
//!   run of 2^n pages (redb's allocation unit for anything larger than a page: a 1 MiB value
//!   kept whole takes 2 MiB).
//! - `kv_values`: (main revision, sub revision, chunk number) → a chunk of a large value.
//! - `leases`: lease ID → granted TTL in seconds; `lease_keys`: (lease ID, key) → ().
//! - `revisions`: the current and the compacted revision.
//! - `meta`: opaque values of the Raft state machine (applied log ID, membership).
//!
//! Releases before the key index kept versions by key instead (`kv_history`, with `kv_latest`
//! and `kv_events` beside it); a store in that layout is moved into `kv_revs` when it opens.

use etcd_client::proto::PbKeyValue;
use prost::Message;
use redb::{ReadableTable, Table, TableDefinition};

use crate::{Result, StorageError as Error};

/// A key of `kv_revs`: the main and sub revision of the change.
pub(super) type RevKey = (i64, i64);
/// A value of `kv_revs`: the key changed, and the record of the change.
pub(super) type RevValue = (&'static [u8], &'static [u8]);
/// A key of `kv_history`, the table of earlier releases: the user key, then the revision.
pub(super) type HistoryKey = (&'static [u8], i64, i64);

/// A key of `kv_values`: the main and sub revision of the version, and the chunk's number.
pub(super) type ValuesKey = (i64, i64, u32);

/// `kv_values` opened for writing.
pub(super) type ValuesTable<'t> = Table<'t, ValuesKey, &'static [u8]>;

/// The largest value kept in its history record; larger ones go to `kv_values`.
pub(super) const INLINE_VALUE_MAX: usize = 2048;
/// The size of a chunk in `kv_values`: one chunk, its key and redb's leaf header fill a run of
/// 64 pages (256 KiB, an allocation unit of redb's) alone, so a large value takes about its own
/// size. Not smaller: the size in use is measured by walking every page of the store, and
/// 4 KiB chunks made a 1.5 MB value 375 pages to walk; when the walk still ran inside the apply
/// stage that slowed puts of large values five to fifteen times (the consensus e2e's 128 puts
/// of 1.5 MB: 7 s before the chunks, 36–109 s with 4 KiB ones).
pub(super) const VALUE_CHUNK: usize = 256 * 1024 - 256;

/// `kv_revs` opened for writing.
pub(super) type RevsTable<'t> = Table<'t, RevKey, RevValue>;

pub(super) const REVS: TableDefinition<RevKey, RevValue> = TableDefinition::new("kv_revs");
pub(super) const VALUES: TableDefinition<ValuesKey, &[u8]> = TableDefinition::new("kv_values");
/// The tables of earlier releases, read once to move a store into `kv_revs`, then deleted.
pub(super) const LEGACY_LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_latest");
pub(super) const LEGACY_HISTORY: TableDefinition<HistoryKey, &[u8]> =
    TableDefinition::new("kv_history");
pub(super) const LEGACY_EVENTS: TableDefinition<(i64, i64), &[u8]> =
    TableDefinition::new("kv_events");
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

/// The record of one change: a version of a key, or the tombstone its deletion left.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HistoryRecord {
    Put(PbKeyValue),
    Tombstone,
}

/// How a record is laid out, told by its first byte.
const TAG_TOMBSTONE: u8 = 0;
/// A `mvccpb.KeyValue` (key and mod revision included), as releases before the lean layout
/// wrote every version; still read, never written.
const TAG_PUT_KEY_VALUE: u8 = 1;
/// Varints create revision, version and lease, then the value. The key and mod revision are
/// the record's place: the key beside it in `kv_revs`, the revision its key.
const TAG_PUT: u8 = 2;
/// Varints create revision, version, lease and the value's length; the value is in `kv_values`.
const TAG_PUT_CHUNKED: u8 = 3;

/// Where the chunks of large values are read from: `kv_values` as one transaction sees it.
pub(super) trait ChunkSource {
    /// The value of `len` bytes stored at revision (main, sub).
    fn value(&self, main: i64, sub: i64, len: u64) -> Result<Vec<u8>>;
}

impl<T: ReadableTable<ValuesKey, &'static [u8]>> ChunkSource for T {
    fn value(&self, main: i64, sub: i64, len: u64) -> Result<Vec<u8>> {
        let mut value = Vec::with_capacity(len as usize);
        for chunk in self.range((main, sub, 0)..=(main, sub, u32::MAX))? {
            value.extend_from_slice(chunk?.1.value());
        }
        if value.len() as u64 != len {
            return Err(Error::MvccCorrupt(format!(
                "the value at revision {main}.{sub} has {} bytes in kv_values, its record says {len}",
                value.len()
            )));
        }
        Ok(value)
    }
}

impl HistoryRecord {
    /// The record to store in `kv_revs` for this version at (main, sub), writing the chunks
    /// of a large value to `values`.
    pub(super) fn store(
        &self,
        main: i64,
        sub: i64,
        values: &mut ValuesTable<'_>,
    ) -> Result<Vec<u8>> {
        let kv = match self {
            HistoryRecord::Tombstone => return Ok(vec![TAG_TOMBSTONE]),
            HistoryRecord::Put(kv) => kv,
        };
        let inline = kv.value.len() <= INLINE_VALUE_MAX;
        let mut record = Vec::with_capacity(32 + if inline { kv.value.len() } else { 0 });
        record.push(if inline { TAG_PUT } else { TAG_PUT_CHUNKED });
        for field in [kv.create_revision, kv.version, kv.lease] {
            prost::encoding::encode_varint(field as u64, &mut record);
        }
        if inline {
            record.extend_from_slice(&kv.value);
        } else {
            prost::encoding::encode_varint(kv.value.len() as u64, &mut record);
            for (n, chunk) in kv.value.chunks(VALUE_CHUNK).enumerate() {
                values.insert((main, sub, n as u32), chunk)?;
            }
        }
        Ok(record)
    }

    /// Reads the record of `key` stored at revision (main, sub).
    pub(super) fn load(
        key: &[u8],
        main: i64,
        sub: i64,
        record: &[u8],
        values: &dyn ChunkSource,
    ) -> Result<HistoryRecord> {
        let (&tag, mut rest) = record
            .split_first()
            .ok_or_else(|| Error::MvccCorrupt("empty history record".into()))?;
        let mut varint = |what: &str| {
            prost::encoding::decode_varint(&mut rest).map_err(|e| {
                Error::MvccCorrupt(format!("history record at {main}.{sub}: {what}: {e}"))
            })
        };
        match tag {
            TAG_TOMBSTONE if record.len() == 1 => Ok(HistoryRecord::Tombstone),
            TAG_PUT_KEY_VALUE => Ok(HistoryRecord::Put(decode_kv(&record[1..])?)),
            TAG_PUT | TAG_PUT_CHUNKED => {
                let create_revision = varint("create revision")? as i64;
                let version = varint("version")? as i64;
                let lease = varint("lease")? as i64;
                let value = if tag == TAG_PUT {
                    rest.to_vec()
                } else {
                    let len = varint("value length")?;
                    if !rest.is_empty() {
                        return Err(Error::MvccCorrupt(format!(
                            "history record at {main}.{sub}: trailing bytes"
                        )));
                    }
                    values.value(main, sub, len)?
                };
                Ok(HistoryRecord::Put(PbKeyValue {
                    key: key.to_vec(),
                    create_revision,
                    mod_revision: main,
                    version,
                    value,
                    lease,
                }))
            }
            _ => Err(Error::MvccCorrupt(format!(
                "history record at {main}.{sub} with unknown tag {tag} or trailing bytes"
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

/// The keys attached to lease `id`, in key order, as `lease_keys` holds them.
pub(super) fn keys_of_lease<T>(lease_keys: &T, id: i64) -> Result<Vec<Vec<u8>>>
where
    T: ReadableTable<(i64, &'static [u8]), ()>,
{
    let mut keys = Vec::new();
    for entry in lease_keys.range((id, &[][..])..)? {
        let (k, _) = entry?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// Whether a stored record is a tombstone, without reading its value.
pub(super) fn is_tombstone(record: &[u8]) -> bool {
    record == [TAG_TOMBSTONE]
}

/// Removes the chunks of the version at (main, sub) from `values`, if its value has any.
pub(super) fn remove_chunks(
    main: i64,
    sub: i64,
    record: &[u8],
    values: &mut ValuesTable<'_>,
) -> Result<()> {
    if record.first() == Some(&TAG_PUT_CHUNKED) {
        values.retain_in((main, sub, 0)..=(main, sub, u32::MAX), |_, _| false)?;
    }
    Ok(())
}

/// Decodes the body of a history record.
pub(super) fn decode_kv(bytes: &[u8]) -> Result<PbKeyValue> {
    PbKeyValue::decode(bytes).map_err(|e| Error::MvccCorrupt(format!("key-value: {e}")))
}
