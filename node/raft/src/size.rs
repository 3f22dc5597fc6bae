//! The store's size in use (etcd's `dbSizeInUse`: Status, the backend quota, the operator's
//! defragmentation threshold), measured on a thread of its own.
//!
//! redb keeps no running count of the bytes its tables hold, so measuring means walking every
//! page of every table: 0.2 s at 136 MiB, longer the larger the store. Inside the apply stage
//! that walk held up every write behind it (the load benchmark's 430 ms stalls,
//! docs/benchmarks.md); here it reads the last commit in a read transaction while batches go on
//! being applied. The apply stage only says when the size may have changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferrokv_storage::mvcc::MvccStore;
use prometheus::Histogram;

use crate::{RaftError as Error, Result};

/// A measurement is made at most once per this interval, or per this many times the last one
/// took, whichever is longer, so that the walk takes a bounded share of a core.
const MEASURE_INTERVAL: Duration = Duration::from_secs(1);
const MEASURE_SPACING: u32 = 20;

/// The last measured size, shared by the member's readers of it.
#[derive(Clone, Default)]
pub struct SizeInUse {
    bytes: Arc<AtomicU64>,
    /// Held from a measurement's read until its result is stored, so that a measurement begun
    /// earlier never overwrites one begun later.
    measuring: Arc<Mutex<()>>,
}

impl SizeInUse {
    /// The bytes the store's data occupies, as of the last measurement.
    pub fn get(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Measures the store as of its last commit, on the calling thread. Returns how long the
    /// walk took.
    pub fn measure(&self, store: &MvccStore) -> Result<Duration> {
        let _measuring = self.measuring.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let bytes = store.size_in_use()?;
        self.bytes.store(bytes, Ordering::Relaxed);
        Ok(started.elapsed())
    }

    /// Measures as `measure` does, recording the walk's duration in `took`; a failure is
    /// logged and leaves the last size. Returns how long the walk took, if it was made.
    pub fn refresh(&self, store: &MvccStore, took: &Histogram) -> Option<Duration> {
        match self.measure(store) {
            Ok(walk) => {
                took.observe(walk.as_secs_f64());
                Some(walk)
            }
            Err(e) => {
                tracing::warn!(error = %e, "measuring the store's size failed");
                None
            }
        }
    }
}

/// The measuring thread; dropping this stops it (after the walk in progress, if any).
pub struct SizeMeter {
    stale: Option<std_mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SizeMeter {
    pub fn start(store: MvccStore, size: SizeInUse, took: Histogram) -> Result<SizeMeter> {
        let (stale, requests) = std_mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ferrokv-size".into())
            .spawn(move || run(&store, &size, &took, &requests))
            .map_err(|e| Error::Raft(format!("starting the size measuring thread: {e}")))?;
        Ok(SizeMeter {
            stale: Some(stale),
            thread: Some(thread),
        })
    }

    /// Says that the store's size may have changed since the last measurement (a durable
    /// commit, a compaction): the next measurement falls due.
    pub fn stale(&self) {
        if let Some(stale) = &self.stale {
            // Full means a measurement is due already, which will see this change too.
            let _ = stale.try_send(());
        }
    }
}

impl Drop for SizeMeter {
    fn drop(&mut self) {
        self.stale.take();
        if let Some(thread) = self.thread.take() {
            // The thread holds the store open: a member that stops must let go of it.
            let _ = thread.join();
        }
    }
}

fn run(store: &MvccStore, size: &SizeInUse, took: &Histogram, requests: &std_mpsc::Receiver<()>) {
    let mut next = Instant::now();
    while requests.recv().is_ok() {
        // Wait out the spacing; requests made meanwhile are answered by the measurement after.
        loop {
            match requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(()) => continue,
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let walk = size.refresh(store, took).unwrap_or_default();
        next = Instant::now() + MEASURE_INTERVAL.max(walk * MEASURE_SPACING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::PbPutRequest;

    fn put(store: &MvccStore, key: &str, len: usize) {
        let mut write = store.begin_write().unwrap();
        write
            .put(&PbPutRequest {
                key: key.into(),
                value: vec![b'v'; len],
                ..Default::default()
            })
            .unwrap();
        write.commit(false).unwrap();
    }

    #[test]
    fn a_stale_size_is_measured_off_the_caller_and_the_meter_lets_go_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let store = MvccStore::open(&path).unwrap();
        let size = SizeInUse::default();
        size.measure(&store).unwrap();
        let empty = size.get();
        let took = Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let meter = SizeMeter::start(store.clone(), size.clone(), took.clone()).unwrap();

        put(&store, "big", 64 * 1024);
        meter.stale();
        let deadline = Instant::now() + Duration::from_secs(10);
        while size.get() < empty + 64 * 1024 {
            assert!(
                Instant::now() < deadline,
                "the size was never measured again"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(took.get_sample_count(), 1);

        // Stopping the meter joins its thread, which held a clone of the store: once both are
        // dropped the database can be opened again.
        drop(meter);
        drop(store);
        MvccStore::open(&path).unwrap();
    }
}
