//! The writer: the one place that writes to the WAL, with group commit; on a thread of its own,
//! or on a caller's that asked to write its requests itself (`Wal::write_here`).
//!
//! Every operation reaches the writer as a `Request` on one queue, so operations are applied in
//! one total order. Whoever writes takes whatever is pending (up to a batch's size), checks
//! each request against the log's rules, encodes the accepted ones into one frame, writes it
//! with one `write`, makes it durable with one `fdatasync`, and only then runs the callbacks of
//! the whole batch. Callers that arrive while a sync is in flight queue up and share the next
//! one: under load the number of syncs stays near the number of batches, not of requests.
//!
//! The writer thread writes, woken by each request. A caller about to wait for its own write
//! anyway can write on its own thread instead (`Wal::write_here`), which spares the two thread
//! wake-ups of the hand-off and back.
//!
//! After a failed write or sync the writer refuses everything that follows: the page cache may
//! have dropped the failed pages, so a retry could report durability that is not there.
//!
//! Failpoints (failpoint builds only; docs/robustness.md): `walBeforeWrite` before a batch's
//! frame is written, `walAfterSync` once it is durable and before its callbacks run, and
//! `walAckBeforeWrite`, the broken model of the robustness suite's negative control, which
//! runs the callbacks before the frame is written.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::frame::{self, FrameBuilder};
use super::log_state::LogState;
use super::preallocate::Preallocator;
use super::record::Record;
use super::recovery::SegmentSummary;
use super::segment::{self, ActiveSegment, SegmentName, Syncs};
use super::WalOptions;
use crate::{Result, StorageError as Error};

/// Called once the request is durable, or with the reason it is not. Runs on the writer thread,
/// so it must be quick and must not block.
pub(crate) type Completion = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) enum Request {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        done: Completion,
    },
    Vote {
        vote: Vec<u8>,
        done: Completion,
    },
    Committed {
        committed: Vec<u8>,
    },
    Truncate {
        from: u64,
        done: Completion,
    },
    Purge {
        up_to: u64,
        purged: Vec<u8>,
        done: Completion,
    },
}

impl Request {
    /// Roughly the bytes the request adds to a frame, to bound batches.
    fn size(&self) -> usize {
        match self {
            Request::Append { entries, .. } => {
                entries.iter().map(|(_, payload)| payload.len() + 16).sum()
            }
            Request::Vote { vote, .. } => vote.len(),
            Request::Committed { committed } => committed.len(),
            Request::Truncate { .. } => 8,
            Request::Purge { purged, .. } => purged.len(),
        }
    }

    /// Takes the completion out of a request that will not be written.
    pub(crate) fn into_completion(self) -> Option<Completion> {
        match self {
            Request::Append { done, .. }
            | Request::Vote { done, .. }
            | Request::Truncate { done, .. }
            | Request::Purge { done, .. } => Some(done),
            Request::Committed { .. } => None,
        }
    }
}

/// A batch stops taking more requests once its frame would pass this size; the rest wait for
/// the next frame. Large enough that one frame carries a full Raft append batch, small enough
/// that one huge write does not hold up everything behind it for long.
const MAX_BATCH_BYTES: usize = 8 << 20;

pub(crate) struct Writer {
    dir: PathBuf,
    options: WalOptions,
    /// The log as of the last frame written.
    state: LogState,
    /// Every segment, oldest first; the last is `active`.
    segments: Vec<SegmentSummary>,
    active: ActiveSegment,
    /// Prepares the next segment's file while this one fills up.
    preallocator: Preallocator,
    /// The newest committed marker not yet written: it rides along with the next frame that has
    /// to be synced anyway, or is written when the WAL closes.
    pending_committed: Option<Vec<u8>>,
    /// Set after a failed write or sync; every later request gets this reason.
    failure: Option<String>,
    syncs: Syncs,
}

impl Writer {
    pub(crate) fn new(
        dir: PathBuf,
        options: WalOptions,
        state: LogState,
        segments: Vec<SegmentSummary>,
        active: ActiveSegment,
        syncs: Syncs,
    ) -> Result<Self> {
        let preallocator = Preallocator::start(&dir, options.segment_bytes)
            .map_err(|e| segment::io_error("starting the preallocation thread".into(), e))?;
        Ok(Writer {
            dir,
            options,
            state,
            segments,
            active,
            preallocator,
            pending_committed: None,
            failure: None,
            syncs,
        })
    }

    /// Writes the committed marker still pending, if any: called once, when the WAL closes.
    fn close(&mut self) {
        if self.pending_committed.is_some() && self.failure.is_none() {
            let before = self.state.clone();
            let mut frame = FrameBuilder::new();
            self.push_pending_committed(&mut frame);
            if let Err(e) = self.write_frame(frame, &before) {
                tracing::error!(error = %e, "wal: could not write the committed marker on close");
            }
        }
    }

    /// Writes one batch as one frame and completes its requests.
    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(reason) = &self.failure {
            for done in batch.into_iter().filter_map(Request::into_completion) {
                done(Err(Error::WalFailed {
                    reason: reason.clone(),
                }));
            }
            return;
        }

        let before = self.state.clone();
        let mut frame = FrameBuilder::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut lowest_appended: Option<u64> = None;
        let mut purged = false;
        for request in batch {
            match request {
                Request::Committed { committed } => self.pending_committed = Some(committed),
                Request::Append { entries, done } => match self.check_append(&entries) {
                    Err(e) => done(Err(e)),
                    Ok(()) => {
                        if let Some((first, _)) = entries.first() {
                            lowest_appended =
                                Some(lowest_appended.map_or(*first, |low| low.min(*first)));
                        }
                        for (index, payload) in entries {
                            self.push(&mut frame, Record::Entry { index, payload });
                        }
                        accepted.push(done);
                    }
                },
                Request::Vote { vote, done } => {
                    self.push(&mut frame, Record::Vote(vote));
                    accepted.push(done);
                }
                Request::Truncate { from, done } => {
                    let record = Record::Truncate { from };
                    match self.state.check(&record) {
                        Err(e) => done(Err(e)),
                        Ok(()) => {
                            self.push(&mut frame, record);
                            accepted.push(done);
                        }
                    }
                }
                Request::Purge {
                    up_to,
                    purged: purged_id,
                    done,
                } => {
                    let record = Record::Purge {
                        up_to,
                        purged: purged_id,
                    };
                    match self.state.check(&record) {
                        Err(e) => done(Err(e)),
                        Ok(()) => {
                            self.push(&mut frame, record);
                            accepted.push(done);
                            purged = true;
                        }
                    }
                }
            }
        }

        // Requests that added no record (an empty append) are durable as soon as everything
        // before them is, which it already is.
        if !frame.is_empty() {
            #[cfg(feature = "failpoints")]
            acknowledge_before_write(&mut accepted);
            fail::fail_point!("walBeforeWrite");
            self.push_pending_committed(&mut frame);
            if let Err(e) = self.write_frame(frame, &before) {
                let reason = e.to_string();
                tracing::error!(error = %reason, "wal: write failed; refusing all further writes");
                self.failure = Some(reason.clone());
                for done in accepted {
                    done(Err(Error::WalFailed {
                        reason: reason.clone(),
                    }));
                }
                return;
            }
            if let Some(low) = lowest_appended {
                let active = self
                    .segments
                    .last_mut()
                    .expect("the active segment is listed");
                active.lowest_appended = Some(active.lowest_appended.map_or(low, |l| l.min(low)));
            }
            fail::fail_point!("walAfterSync");
        }
        if purged {
            self.delete_purged_segments();
        }
        for done in accepted {
            done(Ok(()));
        }
    }

    /// Checks a whole append before any of it is applied, so a refused append leaves no trace.
    fn check_append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        self.state.check(&Record::Entry {
            index: *first,
            payload: Vec::new(),
        })?;
        for (expected, (index, _)) in (*first..).zip(entries) {
            if *index != expected {
                return Err(Error::WalIndexGap {
                    expected,
                    got: *index,
                });
            }
        }
        Ok(())
    }

    fn push(&mut self, frame: &mut FrameBuilder, record: Record) {
        self.state.apply(&record);
        frame.push(&record);
    }

    fn push_pending_committed(&mut self, frame: &mut FrameBuilder) {
        if let Some(committed) = self.pending_committed.take() {
            self.push(frame, Record::Committed(committed));
        }
    }

    /// Writes `frame` durably, first starting a new segment if the active one is full.
    /// `before` is the log state before the frame's records, which a new segment starts from.
    fn write_frame(&mut self, frame: FrameBuilder, before: &LogState) -> Result<()> {
        if !self.active.has_room_for(frame.frame_len()) {
            self.start_segment(before, frame.frame_len())?;
        }
        let frame = frame.finish(self.active.name.seq, self.active.write_offset());
        self.active.write_durably(&frame, &self.syncs)
    }

    fn start_segment(&mut self, state: &LogState, first_frame_len: usize) -> Result<()> {
        let name = SegmentName {
            seq: self.active.name.seq + 1,
            first_index: state.next_index().unwrap_or(0),
        };
        let start_frame = frame::encode(
            &[Record::SegmentStart(state.segment_start(name.seq))],
            name.seq,
            0,
        );
        let needed = (start_frame.len() + first_frame_len) as u64;
        // A frame larger than a segment gets a segment of its own size; and if preallocation
        // failed, the writer creates the file itself.
        let prepared = if needed <= self.options.segment_bytes {
            self.preallocator.take()
        } else {
            None
        };
        self.active = match prepared {
            Some(prepared) => {
                ActiveSegment::install(&self.dir, name, prepared, &start_frame, &self.syncs)?
            }
            None => {
                let len = self.options.segment_bytes.max(needed);
                ActiveSegment::create(&self.dir, name, len, &start_frame, &self.syncs)?
            }
        };
        self.segments.push(SegmentSummary {
            name,
            path: self.active.path.clone(),
            lowest_appended: None,
        });
        tracing::debug!(segment = %self.active.path.display(), "wal: started a new segment");
        Ok(())
    }

    /// Deletes the segments that hold no entry above the purge point. Failing to delete is not a
    /// durability problem — the purge record is already durable and recovery skips purged
    /// entries — so it is logged and retried after the next purge.
    pub(crate) fn delete_purged_segments(&mut self) {
        let deletable = purgeable_segments(&self.segments, &self.state);
        if deletable == 0 {
            return;
        }
        // Oldest first: a crash in the middle leaves a gapless run of segments.
        let mut deleted = 0;
        for summary in &self.segments[..deletable] {
            if let Err(e) = std::fs::remove_file(&summary.path) {
                tracing::warn!(segment = %summary.path.display(), error = %e, "wal: could not delete a purged segment");
                break;
            }
            deleted += 1;
        }
        self.segments.drain(..deleted);
        if let Err(e) = segment::sync_dir(&self.dir, &self.syncs) {
            tracing::warn!(error = %e, "wal: could not sync the directory after deleting purged segments");
        }
    }
}

/// The requests waiting to be written, and the writer that writes them.
///
/// Whoever holds the writer writes: the writer thread, woken by each request sent, or a caller
/// of `Wal::write_here` on its own thread. A batch is taken from the queue only while the writer
/// is held, so batches are written in the order their requests were sent, whoever writes them.
pub(crate) struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    writer: Mutex<Writer>,
}

struct Pending {
    requests: VecDeque<Request>,
    /// Callers of `hold` that will write what is queued themselves: while there are any, a
    /// request sent does not wake the writer thread.
    holders: usize,
    /// Set when the last handle is gone: the writer thread writes what is left and stops.
    closed: bool,
}

/// Keeps the writer thread asleep while its holder queues requests it will write itself.
pub(crate) struct Hold<'a>(&'a Queue);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.pending();
        pending.holders -= 1;
        // Another thread's request that arrived after the holder's last write.
        if pending.holders == 0 && !pending.requests.is_empty() {
            self.0.wake.notify_one();
        }
    }
}

impl Queue {
    pub(crate) fn new(writer: Writer) -> Queue {
        Queue {
            pending: Mutex::new(Pending {
                requests: VecDeque::new(),
                holders: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            writer: Mutex::new(writer),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A panic mid-batch leaves the files in doubt, as a failed write does.
            let mut writer = poisoned.into_inner();
            writer
                .failure
                .get_or_insert_with(|| "a WAL write panicked".into());
            writer
        })
    }

    /// Queues `request`, waking the writer thread unless someone holds it back; gives the
    /// request back if the WAL is closed.
    pub(crate) fn send(&self, request: Request) -> std::result::Result<(), Request> {
        let mut pending = self.pending();
        if pending.closed {
            return Err(request);
        }
        pending.requests.push_back(request);
        if pending.holders == 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub(crate) fn hold(&self) -> Hold<'_> {
        self.pending().holders += 1;
        Hold(self)
    }

    /// Writes everything queued, batch by batch, on the calling thread; returns once every
    /// request queued before the call is durable or refused, its completion run. The writer
    /// thread (`holder` false) stops as soon as someone holds it back, leaving the rest to the
    /// holder, who writes it next.
    pub(crate) fn write_queued(&self, holder: bool) {
        let mut writer = self.writer();
        loop {
            let batch = {
                let mut pending = self.pending();
                if !holder && pending.holders > 0 {
                    return;
                }
                let mut batch = Vec::new();
                let mut batch_bytes = 0;
                while batch_bytes < MAX_BATCH_BYTES {
                    let Some(request) = pending.requests.pop_front() else {
                        break;
                    };
                    batch_bytes += request.size();
                    batch.push(request);
                }
                batch
            };
            if batch.is_empty() {
                return;
            }
            writer.commit(batch);
        }
    }

    /// The writer thread: writes what is queued whenever nobody holds it back, until the WAL
    /// closes; then writes what is left and the pending committed marker.
    pub(crate) fn serve(&self) {
        loop {
            {
                let mut pending = self.pending();
                while pending.requests.is_empty() || pending.holders > 0 {
                    if pending.closed && pending.requests.is_empty() {
                        drop(pending);
                        self.writer().close();
                        return;
                    }
                    pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            }
            self.write_queued(false);
        }
    }

    /// Refuses every later request and has the writer thread finish.
    pub(crate) fn close(&self) {
        self.pending().closed = true;
        self.wake.notify_one();
    }
}

/// Failpoint `walAckBeforeWrite`: reports the batch durable before it is written, so what a
/// crash loses was acknowledged — the durability bug the robustness suite must catch.
#[cfg(feature = "failpoints")]
fn acknowledge_before_write(accepted: &mut Vec<Completion>) {
    fail::fail_point!("walAckBeforeWrite", |_| accepted
        .drain(..)
        .for_each(|done| done(Ok(()))));
}

/// Whether `walAckBeforeWrite` is armed. A caller of `Wal::write_here` could send nothing
/// until its own write was over, so under the broken model the writer thread writes for it, as
/// for any other caller, and what it was told is durable may not be yet.
#[cfg(feature = "failpoints")]
pub(crate) fn acknowledging_before_write() -> bool {
    fail::eval("walAckBeforeWrite", |_| ()).is_some()
}

/// How many of the oldest `segments` (never the active, last one) hold no entry above the purge
/// point of `state`.
///
/// A segment's live entries are all below the lowest index appended in any later segment
/// (appending discards everything at and after the appended index) and at or below the last
/// index, so a segment can go once either of those is at or below the purge point + 1.
pub(crate) fn purgeable_segments(segments: &[SegmentSummary], state: &LogState) -> usize {
    let Some(purged) = state.purged_index() else {
        return 0;
    };
    let everything_purged = state.last_index.is_none_or(|last| last <= purged);
    let mut lowest_later: Option<u64> = None;
    for older in (0..segments.len().saturating_sub(1)).rev() {
        if let Some(low) = segments[older + 1].lowest_appended {
            lowest_later = Some(lowest_later.map_or(low, |l| l.min(low)));
        }
        if everything_purged || lowest_later.is_some_and(|low| low <= purged + 1) {
            // Every segment older than this one qualifies too: `lowest_later` only shrinks
            // going back.
            return older + 1;
        }
    }
    0
}
