//! The write-ahead log: the Raft log and vote, durable before a write is acknowledged.
//!
//! The WAL is a byte-level, index-addressed log. It stores entries as `(index, payload)` pairs
//! and the vote, committed marker and purged log id as opaque bytes; what those bytes mean is
//! the Raft layer's business. It owns the files in `--wal-dir` and nothing else.
//!
//! - `record`: the records (entry, vote, committed, truncate, purge, segment start) and their
//!   encoding.
//! - `frame`: a checksummed batch of records — the unit of one write and one fdatasync.
//! - `segment`: the preallocated segment files frames are written into.
//! - `log_state`: the rules of the log, shared by the writer and by recovery.
//! - `writer`: the writer thread, which batches concurrent requests into one frame (group
//!   commit) and rotates and deletes segments.
//! - `preallocate`: zero-filling the next segment file ahead of need, off the writer thread.
//! - `recovery`: reading a directory back, repairing a torn tail, refusing corruption.
//!
//! All operations go through one queue and are written in the order they were sent, so the order
//! of operations is total: an append sent after a truncate is applied after it. The writer
//! thread writes them, or a caller that asked to write on its own thread (`write_here`).
//!
//! Durability: an append's callback, and `save_vote`, `truncate` and `purge`, complete only
//! after the frame holding them was written and fdatasync'ed. `save_committed` is ordered with
//! the rest but not synced on its own. Every segment begins with the vote, committed marker and
//! purge point as they were when it was started, so deleting older segments never loses them.
//! The directory is locked (`flock`) while the WAL is open.
//!
//! `open` and dropping the last handle do blocking file I/O; call them where blocking is fine
//! (before the runtime starts, or in `spawn_blocking`).

mod frame;
mod log_state;
mod preallocate;
mod record;
mod recovery;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, File, TryLockError};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

pub use recovery::TornTail;

use crate::{Result, StorageError as Error};
use log_state::LogState;
use record::Record;
use recovery::SegmentSummary;
use segment::{ActiveSegment, SegmentName, Syncs};
use writer::{Completion, Queue, Request, Writer};

/// How the WAL lays out its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Size of each segment file, preallocated when the segment is started. A frame larger than
    /// this gets a segment of its own size.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        // etcd's segment size.
        WalOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// The log as found on disk by `Wal::open`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    /// The bytes given to the last `purge`.
    pub purged: Option<Vec<u8>>,
    /// The entries after the purge point, contiguous, in index order.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// The unacknowledged end of the log that was discarded, if a write was cut short.
    pub torn_tail: Option<TornTail>,
}

/// A handle to an open WAL. Clones share the one writer thread; the thread stops, after
/// writing anything still pending, when the last clone is dropped.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Arc<Queue>,
    writer: Option<JoinHandle<()>>,
    syncs: Syncs,
    /// Released after the writer has stopped, when this is dropped.
    _lock: File,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            // A completion that drops the last handle runs on the writer thread itself, which
            // then exits on its own once it sees the queue closed. (Not in `write_here`: its
            // caller holds a handle.)
            if writer.thread().id() != thread::current().id() && writer.join().is_err() {
                tracing::error!("wal: the writer thread panicked");
            }
        }
    }
}

impl Wal {
    /// Whether `dir` holds a WAL.
    pub fn exists(dir: &Path) -> Result<bool> {
        Ok(!segment::list(dir)?.is_empty())
    }

    /// Opens the WAL in `dir`, creating the directory and an empty WAL if there is none, and
    /// returns what it holds.
    ///
    /// Refuses with `Error::WalCorrupt`, modifying nothing, when the log is damaged anywhere
    /// but in its last, unacknowledged write; that torn tail is zeroed and reported in
    /// `Recovered::torn_tail`.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered)> {
        let syncs = Syncs::new();
        let dir_existed = dir.exists();
        fs::create_dir_all(dir)
            .map_err(|e| segment::io_error(format!("creating {}", dir.display()), e))?;
        if !dir_existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent, &syncs)?;
            }
        }

        let lock = lock_dir(dir)?;
        let found = recovery::read(dir)?;
        // Only now that the whole directory was read and found sound is anything changed.
        for temp in segment::list_temp_files(dir)? {
            fs::remove_file(&temp).map_err(|e| {
                segment::io_error(format!("removing half-made segment {}", temp.display()), e)
            })?;
        }
        let (state, segments, active, recovered) = match found {
            None => {
                let state = LogState::default();
                let name = SegmentName {
                    seq: 1,
                    first_index: 0,
                };
                let start = frame::encode(
                    &[Record::SegmentStart(state.segment_start(name.seq))],
                    name.seq,
                    0,
                );
                let len = options.segment_bytes.max(start.len() as u64);
                let active = ActiveSegment::create(dir, name, len, &start, &syncs)?;
                let segments = vec![SegmentSummary {
                    name,
                    path: active.path.clone(),
                    lowest_appended: None,
                }];
                (state, segments, active, Recovered::default())
            }
            Some(log) => {
                if let Some(tail) = &log.torn_tail {
                    tracing::warn!(
                        segment = %tail.segment.display(),
                        offset = tail.offset,
                        bytes = tail.len,
                        reason = %tail.reason,
                        "wal: discarding a torn write at the end of the log"
                    );
                    recovery::zero_torn_tail(tail)?;
                }
                let last = log.segments.last().expect("a WAL has segments");
                let active = ActiveSegment::open(last.name, last.path.clone(), log.write_offset)?;
                let recovered = Recovered {
                    vote: log.state.vote.clone(),
                    committed: log.state.committed.clone(),
                    purged: log.state.purged.as_ref().map(|(_, purged)| purged.clone()),
                    entries: log.entries,
                    torn_tail: log.torn_tail,
                };
                (log.state, log.segments, active, recovered)
            }
        };

        let mut writer = Writer::new(
            dir.to_path_buf(),
            options,
            state,
            segments,
            active,
            syncs.clone(),
        )?;
        // A crash between a purge and deleting its segments leaves them behind.
        writer.delete_purged_segments();
        let queue = Arc::new(Queue::new(writer));
        let served = queue.clone();
        let writer = thread::Builder::new()
            .name("ferrokv-wal-writer".into())
            .spawn(move || served.serve())
            .map_err(|e| segment::io_error("starting the writer thread".into(), e))?;
        let shared = Shared {
            queue,
            writer: Some(writer),
            syncs,
            _lock: lock,
        };
        Ok((
            Wal {
                shared: Arc::new(shared),
            },
            recovered,
        ))
    }

    /// Appends contiguous `entries`, replacing any entries at or after the first one's index,
    /// and calls `done` once they are durable — or with why they were refused
    /// (`WalIndexGap`, `WalBelowPurge`) or could not be written.
    ///
    /// `done` runs on the writer thread: it must be quick and must not block.
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>, done: Box<dyn FnOnce(Result<()>) + Send>) {
        self.send(Request::Append { entries, done });
    }

    /// Saves the vote; durable when this returns.
    pub async fn save_vote(&self, vote: Vec<u8>) -> Result<()> {
        self.call(|done| Request::Vote { vote, done }).await
    }

    /// Saves the vote; `done` runs on the writer thread once it is durable.
    pub fn save_vote_with(&self, vote: Vec<u8>, done: Box<dyn FnOnce(Result<()>) + Send>) {
        self.send(Request::Vote { vote, done });
    }

    /// As `purge`, with `done` run on the writer thread once the purge is durable.
    pub fn purge_with(
        &self,
        up_to_index: u64,
        purged: Vec<u8>,
        done: Box<dyn FnOnce(Result<()>) + Send>,
    ) {
        self.send(Request::Purge {
            up_to: up_to_index,
            purged,
            done,
        });
    }

    /// As `truncate`, with `done` run on the writer thread once the truncation is durable.
    pub fn truncate_with(&self, from_index: u64, done: Box<dyn FnOnce(Result<()>) + Send>) {
        self.send(Request::Truncate {
            from: from_index,
            done,
        });
    }

    /// Records the committed marker. It is not synced on its own: it is written with the next
    /// write that is synced anyway, or when the WAL closes.
    pub fn save_committed(&self, committed: Vec<u8>) {
        self.send(Request::Committed { committed });
    }

    /// Discards the entries at and after `from_index`; durable when this returns.
    pub async fn truncate(&self, from_index: u64) -> Result<()> {
        self.call(|done| Request::Truncate {
            from: from_index,
            done,
        })
        .await
    }

    /// Discards the entries at and before `up_to_index` and records `purged`, the caller's
    /// description of the purged log id, which `open` returns from then on. Durable when this
    /// returns; segments holding only purged entries are deleted.
    pub async fn purge(&self, up_to_index: u64, purged: Vec<u8>) -> Result<()> {
        self.call(|done| Request::Purge {
            up_to: up_to_index,
            purged,
            done,
        })
        .await
    }

    /// How many fsync/fdatasync calls this WAL has made since it was opened. With group commit
    /// this grows with the number of batches, not of appends.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.count()
    }

    /// The latency of every fsync and fdatasync this WAL makes, as the histogram etcd exports as
    /// `etcd_disk_wal_fsync_duration_seconds` (same name, help and buckets). Registering it is
    /// the metrics endpoint's business.
    pub fn fsync_duration_histogram(&self) -> prometheus::Histogram {
        self.shared.syncs.histogram()
    }

    async fn call(&self, request: impl FnOnce(Completion) -> Request) -> Result<()> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.send(request(Box::new(move |result| {
            // The caller may have stopped waiting; the write happened all the same.
            let _ = sender.send(result);
        })));
        receiver.await.unwrap_or(Err(Error::WalClosed))
    }

    fn send(&self, request: Request) {
        if let Err(request) = self.shared.queue.send(request) {
            if let Some(done) = request.into_completion() {
                done(Err(Error::WalClosed));
            }
        }
    }

    /// Runs `queue`, which sends requests through this handle, then writes them (and anything
    /// sent before) on the calling thread instead of the writer thread, and returns once all of
    /// it is durable or refused; their completions run here, before this returns.
    ///
    /// For a caller that would only wait for its write anyway: it saves waking the writer
    /// thread and being woken back, as etcd's raftNode saves a follower's entries on its own
    /// goroutine. Blocks on disk I/O; call off the async runtime.
    pub fn write_here<R>(&self, queue: impl FnOnce() -> R) -> R {
        // The robustness suite's negative control: see `acknowledging_before_write`.
        #[cfg(feature = "failpoints")]
        if writer::acknowledging_before_write() {
            return queue();
        }
        let hold = self.shared.queue.hold();
        let result = queue();
        self.shared.queue.write_queued(true);
        drop(hold);
        result
    }
}

/// Holds `dir` against other writers for as long as the WAL is open, as etcd locks its segment
/// files: two writers would interleave frames and corrupt the log.
fn lock_dir(dir: &Path) -> Result<File> {
    let handle =
        File::open(dir).map_err(|e| segment::io_error(format!("opening {}", dir.display()), e))?;
    // `File::try_lock` is Rust 1.89; the workspace's dependencies (redb 4) already need 1.90.
    #[allow(clippy::incompatible_msrv)]
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(TryLockError::WouldBlock) => Err(Error::WalLocked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => {
            Err(segment::io_error(format!("locking {}", dir.display()), e))
        }
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("syncs", &self.sync_count())
            .finish_non_exhaustive()
    }
}
