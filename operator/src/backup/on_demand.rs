//! On-demand backups: the controller of `KVClusterBackup` resources. Each is taken once, in a
//! task of its own, when its cluster is healthy and no other backup of it runs; its status
//! says where it is and, once done, where the backup went.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::manifest::BackupKind;
use super::scheduled::{publish, BackupDeps};
use super::take::take_backup_to;
use crate::crd::{BackupPhase, KVCluster, KVClusterBackup, KVClusterBackupStatus, Phase};
use crate::error::Error;
use crate::names::FIELD_MANAGER;

/// How soon a waiting backup looks again.
const REQUEUE_WAITING: Duration = Duration::from_secs(5);

struct OnDemand {
    deps: BackupDeps,
    /// UIDs of the KVClusterBackups whose task runs in this process.
    running: Mutex<HashSet<String>>,
}

/// Runs the KVClusterBackup controller until the process is stopped.
pub async fn run(deps: BackupDeps) {
    let api: Api<KVClusterBackup> = Api::all(deps.client.clone());
    let ctx = Arc::new(OnDemand {
        deps,
        running: Mutex::default(),
    });
    Controller::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "KVClusterBackup reconcile failed");
            }
        })
        .await;
}

fn error_policy(_backup: Arc<KVClusterBackup>, error: &Error, _ctx: Arc<OnDemand>) -> Requeue {
    warn!(%error, "KVClusterBackup reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(15))
}

async fn reconcile(backup: Arc<KVClusterBackup>, ctx: Arc<OnDemand>) -> Result<Requeue, Error> {
    let status = backup.status.clone().unwrap_or_default();
    if matches!(
        status.phase,
        Some(BackupPhase::Succeeded | BackupPhase::Failed)
    ) {
        return Ok(Requeue::await_change());
    }
    let uid = backup.uid().unwrap_or_default();
    if ctx.running.lock().expect("running lock").contains(&uid) {
        return Ok(Requeue::requeue(Duration::from_secs(30)));
    }
    let ns = backup.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<KVClusterBackup> = Api::namespaced(ctx.deps.client.clone(), &ns);
    let clusters: Api<KVCluster> = Api::namespaced(ctx.deps.client.clone(), &ns);
    let cluster_name = &backup.spec.cluster_name;

    let waiting = |reason: &str, message: String| KVClusterBackupStatus {
        phase: Some(BackupPhase::Pending),
        reason: Some(reason.to_string()),
        message: Some(message),
        ..KVClusterBackupStatus::default()
    };
    let Some(kvc) = clusters.get_opt(cluster_name).await? else {
        let status = waiting(
            "ClusterNotFound",
            format!("waiting for KVCluster {ns}/{cluster_name}, which does not exist"),
        );
        write_status(&api, &backup, &status).await?;
        return Ok(Requeue::requeue(Duration::from_secs(15)));
    };
    let destination = backup
        .spec
        .destination
        .clone()
        .or_else(|| kvc.spec.backup.as_ref().map(|b| b.destination.clone()));
    let Some(destination) = destination.filter(|d| d.s3.is_some() || d.volume.is_some()) else {
        let status = KVClusterBackupStatus {
            phase: Some(BackupPhase::Failed),
            reason: Some("NoDestination".to_string()),
            message: Some(format!(
                "no destination: neither spec.destination nor KVCluster {cluster_name}'s spec.backup.destination is set"
            )),
            ..KVClusterBackupStatus::default()
        };
        write_status(&api, &backup, &status).await?;
        return Ok(Requeue::await_change());
    };
    let phase = kvc.status.as_ref().and_then(|s| s.phase);
    if phase != Some(Phase::Running) {
        let status = waiting(
            "ClusterNotHealthy",
            format!(
                "waiting for KVCluster {cluster_name} to be Running (it is {})",
                phase.map_or("not observed yet".to_string(), |p| format!("{p:?}"))
            ),
        );
        write_status(&api, &backup, &status).await?;
        return Ok(Requeue::requeue(REQUEUE_WAITING));
    }
    let Some(slot) = ctx.deps.slots.claim(&format!("{ns}/{cluster_name}")) else {
        let status = waiting(
            "BackupInProgress",
            format!("waiting for the backup of KVCluster {cluster_name} under way to end"),
        );
        write_status(&api, &backup, &status).await?;
        return Ok(Requeue::requeue(REQUEUE_WAITING));
    };

    let started = Time(Timestamp::now());
    let running = KVClusterBackupStatus {
        phase: Some(BackupPhase::Running),
        message: Some(format!("taking a snapshot of KVCluster {cluster_name}")),
        start_time: Some(started.clone()),
        ..KVClusterBackupStatus::default()
    };
    write_status(&api, &backup, &running).await?;
    ctx.running
        .lock()
        .expect("running lock")
        .insert(uid.clone());
    let task_ctx = ctx.clone();
    tokio::spawn(async move {
        let deps = &task_ctx.deps;
        let name = kvc.name_any();
        let labels = [ns.as_str(), name.as_str()];
        let result = take_backup_to(deps, &kvc, &destination, BackupKind::OnDemand, None).await;
        drop(slot);
        let done = Some(Time(Timestamp::now()));
        let (status, event) = match result {
            Ok(taken) => {
                deps.metrics.succeeded(labels, &taken);
                let message = format!(
                    "backup of revision {} ({} bytes) from {} written to {}",
                    taken.record.revision,
                    taken.record.size,
                    taken.manifest.member,
                    destination.describe(&taken.record.key)
                );
                let status = KVClusterBackupStatus {
                    phase: Some(BackupPhase::Succeeded),
                    reason: Some("BackupSucceeded".to_string()),
                    message: Some(message.clone()),
                    key: Some(taken.record.key),
                    revision: Some(taken.record.revision),
                    size: Some(taken.record.size),
                    sha256: Some(taken.manifest.sha256),
                    member: Some(taken.manifest.member),
                    destination: Some(destination),
                    start_time: Some(started),
                    completion_time: done,
                };
                (status, (EventType::Normal, "BackupSucceeded", message))
            }
            Err(error) => {
                deps.metrics
                    .failed(labels, Timestamp::now().as_millisecond() as f64 / 1000.0);
                let status = KVClusterBackupStatus {
                    phase: Some(BackupPhase::Failed),
                    reason: Some(error.reason().to_string()),
                    message: Some(error.to_string()),
                    start_time: Some(started),
                    completion_time: done,
                    ..KVClusterBackupStatus::default()
                };
                let note = format!("{}: {error}", error.reason());
                (status, (EventType::Warning, "BackupFailed", note))
            }
        };
        if let Err(error) = write_status(&api, &backup, &status).await {
            warn!(%error, backup = %backup.name_any(), "writing the KVClusterBackup's status");
        }
        let (type_, reason, note) = event;
        publish(&deps.recorder, backup.as_ref(), type_, reason, note).await;
        task_ctx.running.lock().expect("running lock").remove(&uid);
    });
    Ok(Requeue::requeue(Duration::from_secs(30)))
}

async fn write_status(
    api: &Api<KVClusterBackup>,
    backup: &KVClusterBackup,
    status: &KVClusterBackupStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVClusterBackup",
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}
