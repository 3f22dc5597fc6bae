//! Behaviour of the WAL as a whole: what survives a reopen, what purge deletes, how torn tails
//! and corruption are told apart, and that concurrent appends share syncs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{self, FrameAt};
use super::record::Record;
use super::*;

/// Segments that the tests here do not fill, smaller than the default so that preallocating the
/// next one stays cheap.
const OPTIONS: WalOptions = WalOptions {
    segment_bytes: 1 << 20,
};

/// Segments small enough that a few dozen entries fill one.
const SMALL_SEGMENTS: WalOptions = WalOptions {
    segment_bytes: 1024,
};

fn open(dir: &Path, options: WalOptions) -> (Wal, Recovered) {
    Wal::open(dir, options).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

fn reopen(wal: Wal, dir: &Path, options: WalOptions) -> Recovered {
    drop(wal);
    open(dir, options).1
}

fn entries(indexes: std::ops::RangeInclusive<u64>, tag: &str) -> Vec<(u64, Vec<u8>)> {
    indexes
        .map(|i| (i, format!("{tag} entry {i}").into_bytes()))
        .collect()
}

/// Appends and waits for the entries to be durable.
fn append(wal: &Wal, batch: Vec<(u64, Vec<u8>)>) -> Result<()> {
    let (sender, receiver) = mpsc::channel();
    wal.append(batch, Box::new(move |result| sender.send(result).unwrap()));
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("append completed")
}

/// Appends each entry in its own frame.
fn append_one_by_one(wal: &Wal, batch: Vec<(u64, Vec<u8>)>) {
    for entry in batch {
        append(wal, vec![entry]).unwrap();
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// Every file in `dir` with its bytes, to check that a refused open changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect()
}

/// The offsets of the intact frames of a segment file.
fn frame_offsets(path: &Path) -> Vec<usize> {
    let bytes = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0;
    while let FrameAt::Valid { next, .. } = frame::read_at(&bytes, seq_of(path), offset) {
        offsets.push(offset);
        offset = next;
    }
    offsets
}

fn seq_of(segment: &Path) -> u64 {
    SegmentName::parse(segment.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .seq
}

fn flip_byte(path: &Path, offset: usize) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, offset as u64).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset as u64).unwrap();
}

fn expect_corrupt(dir: &Path, options: WalOptions) -> (PathBuf, u64, String) {
    let before = snapshot(dir);
    let result = Wal::open(dir, options);
    assert_eq!(snapshot(dir), before, "a refused open modified the files");
    match result.map(|(_, recovered)| recovered.entries.len()) {
        Ok(entries) => panic!("a corrupt WAL was opened, with {entries} entries"),
        Err(Error::WalCorrupt {
            segment,
            offset,
            reason,
        }) => (segment, offset, reason),
        Err(other) => panic!("expected WalCorrupt, got {other}"),
    }
}

#[test]
fn the_handle_and_its_futures_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    assert_send_sync(&wal);
    let vote = wal.save_vote(b"v".to_vec());
    assert_send(&vote);
    block_on(vote).unwrap();
    let truncate = wal.truncate(0);
    assert_send(&truncate);
    block_on(truncate).unwrap();
    let purge = wal.purge(0, Vec::new());
    assert_send(&purge);
    block_on(purge).unwrap();
}

#[test]
fn reopen_returns_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, recovered) = open(dir.path(), OPTIONS);
    assert_eq!(recovered, Recovered::default());
    append(&wal, entries(0..=9, "a")).unwrap();
    append_one_by_one(&wal, entries(10..=19, "a"));
    block_on(wal.save_vote(b"term 2 voted 1".to_vec())).unwrap();
    wal.save_committed(b"committed 15".to_vec());
    append(&wal, entries(20..=20, "a")).unwrap();

    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=20, "a"));
    assert_eq!(recovered.vote.as_deref(), Some(&b"term 2 voted 1"[..]));
    assert_eq!(recovered.committed.as_deref(), Some(&b"committed 15"[..]));
    assert_eq!(recovered.purged, None);
    assert_eq!(recovered.torn_tail, None);
}

#[test]
fn writing_continues_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=4, "a")).unwrap();
    let wal = {
        drop(wal);
        open(dir.path(), OPTIONS).0
    };
    append(&wal, entries(5..=9, "a")).unwrap();
    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=9, "a"));
    assert_eq!(
        segment_paths(dir.path()).len(),
        1,
        "reopening does not start a segment"
    );
}

#[test]
fn acknowledged_writes_are_in_the_files_before_the_wal_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    block_on(wal.save_vote(b"vote".to_vec())).unwrap();
    block_on(wal.truncate(2)).unwrap();

    // Copy the files while the WAL is still open, as a crash would leave them.
    let copy = tempfile::tempdir().unwrap();
    for (path, bytes) in snapshot(dir.path()) {
        fs::write(copy.path().join(path.file_name().unwrap()), bytes).unwrap();
    }
    let (_, recovered) = open(copy.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=1, "a"));
    assert_eq!(recovered.vote.as_deref(), Some(&b"vote"[..]));
    drop(wal);
}

#[test]
fn committed_marker_rides_along_with_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    let syncs_before = wal.sync_count();
    wal.save_committed(b"committed 1".to_vec());
    append(&wal, entries(0..=1, "a")).unwrap();
    assert_eq!(
        wal.sync_count() - syncs_before,
        1,
        "the committed marker cost a sync of its own"
    );
    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.committed.as_deref(), Some(&b"committed 1"[..]));
}

#[test]
fn committed_marker_alone_is_written_when_the_wal_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    wal.save_committed(b"first".to_vec());
    wal.save_committed(b"latest".to_vec());
    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.committed.as_deref(), Some(&b"latest"[..]));
}

#[test]
fn committed_marker_written_on_close_survives_starting_a_new_segment() {
    // Fill the first segment to every level, so that in some runs the marker written on close
    // does not fit and starts a new segment.
    for len in (0..SMALL_SEGMENTS.segment_bytes as usize).step_by(frame::ALIGN) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
        append(&wal, vec![(0, vec![1; len])]).unwrap();
        wal.save_committed(b"committed".to_vec());
        let recovered = reopen(wal, dir.path(), SMALL_SEGMENTS);
        assert_eq!(
            recovered.committed.as_deref(),
            Some(&b"committed"[..]),
            "entry of {len} bytes"
        );
        assert_eq!(recovered.entries, vec![(0, vec![1; len])]);
    }
}

#[test]
fn truncate_then_append_replaces_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=9, "old")).unwrap();
    block_on(wal.truncate(5)).unwrap();
    assert!(matches!(
        append(&wal, entries(7..=7, "new")),
        Err(Error::WalIndexGap {
            expected: 5,
            got: 7
        })
    ));
    append(&wal, entries(5..=6, "new")).unwrap();

    let mut expected = entries(0..=4, "old");
    expected.extend(entries(5..=6, "new"));
    assert_eq!(reopen(wal, dir.path(), OPTIONS).entries, expected);
}

#[test]
fn appending_over_existing_entries_replaces_them_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=9, "old")).unwrap();
    append(&wal, entries(3..=4, "new")).unwrap();

    let mut expected = entries(0..=2, "old");
    expected.extend(entries(3..=4, "new"));
    assert_eq!(reopen(wal, dir.path(), OPTIONS).entries, expected);
}

#[test]
fn appends_that_would_leave_a_gap_are_refused_without_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    assert!(matches!(
        append(&wal, entries(4..=5, "a")),
        Err(Error::WalIndexGap {
            expected: 3,
            got: 4
        })
    ));
    let not_contiguous = vec![(3, b"x".to_vec()), (5, b"y".to_vec())];
    assert!(matches!(
        append(&wal, not_contiguous),
        Err(Error::WalIndexGap {
            expected: 4,
            got: 5
        })
    ));
    append(&wal, entries(3..=3, "a")).unwrap();
    assert_eq!(
        reopen(wal, dir.path(), OPTIONS).entries,
        entries(0..=3, "a")
    );
}

#[test]
fn nothing_at_or_below_the_purge_point_can_be_appended_or_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=9, "a")).unwrap();
    block_on(wal.purge(4, b"purged 4".to_vec())).unwrap();
    assert!(matches!(
        append(&wal, entries(4..=4, "b")),
        Err(Error::WalBelowPurge {
            index: 4,
            purged: 4
        })
    ));
    assert!(matches!(
        block_on(wal.truncate(3)),
        Err(Error::WalBelowPurge {
            index: 3,
            purged: 4
        })
    ));
    assert!(matches!(
        block_on(wal.purge(3, Vec::new())),
        Err(Error::WalBelowPurge {
            index: 3,
            purged: 4
        })
    ));
    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(5..=9, "a"));
    assert_eq!(recovered.purged.as_deref(), Some(&b"purged 4"[..]));
}

#[test]
fn vote_committed_and_purge_survive_rotation_and_deletion_of_older_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    block_on(wal.save_vote(b"vote 1".to_vec())).unwrap();
    wal.save_committed(b"committed 3".to_vec());
    append_one_by_one(&wal, entries(0..=39, "a"));
    block_on(wal.purge(5, b"purged 5".to_vec())).unwrap();
    // Enough to fill several more segments, so that the ones holding the vote, committed and
    // purge records themselves are purged away.
    append_one_by_one(&wal, entries(40..=199, "a"));
    block_on(wal.purge(150, b"purged 150".to_vec())).unwrap();
    let remaining = segment_paths(dir.path());
    assert!(!remaining.iter().any(|p| p
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("0000000000000001-")));

    let recovered = reopen(wal, dir.path(), SMALL_SEGMENTS);
    assert_eq!(recovered.vote.as_deref(), Some(&b"vote 1"[..]));
    assert_eq!(recovered.committed.as_deref(), Some(&b"committed 3"[..]));
    assert_eq!(recovered.purged.as_deref(), Some(&b"purged 150"[..]));
    assert_eq!(recovered.entries, entries(151..=199, "a"));
}

#[test]
fn purge_deletes_exactly_the_segments_with_nothing_above_the_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=199, "a"));
    let before = segment_paths(dir.path());
    assert!(
        before.len() >= 4,
        "expected several segments, got {}",
        before.len()
    );

    // The segments are named after the next index when they were started; the one started
    // after `purge_to + 1` was current is the oldest that must stay.
    let first_index = |p: &PathBuf| {
        SegmentName::parse(p.file_name().unwrap().to_str().unwrap())
            .unwrap()
            .first_index
    };
    let purge_to = first_index(&before[2]) + 1;
    block_on(wal.purge(purge_to, b"p".to_vec())).unwrap();
    assert_eq!(segment_paths(dir.path()), before[2..].to_vec());

    let recovered = reopen(wal, dir.path(), SMALL_SEGMENTS);
    assert_eq!(recovered.entries, entries(purge_to + 1..=199, "a"));
}

#[test]
fn purge_past_the_end_empties_the_log_and_appending_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=99, "a"));
    block_on(wal.purge(500, b"snapshot 500".to_vec())).unwrap();
    assert_eq!(
        segment_paths(dir.path()).len(),
        1,
        "only the active segment is left"
    );
    assert!(matches!(
        append(&wal, entries(502..=502, "b")),
        Err(Error::WalIndexGap {
            expected: 501,
            got: 502
        })
    ));
    append(&wal, entries(501..=503, "b")).unwrap();

    let recovered = reopen(wal, dir.path(), SMALL_SEGMENTS);
    assert_eq!(recovered.purged.as_deref(), Some(&b"snapshot 500"[..]));
    assert_eq!(recovered.entries, entries(501..=503, "b"));
}

#[test]
fn purge_keeps_older_segments_whose_entries_were_not_replaced() {
    // Entries 0..=49 are written, then 30.. is replaced: the live entries 0..=29 sit in the
    // oldest segments and must survive a purge below them.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=49, "old"));
    append_one_by_one(&wal, entries(30..=119, "new"));
    block_on(wal.purge(10, b"p".to_vec())).unwrap();

    let recovered = reopen(wal, dir.path(), SMALL_SEGMENTS);
    let mut expected = entries(11..=29, "old");
    expected.extend(entries(30..=119, "new"));
    assert_eq!(recovered.entries, expected);
}

#[test]
fn an_entry_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    let big = vec![(0, vec![0xab; 3 * SMALL_SEGMENTS.segment_bytes as usize])];
    append(&wal, big.clone()).unwrap();
    append(&wal, entries(1..=1, "a")).unwrap();
    let mut expected = big;
    expected.extend(entries(1..=1, "a"));
    assert_eq!(reopen(wal, dir.path(), SMALL_SEGMENTS).entries, expected);
}

#[test]
fn a_tail_cut_mid_frame_is_discarded_and_earlier_entries_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append_one_by_one(&wal, entries(0..=9, "a"));
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let last_frame = *frame_offsets(&segment).last().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(last_frame as u64 + 20)
        .unwrap();

    let (wal, recovered) = open(dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=8, "a"));
    let torn = recovered.torn_tail.expect("the torn tail is reported");
    assert_eq!((torn.segment, torn.offset), (segment, last_frame as u64));
    // The log goes on from the repaired end.
    append(&wal, entries(9..=10, "b")).unwrap();
    let mut expected = entries(0..=8, "a");
    expected.extend(entries(9..=10, "b"));
    let recovered = reopen(wal, dir.path(), OPTIONS);
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.torn_tail, None);
}

#[test]
fn a_damaged_last_frame_is_zeroed_and_earlier_entries_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append_one_by_one(&wal, entries(0..=9, "a"));
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let last_frame = *frame_offsets(&segment).last().unwrap();
    flip_byte(&segment, last_frame + frame::HEADER_LEN + 3);

    let (wal, recovered) = open(dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=8, "a"));
    assert_eq!(recovered.torn_tail.unwrap().offset, last_frame as u64);
    let bytes = fs::read(&segment).unwrap();
    assert!(
        bytes[last_frame..].iter().all(|&b| b == 0),
        "the torn frame was not zeroed"
    );
    drop(wal);
}

#[test]
fn every_cut_through_the_last_frame_loses_only_that_frame() {
    // A power cut persists some prefix of the sectors of the write in flight; the rest of the
    // frame keeps the zeroes the segment was preallocated with.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=8, "a"));
    append(&wal, vec![(9, vec![0xcd; 200])]).unwrap();
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let last_frame = *frame_offsets(&segment).last().unwrap();
    let frame_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;

    // Every fifth byte: cheap, and it hits every position within an 8-byte word.
    for cut in (last_frame..frame_end).step_by(5) {
        let copy = tempfile::tempdir().unwrap();
        let mut cut_bytes = bytes.clone();
        cut_bytes[cut..frame_end].fill(0);
        fs::write(copy.path().join(segment.file_name().unwrap()), &cut_bytes).unwrap();
        let (_, recovered) = open(copy.path(), SMALL_SEGMENTS);
        assert_eq!(recovered.entries, entries(0..=8, "a"), "cut at {cut}");
        // Cutting at the frame's first byte leaves nothing of it to repair.
        assert_eq!(
            recovered.torn_tail.is_some(),
            cut > last_frame,
            "cut at {cut}"
        );
    }
}

#[test]
fn stray_bytes_after_the_last_frame_are_a_torn_tail() {
    // A torn write whose header sector never reached the disk but a later sector did.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append_one_by_one(&wal, entries(0..=4, "a"));
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[0x33; 100], (frame::align(end) + 512) as u64)
        .unwrap();

    let (_, recovered) = open(dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=4, "a"));
    assert!(recovered.torn_tail.is_some());
}

#[test]
fn a_damaged_frame_followed_by_an_intact_one_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append_one_by_one(&wal, entries(0..=9, "a"));
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let damaged = frame_offsets(&segment)[4];
    flip_byte(&segment, damaged + frame::HEADER_LEN + 1);

    let (path, offset, reason) = expect_corrupt(dir.path(), OPTIONS);
    assert_eq!((path, offset), (segment, damaged as u64));
    assert!(reason.contains("intact frame follows"), "{reason}");
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=99, "a"));
    drop(wal);
    let first = segment_paths(dir.path()).remove(0);
    let last_frame = *frame_offsets(&first).last().unwrap();
    flip_byte(&first, last_frame + frame::HEADER_LEN);

    let (path, offset, reason) = expect_corrupt(dir.path(), SMALL_SEGMENTS);
    assert_eq!((path, offset), (first, last_frame as u64));
    assert!(reason.contains("not the last"), "{reason}");
}

#[test]
fn an_undecodable_record_in_an_intact_frame_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let end = frame_offsets(&segment).last().map(|&o| o + 4096).unwrap();
    let at = fs::read(&segment).unwrap()[..end]
        .iter()
        .rposition(|&b| b != 0)
        .map(|p| frame::align(p + 1))
        .unwrap();
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(
        &frame::encode_raw(&[0x7f, 1, 2, 3], seq_of(&segment), at as u64),
        at as u64,
    )
    .unwrap();

    let (path, offset, reason) = expect_corrupt(dir.path(), OPTIONS);
    assert_eq!((path, offset), (segment, at as u64));
    assert!(reason.contains("undecodable"), "{reason}");
}

#[test]
fn an_entry_that_leaves_a_gap_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let at = frame::align(bytes.iter().rposition(|&b| b != 0).unwrap() + 1);
    let gap = frame::encode(
        &[Record::Entry {
            index: 5,
            payload: b"gap".to_vec(),
        }],
        seq_of(&segment),
        at as u64,
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .write_all_at(&gap, at as u64)
        .unwrap();

    let (_, offset, reason) = expect_corrupt(dir.path(), OPTIONS);
    assert_eq!(offset, at as u64);
    assert!(reason.contains("entry 5 does not follow"), "{reason}");
}

#[test]
fn a_missing_segment_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENTS);
    append_one_by_one(&wal, entries(0..=99, "a"));
    drop(wal);
    let segments = segment_paths(dir.path());
    assert!(segments.len() >= 3);
    fs::remove_file(&segments[1]).unwrap();

    let (path, _, reason) = expect_corrupt(dir.path(), SMALL_SEGMENTS);
    assert_eq!(path, segments[2]);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn a_half_made_segment_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    drop(wal);
    let temp = dir.path().join("0000000000000002.wal.tmp");
    fs::write(&temp, [0u8; 4096]).unwrap();

    let (_, recovered) = open(dir.path(), OPTIONS);
    assert_eq!(recovered.entries, entries(0..=2, "a"));
    assert!(!temp.exists());
}

#[test]
fn exists_tells_whether_a_wal_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("member").join("wal");
    assert!(!Wal::exists(&wal_dir).unwrap(), "missing directory");
    fs::create_dir_all(&wal_dir).unwrap();
    assert!(!Wal::exists(&wal_dir).unwrap(), "empty directory");
    let (wal, recovered) = open(&wal_dir, OPTIONS);
    assert_eq!(recovered, Recovered::default());
    assert!(Wal::exists(&wal_dir).unwrap());
    drop(wal);
}

#[test]
fn after_a_failed_write_every_later_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (wal, _) = open(&wal_dir, SMALL_SEGMENTS);
    append(&wal, entries(0..=2, "a")).unwrap();
    // With the directory gone, the next segment cannot be created.
    fs::remove_dir_all(&wal_dir).unwrap();
    let too_big_for_the_active_segment =
        vec![(3, vec![1; 2 * SMALL_SEGMENTS.segment_bytes as usize])];
    assert!(matches!(
        append(&wal, too_big_for_the_active_segment),
        Err(Error::WalFailed { .. })
    ));
    // Even a write that would fit where the active segment still is.
    assert!(matches!(
        append(&wal, entries(3..=3, "a")),
        Err(Error::WalFailed { .. })
    ));
    assert!(matches!(
        block_on(wal.save_vote(b"v".to_vec())),
        Err(Error::WalFailed { .. })
    ));
}

#[test]
fn a_wal_cannot_be_opened_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    match Wal::open(dir.path(), OPTIONS) {
        Err(Error::WalLocked { dir: locked }) => assert_eq!(locked, dir.path()),
        Err(other) => panic!("expected WalLocked, got {other}"),
        Ok(_) => panic!("the WAL was opened twice"),
    }
    drop(wal);
    open(dir.path(), OPTIONS);
}

#[test]
fn a_completion_holding_the_last_handle_neither_deadlocks_nor_loses_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    let (sender, receiver) = mpsc::channel();
    // A completion that keeps a clone alive past the last outside handle: the writer thread
    // must neither deadlock joining itself nor lose the write.
    let clone = wal.clone();
    wal.append(
        entries(0..=0, "a"),
        Box::new(move |result| sender.send((result, clone)).unwrap()),
    );
    drop(wal);
    let (result, clone) = receiver.recv_timeout(Duration::from_secs(30)).unwrap();
    result.unwrap();
    drop(clone);
    assert_eq!(open(dir.path(), OPTIONS).1.entries, entries(0..=0, "a"));
}

#[test]
fn write_here_writes_on_the_calling_thread_in_the_order_requests_were_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=2, "a")).unwrap();
    let done_on = Arc::new(Mutex::new(Vec::new()));
    let record = |tag: &'static str| -> Completion {
        let done_on = done_on.clone();
        Box::new(move |result| {
            done_on
                .lock()
                .unwrap()
                .push((tag, result.is_ok(), std::thread::current().id()))
        })
    };
    wal.write_here(|| {
        wal.truncate_with(2, record("truncate"));
        wal.append(entries(2..=3, "b"), record("append"));
    });
    // Both are durable, in order, and their completions ran on this thread, before it returned.
    let done_on = std::mem::take(&mut *done_on.lock().unwrap());
    let here = std::thread::current().id();
    assert_eq!(
        done_on,
        vec![("truncate", true, here), ("append", true, here)]
    );
    // The writer thread goes on as before.
    append(&wal, entries(4..=4, "c")).unwrap();
    let recovered = reopen(wal, dir.path(), OPTIONS);
    let mut expected = entries(0..=1, "a");
    expected.extend(entries(2..=3, "b"));
    expected.extend(entries(4..=4, "c"));
    assert_eq!(recovered.entries, expected);
}

#[test]
fn a_request_sent_while_the_writer_thread_is_held_back_is_written_when_the_hold_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    let hold = wal.shared.queue.hold();
    // Another thread's request, after the holder's last write: the writer thread must not take
    // it while held back, and must not leave it queued after.
    let (sender, receiver) = mpsc::channel();
    let other = wal.clone();
    std::thread::spawn(move || {
        other.append(
            entries(0..=0, "a"),
            Box::new(move |result| sender.send(result).unwrap()),
        )
    })
    .join()
    .unwrap();
    assert!(
        receiver.recv_timeout(Duration::from_millis(200)).is_err(),
        "written while held back"
    );
    drop(hold);
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("written once the hold ended")
        .unwrap();
    assert_eq!(
        reopen(wal, dir.path(), OPTIONS).entries,
        entries(0..=0, "a")
    );
}

#[test]
fn sync_latencies_are_exported_under_etcds_metric_name() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    append(&wal, entries(0..=0, "a")).unwrap();
    let registry = prometheus::Registry::new();
    registry
        .register(Box::new(wal.fsync_duration_histogram()))
        .unwrap();
    let families = registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == "etcd_disk_wal_fsync_duration_seconds")
        .expect("the fsync histogram is registered under etcd's name");
    let histogram = family.get_metric()[0].get_histogram();
    assert_eq!(histogram.get_sample_count(), wal.sync_count());
    assert!(wal.sync_count() >= 1);
    assert_eq!(histogram.get_bucket().len(), 14);
}

/// Appends from `writers` threads at once, `per_writer` appends each, one entry per append.
/// Index assignment and sending happen under one lock so the WAL receives indexes in order;
/// waiting for durability happens outside it, which is where appends pile up and share syncs.
fn concurrent_appends(wal: &Wal, writers: usize, per_writer: usize, payload: usize) -> Duration {
    let next_index = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            let next_index = Arc::clone(&next_index);
            scope.spawn(move || {
                for _ in 0..per_writer {
                    let (sender, receiver) = mpsc::channel();
                    {
                        let mut next = next_index.lock().unwrap();
                        wal.append(
                            vec![(*next, vec![7; payload])],
                            Box::new(move |r| sender.send(r).unwrap()),
                        );
                        *next += 1;
                    }
                    receiver.recv().unwrap().unwrap();
                }
            });
        }
    });
    started.elapsed()
}

#[test]
fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), OPTIONS);
    let (writers, per_writer) = (16, 40);
    let syncs_before = wal.sync_count();
    concurrent_appends(&wal, writers, per_writer, 100);
    let appends = (writers * per_writer) as u64;
    let syncs = wal.sync_count() - syncs_before;
    assert!(
        syncs * 3 <= appends,
        "{appends} concurrent appends took {syncs} syncs"
    );
    assert_eq!(
        reopen(wal, dir.path(), OPTIONS).entries.len() as u64,
        appends
    );
}

/// Not an assertion on speed — the numbers depend on the disk — but the figures the lead's notes
/// quote. Run with `cargo test -p ferrokv-node measure_wal -- --nocapture`; set
/// `FERROKV_WAL_BENCH_DIR` to measure on a particular disk.
#[test]
fn measure_wal_latency_and_throughput() {
    let base = std::env::var_os("FERROKV_WAL_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let (wal, _) = open(dir.path(), WalOptions::default());

    let rounds = 200;
    let started = Instant::now();
    append_one_by_one(&wal, (0..rounds).map(|i| (i, vec![1; 256])).collect());
    let single = started.elapsed() / rounds as u32;

    let wal = {
        drop(wal);
        fs::remove_dir_all(dir.path()).unwrap();
        open(dir.path(), WalOptions::default()).0
    };
    let (writers, per_writer) = (64, 50);
    let syncs_before = wal.sync_count();
    let elapsed = concurrent_appends(&wal, writers, per_writer, 256);
    let appends = writers * per_writer;
    let syncs = wal.sync_count() - syncs_before;
    println!(
        "wal in {}: one appender: {single:?} per 256-byte append; {writers} appenders: {appends} appends in \
         {elapsed:?} = {:.0} appends/s, {syncs} syncs ({:.1} appends per sync)",
        dir.path().display(),
        appends as f64 / elapsed.as_secs_f64(),
        appends as f64 / syncs as f64,
    );
    assert_eq!(
        reopen(wal, dir.path(), WalOptions::default()).entries.len(),
        appends
    );
}
