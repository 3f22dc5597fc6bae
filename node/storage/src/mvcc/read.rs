//! Reads of the key space at a revision: etcd's `Range`, from the storage lookup (`rangeKeys` in
//! etcd's mvcc package) up to the filtering, sorting and limiting etcd's applier does on top.
//!
//! A read finds the versions it returns in the key index (`index`), then reads them from
//! `kv_revs`. The same code serves reads from a read transaction (`MvccStore::range`, which
//! holds the index only while finding) and reads inside a write batch (transaction ops,
//! compares, `prev_kv`), which see the batch's own earlier writes: it is generic over redb's
//! `ReadableTable`.

use std::cmp::Ordering;

use etcd_client::proto::{PbKeyValue, PbRangeRequest, PbRangeResponse, PbResponseHeader};
use redb::ReadableTable;

use super::index::{last_at, KeyIndex, Rev};
use super::key_span::KeySpan;
use super::tables::{ChunkSource, HistoryRecord, RevKey, RevValue};
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

/// The key space as one transaction sees it: the key index, and the versions in `kv_revs`.
pub(super) struct KvView<'t, R> {
    pub(super) index: &'t KeyIndex,
    pub(super) revs: &'t R,
    pub(super) values: &'t dyn ChunkSource,
    /// The revision a read without an explicit revision sees: the last change visible to this
    /// transaction, including the changes of the request being applied.
    pub(super) current: i64,
    pub(super) compacted: i64,
}

/// Resolves a requested revision as etcd does: `<= 0` means current, later than current is
/// `FutureRev`, older than the compaction point is `Compacted` (the compaction point itself
/// stays readable).
pub(super) fn resolve_revision(requested: i64, current: i64, compacted: i64) -> Result<i64> {
    if requested > current {
        return Err(Error::FutureRev);
    }
    let revision = if requested <= 0 { current } else { requested };
    if revision < compacted {
        return Err(Error::Compacted);
    }
    Ok(revision)
}

/// The versions a range read returns, as the index names them: how many keys are live in the
/// range, and the first `collect` of them (all when `None`) to be read from `kv_revs`.
pub(super) struct Found {
    pub(super) versions: Vec<(Vec<u8>, Rev)>,
    pub(super) count: i64,
}

/// Finds the keys of `span` live at `revision` (already resolved), in key order.
pub(super) fn find(
    index: &KeyIndex,
    span: &KeySpan,
    revision: i64,
    collect: Option<usize>,
) -> Found {
    let mut found = Found {
        versions: Vec::new(),
        count: 0,
    };
    for (key, versions) in index.keys_in(span) {
        let Some(version) = last_at(versions, revision).filter(|v| !v.tombstone) else {
            continue;
        };
        found.count += 1;
        if collect.is_none_or(|max| found.versions.len() < max) {
            found.versions.push((key.to_vec(), version.rev));
        }
    }
    found
}

/// Reads the version of `key` at `rev` from `kv_revs`.
pub(super) fn load<R>(
    revs: &R,
    values: &dyn ChunkSource,
    key: &[u8],
    (main, sub): Rev,
) -> Result<HistoryRecord>
where
    R: ReadableTable<RevKey, RevValue>,
{
    match revs.get((main, sub))? {
        Some(entry) => {
            let (stored_key, record) = entry.value();
            if stored_key != key {
                return Err(Error::MvccCorrupt(format!(
                    "the key index has revision {main}.{sub} for another key than kv_revs"
                )));
            }
            HistoryRecord::load(key, main, sub, record, values)
        }
        None => Err(Error::MvccCorrupt(format!(
            "the key index names revision {main}.{sub}, which kv_revs lacks"
        ))),
    }
}

/// Reads the live versions `found` names.
pub(super) fn fetch<R>(
    revs: &R,
    values: &dyn ChunkSource,
    versions: Vec<(Vec<u8>, Rev)>,
) -> Result<Vec<PbKeyValue>>
where
    R: ReadableTable<RevKey, RevValue>,
{
    versions
        .into_iter()
        .map(|(key, rev)| {
            load(revs, values, &key, rev)?.into_kv().ok_or_else(|| {
                Error::MvccCorrupt(format!(
                    "the key index has a live version at the tombstone at {}.{}",
                    rev.0, rev.1
                ))
            })
        })
        .collect()
}

/// A range request made ready to run: its revision resolved, its span decoded, and how many
/// of the keys found need reading.
pub(super) struct RangePlan {
    pub(super) revision: i64,
    pub(super) span: KeySpan,
    pub(super) collect: Option<usize>,
}

impl RangePlan {
    pub(super) fn new(req: &PbRangeRequest, current: i64, compacted: i64) -> Result<RangePlan> {
        let revision = resolve_revision(req.revision, current, compacted)?;
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
        Ok(RangePlan {
            revision,
            span: KeySpan::new(&req.key, &req.range_end),
            collect,
        })
    }
}

impl<R> KvView<'_, R>
where
    R: ReadableTable<RevKey, RevValue>,
{
    pub(super) fn resolve_revision(&self, requested: i64) -> Result<i64> {
        resolve_revision(requested, self.current, self.compacted)
    }

    /// The live version of `key` at the current revision.
    pub(super) fn latest(&self, key: &[u8]) -> Result<Option<PbKeyValue>> {
        self.kv_at(key, self.current)
    }

    /// The version of `key` that was live at `revision`, if any.
    pub(super) fn kv_at(&self, key: &[u8], revision: i64) -> Result<Option<PbKeyValue>> {
        match self.index.live_at(key, revision) {
            Some(rev) => Ok(load(self.revs, self.values, key, rev)?.into_kv()),
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
        let found = find(self.index, span, revision, collect);
        Ok((fetch(self.revs, self.values, found.versions)?, found.count))
    }

    /// etcd's `Range`; see [`finish_range`].
    pub(super) fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        let plan = RangePlan::new(req, self.current, self.compacted)?;
        let (kvs, count) = self.range_at(&plan.span, plan.revision, plan.collect)?;
        Ok(finish_range(req, kvs, count, self.current))
    }
}

/// etcd's `Range` after the storage read: the revision filters, the sort, the limit (with
/// `more`), and `keys_only`. `count` is the number of keys in the range at the revision,
/// before filters and limit, as etcd reports it.
pub(super) fn finish_range(
    req: &PbRangeRequest,
    mut kvs: Vec<PbKeyValue>,
    count: i64,
    current: i64,
) -> PbRangeResponse {
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
    PbRangeResponse {
        header: header(current),
        kvs,
        more,
        count,
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
