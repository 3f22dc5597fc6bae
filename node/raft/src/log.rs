//! The Raft log: tikv's `raft::Storage` on ferrokv's WAL.
//!
//! The WAL makes entries and the hard state durable; this module keeps the entries since the
//! last compaction in memory too (as etcd's raftNode keeps its `MemoryStorage`), because
//! replication reads them constantly. It owns the translation between Raft's types and the
//! WAL's records — entries as protobuf, the hard state as the WAL's vote and committed records,
//! the compaction point as its purge record — and nothing else: when to compact is the apply
//! stage's decision, when to persist the Ready loop's.
//!
//! Entries are put in memory when they are handed to the WAL, before they are durable: Raft
//! reads them from here only once `on_persist_ready` told it they are (tikv's
//! `advance_append_async` contract).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost_011::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::Result;
use ferrokv_storage::wal::{Wal, WalOptions};
use ferrokv_storage::StorageError as StoreError;

/// The Raft log of this member. Clones share it.
#[derive(Clone)]
pub struct RaftLog {
    core: Arc<RwLock<LogCore>>,
    wal: Wal,
    /// Set by Raft asking for a snapshot that is not built yet; the Ready loop passes the
    /// request on to the apply stage.
    snapshot_wanted: Arc<AtomicBool>,
}

struct LogCore {
    hard_state: HardState,
    /// The configuration as of the applied index, for `initial_state` (set from the store).
    conf_state: ConfState,
    /// Index and term of the last compacted entry: the log holds the entries after it.
    compacted: (u64, u64),
    entries: VecDeque<Entry>,
    /// The last snapshot the apply stage built, sent to members that are too far behind.
    built: Option<Snapshot>,
}

/// What the WAL's vote record holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct VoteRecord {
    term: u64,
    vote: u64,
    commit: u64,
}

/// What a WAL whose records do not decode most likely is.
const OLDER_RELEASE_HINT: &str = "if this data dir was written by a ferrokv release before its Raft engine changed, move its data: `etcdctl snapshot save` with that release, then `ferrokv snapshot restore` into new data dirs";

fn corrupt(dir: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::WalCorrupt {
        segment: dir.to_path_buf(),
        offset: 0,
        reason: format!("undecodable {what}: {e} ({OLDER_RELEASE_HINT})"),
    }
}

impl RaftLog {
    /// Opens the WAL in `dir`, recovering the log it holds. Call off the async runtime.
    pub fn open(dir: &Path) -> Result<RaftLog> {
        let (wal, recovered) = Wal::open(dir, WalOptions::default())?;
        let mut hard_state = HardState::default();
        if let Some(bytes) = &recovered.vote {
            let vote: VoteRecord =
                bincode::deserialize(bytes).map_err(|e| corrupt(dir, "hard state", e))?;
            hard_state.term = vote.term;
            hard_state.vote = vote.vote;
            hard_state.commit = vote.commit;
        }
        if let Some(bytes) = &recovered.committed {
            let commit: u64 =
                bincode::deserialize(bytes).map_err(|e| corrupt(dir, "commit index", e))?;
            hard_state.commit = hard_state.commit.max(commit);
        }
        let compacted = match &recovered.purged {
            Some(bytes) => {
                bincode::deserialize(bytes).map_err(|e| corrupt(dir, "compaction", e))?
            }
            None => (0, 0),
        };
        let mut entries = VecDeque::with_capacity(recovered.entries.len());
        for (index, bytes) in &recovered.entries {
            let entry = Entry::decode(bytes.as_slice()).map_err(|e| corrupt(dir, "entry", e))?;
            if entry.index != *index {
                return Err(corrupt(
                    dir,
                    "entry",
                    format!("record {index} holds entry {}", entry.index),
                )
                .into());
            }
            entries.push_back(entry);
        }
        let last = compacted.0 + entries.len() as u64;
        // The committed marker is not synced on its own; it never points past what is there.
        hard_state.commit = hard_state.commit.min(last);
        Ok(RaftLog {
            core: Arc::new(RwLock::new(LogCore {
                hard_state,
                conf_state: ConfState::default(),
                compacted,
                entries,
                built: None,
            })),
            wal,
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, LogCore> {
        self.core.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, LogCore> {
        self.core.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this WAL has ever recorded anything of a Raft log.
    pub fn is_empty(&self) -> bool {
        let core = self.read();
        core.entries.is_empty() && core.compacted.0 == 0 && core.hard_state == HardState::default()
    }

    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    pub fn last_index(&self) -> u64 {
        let core = self.read();
        core.compacted.0 + core.entries.len() as u64
    }

    /// The WAL's fsync latency histogram (`etcd_disk_wal_fsync_duration_seconds`).
    pub fn fsync_histogram(&self) -> prometheus::Histogram {
        self.wal.fsync_duration_histogram()
    }

    /// Sets the configuration Raft starts from: the one the store applied last.
    pub fn set_conf_state(&self, conf_state: ConfState) {
        self.write().conf_state = conf_state;
    }

    /// Makes the log agree with a store that has applied `(index, term)`: the store can be
    /// ahead of the log only when a snapshot was installed into it and the member stopped
    /// before the log recorded the snapshot; the log then starts after it, as if the snapshot
    /// had been recorded.
    pub fn catch_up_with_store(&self, index: u64, term: u64) -> Result<()> {
        if index <= self.last_index() {
            let mut core = self.write();
            core.hard_state.commit = core.hard_state.commit.max(index);
            return Ok(());
        }
        tracing::warn!(
            index,
            term,
            "the store is ahead of the log (a snapshot install was interrupted); the log restarts after it"
        );
        self.record_snapshot_blocking(index, term)
    }

    /// Founds the log of a new cluster: `entries` (the founding members' configuration
    /// changes) at term 1, committed. Durable when this returns; call off the async runtime.
    pub fn bootstrap(&self, entries: Vec<Entry>) -> Result<()> {
        let commit = entries.last().map_or(0, |e| e.index);
        let hs = HardState {
            term: 1,
            vote: 0,
            commit,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        self.save_hard_state(&hs, true, None);
        self.append(
            &entries,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        Ok(rx.recv().unwrap_or(Err(StoreError::WalClosed))?)
    }

    /// Appends `entries` (replacing any at or after the first one's index) in memory at once
    /// and in the WAL; `done` runs on the WAL's thread once they are durable.
    pub fn append(
        &self,
        entries: &[Entry],
        done: Box<dyn FnOnce(ferrokv_storage::Result<()>) + Send>,
    ) {
        let Some(first) = entries.first() else {
            done(Ok(()));
            return;
        };
        let records = entries
            .iter()
            .map(|e| (e.index, e.encode_to_vec()))
            .collect();
        {
            let mut core = self.write();
            let keep = first.index.saturating_sub(core.compacted.0 + 1) as usize;
            core.entries.truncate(keep);
            core.entries.extend(entries.iter().cloned());
        }
        self.wal.append(records, done);
    }

    /// Runs `queue`, which appends or saves through this log, and writes what it queued on the
    /// calling thread (`Wal::write_here`): durable, or failed, when this returns.
    pub fn write_here<R>(&self, queue: impl FnOnce() -> R) -> R {
        self.wal.write_here(queue)
    }

    /// Records the hard state: term and vote synced (`done` runs once durable), the commit
    /// index alone written with the next synced write.
    pub fn save_hard_state(
        &self,
        hs: &HardState,
        vote_changed: bool,
        done: Option<Box<dyn FnOnce(ferrokv_storage::Result<()>) + Send>>,
    ) {
        self.write().hard_state = hs.clone();
        if vote_changed {
            let record = VoteRecord {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            };
            let bytes = bincode::serialize(&record).expect("in-memory values serialise");
            self.wal
                .save_vote_with(bytes, done.unwrap_or_else(|| Box::new(|_| {})));
        } else {
            self.wal
                .save_committed(bincode::serialize(&hs.commit).expect("u64 serialises"));
            if let Some(done) = done {
                done(Ok(()));
            }
        }
    }

    /// Drops the entries up to `index` (which the store holds durably), in memory and in the
    /// WAL. The WAL's purge is synced with its next write.
    pub fn compact(&self, index: u64) {
        let mut core = self.write();
        if index <= core.compacted.0 || index > core.compacted.0 + core.entries.len() as u64 {
            return;
        }
        let dropped = (index - core.compacted.0) as usize;
        let term = core.entries[dropped - 1].term;
        core.entries.drain(..dropped);
        core.compacted = (index, term);
        let record = bincode::serialize(&(index, term)).expect("in-memory values serialise");
        drop(core);
        self.wal.purge_with(index, record, Box::new(|_| {}));
    }

    /// Records that the store now holds a snapshot up to `(index, term)`: the log restarts
    /// after it. Durable when this returns; call off the async runtime.
    pub fn record_snapshot_blocking(&self, index: u64, term: u64) -> Result<()> {
        let hs = {
            let mut core = self.write();
            core.entries.clear();
            core.compacted = (index, term);
            core.hard_state.commit = core.hard_state.commit.max(index);
            core.hard_state.clone()
        };
        let record = bincode::serialize(&(index, term)).expect("in-memory values serialise");
        // Entries past the snapshot belong to a log the leader's snapshot replaced.
        let (tx, rx) = std::sync::mpsc::channel();
        let purged = tx.clone();
        self.wal.purge_with(
            index,
            record,
            Box::new(move |result| {
                let _ = purged.send(result);
            }),
        );
        self.wal.truncate_with(
            index + 1,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::WalClosed))?;
        rx.recv().unwrap_or(Err(StoreError::WalClosed))?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.save_hard_state(
            &hs,
            true,
            Some(Box::new(move |result| {
                let _ = tx.send(result);
            })),
        );
        Ok(rx.recv().unwrap_or(Err(StoreError::WalClosed))?)
    }

    /// Offers a snapshot the apply stage built, for members too far behind.
    pub fn offer_snapshot(&self, snapshot: Snapshot) {
        self.write().built = Some(snapshot);
    }

    /// Drops the built snapshot once it was sent: it holds a copy of the whole store, and a
    /// later request gets a fresher one.
    pub fn forget_snapshot(&self) {
        self.write().built = None;
    }

    /// Whether Raft asked for a snapshot since the last call.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::AcqRel)
    }

    /// The term of entry `index`, if this log knows it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        raft::Storage::term(self, index).ok()
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.read();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.read();
        let first = core.compacted.0 + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = core.compacted.0 + core.entries.len() as u64;
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for entry in core
            .entries
            .range((low - first) as usize..(high - first) as usize)
        {
            size += entry.encoded_len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.read();
        let (compacted, compacted_term) = core.compacted;
        if idx == compacted {
            return Ok(compacted_term);
        }
        if idx < compacted {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match core.entries.get((idx - compacted - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().compacted.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.read();
        if let Some(snapshot) = &core.built {
            let index = snapshot.get_metadata().index;
            if index >= request_index && index >= core.compacted.0 {
                return Ok(snapshot.clone());
            }
        }
        self.snapshot_wanted.store(true, Ordering::Release);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index}").into_bytes(),
            ..Default::default()
        }
    }

    fn append_durably(log: &RaftLog, entries: &[Entry]) {
        let (tx, rx) = std::sync::mpsc::channel();
        log.append(
            entries,
            Box::new(move |r| {
                tx.send(r).unwrap();
            }),
        );
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn entries_hard_state_and_compaction_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            assert!(log.is_empty());
            append_durably(&log, &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>());
            // A conflicting suffix from a new leader replaces entries 8..=10.
            append_durably(&log, &[entry(8, 2), entry(9, 2)]);
            let hs = HardState {
                term: 2,
                vote: 7,
                commit: 9,
            };
            let (tx, rx) = std::sync::mpsc::channel();
            log.save_hard_state(
                &hs,
                true,
                Some(Box::new(move |r| {
                    tx.send(r).unwrap();
                })),
            );
            rx.recv().unwrap().unwrap();
            log.compact(5);
            // The purge is synced with the next write.
            append_durably(&log, &[entry(10, 2)]);
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.first_index().unwrap(), 6);
        assert_eq!(RaftLog::last_index(&log), 10);
        assert_eq!(log.term(5).unwrap(), 1);
        assert_eq!(log.term(8).unwrap(), 2);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let hs = log.initial_state().unwrap().hard_state;
        assert_eq!((hs.term, hs.vote, hs.commit), (2, 7, 9));
        let got = log
            .entries(6, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(6, 1), (7, 1), (8, 2), (9, 2), (10, 2)]
        );
    }

    #[test]
    fn a_store_ahead_of_the_log_restarts_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = RaftLog::open(dir.path()).unwrap();
            append_durably(&log, &(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
            log.catch_up_with_store(50, 4).unwrap();
        }
        let log = RaftLog::open(dir.path()).unwrap();
        assert_eq!(log.first_index().unwrap(), 51);
        assert_eq!(RaftLog::last_index(&log), 50);
        assert_eq!(log.term(50).unwrap(), 4);
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 50);
    }

    #[test]
    fn a_missing_snapshot_is_requested_and_an_offered_one_served() {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        assert!(matches!(
            log.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(log.take_snapshot_request());
        assert!(!log.take_snapshot_request());
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        log.offer_snapshot(snapshot);
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 3);
    }
}
