//! Reads of the key space at a revision: etcd's `Range`, from the storage lookup (`rangeKeys` in
//! etcd's mvcc package) up to the filtering, sorting and limiting etcd's applier does on top.
//!
//! The same code serves reads from a read transaction (`MvccStore::range`) and reads inside a
//! write batch (transaction ops, compares, `prev_kv`), which see the batch's own earlier writes:
//! it is generic over redb's `ReadableTable`.

use std::cmp::Ordering;
use std::ops::Bound;

use etcd_client::proto::{PbKeyValue, PbRangeRequest, PbRangeResponse, PbResponseHeader};
use redb::ReadableTable;

use super::key_span::KeySpan;
use super::tables::{decode_latest, ChunkSource, HistoryKey, HistoryRecord};
use crate::{Result, StorageError as Error};

/// `RangeRequest.SortOrder`, an i32 on the wire.
pub mod sort_order {
    pub const NONE: i32 = 0;
    pub const ASCEND: i32 = 1;
    pub const DESCEND: i32 = 2;
}

/// `RangeRequest.SortTarget`, an i32 on the wire.
pub mod sort_target {
    pub const KEY: i32 = 0;
    pub const VERSION: i32 = 1;
    pub const CREATE: i32 = 2;
    pub const MOD: i32 = 3;
    pub const VALUE: i32 = 4;
}

/// A response header carrying only the revision; the server fills in the cluster fields.
pub(crate) fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision,
        ..Default::default()
    })
}

/// The key space as one transaction sees it.
pub(super) struct KvView<'t, L, H> {
    pub(super) latest: &'t L,
    pub(super) history: &'t H,
    pub(super) values: &'t dyn ChunkSource,
    /// The revision a read without an explicit revision sees: the last change visible to this
    /// transaction, including the changes of the request being applied.
    pub(super) current: i64,
    pub(super) compacted: i64,
}

impl<L, H> KvView<'_, L, H>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    /// Resolves a requested revision as etcd does: `<= 0` means current, later than current is
    /// `FutureRev`, older than the compaction point is `Compacted` (the compaction point itself
    /// stays readable).
    pub(super) fn resolve_revision(&self, requested: i64) -> Result<i64> {
        if requested > self.current {
            return Err(Error::FutureRev);
        }
        let revision = if requested <= 0 {
            self.current
        } else {
            requested
        };
        if revision < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(revision)
    }

    /// The live version of `key` at the current revision.
    pub(super) fn latest(&self, key: &[u8]) -> Result<Option<PbKeyValue>> {
        let at = match self.latest.get(key)? {
            Some(value) => decode_latest(value.value())?,
            None => return Ok(None),
        };
        self.live_version(key, at).map(Some)
    }

    /// The version of `key` that `kv_latest` points at.
    fn live_version(&self, key: &[u8], (main, sub): (i64, i64)) -> Result<PbKeyValue> {
        let record = match self.history.get((key, main, sub))? {
            Some(record) => HistoryRecord::load(key, main, sub, record.value(), self.values)?,
            None => {
                return Err(Error::MvccCorrupt(format!(
                    "kv_latest points at revision {main}.{sub} of a key, which kv_history lacks"
                )))
            }
        };
        record.into_kv().ok_or_else(|| {
            Error::MvccCorrupt(format!(
                "kv_latest points at the tombstone at revision {main}.{sub}"
            ))
        })
    }

    /// The version of `key` that was live at `revision`, if any.
    pub(super) fn kv_at(&self, key: &[u8], revision: i64) -> Result<Option<PbKeyValue>> {
        if revision >= self.current {
            return self.latest(key);
        }
        let mut versions = self
            .history
            .range((key, i64::MIN, i64::MIN)..=(key, revision, i64::MAX))?;
        match versions.next_back() {
            Some(entry) => {
                let (k, record) = entry?;
                let (_, main, sub) = k.value();
                Ok(HistoryRecord::load(key, main, sub, record.value(), self.values)?.into_kv())
            }
            None => Ok(None),
        }
    }

    /// The keys of `span` live at `revision` (already resolved), in key order: how many there
    /// are, and the first `collect` of them (all when `None`).
    pub(super) fn range_at(
        &self,
        span: &KeySpan,
        revision: i64,
        collect: Option<usize>,
    ) -> Result<(Vec<PbKeyValue>, i64)> {
        let mut found = RangeCollector {
            kvs: Vec::new(),
            count: 0,
            collect,
        };
        match span {
            _ if span.is_empty() => {}
            KeySpan::Single(key) => found.add(self.kv_at(key, revision)?),
            KeySpan::Interval { start, end } if revision >= self.current => {
                let upper = match end {
                    Some(end) => Bound::Excluded(end.as_slice()),
                    None => Bound::Unbounded,
                };
                for entry in self
                    .latest
                    .range::<&[u8]>((Bound::Included(start.as_slice()), upper))?
                {
                    let (key, value) = entry?;
                    // Counting needs no decoding; only the returned key-values are read.
                    if found.wants_more() {
                        let at = decode_latest(value.value())?;
                        found.add(Some(self.live_version(key.value(), at)?));
                    } else {
                        found.count += 1;
                    }
                }
            }
            KeySpan::Interval { .. } => self.for_each_history_key(span, |key| {
                found.add(self.kv_at(key, revision)?);
                Ok(())
            })?,
        }
        Ok((found.kvs, found.count))
    }

    /// Calls `visit` once for every distinct key of `span` that has any history, in key order,
    /// by seeking from one key to the next instead of scanning each key's versions.
    fn for_each_history_key(
        &self,
        span: &KeySpan,
        mut visit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut lower: Bound<Vec<u8>> = Bound::Included(span.start().to_vec());
        loop {
            let next = {
                let from = match &lower {
                    Bound::Included(key) => Bound::Included((key.as_slice(), i64::MIN, i64::MIN)),
                    Bound::Excluded(key) => Bound::Excluded((key.as_slice(), i64::MAX, i64::MAX)),
                    Bound::Unbounded => Bound::Unbounded,
                };
                let mut entries = self.history.range((from, Bound::Unbounded))?;
                match entries.next() {
                    Some(entry) => entry?.0.value().0.to_vec(),
                    None => return Ok(()),
                }
            };
            if span.is_past(&next) {
                return Ok(());
            }
            visit(&next)?;
            lower = Bound::Excluded(next);
        }
    }

    /// etcd's `Range`: the storage read, then the revision filters, the sort, the limit (with
    /// `more`), and `keys_only`. `count` is the number of keys in the range at the revision,
    /// before filters and limit, as etcd reports it.
    pub(super) fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        let revision = self.resolve_revision(req.revision)?;
        let span = KeySpan::new(&req.key, &req.range_end);

        let sorts_or_filters = req.sort_order != sort_order::NONE
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let collect = if req.count_only {
            Some(0)
        } else if sorts_or_filters || req.limit <= 0 {
            None
        } else {
            // One more than the limit tells whether there are more.
            Some(req.limit as usize + 1)
        };
        let (mut kvs, count) = self.range_at(&span, revision, collect)?;

        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);

        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(PbRangeResponse {
            header: header(self.current),
            kvs,
            more,
            count,
        })
    }
}

/// The result of a storage range read being gathered: every live key counts, the first
/// `collect` are kept.
struct RangeCollector {
    kvs: Vec<PbKeyValue>,
    count: i64,
    collect: Option<usize>,
}

impl RangeCollector {
    fn wants_more(&self) -> bool {
        self.collect.is_none_or(|max| self.kvs.len() < max)
    }

    fn add(&mut self, kv: Option<PbKeyValue>) {
        if let Some(kv) = kv {
            self.count += 1;
            if self.wants_more() {
                self.kvs.push(kv);
            }
        }
    }
}

/// Sorts as etcd's applier does. Storage returns keys in ascending order, so a target other than
/// KEY with order NONE means ASCEND, and KEY with ASCEND or NONE needs no work. The sort is
/// stable, so keys that tie on the target stay in key order.
fn sort_kvs(kvs: &mut [PbKeyValue], order: i32, target: i32) {
    let order = match (order, target) {
        (sort_order::NONE, sort_target::KEY) => return,
        (sort_order::NONE, _) => sort_order::ASCEND,
        (order, _) => order,
    };
    let by_target = |a: &PbKeyValue, b: &PbKeyValue| -> Ordering {
        match target {
            sort_target::VERSION => a.version.cmp(&b.version),
            sort_target::CREATE => a.create_revision.cmp(&b.create_revision),
            sort_target::MOD => a.mod_revision.cmp(&b.mod_revision),
            sort_target::VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        }
    };
    match order {
        sort_order::ASCEND => kvs.sort_by(by_target),
        sort_order::DESCEND => kvs.sort_by(|a, b| by_target(b, a)),
        _ => {}
    }
}
