//! Where a write's time goes: one histogram per stage of the write path, so that a slow write
//! can be traced to the stage that made it slow (etcd has no such metrics; the names are
//! ferrokv's own).
//!
//! A write on the member a client talks to, in order:
//! 1. `ferrokv_proposal_wait_duration_seconds`: queued behind other writes until its batch is
//!    handed to Raft (batching, and room in the pipeline);
//! 2. `ferrokv_raft_append_duration_seconds`: the entries of a Ready written to the WAL and
//!    made durable (group commit and fdatasync), as the Ready loop sees it;
//! 3. `ferrokv_raft_commit_duration_seconds` (leader only): proposed to Raft until committed —
//!    the leader's append and a quorum's, with the network between;
//! 4. `ferrokv_apply_wait_duration_seconds`: committed until the apply stage takes the batch;
//! 5. `ferrokv_apply_duration_seconds`: the batch applied to the store and its proposers
//!    answered (the store's commit alone is `etcd_disk_backend_commit_duration_seconds`);
//! 6. `ferrokv_proposal_duration_seconds`: the whole write, from the member's point of view,
//!    from the request until its answer.
//!
//! `ferrokv_backend_size_measure_duration_seconds` times the walk that measures the store's
//! size in use.

use prometheus::{exponential_buckets, Histogram, HistogramOpts, Registry};

/// The write path's stage histograms; clones share their counts.
#[derive(Clone)]
pub struct Stages {
    pub proposal_wait: Histogram,
    pub append: Histogram,
    pub commit: Histogram,
    pub apply_wait: Histogram,
    pub apply: Histogram,
    pub proposal: Histogram,
    pub size_measure: Histogram,
}

fn histogram(name: &str, help: &str) -> Histogram {
    // 50 µs to ~6.5 s.
    let buckets = exponential_buckets(0.00005, 2.0, 18).expect("valid buckets");
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

impl Stages {
    pub fn new() -> Stages {
        Stages {
            proposal_wait: histogram(
                "ferrokv_proposal_wait_duration_seconds",
                "Time a write waits to be batched and handed to Raft.",
            ),
            append: histogram(
                "ferrokv_raft_append_duration_seconds",
                "Time from handing a Ready's entries to the WAL until they are durable.",
            ),
            commit: histogram(
                "ferrokv_raft_commit_duration_seconds",
                "Time on the leader from proposing an entry until it is committed.",
            ),
            apply_wait: histogram(
                "ferrokv_apply_wait_duration_seconds",
                "Time a batch of committed entries waits for the apply stage.",
            ),
            apply: histogram(
                "ferrokv_apply_duration_seconds",
                "Time to apply a batch of committed entries and answer its proposers.",
            ),
            proposal: histogram(
                "ferrokv_proposal_duration_seconds",
                "Time from a write request until its answer, on the member serving it.",
            ),
            size_measure: histogram(
                "ferrokv_backend_size_measure_duration_seconds",
                "Time to measure the bytes the store's data occupies.",
            ),
        }
    }

    /// Registers every histogram with `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        for histogram in [
            &self.proposal_wait,
            &self.append,
            &self.commit,
            &self.apply_wait,
            &self.apply,
            &self.proposal,
            &self.size_measure,
        ] {
            registry.register(Box::new(histogram.clone()))?;
        }
        Ok(())
    }
}

impl Default for Stages {
    fn default() -> Self {
        Stages::new()
    }
}
