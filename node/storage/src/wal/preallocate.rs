//! Preparing the next segment file ahead of need, off the writer thread.
//!
//! Filling a 64 MiB segment with zeroes and syncing it takes a good fraction of a second; done
//! by the writer at rotation, every append waiting at that moment would wait that long. Like
//! etcd's file pipeline, a `Preallocator` thread keeps one zero-filled, synced file ready under
//! a `.wal.tmp` name, and the writer only has to put the start frame in it and rename it.
//!
//! The thread stops when the `Preallocator` is dropped, removing a file nobody took. A file
//! left behind by a crash is removed by `Wal::open` like any other half-made segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::segment::TEMP_SUFFIX;

/// A zero-filled file of `len` bytes, synced, not yet a segment.
pub(crate) struct PreallocatedFile {
    pub file: File,
    pub path: PathBuf,
    pub len: u64,
}

pub(crate) struct Preallocator {
    /// `Some` until drop; dropping it wakes a thread waiting to hand over a file.
    ready: Option<Receiver<PreallocatedFile>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts preparing files of `len` bytes in `dir`.
    pub(crate) fn start(dir: &Path, len: u64) -> io::Result<Self> {
        // A rendezvous channel: one file is prepared ahead, never more.
        let (sender, ready) = mpsc::sync_channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let dir = dir.to_path_buf();
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new().name("ferrokv-wal-prealloc".into()).spawn(move || {
            for n in 0u64.. {
                let path = dir.join(format!("prealloc-{n}{TEMP_SUFFIX}"));
                let stopping = || thread_stop.load(Ordering::Relaxed);
                let prepared = create_zero_filled(&path, len, stopping)
                    .and_then(|file| file.map(|f| f.sync_all().map(|()| f)).transpose());
                match prepared {
                    Ok(Some(file)) => {
                        if let Err(unwanted) = sender.send(PreallocatedFile { file, path, len }) {
                            remove(&unwanted.0.path);
                            return;
                        }
                    }
                    Ok(None) => {
                        remove(&path);
                        return;
                    }
                    Err(e) => {
                        // The writer falls back to creating segments itself, and reports the
                        // error there if it persists.
                        tracing::warn!(file = %path.display(), error = %e, "wal: could not preallocate a segment");
                        remove(&path);
                        return;
                    }
                }
            }
        })?;
        Ok(Preallocator {
            ready: Some(ready),
            stop,
            thread: Some(thread),
        })
    }

    /// The next prepared file, waiting for it if it is not ready yet; `None` if preallocation
    /// failed.
    pub(crate) fn take(&self) -> Option<PreallocatedFile> {
        self.ready.as_ref()?.recv().ok()
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.ready.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("wal: the preallocation thread panicked");
            }
        }
    }
}

/// Creates `path` holding `len` zeroes; `None` if `stopping` says so before it is done. The
/// file is not synced.
pub(crate) fn create_zero_filled(
    path: &Path,
    len: u64,
    stopping: impl Fn() -> bool,
) -> io::Result<Option<File>> {
    const CHUNK: usize = 1 << 20;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeroes = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        if stopping() {
            return Ok(None);
        }
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&zeroes[..n])?;
        left -= n as u64;
    }
    Ok(Some(file))
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "wal: could not remove an unused preallocated file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_zero_filled_files_and_removes_the_unused_one_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let preallocator = Preallocator::start(dir.path(), 8192).unwrap();
        let first = preallocator.take().unwrap();
        assert_eq!(fs::read(&first.path).unwrap(), vec![0; 8192]);
        let second = preallocator.take().unwrap();
        assert_ne!(first.path, second.path);
        drop(preallocator);
        let left: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), 2, "only the two taken files remain: {left:?}");
    }
}
