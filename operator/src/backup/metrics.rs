//! Backup metrics, registered in the operator's registry beside its others (so named
//! `ferrokv_operator_backup_...`), labelled by namespace and cluster.

use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry};

use crate::crd::RecoveryPoint;

#[derive(Clone)]
pub struct BackupMetrics {
    /// Unix time of the last successful backup.
    pub last_success_timestamp: GaugeVec,
    /// Unix time of the last failed backup.
    pub last_failure_timestamp: GaugeVec,
    /// Bytes and revision of the last successful backup.
    pub last_size_bytes: GaugeVec,
    pub last_revision: GaugeVec,
    /// Seconds the last successful backup took, snapshot and upload.
    pub last_duration_seconds: GaugeVec,
    /// Backups by outcome: `succeeded`, `failed`, `skipped`.
    pub backups: IntCounterVec,
    /// Continuous backup: the last revision in the change log, how far the leader was ahead of
    /// it, and how old its oldest change was when it was uploaded.
    pub recovery_point_revision: GaugeVec,
    pub recovery_point_lag_revisions: GaugeVec,
    pub recovery_point_lag_seconds: GaugeVec,
    /// Segments and their bytes uploaded.
    pub segments: IntCounterVec,
    pub segment_bytes: IntCounterVec,
}

const LABELS: [&str; 2] = ["namespace", "cluster"];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), &LABELS).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("metric registered once");
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let gauge = GaugeVec::new(Opts::new(name, help), &LABELS).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("metric registered once");
    gauge
}

impl BackupMetrics {
    pub fn register(registry: &Registry) -> Self {
        let backups = IntCounterVec::new(
            Opts::new("backups_total", "Backups by outcome"),
            &["namespace", "cluster", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(backups.clone()))
            .expect("metric registered once");
        Self {
            last_success_timestamp: gauge(
                registry,
                "backup_last_success_timestamp_seconds",
                "Unix time of the last successful backup",
            ),
            last_failure_timestamp: gauge(
                registry,
                "backup_last_failure_timestamp_seconds",
                "Unix time of the last failed backup",
            ),
            last_size_bytes: gauge(
                registry,
                "backup_last_size_bytes",
                "Bytes of the last successful backup's snapshot",
            ),
            last_revision: gauge(
                registry,
                "backup_last_revision",
                "Revision of the last successful backup",
            ),
            last_duration_seconds: gauge(
                registry,
                "backup_last_duration_seconds",
                "Seconds the last successful backup took, snapshot and upload",
            ),
            backups,
            recovery_point_revision: gauge(
                registry,
                "backup_recovery_point_revision",
                "Last revision of the continuous-backup change log in object storage",
            ),
            recovery_point_lag_revisions: gauge(
                registry,
                "backup_recovery_point_lag_revisions",
                "Revisions the leader was ahead of the change log when its last segment was uploaded",
            ),
            recovery_point_lag_seconds: gauge(
                registry,
                "backup_recovery_point_lag_seconds",
                "Age of the oldest change of the last segment when it was uploaded: how much time of changes a loss of every member could have cost",
            ),
            segments: counter(registry, "backup_segments_total", "Change-log segments uploaded"),
            segment_bytes: counter(
                registry,
                "backup_segment_bytes_total",
                "Bytes of change-log segments uploaded",
            ),
        }
    }

    pub fn recovery_point(&self, labels: [&str; 2], point: &RecoveryPoint, bytes: usize) {
        Self::of(&self.recovery_point_revision, labels).set(point.revision as f64);
        Self::of(&self.recovery_point_lag_revisions, labels).set(point.lag_revisions as f64);
        Self::of(&self.recovery_point_lag_seconds, labels).set(point.lag_seconds);
        self.segments.with_label_values(&labels).inc();
        self.segment_bytes
            .with_label_values(&labels)
            .inc_by(bytes as u64);
    }

    fn of(vec: &GaugeVec, labels: [&str; 2]) -> Gauge {
        vec.with_label_values(&labels)
    }

    pub fn succeeded(&self, labels: [&str; 2], taken: &super::take::TakenBackup) {
        let seconds = taken.record.time.0.as_millisecond() as f64 / 1000.0;
        Self::of(&self.last_success_timestamp, labels).set(seconds);
        Self::of(&self.last_size_bytes, labels).set(taken.record.size as f64);
        Self::of(&self.last_revision, labels).set(taken.record.revision as f64);
        Self::of(&self.last_duration_seconds, labels).set(taken.took.as_secs_f64());
        self.count(labels, "succeeded");
    }

    pub fn failed(&self, labels: [&str; 2], at_seconds: f64) {
        Self::of(&self.last_failure_timestamp, labels).set(at_seconds);
        self.count(labels, "failed");
    }

    pub fn count(&self, labels: [&str; 2], outcome: &str) {
        self.backups
            .with_label_values(&[labels[0], labels[1], outcome])
            .inc();
    }
}
