//! The write side of the store: one `MvccWrite` is one redb write transaction, into which the
//! Raft state machine applies a batch of committed entries and its own metadata, then commits.
//!
//! Every request that changes keys gets the next main revision; the changes inside it (the
//! keys of a delete range, the ops of a transaction, the keys of a revoked lease) get sub
//! revisions 0, 1, 2... A request that changes nothing does not consume a revision. Requests are
//! checked before they write anything, so a request that fails leaves the batch as it was.

use std::sync::RwLockWriteGuard;

use etcd_client::proto::{
    PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbPutRequest,
    PbPutResponse, PbResponseOp, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use redb::{Durability, ReadableTable, Table, WriteTransaction};

use super::compare::{branch, chosen_ops, txn_path};
use super::events::event_type;
use super::index::{Indexed, KeyIndex, Rev, SharedIndex};
use super::key_span::KeySpan;
use super::read::{header, KvView};
use super::tables::{
    keys_of_lease, remove_chunks, HistoryRecord, RevsTable, ValuesTable, COMPACT_REVISION,
    CURRENT_REVISION, LEASES, LEASE_KEYS, META, REVISIONS, REVS, VALUES,
};
use crate::{Result, StorageError as Error};

/// A batch of writes in one redb write transaction. Dropping it without `commit` discards it.
///
/// A request error (`LeaseNotFound`, `KeyNotFound`, `Compacted`, `FutureRev`, `LeaseExists`) is
/// found before the request writes anything, so the batch stays usable and the error is the
/// request's answer. A `Backend` or `MvccCorrupt` error may leave a request half applied: drop
/// the batch.
pub struct MvccWrite {
    txn: WriteTransaction,
    state: BatchState,
}

/// What a batch has changed so far, besides its redb transaction.
struct BatchState {
    /// Revision of the last change, this batch's included.
    revision: i64,
    compacted: i64,
    events: Vec<PbEvent>,
    index: IndexChanges,
}

/// A batch with its key-value tables open, through which a run of requests is applied.
///
/// redb finds a table by name when it is opened and writes its root back when it is closed;
/// opened per request, that was about a twentieth of a member's CPU time under 64 writing
/// clients. The apply stage opens the tables once per batch of committed entries
/// ([`MvccWrite::requests`]); the methods of [`MvccWrite`] that apply one request open them for
/// that request.
pub struct Requests<'w> {
    txn: &'w WriteTransaction,
    tables: KvTables<'w>,
    state: &'w mut BatchState,
}

/// A batch's changes to the shared key index. The revisions the batch writes go into the index
/// as they are written (readers do not look past their own revision) and come out again if the
/// batch is dropped without committing; what its compactions remove comes out when it commits.
struct IndexChanges {
    shared: SharedIndex,
    /// The keys of the versions this batch inserted, in order: what to take back.
    undo: Vec<Vec<u8>>,
    /// Each key's versions that a compaction in this batch removed from `kv_revs`.
    removed: Vec<(Vec<u8>, Vec<Rev>)>,
}

impl Drop for IndexChanges {
    fn drop(&mut self) {
        if !self.undo.is_empty() {
            let steps = std::mem::take(&mut self.undo);
            self.shared.write().undo(steps);
        }
    }
}

/// The tables a key-changing request touches.
struct KvTables<'t> {
    revs: RevsTable<'t>,
    values: ValuesTable<'t>,
    leases: Table<'t, i64, i64>,
    lease_keys: Table<'t, (i64, &'static [u8]), ()>,
}

impl<'t> KvTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<KvTables<'t>> {
        Ok(KvTables {
            revs: txn.open_table(REVS)?,
            values: txn.open_table(VALUES)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
        })
    }
}

impl MvccWrite {
    pub(super) fn begin(txn: WriteTransaction, index: SharedIndex) -> Result<MvccWrite> {
        let (revision, compacted) = {
            let revisions = txn.open_table(REVISIONS)?;
            super::read_revisions(&revisions)?
        };
        Ok(MvccWrite {
            txn,
            state: BatchState {
                revision,
                compacted,
                events: Vec::new(),
                index: IndexChanges {
                    shared: index,
                    undo: Vec::new(),
                    removed: Vec::new(),
                },
            },
        })
    }

    /// The store revision after the requests applied so far.
    pub fn revision(&self) -> i64 {
        self.state.revision
    }

    /// The revision of the last compaction, this batch's included; -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.state.compacted
    }

    /// Opens the key-value tables for a run of requests. While the run lasts, requests and
    /// metadata go through it; the batch is committed after it is dropped.
    pub fn requests(&mut self) -> Result<Requests<'_>> {
        let MvccWrite { txn, state } = self;
        Ok(Requests {
            tables: KvTables::open(txn)?,
            txn,
            state,
        })
    }

    pub fn put(&mut self, req: &PbPutRequest) -> Result<PbPutResponse> {
        self.requests()?.put(req)
    }

    pub fn delete_range(&mut self, req: &PbDeleteRequest) -> Result<PbDeleteResponse> {
        self.requests()?.delete_range(req)
    }

    pub fn txn(&mut self, req: &PbTxnRequest) -> Result<PbTxnResponse> {
        self.requests()?.txn(req)
    }

    /// See [`Requests::compact`].
    pub fn compact(&mut self, revision: i64) -> Result<PbCompactionResponse> {
        self.requests()?.compact(revision)
    }

    /// See [`Requests::lease_grant`].
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        self.requests()?.lease_grant(id, ttl)
    }

    /// See [`Requests::lease_revoke`].
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64> {
        self.requests()?.lease_revoke(id)
    }

    /// Stores a value of the Raft state machine's own (applied log ID, membership) in the same
    /// transaction as the data it describes.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        set_meta(&self.txn, key, value)
    }

    /// A metadata value as this transaction sees it.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta(&self.txn, key)
    }

    /// Removes a metadata entry, if present.
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        delete_meta(&self.txn, key)
    }
}

fn set_meta(txn: &WriteTransaction, key: &str, value: &[u8]) -> Result<()> {
    txn.open_table(META)?.insert(key, value)?;
    Ok(())
}

fn meta(txn: &WriteTransaction, key: &str) -> Result<Option<Vec<u8>>> {
    let table = txn.open_table(META)?;
    let value = table.get(key)?.map(|v| v.value().to_vec());
    Ok(value)
}

fn delete_meta(txn: &WriteTransaction, key: &str) -> Result<()> {
    txn.open_table(META)?.remove(key)?;
    Ok(())
}

impl Requests<'_> {
    /// The store revision after the requests applied so far.
    pub fn revision(&self) -> i64 {
        self.state.revision
    }

    pub fn put(&mut self, req: &PbPutRequest) -> Result<PbPutResponse> {
        self.apply_request(|request| {
            request.check_put(req, &[])?;
            request.put(req)
        })
    }

    pub fn delete_range(&mut self, req: &PbDeleteRequest) -> Result<PbDeleteResponse> {
        self.apply_request(|request| request.delete_range(req))
    }

    pub fn txn(&mut self, req: &PbTxnRequest) -> Result<PbTxnResponse> {
        self.apply_request(|request| request.txn(req))
    }

    /// Forgets history before `revision`: every key keeps its latest version at or before
    /// `revision` unless that version is a deletion. Reads below `revision` then fail with
    /// `Compacted`; reads at `revision` and later are unchanged.
    ///
    /// Changes made at `revision` itself are all kept, deletions included (etcd drops a deletion
    /// at the compaction point; reads cannot tell the difference), so that a watcher starting
    /// at the compaction point is replayed every event of that revision.
    pub fn compact(&mut self, revision: i64) -> Result<PbCompactionResponse> {
        let BatchState {
            revision: current,
            compacted,
            index: changes,
            ..
        } = &mut *self.state;
        if revision <= *compacted {
            return Err(Error::Compacted);
        }
        if revision > *current {
            return Err(Error::FutureRev);
        }
        let tables = &mut self.tables;
        let index = changes.shared.read();
        for (key, versions) in index.iter() {
            let older = versions.partition_point(|v| v.rev.0 < revision);
            let changed_at_revision = versions.get(older).is_some_and(|v| v.rev.0 == revision);
            // The version live at `revision` is kept, unless it is a deletion or was replaced
            // at `revision` itself (which is kept as it is not older than `revision`).
            let doomed = match versions[..older].last() {
                Some(last) if !last.tombstone && !changed_at_revision => &versions[..older - 1],
                _ => &versions[..older],
            };
            if doomed.is_empty() {
                continue;
            }
            for version in doomed {
                let (main, sub) = version.rev;
                // A version an earlier compaction of this batch removed is gone already.
                if let Some(entry) = tables.revs.remove(version.rev)? {
                    remove_chunks(main, sub, entry.value().1, &mut tables.values)?;
                }
            }
            let revs = doomed.iter().map(|version| version.rev).collect();
            changes.removed.push((key.to_vec(), revs));
        }
        *compacted = revision;
        Ok(PbCompactionResponse {
            header: header(*current),
        })
    }

    /// Records a lease; `LeaseExists` if the ID is taken. The server owns expiry: the store keeps
    /// only what must survive a restart and be identical on every member.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        let leases = &mut self.tables.leases;
        if leases.get(id)?.is_some() {
            return Err(Error::LeaseExists);
        }
        leases.insert(id, ttl)?;
        Ok(())
    }

    /// Removes a lease and deletes the keys attached to it, all in one revision (none if it had
    /// no keys), in key order as etcd does. Returns the store revision afterwards.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64> {
        self.apply_request(|request| {
            if request.tables.leases.get(id)?.is_none() {
                return Err(Error::LeaseNotFound);
            }
            for key in keys_of_lease(&request.tables.lease_keys, id)? {
                request.delete_key(&key)?;
            }
            request.tables.leases.remove(id)?;
            Ok(request.revision())
        })
    }

    /// The keys attached to lease `id`, as this transaction sees them.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        keys_of_lease(&self.tables.lease_keys, id)
    }

    /// See [`MvccWrite::set_meta`].
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        set_meta(self.txn, key, value)
    }

    /// See [`MvccWrite::meta`].
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta(self.txn, key)
    }

    /// See [`MvccWrite::delete_meta`].
    pub fn delete_meta(&mut self, key: &str) -> Result<()> {
        delete_meta(self.txn, key)
    }
}

impl MvccWrite {
    /// Commits the batch and returns its watch events in revision order. A non-durable commit is
    /// visible to readers at once but reaches the disk only with the next durable commit: after
    /// a crash the store is at its last durable commit, and Raft replays the rest.
    pub fn commit(self, durable: bool) -> Result<Vec<PbEvent>> {
        let MvccWrite {
            mut txn,
            state:
                BatchState {
                    revision,
                    compacted,
                    events,
                    mut index,
                },
        } = self;
        {
            let mut revisions = txn.open_table(REVISIONS)?;
            revisions.insert(CURRENT_REVISION, revision)?;
            revisions.insert(COMPACT_REVISION, compacted)?;
        }
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        if index.removed.is_empty() {
            txn.commit()?;
        } else {
            // Readers lock the index before they open their read transaction, so none sees the
            // database after this compaction with the index before it, or the other way round.
            let mut shared = index.shared.write();
            let committed = txn.commit();
            if committed.is_ok() {
                for (key, revs) in index.removed.drain(..) {
                    shared.remove(&key, &revs);
                }
            }
            drop(shared);
            committed?;
        }
        // Committed: the index keeps what the batch inserted.
        index.undo.clear();
        Ok(events)
    }
}

impl Requests<'_> {
    /// Runs one request with the next main revision; the revision is consumed only if the request
    /// changed something.
    fn apply_request<T>(
        &mut self,
        body: impl FnOnce(&mut Request<'_, '_>) -> Result<T>,
    ) -> Result<T> {
        let BatchState {
            revision,
            compacted,
            events,
            index: IndexChanges { shared, undo, .. },
        } = &mut *self.state;
        let mut request = Request {
            tables: &mut self.tables,
            index: shared.write(),
            undo,
            main: *revision + 1,
            sub: 0,
            compacted: *compacted,
            events,
        };
        let result = body(&mut request);
        let changed = request.sub > 0;
        drop(request);
        if changed {
            *revision += 1;
        }
        result
    }
}

/// One request being applied: its main revision and the sub revisions it has used.
struct Request<'t, 'e> {
    tables: &'e mut KvTables<'t>,
    /// Locked for the request, which reads it and inserts the versions it writes.
    index: RwLockWriteGuard<'e, KeyIndex>,
    undo: &'e mut Vec<Vec<u8>>,
    main: i64,
    sub: i64,
    compacted: i64,
    events: &'e mut Vec<PbEvent>,
}

/// What an earlier op of the same transaction did to a key, for the checks of later ops.
enum Effect<'r> {
    Put(&'r [u8]),
    Delete(KeySpan),
}

impl Request<'_, '_> {
    /// The store revision as this request's reads see it: its own revision once it has written.
    fn revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    fn view(&self) -> KvView<'_, RevsTable<'_>> {
        KvView {
            index: &self.index,
            revs: &self.tables.revs,
            values: &self.tables.values,
            current: self.revision(),
            compacted: self.compacted,
        }
    }

    /// etcd's checks of a put before anything is written: `ignore_value` / `ignore_lease` need
    /// the key to exist (`KeyNotFound`), a lease must exist (`LeaseNotFound`). `earlier` are the
    /// effects of the ops before this one in the same transaction.
    fn check_put(&self, req: &PbPutRequest, earlier: &[Effect<'_>]) -> Result<()> {
        if req.ignore_value || req.ignore_lease {
            let exists = match earlier.iter().rev().find_map(|effect| match effect {
                Effect::Put(key) => (*key == req.key.as_slice()).then_some(true),
                Effect::Delete(span) => span.contains(&req.key).then_some(false),
            }) {
                Some(exists) => exists,
                None => self.index.live_at(&req.key, self.revision()).is_some(),
            };
            if !exists {
                return Err(Error::KeyNotFound);
            }
        }
        if req.lease != 0 && self.tables.leases.get(req.lease)?.is_none() {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&mut self, req: &PbPutRequest) -> Result<PbPutResponse> {
        let prev = self.view().latest(&req.key)?;
        let (value, lease) = match &prev {
            Some(prev) => (
                if req.ignore_value {
                    prev.value.clone()
                } else {
                    req.value.clone()
                },
                if req.ignore_lease {
                    prev.lease
                } else {
                    req.lease
                },
            ),
            None => (req.value.clone(), req.lease),
        };
        self.put_key(&req.key, value, lease, prev.clone())?;
        Ok(PbPutResponse {
            header: header(self.revision()),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete_range(&mut self, req: &PbDeleteRequest) -> Result<PbDeleteResponse> {
        let span = KeySpan::new(&req.key, &req.range_end);
        let current = self.revision();
        let (doomed, _) = self.view().range_at(&span, current, None)?;
        for kv in &doomed {
            self.delete_key(&kv.key)?;
        }
        Ok(PbDeleteResponse {
            header: header(self.revision()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// etcd's Txn: decide the branches on the state before the transaction, check every op of
    /// the chosen branches (puts first, then ranges, as etcd does), then run them.
    fn txn(&mut self, req: &PbTxnRequest) -> Result<PbTxnResponse> {
        let path = txn_path(&self.view(), req)?;
        let mut ops = Vec::new();
        chosen_ops(req, &mut path.iter().copied(), &mut ops);

        let mut effects = Vec::new();
        for op in &ops {
            match op {
                PbTxnOpRequest::RequestPut(put) => {
                    self.check_put(put, &effects)?;
                    effects.push(Effect::Put(&put.key));
                }
                PbTxnOpRequest::RequestDeleteRange(delete) => {
                    effects.push(Effect::Delete(KeySpan::new(&delete.key, &delete.range_end)))
                }
                PbTxnOpRequest::RequestRange(_) | PbTxnOpRequest::RequestTxn(_) => {}
            }
        }
        for op in &ops {
            if let PbTxnOpRequest::RequestRange(range) = op {
                if range.revision != 0 {
                    self.view().resolve_revision(range.revision)?;
                }
            }
        }
        self.run_txn(req, &mut path.into_iter())
    }

    fn run_txn(
        &mut self,
        req: &PbTxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<PbTxnResponse> {
        let succeeded = path.next().unwrap_or(false);
        let mut responses = Vec::new();
        for op in branch(req, succeeded) {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(range)) => {
                    Some(PbTxnOpResponse::ResponseRange(self.view().range(range)?))
                }
                Some(PbTxnOpRequest::RequestPut(put)) => {
                    Some(PbTxnOpResponse::ResponsePut(self.put(put)?))
                }
                Some(PbTxnOpRequest::RequestDeleteRange(delete)) => Some(
                    PbTxnOpResponse::ResponseDeleteRange(self.delete_range(delete)?),
                ),
                Some(PbTxnOpRequest::RequestTxn(nested)) => {
                    Some(PbTxnOpResponse::ResponseTxn(self.run_txn(nested, path)?))
                }
                None => None,
            };
            responses.push(PbResponseOp { response });
        }
        Ok(PbTxnResponse {
            header: header(self.revision()),
            succeeded,
            responses,
        })
    }

    /// Writes a new version of `key` at the next sub revision. `prev` is its live version.
    fn put_key(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        prev: Option<PbKeyValue>,
    ) -> Result<()> {
        let kv = PbKeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(self.main, |prev| prev.create_revision),
            mod_revision: self.main,
            version: prev.as_ref().map_or(1, |prev| prev.version + 1),
            value,
            lease,
        };
        self.record_change(key, &HistoryRecord::Put(kv.clone()))?;
        let prev_lease = prev.as_ref().map_or(0, |prev| prev.lease);
        if prev_lease != 0 && prev_lease != lease {
            self.tables.lease_keys.remove((prev_lease, key))?;
        }
        if lease != 0 {
            self.tables.lease_keys.insert((lease, key), ())?;
        }
        self.events.push(PbEvent {
            r#type: event_type::PUT,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(())
    }

    /// Deletes `key` at the next sub revision, if it is live.
    fn delete_key(&mut self, key: &[u8]) -> Result<()> {
        let prev = match self.view().latest(key)? {
            Some(prev) => prev,
            None => return Ok(()),
        };
        let main = self.main;
        self.record_change(key, &HistoryRecord::Tombstone)?;
        if prev.lease != 0 {
            self.tables.lease_keys.remove((prev.lease, key))?;
        }
        self.events.push(PbEvent {
            r#type: event_type::DELETE,
            kv: Some(PbKeyValue {
                key: key.to_vec(),
                mod_revision: main,
                ..Default::default()
            }),
            prev_kv: Some(prev),
        });
        Ok(())
    }

    fn record_change(&mut self, key: &[u8], record: &HistoryRecord) -> Result<()> {
        let rev = (self.main, self.sub);
        let stored = record.store(rev.0, rev.1, &mut self.tables.values)?;
        self.tables.revs.insert(rev, (key, stored.as_slice()))?;
        let tombstone = matches!(record, HistoryRecord::Tombstone);
        self.index.insert(key, Indexed { rev, tombstone });
        self.undo.push(key.to_vec());
        self.sub += 1;
        Ok(())
    }
}
