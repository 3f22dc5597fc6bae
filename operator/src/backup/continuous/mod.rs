//! Continuous backup: between full snapshots, every change of the keyspace, streamed from a
//! follower's watch and uploaded in segments every few seconds next to the snapshots, so that a
//! new cluster can be restored to any revision after a snapshot (`ferrokv snapshot restore
//! --segments --to-revision`).
//!
//! One task per KVCluster whose `spec.backup.continuous` is set ([`ContinuousBackups`]). It
//! starts where the change log in the bucket ends, or after the oldest full backup whose
//! revision the cluster's history still holds; it waits while there is no full backup yet. A watch that falls behind a compaction cannot give the
//! changes it missed: that gap is reported (`status.backup.continuousFailure`, reason
//! `ChangeLogGap`, a Warning Event), a full backup is taken at once, and the log goes on from
//! it. What the log holds is reported as the recovery point (`status.backup.recoveryPoint` and
//! metrics): the last revision uploaded, and how far it was behind the leader.
//!
//! [`buffer`] decides where segments are cut; [`stream`] runs the watch and the uploads. The
//! segments' format is the node's (`ferrokv_storage::change_log`), which reads them back.

pub mod buffer;
pub mod stream;

use kube::Resource;

use super::scheduled::BackupDeps;
use super::tasks::ClusterTasks;
use crate::crd::KVCluster;

/// The continuous-backup task of every KVCluster that has one.
#[derive(Default)]
pub struct ContinuousBackups {
    tasks: ClusterTasks,
}

impl ContinuousBackups {
    /// Starts, restarts (its spec changed) or stops the task of `kvc`.
    pub fn ensure(&self, deps: &BackupDeps, kvc: &KVCluster) {
        let wanted = kvc
            .spec
            .backup
            .clone()
            .filter(|b| b.continuous.is_some() && kvc.meta().deletion_timestamp.is_none());
        self.tasks.ensure(kvc, wanted, |namespace, name, spec| {
            stream::run(deps.clone(), namespace, name, spec)
        });
    }

    /// Stops the task of a KVCluster being deleted.
    pub fn stop(&self, kvc: &KVCluster) {
        self.tasks.stop(kvc);
    }
}
