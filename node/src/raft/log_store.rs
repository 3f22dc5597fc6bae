//! openraft's log storage on ferrokv's WAL.
//!
//! The WAL makes entries and the vote durable; this module keeps the entries since the last
//! purge in memory too (as etcd's raft keeps its unstable and recent stable entries), because
//! replication reads them constantly. It owns the translation between openraft's types and the
//! WAL's bytes and nothing else.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};

use super::types::{codec, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::storage::wal::{Wal, WalOptions};
use crate::Result;

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    state: Arc<Mutex<LogCache>>,
}

#[derive(Default)]
struct LogCache {
    /// Entries after `purged`, contiguous.
    entries: VecDeque<Entry>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

impl LogCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|e| e.log_id).or(self.purged)
    }

    /// Drops entries with index >= `index`.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            self.entries.pop_back();
        }
    }

    /// Drops entries with index <= `index`.
    fn purge_upto(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= index)
        {
            self.entries.pop_front();
        }
    }
}

impl LogStore {
    /// Opens the WAL in `dir`, recovering whatever it holds.
    pub fn open(dir: &Path) -> Result<LogStore> {
        let (wal, recovered) = Wal::open(dir, WalOptions::default())?;
        let corrupt = |what: &str, e: String| crate::Error::WalCorrupt {
            segment: dir.to_path_buf(),
            offset: 0,
            reason: format!("undecodable {what}: {e}"),
        };
        let mut cache = LogCache {
            vote: recovered
                .vote
                .map(|b| codec::decode(&b).map_err(|e| corrupt("vote", e)))
                .transpose()?,
            committed: recovered
                .committed
                .map(|b| codec::decode(&b).map_err(|e| corrupt("commit index", e)))
                .transpose()?,
            purged: recovered
                .purged
                .map(|b| codec::decode(&b).map_err(|e| corrupt("purge record", e)))
                .transpose()?,
            entries: VecDeque::with_capacity(recovered.entries.len()),
        };
        for (index, bytes) in recovered.entries {
            let entry: Entry = codec::decode(&bytes).map_err(|e| corrupt("entry", e))?;
            if entry.log_id.index != index {
                return Err(corrupt(
                    "entry",
                    format!("record {index} holds entry {}", entry.log_id.index),
                ));
            }
            cache.entries.push_back(entry);
        }
        Ok(LogStore {
            wal: Arc::new(wal),
            state: Arc::new(Mutex::new(cache)),
        })
    }

    /// The last entry's log ID (or the purge point's), for pre-vote's log comparison.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.state.lock().unwrap().last_log_id()
    }

    /// The WAL's fsync latency histogram (`etcd_disk_wal_fsync_duration_seconds`).
    pub fn fsync_histogram(&self) -> prometheus::Histogram {
        self.wal.fsync_duration_histogram()
    }

    /// Whether this WAL has ever recorded anything of a Raft log.
    pub fn is_empty(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.entries.is_empty() && s.purged.is_none() && s.vote.is_none()
    }
}

fn write_error(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Logs, verb, io::Error::other(e.to_string()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let s = self.state.lock().unwrap();
        let Some(first) = s.first_index() else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => first,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i + 1,
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let from = start.max(first);
        if from >= end {
            return Ok(Vec::new());
        }
        let skip = (from - first) as usize;
        let take = (end - from).min(s.entries.len().saturating_sub(skip) as u64) as usize;
        Ok(s.entries.iter().skip(skip).take(take).cloned().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let s = self.state.lock().unwrap();
        Ok(LogState {
            last_purged_log_id: s.purged,
            last_log_id: s.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.wal.save_vote(codec::encode(vote)).await.map_err(|e| {
            StorageError::from_io_error(
                ErrorSubject::Vote,
                ErrorVerb::Write,
                io::Error::other(e.to_string()),
            )
        })?;
        self.state.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.state.lock().unwrap().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.wal.save_committed(codec::encode(&c));
        }
        self.state.lock().unwrap().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state.lock().unwrap().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut s = self.state.lock().unwrap();
            for entry in entries {
                let index = entry.log_id.index;
                s.truncate_from(index);
                records.push((index, codec::encode(&entry)));
                s.entries.push_back(entry);
            }
        }
        if records.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.wal.append(
            records,
            Box::new(move |result| {
                callback.log_io_completed(result.map_err(|e| io::Error::other(e.to_string())));
            }),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.state.lock().unwrap().truncate_from(log_id.index);
        self.wal
            .truncate(log_id.index)
            .await
            .map_err(|e| write_error(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut s = self.state.lock().unwrap();
            s.purge_upto(log_id.index);
            s.purged = Some(log_id);
        }
        self.wal
            .purge(log_id.index, codec::encode(&log_id))
            .await
            .map_err(|e| write_error(ErrorVerb::Delete, e))
    }
}
