//! The node's Prometheus metrics, under etcd's names wherever the meaning is the same, so that
//! etcd's dashboards and alerts work unchanged. Counters and histograms are updated where the
//! event happens; gauges that mirror state (leader, revision, sizes) are set when scraped.

use ferrokv_raft::stages::Stages;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec,
    Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub backend_commit_duration: Histogram,
    pub db_total_size: IntGauge,
    pub db_total_size_in_use: IntGauge,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub peer_round_trip: HistogramVec,
    pub server_id: IntGaugeVec,
    pub server_version: IntGaugeVec,
    pub is_learner: IntGauge,
    /// The write path's stage histograms (ferrokv's own).
    pub stages: Stages,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    /// Creates the metrics; `wal_fsync` is the WAL's own `etcd_disk_wal_fsync_duration_seconds`,
    /// `stages` the histograms the Raft layer updates.
    pub fn new(wal_fsync: Histogram, stages: Stages) -> Metrics {
        let r = Registry::new();
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...: what
        // Go's client exports for etcd, which its dashboards and `etcdctl check datascale` read.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        r.register(Box::new(wal_fsync)).expect("unique metric");
        stages.register(&r).expect("unique metrics");
        let backend_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        r.register(Box::new(backend_commit_duration.clone()))
            .expect("unique metric");
        let peer_round_trip = HistogramVec::new(
            HistogramOpts::new(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
            &["To"],
        )
        .expect("valid metric");
        r.register(Box::new(peer_round_trip.clone()))
            .expect("unique metric");
        let server_id = IntGaugeVec::new(
            Opts::new(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            ),
            &["server_id"],
        )
        .expect("valid metric");
        r.register(Box::new(server_id.clone()))
            .expect("unique metric");
        let server_version = IntGaugeVec::new(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            ),
            &["server_version"],
        )
        .expect("valid metric");
        r.register(Box::new(server_version.clone()))
            .expect("unique metric");
        Metrics {
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            leader_changes_seen: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            db_total_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            current_revision: gauge(
                &r,
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                &r,
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            is_learner: gauge(
                &r,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            backend_commit_duration,
            stages,
            peer_round_trip,
            server_id,
            server_version,
            registry: r,
        }
    }
}
