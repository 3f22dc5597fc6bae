//! Segment files: their names, how they are created, and how frames are written into them.
//!
//! A segment is named `<seq>-<first index>.wal`, both 16 hex digits: `seq` numbers segments
//! 1, 2, 3... with no gaps; `first index` is the index the next entry would have taken when the
//! segment was started, there for people reading a directory listing (recovery trusts the
//! records, not the name).
//!
//! Segments are created whole and filled with zeroes before they get their name: the file is
//! written under a `.tmp` name (ahead of need, by `preallocate`), its start frame put at offset
//! 0, synced, then renamed and the directory synced. So a segment with a proper name always begins with its start record, and
//! writing frames into it later overwrites blocks that already exist — `fdatasync` then flushes
//! data only, not block allocations.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prometheus::{exponential_buckets, Histogram, HistogramOpts};

use super::preallocate::{create_zero_filled, PreallocatedFile};
use crate::{Result, StorageError as Error};

const SEGMENT_SUFFIX: &str = ".wal";
pub(crate) const TEMP_SUFFIX: &str = ".wal.tmp";

/// The parsed name of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentName {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentName {
    pub(crate) fn file_name(&self) -> String {
        format!(
            "{:016x}-{:016x}{SEGMENT_SUFFIX}",
            self.seq, self.first_index
        )
    }

    pub(crate) fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(SEGMENT_SUFFIX)?;
        let (seq, first_index) = stem.split_once('-')?;
        let hex = |s: &str| {
            (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some(SegmentName {
            seq: hex(seq)?,
            first_index: hex(first_index)?,
        })
    }
}

/// The segments in `dir`, oldest first. A missing directory holds none.
pub(crate) fn list(dir: &Path) -> Result<Vec<(SegmentName, PathBuf)>> {
    let mut segments = Vec::new();
    for path in files_in(dir)? {
        if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(SegmentName::parse)
        {
            segments.push((name, path));
        }
    }
    segments.sort_by_key(|(name, _)| name.seq);
    Ok(segments)
}

/// Half-made segments left by a crash during creation; they never held acknowledged data.
pub(crate) fn list_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(files_in(dir)?
        .into_iter()
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(TEMP_SUFFIX))
        })
        .collect())
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("reading directory {}", dir.display()), e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| io_error(format!("reading directory {}", dir.display()), e))?;
        paths.push(entry.path());
    }
    Ok(paths)
}

/// The segment frames are being appended to.
pub(crate) struct ActiveSegment {
    pub name: SegmentName,
    pub path: PathBuf,
    file: File,
    /// Where the next frame goes; everything from here to `len` is zeroes.
    write_offset: u64,
    len: u64,
}

impl ActiveSegment {
    /// Opens an existing segment to continue writing at `write_offset`.
    pub(crate) fn open(name: SegmentName, path: PathBuf, write_offset: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(format!("opening segment {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(format!("reading the size of {}", path.display()), e))?
            .len();
        Ok(ActiveSegment {
            name,
            path,
            file,
            write_offset,
            len,
        })
    }

    /// Creates segment `name` in `dir`, `len` bytes of zeroes with `start_frame` at offset 0,
    /// and makes it durable under its final name.
    pub(crate) fn create(
        dir: &Path,
        name: SegmentName,
        len: u64,
        start_frame: &[u8],
        syncs: &Syncs,
    ) -> Result<Self> {
        let path = dir.join(format!("{:016x}{TEMP_SUFFIX}", name.seq));
        let file = create_zero_filled(&path, len, || false)
            .map_err(|e| io_error(format!("preallocating new segment {}", path.display()), e))?
            .expect("never asked to stop");
        Self::install(
            dir,
            name,
            PreallocatedFile { file, path, len },
            start_frame,
            syncs,
        )
    }

    /// Turns a zero-filled file into segment `name`: puts `start_frame` at offset 0, syncs, and
    /// renames it to its final name.
    pub(crate) fn install(
        dir: &Path,
        name: SegmentName,
        prepared: PreallocatedFile,
        start_frame: &[u8],
        syncs: &Syncs,
    ) -> Result<Self> {
        let PreallocatedFile {
            file,
            path: temp_path,
            len,
        } = prepared;
        let context = |what: &str| format!("{what} new segment {}", temp_path.display());
        file.write_all_at(start_frame, 0)
            .map_err(|e| io_error(context("writing the start of"), e))?;
        syncs
            .timed(|| file.sync_all())
            .map_err(|e| io_error(context("syncing"), e))?;
        let path = dir.join(name.file_name());
        fs::rename(&temp_path, &path).map_err(|e| io_error(context("renaming"), e))?;
        sync_dir(dir, syncs)?;
        Ok(ActiveSegment {
            name,
            path,
            file,
            write_offset: start_frame.len() as u64,
            len,
        })
    }

    pub(crate) fn write_offset(&self) -> u64 {
        self.write_offset
    }

    pub(crate) fn has_room_for(&self, frame_len: usize) -> bool {
        self.write_offset + frame_len as u64 <= self.len
    }

    /// Writes one frame and makes it durable: one write, one fdatasync.
    pub(crate) fn write_durably(&mut self, frame: &[u8], syncs: &Syncs) -> Result<()> {
        let at = self.write_offset;
        self.file.write_all_at(frame, at).map_err(|e| {
            io_error(
                format!("writing at offset {at} of {}", self.path.display()),
                e,
            )
        })?;
        self.write_offset += frame.len() as u64;
        syncs
            .timed(|| self.file.sync_data())
            .map_err(|e| io_error(format!("syncing {}", self.path.display()), e))?;
        Ok(())
    }
}

/// Makes renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path, syncs: &Syncs) -> Result<()> {
    let context = || format!("syncing directory {}", dir.display());
    let handle = File::open(dir).map_err(|e| io_error(context(), e))?;
    syncs
        .timed(|| handle.sync_all())
        .map_err(|e| io_error(context(), e))
}

/// Times every fsync and fdatasync the WAL makes, in the histogram etcd calls
/// `etcd_disk_wal_fsync_duration_seconds` (same name, help and buckets, so etcd's dashboards and
/// alerts on disk latency work); its sample count is the number of syncs.
#[derive(Clone)]
pub(crate) struct Syncs(Histogram);

impl Syncs {
    pub(crate) fn new() -> Self {
        // 1 ms to 8.192 s, as etcd.
        let buckets = exponential_buckets(0.001, 2.0, 14).expect("valid bucket parameters");
        let options = HistogramOpts::new(
            "wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        )
        .namespace("etcd")
        .subsystem("disk")
        .buckets(buckets);
        Syncs(Histogram::with_opts(options).expect("valid histogram options"))
    }

    pub(crate) fn timed(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let started = Instant::now();
        let result = sync();
        self.0.observe(started.elapsed().as_secs_f64());
        result
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.get_sample_count()
    }

    pub(crate) fn histogram(&self) -> Histogram {
        self.0.clone()
    }
}

pub(crate) fn io_error(context: String, source: io::Error) -> Error {
    Error::WalIo { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_sequence() {
        let name = SegmentName {
            seq: 0x1f,
            first_index: 0xabc,
        };
        assert_eq!(name.file_name(), "000000000000001f-0000000000000abc.wal");
        assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        for not_a_segment in [
            "0000000000000001.wal.tmp",
            "1-2.wal",
            "000000000000001f-0000000000000abc.wal.bak",
        ] {
            assert_eq!(SegmentName::parse(not_a_segment), None, "{not_a_segment}");
        }
    }

    #[test]
    fn a_created_segment_is_zero_filled_after_its_start_frame() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = Syncs::new();
        let name = SegmentName {
            seq: 1,
            first_index: 0,
        };
        let segment = ActiveSegment::create(dir.path(), name, 4096, &[7; 16], &syncs).unwrap();
        let bytes = fs::read(&segment.path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(&bytes[..16], &[7; 16]);
        assert!(bytes[16..].iter().all(|&b| b == 0));
        assert_eq!(
            list(dir.path()).unwrap(),
            vec![(name, segment.path.clone())]
        );
        assert!(list_temp_files(dir.path()).unwrap().is_empty());
    }
}
