//! The MVCC key-value store on redb: the state machine that Raft entries are applied to.
//!
//! This is etcd's `mvcc` package for ferrokv. Every request that changes keys gets one main
//! revision (the changes inside it get sub revisions); keys carry create revision, mod revision,
//! version and lease; every version is kept until compaction, so reads at older revisions and
//! watch replay see exactly what was there. The request semantics (range options, put flags,
//! transaction compares, compaction rules) follow etcd's server, so etcd clients see the same
//! answers.
//!
//! What it does not own: request validation (the api layer), lease expiry and TTL bookkeeping
//! (the server), and the Raft log. The Raft state machine applies each batch of committed
//! entries through one [`MvccWrite`] and records its applied log ID in the same commit with
//! [`MvccWrite::set_meta`], so replay after a crash is idempotent.
//!
//! Applying a batch: `begin_write`, then `put` / `delete_range` / `txn` / `compact` /
//! `lease_grant` / `lease_revoke` per entry (a request error such as `LeaseNotFound` is that
//! entry's answer and leaves the batch intact), `set_meta` for the applied log ID, and
//! `commit(durable)`, which returns the batch's watch events. Non-durable commits are cheap and
//! visible at once; a durable commit (or `persist`) makes them and everything before them
//! survive a crash. A clean close of the database also persists them.
//!
//! Layout on disk: `tables`; the key index in memory: `index`; reads: `read`; writes: `write`;
//! transaction compares:
//! `compare`; watch replay: `events`; snapshots: `snapshot`; `HashKV`: `hash`; defragment:
//! `defragment`; where the file's bytes go: `footprint`.

mod compare;
mod defragment;
mod events;
mod footprint;
mod hash;
mod index;
mod key_span;
mod read;
mod snapshot;
mod tables;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use etcd_client::proto::{PbEvent, PbRangeRequest, PbRangeResponse};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle,
};

pub use compare::{compare_result, compare_target};
pub use events::event_type;
pub use footprint::{Footprint, TableFootprint};
pub use key_span::KeySpan;
pub use read::{sort_order, sort_target};
pub use snapshot::{Change, Lease, StoreContents, Version};
pub use tables::{INITIAL_REVISION, NEVER_COMPACTED};
pub use write::{MvccWrite, Requests};

use index::{Indexed, KeyIndex, SharedIndex};
use read::{fetch, find, finish_range, RangePlan};
use tables::{
    is_tombstone, COMPACT_REVISION, CURRENT_REVISION, LEASES, LEASE_KEYS, LEGACY_EVENTS,
    LEGACY_HISTORY, LEGACY_LATEST, META, REVISIONS, REVS, VALUES,
};

use crate::{Result, StorageError as Error};

/// A lease as the state machine keeps it: its ID, granted TTL in seconds, and attached keys in
/// key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Metadata values read with a snapshot, in the order their keys were asked for.
pub type MetaValues = Vec<Option<Vec<u8>>>;

/// The store's page cache when none is asked for: enough for the branch pages and the hot
/// leaves of a few million keys; the rest is read through the operating system's page cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The store; cloning shares the one open database.
#[derive(Clone)]
pub struct MvccStore {
    /// Locked for writing only by `defragment`, which needs the database to itself.
    db: Arc<RwLock<Database>>,
    /// Which revisions hold each key's versions (see `index`); lock it before opening a read
    /// transaction.
    index: SharedIndex,
    path: PathBuf,
    /// The bound of redb's page cache (read cache and write buffer together), in bytes.
    cache_bytes: usize,
}

impl std::fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl MvccStore {
    /// Opens the store in the redb file at `path`, creating the file (and its directory) if
    /// missing, with a page cache of [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path) -> Result<MvccStore> {
        MvccStore::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store as `open` does, with a page cache of at most `cache_bytes` (dirty pages
    /// of the open batch included; beyond half of it they are written out early).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<MvccStore> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Backend(format!("creating directory {}: {e}", dir.display()))
            })?;
        }
        defragment::remove_stray_copy(path)?;
        let db = create_database(path, cache_bytes)?;
        let index = build_index(&db.begin_read()?)?;
        let store = MvccStore {
            db: Arc::new(RwLock::new(db)),
            index: SharedIndex::new(index),
            path: path.to_path_buf(),
            cache_bytes,
        };
        Ok(store)
    }

    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rewrites the database file with only its live data, returning the rest to the file
    /// system (etcd's defragment; see `defragment`). Waits for open reads and the open batch,
    /// and holds off new ones until done.
    pub fn defragment(&self) -> Result<()> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        defragment::rewrite(&db, &self.path, |copy| {
            create_database(copy, self.cache_bytes)
        })?;
        // The old database is closed only now: until the new one opens, a failure leaves the
        // store on the old handle, whose file (renamed over or not) still holds everything.
        *db = create_database(&self.path, self.cache_bytes)?;
        Ok(())
    }

    /// Gives the file's unused tail back to the file system. redb grows a file by doubling
    /// it, so a store written in one transaction (a restore) can be twice its data; the
    /// tail is all free then, and trimming it moves nothing. Waits for open reads and batches.
    pub fn trim(&self) -> Result<()> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        db.compact()
            .map_err(|e| Error::Backend(format!("trimming the database file: {e}")))?;
        Ok(())
    }

    /// etcd's Range, read at the last committed batch. The index is held only while the
    /// versions to read are found; reading them needs only the read transaction.
    pub fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        let (txn, current, found) = {
            let index = self.index.read();
            let txn = self.db().begin_read()?;
            let (current, compacted) = read_revisions(&txn.open_table(REVISIONS)?)?;
            let plan = RangePlan::new(req, current, compacted)?;
            let found = find(&index, &plan.span, plan.revision, plan.collect);
            (txn, current, found)
        };
        let kvs = fetch(
            &txn.open_table(REVS)?,
            &txn.open_table(VALUES)?,
            found.versions,
        )?;
        Ok(finish_range(req, kvs, found.count, current))
    }

    /// The revision of the last change; 1 for an empty store, as in etcd.
    pub fn current_revision(&self) -> Result<i64> {
        Ok(self.revisions()?.0)
    }

    /// The revision of the last compaction; -1 if the store was never compacted, as in etcd.
    pub fn compact_revision(&self) -> Result<i64> {
        Ok(self.revisions()?.1)
    }

    /// A value the Raft state machine stored with [`MvccWrite::set_meta`].
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let value = meta.get(key)?.map(|value| value.value().to_vec());
        Ok(value)
    }

    /// Every metadata entry whose key starts with `prefix`, in key order.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let mut out = Vec::new();
        for entry in meta.range(prefix..)? {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Starts a batch. Only one batch is open at a time; this waits for the previous one.
    pub fn begin_write(&self) -> Result<MvccWrite> {
        MvccWrite::begin(self.db().begin_write()?, self.index.clone())
    }

    /// Makes every commit so far durable (an empty durable commit).
    pub fn persist(&self) -> Result<()> {
        self.begin_write()?.commit(true)?;
        Ok(())
    }

    /// The events of revisions `from..=to` (a `to` past the current revision means "up to
    /// now"), in revision order with `prev_kv` filled, for watchers that start in the past.
    /// `Compacted` if `from` is before the compaction point.
    pub fn events_between(&self, from: i64, to: i64) -> Result<Vec<PbEvent>> {
        let index = self.index.read();
        let txn = self.db().begin_read()?;
        let (current, compacted) = read_revisions(&txn.open_table(REVISIONS)?)?;
        if from < compacted {
            return Err(Error::Compacted);
        }
        let revs = txn.open_table(REVS)?;
        let values = txn.open_table(VALUES)?;
        events::events_in(&index, &revs, &values, from, to.min(current))
    }

    /// The events from revision `from` up to now; see [`MvccStore::events_between`].
    pub fn events_since(&self, from: i64) -> Result<Vec<PbEvent>> {
        self.events_between(from, i64::MAX)
    }

    /// A consistent dump of the whole store (history, leases, revisions, metadata).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        snapshot::dump(&self.db().begin_read()?)
    }

    /// A dump as `snapshot` makes, with the metadata values of `keys` read at the same point.
    pub fn snapshot_with_meta(&self, keys: &[&str]) -> Result<(Vec<u8>, MetaValues)> {
        let txn = self.db().begin_read()?;
        let values = {
            let meta = txn.open_table(META)?;
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(meta.get(*key)?.map(|value| value.value().to_vec()));
            }
            values
        };
        Ok((snapshot::dump(&txn)?, values))
    }

    /// Everything the store holds, read at one point: what a snapshot file is made of.
    pub fn contents(&self) -> Result<StoreContents> {
        snapshot::contents(&self.db().begin_read()?)
    }

    /// Replaces the whole store with a snapshot's contents, durably.
    pub fn restore(&self, snapshot: &[u8]) -> Result<()> {
        self.restore_contents(StoreContents::from_dump(snapshot)?)
    }

    /// Replaces the whole store with `contents`, durably.
    pub fn restore_contents(&self, contents: StoreContents) -> Result<()> {
        let txn = self.db().begin_write()?;
        snapshot::load(&txn, contents)?;
        let mut index = self.index.write();
        txn.commit()?;
        *index = build_index(&self.db().begin_read()?)?;
        Ok(())
    }

    /// Where the bytes of the database file go, table by table, as of the last commit.
    pub fn footprint(&self) -> Result<Footprint> {
        let txn = self.db().begin_write()?;
        let footprint = footprint::measure(&txn, self.db_size_bytes())?;
        txn.abort()?;
        Ok(footprint)
    }

    /// The bytes the store's data occupies (keys, values and the tables' indexing), which is
    /// what the backend quota counts: not the file's length, which redb grows ahead of use, nor
    /// the free and not yet reusable pages inside it, which redb reuses after its next durable
    /// commit and defragment returns to the file system. Read at the last commit, without
    /// holding up writes; it walks every page of every table, so it takes longer the larger the
    /// store (about 0.2 s at 136 MiB).
    pub fn size_in_use(&self) -> Result<u64> {
        let db = self.db();
        let txn = db.begin_read()?;
        let mut bytes = 0;
        for handle in txn.list_tables()? {
            let stats = txn.open_untyped_table(handle)?.stats()?;
            bytes += stats.stored_bytes() + stats.metadata_bytes();
        }
        Ok(bytes)
    }

    /// Size of the database on disk: the space its file takes (etcd's `dbSize`, the pages bbolt
    /// has allocated). Not the file's length: redb grows a full file by about its whole length
    /// at once, as a sparse tail that takes no space until written, so the length of a store
    /// just defragmented doubles at its next writes. Never more than the length, for file
    /// systems that count more blocks than the data (preallocation).
    pub fn db_size_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).map_or(0, |metadata| {
            metadata.len().min(metadata.blocks().saturating_mul(512))
        })
    }

    /// etcd's HashKV: the hash of the history up to `revision` (0 = current), with the
    /// compaction revision and the revision hashed. `FutureRev` / `Compacted` as for reads.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        // The versions are found with the index held; they are read from the transaction
        // opened meanwhile, which keeps them whatever is compacted after.
        let (txn, versions, compacted, revision) = {
            let index = self.index.read();
            let txn = self.db().begin_read()?;
            let (current, compacted) = read_revisions(&txn.open_table(REVISIONS)?)?;
            if revision > current {
                return Err(Error::FutureRev);
            }
            if revision > 0 && revision < compacted {
                return Err(Error::Compacted);
            }
            let revision = if revision <= 0 { current } else { revision };
            let versions = hash::versions_to_hash(&index, revision);
            (txn, versions, compacted, revision)
        };
        let hash = hash::hash_history(versions, &txn.open_table(REVS)?, &txn.open_table(VALUES)?)?;
        Ok((hash, compacted, revision))
    }

    /// Every lease, in ID order.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let txn = self.db().begin_read()?;
        let mut ids = Vec::new();
        for entry in txn.open_table(LEASES)?.iter()? {
            let (id, ttl) = entry?;
            ids.push((id.value(), ttl.value()));
        }
        ids.into_iter()
            .map(|(id, ttl)| {
                Ok(LeaseInfo {
                    id,
                    ttl,
                    keys: lease_keys(&txn, id)?,
                })
            })
            .collect()
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>> {
        let txn = self.db().begin_read()?;
        let ttl = match txn.open_table(LEASES)?.get(id)? {
            Some(ttl) => ttl.value(),
            None => return Ok(None),
        };
        Ok(Some(LeaseInfo {
            id,
            ttl,
            keys: lease_keys(&txn, id)?,
        }))
    }

    fn revisions(&self) -> Result<(i64, i64)> {
        read_revisions(&self.db().begin_read()?.open_table(REVISIONS)?)
    }
}

/// Opens (or creates) the redb file at `path` with every table of the layout present, so read
/// transactions can always open them, moving a store of an earlier release's layout into it.
fn create_database(path: &Path, cache_bytes: usize) -> Result<Database> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)?;
    let mut txn = db.begin_write()?;
    let legacy = txn
        .list_tables()?
        .any(|table| table.name() == LEGACY_HISTORY.name());
    {
        txn.open_table(REVS)?;
        txn.open_table(VALUES)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        txn.open_table(META)?;
        txn.open_table(REVISIONS)?;
    }
    if legacy {
        move_legacy_history(&txn)?;
        txn.set_durability(redb::Durability::Immediate)?;
    }
    txn.commit()?;
    Ok(db)
}

/// Moves the versions of a store written by a release before the key index from `kv_history`
/// (by key) into `kv_revs` (by revision), record for record, and drops the old tables; all in
/// the caller's transaction, so a crash leaves the store in one layout or the other.
fn move_legacy_history(txn: &redb::WriteTransaction) -> Result<()> {
    {
        let history = txn.open_table(LEGACY_HISTORY)?;
        let mut revs = txn.open_table(REVS)?;
        for entry in history.iter()? {
            let (k, record) = entry?;
            let (key, main, sub) = k.value();
            revs.insert((main, sub), (key, record.value()))?;
        }
    }
    txn.delete_table(LEGACY_HISTORY)?;
    txn.delete_table(LEGACY_LATEST)?;
    txn.delete_table(LEGACY_EVENTS)?;
    Ok(())
}

/// The key index of the store `txn` reads: every version in `kv_revs`, by key.
fn build_index(txn: &ReadTransaction) -> Result<KeyIndex> {
    let mut index = KeyIndex::default();
    for entry in txn.open_table(REVS)?.iter()? {
        let (rev, change) = entry?;
        let (key, record) = change.value();
        let version = Indexed {
            rev: rev.value(),
            tombstone: is_tombstone(record),
        };
        index.insert(key, version);
    }
    Ok(index)
}

fn lease_keys(txn: &ReadTransaction, id: i64) -> Result<Vec<Vec<u8>>> {
    tables::keys_of_lease(&txn.open_table(LEASE_KEYS)?, id)
}

/// The (current, compacted) revisions, with etcd's values for a store never written.
fn read_revisions<T: ReadableTable<&'static str, i64>>(revisions: &T) -> Result<(i64, i64)> {
    let current = revisions
        .get(CURRENT_REVISION)?
        .map_or(INITIAL_REVISION, |v| v.value());
    let compacted = revisions
        .get(COMPACT_REVISION)?
        .map_or(NEVER_COMPACTED, |v| v.value());
    Ok((current, compacted))
}
