//! Backups to a PersistentVolumeClaim (`destination.volume`). The operator cannot mount a claim
//! of the cluster's namespace, so each backup is a pod there that mounts it: the members' image
//! running `ferrokv snapshot save --backup-dir` against the member [`snapshot_source`] picks,
//! which streams and checks the snapshot, writes it with its manifest in the same layout as a
//! bucket ([`BackupLayout`]), applies retention in that directory, and leaves what it wrote as
//! its termination message. The pod reaches the member with the operator's own TLS identity
//! and root password, copied into a Secret for that one backup and owned by the pod.
//!
//! A pod that succeeded is deleted (its Secret with it); one that failed is kept for its logs
//! until the next backup of the cluster.
//!
//! [`snapshot_source`]: super::take::snapshot_source

use std::time::{Duration, Instant};

use ferrokv_storage::backup_file::SavedBackup;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::manifest::{BackupKind, BackupLayout};
use super::retention::Retention;
use super::scheduled::BackupDeps;
use super::take::{snapshot_source, TakenBackup};
use super::BackupError;
use crate::children::{
    volume_backup_pod, volume_backup_secret, VolumeBackupPlan, BACKUP_CONTAINER_NAME,
};
use crate::crd::{BackupRecord, KVCluster, VolumeDestination};
use crate::etcd_access;
use crate::names::BACKUP_OF_LABEL;

/// How often the pod is looked at while it runs.
const POLL: Duration = Duration::from_secs(1);
/// How long a pod may take to start (pulled, scheduled, its claim attached).
const START_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a backup may take once started: a large database streams for minutes.
const RUN_TIMEOUT: Duration = Duration::from_secs(35 * 60);

/// Takes a backup of `kvc` into the claim of `destination` as a backup of `kind`, applying
/// `retention` in its directory.
pub async fn take_volume_backup(
    deps: &BackupDeps,
    kvc: &KVCluster,
    destination: &VolumeDestination,
    kind: BackupKind,
    retention: Option<&Retention>,
) -> Result<TakenBackup, BackupError> {
    let started = Instant::now();
    let namespace = kvc.namespace().unwrap_or_default();
    let cluster = kvc.name_any();
    let status = kvc.status.clone().unwrap_or_default();
    let member = snapshot_source(&status.members).ok_or(BackupError::NoHealthyMember)?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(deps.client.clone(), &namespace);
    if claims.get_opt(&destination.claim_name).await?.is_none() {
        return Err(BackupError::Destination(format!(
            "PersistentVolumeClaim {namespace}/{} does not exist",
            destination.claim_name
        )));
    }
    let access = etcd_access::current(&deps.client, kvc, &namespace)
        .await
        .map_err(|e| BackupError::ClusterAccess(e.to_string()))?;

    // Whole seconds: the time names the files.
    let time = Timestamp::from_second(Timestamp::now().as_second()).expect("a time of now");
    let layout = BackupLayout::new(None, &namespace, &cluster);
    let plan = VolumeBackupPlan {
        name: pod_name(&cluster, kind, time),
        claim_name: destination.claim_name.clone(),
        directory: layout.directory(kind),
        time: rfc3339(time),
        member: member.name.clone(),
        member_url: member.client_url.clone(),
        cluster_id: status.cluster_id.clone().unwrap_or_default(),
        tls: access.identity().is_some(),
        user: access.user().map(|(user, _)| user.to_string()),
        keep: retention.and_then(|r| r.count),
        // An age beyond the calendar deletes nothing.
        delete_before: retention
            .and_then(|r| r.max_age)
            .and_then(|age| SignedDuration::try_from(age).ok())
            .and_then(|age| time.checked_sub(age).ok())
            .map(rfc3339),
    };
    let image = deps.defaults.image_for(kvc);
    let pods: Api<Pod> = Api::namespaced(deps.client.clone(), &namespace);
    remove_earlier_pods(&pods, &cluster).await?;
    let pod = pods
        .create(
            &PostParams::default(),
            &volume_backup_pod(kvc, &image, &plan),
        )
        .await?;
    // The pod waits for its Secret to start, as a kubelet does for a Secret it mounts.
    if plan.needs_access() {
        let identity = access
            .identity()
            .map(|i| (i.ca_bundle.as_str(), i.cert.as_str(), i.key.as_str()));
        let password = access.user().map(|(_, password)| password);
        let secret = volume_backup_secret(kvc, &plan, &pod, identity, password);
        let secrets: Api<Secret> = Api::namespaced(deps.client.clone(), &namespace);
        if let Err(error) = secrets.create(&PostParams::default(), &secret).await {
            delete_quietly(&pods, &plan.name).await;
            return Err(error.into());
        }
    }
    let saved = wait_for(&pods, &plan.name).await?;
    delete_quietly(&pods, &plan.name).await;
    let manifest = saved.manifest;
    Ok(TakenBackup {
        record: BackupRecord {
            time: Time(time),
            key: manifest.snapshot_key.clone(),
            revision: manifest.revision,
            size: manifest.size as i64,
        },
        manifest,
        took: started.elapsed(),
        retention_deleted: Some(saved.deleted),
    })
}

/// Waits for the backup pod to end; what it wrote, or why it failed.
async fn wait_for(pods: &Api<Pod>, name: &str) -> Result<SavedBackup, BackupError> {
    let failed = |problem: String| BackupError::BackupPod {
        pod: name.to_string(),
        problem,
    };
    let created = Instant::now();
    let mut running_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let pod = pods
            .get_opt(name)
            .await?
            .ok_or_else(|| failed("deleted before it ended".to_string()))?;
        let status = pod.status.unwrap_or_default();
        let container = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == BACKUP_CONTAINER_NAME);
        let state = container.as_ref().and_then(|c| c.state.clone());
        let terminated = state.as_ref().and_then(|s| s.terminated.clone());
        let message = terminated
            .as_ref()
            .and_then(|t| t.message.clone())
            .unwrap_or_default();
        match status.phase.as_deref() {
            Some("Succeeded") => {
                return serde_json::from_str(message.trim()).map_err(|e| {
                    failed(format!(
                        "its termination message is not what `ferrokv snapshot save` writes ({e}): {message:?}"
                    ))
                })
            }
            Some("Failed") => {
                let code = terminated.map_or(-1, |t| t.exit_code);
                return Err(failed(format!("exited with code {code}: {}", message.trim())));
            }
            Some("Running") => {
                let since = *running_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RUN_TIMEOUT {
                    return Err(failed(format!(
                        "still running after {}s",
                        RUN_TIMEOUT.as_secs()
                    )));
                }
            }
            _ if created.elapsed() > START_TIMEOUT => {
                let waiting = state
                    .and_then(|s| s.waiting)
                    .map(|w| {
                        format!(
                            "{}: {}",
                            w.reason.unwrap_or_default(),
                            w.message.unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "not scheduled or not started".to_string());
                return Err(failed(format!(
                    "did not start within {}s ({waiting})",
                    START_TIMEOUT.as_secs()
                )));
            }
            _ => {}
        }
    }
}

/// Deletes the backup pods earlier backups of the cluster left (their Secrets go with them): a
/// failed one kept for its logs, or one an operator restart abandoned.
async fn remove_earlier_pods(pods: &Api<Pod>, cluster: &str) -> Result<(), BackupError> {
    let selector = ListParams::default().labels(&format!("{BACKUP_OF_LABEL}={cluster}"));
    for pod in pods.list(&selector).await? {
        delete_quietly(pods, &pod.name_any()).await;
    }
    Ok(())
}

async fn delete_quietly(pods: &Api<Pod>, name: &str) {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(response)) if response.code == 404 => {}
        Err(error) => warn!(%error, name, "deleting what a volume backup used"),
    }
}

/// `CLUSTER-backup-scheduled-20261206t140000z`: one pod per backup, named for it.
fn pod_name(cluster: &str, kind: BackupKind, time: Timestamp) -> String {
    let stamp = time.strftime("%Y%m%dt%H%M%Sz");
    format!("{cluster}-backup-{}-{stamp}", kind.as_str())
}

/// `2026-12-06T14:00:00Z`.
fn rfc3339(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_backup_pods_are_named_for_the_cluster_kind_and_time() {
        let time: Timestamp = "2026-12-06T14:05:09Z".parse().unwrap();
        assert_eq!(
            pod_name("example", BackupKind::Scheduled, time),
            "example-backup-scheduled-20261206t140509z"
        );
        assert_eq!(
            pod_name("example", BackupKind::OnDemand, time),
            "example-backup-on-demand-20261206t140509z"
        );
        assert_eq!(rfc3339(time), "2026-12-06T14:05:09Z");
    }
}
