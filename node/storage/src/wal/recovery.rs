//! Recovery: reading a WAL directory back into the log it holds.
//!
//! `read` replays every segment, oldest first, and decides what the bytes after the last intact
//! frame are. It never modifies a file: only when the whole directory has been read and found
//! sound does `Wal::open` act on its findings (zeroing a torn tail, removing half-made segments).
//!
//! The classification, from etcd's experience with torn writes:
//! - a frame that fails its checksum, is cut short, or is garbage, at the end of the **last**
//!   segment with nothing intact after it, is a **torn tail**: the write that was in flight when
//!   the process or machine stopped. It was never acknowledged (acknowledgement waits for
//!   fdatasync), so it is discarded.
//! - anything else that is not a clean run of intact frames followed by zeroes — a damaged frame
//!   with an intact one after it, damage in a segment that is not the last, a record that does
//!   not decode inside a frame whose checksum holds, a gap in the entry indexes, a missing
//!   segment — is **corruption**: the log may have lost acknowledged writes, and starting would
//!   hide that. `read` returns `Error::WalCorrupt`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use super::frame::{self, FrameAt, ALIGN};
use super::log_state::LogState;
use super::record::Record;
use super::segment::{self, io_error, SegmentName};
use crate::{Result, StorageError as Error};

/// What a WAL directory holds, as found by `read`.
pub(crate) struct ReadLog {
    pub state: LogState,
    /// Entries after the purge point, contiguous, in index order.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Every segment, oldest first, with the lowest index appended while it was current.
    pub segments: Vec<SegmentSummary>,
    /// Where writing continues: the end of the last intact frame of the last segment.
    pub write_offset: u64,
    pub torn_tail: Option<TornTail>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub name: SegmentName,
    pub path: PathBuf,
    /// The lowest entry index written into this segment. Every entry of an older segment at or
    /// above it was discarded when it was written, which is what lets purging delete segments.
    pub lowest_appended: Option<u64>,
}

/// The unacknowledged end of the last segment, to be zeroed before writing resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Offset of the first byte that is not part of an intact frame.
    pub offset: u64,
    /// How many bytes from `offset` on are not zero.
    pub len: u64,
    /// Why the frame at `offset` was not intact.
    pub reason: String,
}

/// Reads the WAL in `dir`; `Ok(None)` when there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<ReadLog>> {
    let names = segment::list(dir)?;
    let Some(((first_name, first_path), (_, last_path))) = names.first().zip(names.last()) else {
        return Ok(None);
    };
    for pair in names.windows(2) {
        let ((older, _), (newer, newer_path)) = (&pair[0], &pair[1]);
        if newer.seq != older.seq + 1 {
            return Err(corrupt(
                newer_path,
                0,
                format!(
                    "segments {} to {} are missing",
                    older.seq + 1,
                    newer.seq - 1
                ),
            ));
        }
    }

    let mut replay = Replay {
        state: None,
        entries: VecDeque::new(),
    };
    let mut segments = Vec::with_capacity(names.len());
    let mut write_offset = 0;
    let mut torn_tail = None;
    for (name, path) in &names {
        let is_last = path == last_path;
        let bytes = fs::read(path)
            .map_err(|e| io_error(format!("reading segment {}", path.display()), e))?;
        let (summary, end) = replay.segment(*name, path, &bytes)?;
        segments.push(summary);
        match classify_end(&bytes, name.seq, end) {
            SegmentEnd::Clean => {}
            SegmentEnd::Damaged {
                reason,
                later_intact: Some(later),
            } => {
                return Err(corrupt(
                    path,
                    end,
                    format!("{reason}, but an intact frame follows at offset {later}"),
                ));
            }
            SegmentEnd::Damaged {
                reason,
                later_intact: None,
            } if !is_last => {
                return Err(corrupt(
                    path,
                    end,
                    format!("{reason}, in a segment that is not the last"),
                ));
            }
            SegmentEnd::Damaged {
                reason,
                later_intact: None,
            } => {
                let last_nonzero = bytes
                    .iter()
                    .rposition(|&b| b != 0)
                    .expect("damage is not zeroes");
                torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: end as u64,
                    len: (last_nonzero + 1 - end) as u64,
                    reason,
                });
            }
        }
        if is_last {
            write_offset = end as u64;
        }
    }

    let state = replay.state.expect("every segment starts with its state");
    let entries = check_complete(&state, replay.entries, first_name, first_path)?;
    Ok(Some(ReadLog {
        state,
        entries,
        segments,
        write_offset,
        torn_tail,
    }))
}

/// Zeroes a torn tail found by `read`, so that it cannot be mistaken for data later.
pub(crate) fn zero_torn_tail(tail: &TornTail) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let context = || format!("zeroing the torn tail of {}", tail.segment.display());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&tail.segment)
        .map_err(|e| io_error(context(), e))?;
    file.write_all_at(&vec![0; tail.len as usize], tail.offset)
        .map_err(|e| io_error(context(), e))?;
    file.sync_data().map_err(|e| io_error(context(), e))
}

/// The log as replayed so far.
struct Replay {
    /// `None` until the first segment's start record is read.
    state: Option<LogState>,
    /// The entries seen and not discarded; contiguous. After older segments were deleted by a
    /// purge, the first entries replayed may start above the purge point read so far — the purge
    /// that deleted those segments comes later in the log.
    entries: VecDeque<(u64, Vec<u8>)>,
}

impl Replay {
    /// Replays the intact frames of one segment; returns its summary and the offset where its
    /// intact frames end.
    fn segment(
        &mut self,
        name: SegmentName,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(SegmentSummary, usize)> {
        let mut summary = SegmentSummary {
            name,
            path: path.to_path_buf(),
            lowest_appended: None,
        };
        let mut offset = 0;
        let mut first_of_segment = true;
        while let FrameAt::Valid { payload, next } = frame::read_at(bytes, name.seq, offset) {
            let records = Record::decode_all(payload).map_err(|e| {
                corrupt(
                    path,
                    offset,
                    format!("undecodable record in an intact frame: {e}"),
                )
            })?;
            for record in records {
                self.record(record, first_of_segment, &mut summary)
                    .map_err(|reason| corrupt(path, offset, reason))?;
                first_of_segment = false;
            }
            offset = next;
        }
        if offset == 0 {
            let reason = match frame::read_at(bytes, name.seq, 0) {
                FrameAt::Invalid { reason } => reason,
                _ => "nothing written".into(),
            };
            return Err(corrupt(
                path,
                0,
                format!("segment does not begin with its start record: {reason}"),
            ));
        }
        Ok((summary, offset))
    }

    fn record(
        &mut self,
        record: Record,
        first_of_segment: bool,
        summary: &mut SegmentSummary,
    ) -> Result<(), String> {
        if let Record::SegmentStart(start) = &record {
            if !first_of_segment {
                return Err("a segment start record in the middle of a segment".into());
            }
            if start.seq != summary.name.seq {
                return Err(format!(
                    "start record names segment {}, the file name says {}",
                    start.seq, summary.name.seq
                ));
            }
            let started = LogState::from_segment_start(start);
            match &self.state {
                None => self.state = Some(started),
                Some(state) => {
                    if let Some(field) = first_difference(state, &started) {
                        return Err(format!(
                            "the segment starts with a different {field} than the previous segment ends with"
                        ));
                    }
                }
            }
            return Ok(());
        }
        if first_of_segment {
            return Err(format!(
                "segment begins with {} instead of its start record",
                kind(&record)
            ));
        }
        let state = self
            .state
            .as_mut()
            .expect("the segment start record was replayed");
        state.check(&record).map_err(|e| e.to_string())?;
        state.apply(&record);
        match record {
            Record::Entry { index, payload } => {
                self.discard_from(index);
                self.entries.push_back((index, payload));
                summary.lowest_appended =
                    Some(summary.lowest_appended.map_or(index, |low| low.min(index)));
            }
            Record::Truncate { from } => self.discard_from(from),
            Record::Purge { up_to, .. } => {
                while self
                    .entries
                    .front()
                    .is_some_and(|(index, _)| *index <= up_to)
                {
                    self.entries.pop_front();
                }
            }
            Record::Vote(_) | Record::Committed(_) | Record::SegmentStart(_) => {}
        }
        Ok(())
    }

    fn discard_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(index, _)| *index >= from) {
            self.entries.pop_back();
        }
    }
}

fn first_difference(a: &LogState, b: &LogState) -> Option<&'static str> {
    if a.vote != b.vote {
        Some("vote")
    } else if a.committed != b.committed {
        Some("committed marker")
    } else if a.purged != b.purged {
        Some("purge point")
    } else if a.last_index != b.last_index {
        Some("last index")
    } else {
        None
    }
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::Entry { .. } => "an entry",
        Record::Vote(_) => "a vote",
        Record::Committed(_) => "a committed marker",
        Record::Truncate { .. } => "a truncation",
        Record::Purge { .. } => "a purge",
        Record::SegmentStart(_) => "a segment start",
    }
}

/// Checks that every entry after the purge point up to the last index was replayed.
fn check_complete(
    state: &LogState,
    entries: VecDeque<(u64, Vec<u8>)>,
    first_name: &SegmentName,
    first_path: &Path,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let Some(last) = state.last_index else {
        return Ok(entries.into());
    };
    let expected_first = match state.purged_index() {
        Some(purged) => purged + 1,
        // Without a purge no segment was ever deleted, so the first one opened an empty log and
        // every entry was replayed.
        None if first_name.seq == 1 => return Ok(entries.into()),
        None => {
            return Err(corrupt(
                first_path,
                0,
                format!(
                    "segments before {} are missing and nothing was purged",
                    first_name.seq
                ),
            ))
        }
    };
    let found_first = entries.front().map_or(last + 1, |(index, _)| *index);
    if found_first != expected_first && expected_first <= last {
        return Err(corrupt(
            first_path,
            0,
            format!(
                "entries {expected_first} to {} are missing",
                found_first - 1
            ),
        ));
    }
    Ok(entries.into())
}

/// What follows the last intact frame of a segment.
enum SegmentEnd {
    /// Zeroes to the end of the file.
    Clean,
    /// Something other than zeroes.
    Damaged {
        reason: String,
        later_intact: Option<usize>,
    },
}

fn classify_end(bytes: &[u8], segment_seq: u64, end: usize) -> SegmentEnd {
    let reason = match frame::read_at(bytes, segment_seq, end) {
        FrameAt::Valid { .. } => unreachable!("replay stops at the first frame that is not intact"),
        FrameAt::Invalid { reason } => reason,
        FrameAt::Unwritten if bytes[end..].iter().all(|&b| b == 0) => return SegmentEnd::Clean,
        FrameAt::Unwritten => "non-zero bytes after the last frame".to_string(),
    };
    SegmentEnd::Damaged {
        reason,
        later_intact: frame::find_valid_at_or_after(bytes, segment_seq, end + ALIGN),
    }
}

fn corrupt(segment: &Path, offset: usize, reason: String) -> Error {
    Error::WalCorrupt {
        segment: segment.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}
