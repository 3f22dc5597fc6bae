//! One background task per KVCluster, kept in step with the backup spec that drives it: the
//! scheduled backups and the continuous change log each keep a set of these.
//!
//! The reconcile calls [`ClusterTasks::ensure`] on every pass; it starts a task, restarts one
//! whose spec changed, or stops one that is no longer wanted, and never waits for a task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use kube::ResourceExt;
use tokio::task::AbortHandle;

use crate::crd::{BackupSpec, KVCluster};

/// The running task of each KVCluster (by `namespace/name`), with the spec it runs for.
#[derive(Default)]
pub struct ClusterTasks {
    tasks: Mutex<HashMap<String, (BackupSpec, AbortHandle)>>,
}

impl ClusterTasks {
    /// Runs `start(namespace, name, spec)` for `wanted`, unless a task already runs for the same
    /// spec; stops the task when nothing is wanted. A task that ended by itself (its spec is
    /// invalid) stays ended until the spec changes.
    pub fn ensure<F>(
        &self,
        kvc: &KVCluster,
        wanted: Option<BackupSpec>,
        start: impl FnOnce(String, String, BackupSpec) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let key = cluster_key(kvc);
        let mut tasks = self.tasks.lock().expect("tasks lock");
        if let (Some(spec), Some((running, _))) = (&wanted, tasks.get(&key)) {
            if spec == running {
                return;
            }
        }
        if let Some((_, handle)) = tasks.remove(&key) {
            handle.abort();
        }
        if let Some(spec) = wanted {
            let namespace = kvc.namespace().unwrap_or_default();
            let task = tokio::spawn(start(namespace, kvc.name_any(), spec.clone()));
            tasks.insert(key, (spec, task.abort_handle()));
        }
    }

    /// Stops the task of a KVCluster being deleted.
    pub fn stop(&self, kvc: &KVCluster) {
        if let Some((_, handle)) = self
            .tasks
            .lock()
            .expect("tasks lock")
            .remove(&cluster_key(kvc))
        {
            handle.abort();
        }
    }
}

/// How tasks and backup slots name a cluster: `namespace/name`.
pub fn cluster_key(kvc: &KVCluster) -> String {
    format!("{}/{}", kvc.namespace().unwrap_or_default(), kvc.name_any())
}
