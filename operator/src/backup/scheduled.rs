//! Scheduled backups: one task per KVCluster with a `spec.backup.schedule`, which sleeps until
//! the next time the schedule names, takes a backup if the cluster is healthy, applies
//! retention, and writes `status.backup`.
//!
//! The reconcile only keeps the set of tasks in step with the specs ([`BackupScheduler::ensure`]);
//! it never waits for a backup.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use object_store::path::Path;
use object_store::ObjectStore;
use tracing::{info, warn};

use super::continuous::ContinuousBackups;
use super::destination::open_bucket;
use super::manifest::{
    manifest_key, segment_revisions, snapshot_revision, BackupKind, BackupLayout,
};
use super::metrics::BackupMetrics;
use super::retention::{expired, parse_max_age, Retention, StoredBackup};
use super::schedule::{next_backup_after, parse_schedule};
use super::take::take_backup_to;
use super::tasks::{cluster_key, ClusterTasks};
use super::{BackupError, BackupSlots, BACKUP_FIELD_MANAGER};
use crate::children::BuildDefaults;
use crate::crd::{BackupAttempt, BackupSpec, BackupStatus, KVCluster, Phase, S3Destination};

/// What backup tasks need, cloned into each.
#[derive(Clone)]
pub struct BackupDeps {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: BackupMetrics,
    pub slots: BackupSlots,
    /// The image of a volume backup's pod: the members'.
    pub defaults: BuildDefaults,
}

/// The scheduled-backup task of every KVCluster that has one.
pub struct BackupScheduler {
    pub deps: BackupDeps,
    tasks: ClusterTasks,
    /// The continuous-backup tasks, kept in step with the specs alongside.
    continuous: ContinuousBackups,
}

impl BackupScheduler {
    pub fn new(deps: BackupDeps) -> Self {
        Self {
            deps,
            tasks: ClusterTasks::default(),
            continuous: ContinuousBackups::default(),
        }
    }

    /// Starts, restarts (its spec changed) or stops the task of `kvc`.
    pub fn ensure(&self, kvc: &KVCluster) {
        self.continuous.ensure(&self.deps, kvc);
        let wanted = kvc
            .spec
            .backup
            .clone()
            .filter(|b| b.schedule.is_some() && kvc.meta().deletion_timestamp.is_none());
        self.tasks.ensure(kvc, wanted, |namespace, name, spec| {
            run_schedule(self.deps.clone(), namespace, name, spec)
        });
    }

    /// Stops the task of a KVCluster being deleted.
    pub fn stop(&self, kvc: &KVCluster) {
        self.continuous.stop(kvc);
        self.tasks.stop(kvc);
    }
}

async fn run_schedule(deps: BackupDeps, namespace: String, name: String, spec: BackupSpec) {
    let api: Api<KVCluster> = Api::namespaced(deps.client.clone(), &namespace);
    let invalid = |message: String| BackupAttempt {
        time: Time(Timestamp::now()),
        reason: "InvalidSpec".to_string(),
        message,
    };
    let max_age = spec
        .retention
        .max_age
        .as_deref()
        .map(parse_max_age)
        .transpose();
    let cron = parse_schedule(spec.schedule.as_deref().unwrap_or_default());
    let (cron, max_age) = match (cron, max_age) {
        (Ok(cron), Ok(max_age)) => (cron, max_age),
        (Err(message), _) | (_, Err(message)) => {
            warn!(cluster = %name, %message, "backup spec invalid");
            let attempt = invalid(format!("{message}: no scheduled backups until it is fixed"));
            update_status(&api, &name, |s| {
                s.last_failure = Some(attempt.clone());
                s.next_scheduled_backup = None;
            })
            .await;
            if let Ok(kvc) = api.get(&name).await {
                publish(
                    &deps.recorder,
                    &kvc,
                    EventType::Warning,
                    "BackupSpecInvalid",
                    attempt.message,
                )
                .await;
            }
            return;
        }
    };
    loop {
        let now = Timestamp::now();
        let Some(next) = next_backup_after(&cron, now) else {
            return;
        };
        update_status(&api, &name, |s| s.next_scheduled_backup = Some(Time(next))).await;
        let wait = (next.as_millisecond() - now.as_millisecond()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let kvc = match api.get_opt(&name).await {
            Ok(Some(kvc)) => kvc,
            Ok(None) => return,
            Err(error) => {
                warn!(cluster = %name, %error, "reading the KVCluster for a scheduled backup");
                continue;
            }
        };
        backup_once(&deps, &api, &kvc, &spec, max_age).await;
    }
}

/// One scheduled time: a backup and retention, or a reason why not.
async fn backup_once(
    deps: &BackupDeps,
    api: &Api<KVCluster>,
    kvc: &KVCluster,
    spec: &BackupSpec,
    max_age: Option<Duration>,
) {
    let namespace = kvc.namespace().unwrap_or_default();
    let name = kvc.name_any();
    let labels = [namespace.as_str(), name.as_str()];
    let phase = kvc.status.as_ref().and_then(|s| s.phase);
    let skip = if phase != Some(Phase::Running) {
        Some((
            "ClusterNotHealthy",
            format!(
                "scheduled backup skipped: the cluster is {}, not Running",
                phase.map_or("not observed yet".to_string(), |p| format!("{p:?}"))
            ),
        ))
    } else {
        None
    };
    let slot = match skip {
        Some(_) => None,
        None => deps.slots.claim(&cluster_key(kvc)),
    };
    let skip = skip.or_else(|| {
        slot.is_none().then(|| {
            (
                "BackupInProgress",
                "scheduled backup skipped: another backup of this cluster is running".to_string(),
            )
        })
    });
    if let Some((reason, message)) = skip {
        info!(cluster = %name, reason, "backup skipped");
        deps.metrics.count(labels, "skipped");
        let attempt = BackupAttempt {
            time: Time(Timestamp::now()),
            reason: reason.to_string(),
            message: message.clone(),
        };
        update_status(api, &name, |s| s.last_skipped = Some(attempt.clone())).await;
        publish(
            &deps.recorder,
            kvc,
            EventType::Normal,
            "BackupSkipped",
            message,
        )
        .await;
        return;
    }

    let retention = Retention {
        count: spec.retention.count,
        max_age,
    };
    let taken = take_backup_to(
        deps,
        kvc,
        &spec.destination,
        BackupKind::Scheduled,
        Some(&retention),
    )
    .await;
    match taken {
        Ok(taken) => {
            deps.metrics.succeeded(labels, &taken);
            let record = taken.record.clone();
            update_status(api, &name, |s| {
                s.last_successful_backup = Some(record.clone())
            })
            .await;
            let mut note = format!(
                "backup of revision {} ({} bytes) from {} written to {} in {:.1}s",
                taken.record.revision,
                taken.record.size,
                taken.manifest.member,
                spec.destination.describe(&taken.record.key),
                taken.took.as_secs_f64()
            );
            let pruned = match (taken.retention_deleted, &spec.destination.s3) {
                (Some(deleted), _) => Ok(deleted),
                (None, Some(s3)) => prune(&deps.client, kvc, s3, spec, max_age).await,
                (None, None) => Ok(0),
            };
            match pruned {
                Ok(0) => {}
                Ok(deleted) => note.push_str(&format!("; retention deleted {deleted}")),
                Err(error) => {
                    let message = format!("retention failed: {error}");
                    warn!(cluster = %name, %message);
                    publish(
                        &deps.recorder,
                        kvc,
                        EventType::Warning,
                        "BackupRetentionFailed",
                        message,
                    )
                    .await;
                }
            }
            info!(cluster = %name, note, "backup succeeded");
            publish(
                &deps.recorder,
                kvc,
                EventType::Normal,
                "BackupSucceeded",
                note,
            )
            .await;
        }
        Err(error) => {
            let now = Timestamp::now();
            deps.metrics
                .failed(labels, now.as_millisecond() as f64 / 1000.0);
            let attempt = BackupAttempt {
                time: Time(now),
                reason: error.reason().to_string(),
                message: error.to_string(),
            };
            warn!(cluster = %name, reason = attempt.reason, message = attempt.message, "backup failed");
            update_status(api, &name, |s| s.last_failure = Some(attempt.clone())).await;
            let note = format!("{}: {}", attempt.reason, attempt.message);
            publish(
                &deps.recorder,
                kvc,
                EventType::Warning,
                "BackupFailed",
                note,
            )
            .await;
        }
    }
    drop(slot);
}

/// Applies retention to the cluster's scheduled backups; answers how many it deleted.
async fn prune(
    client: &Client,
    kvc: &KVCluster,
    s3: &S3Destination,
    spec: &BackupSpec,
    max_age: Option<Duration>,
) -> Result<usize, BackupError> {
    if spec.retention.count.is_none() && max_age.is_none() {
        return Ok(0);
    }
    let store = open_bucket(client, &kvc.namespace().unwrap_or_default(), s3).await?;
    let layout = BackupLayout::new(
        s3.prefix.as_deref(),
        &kvc.namespace().unwrap_or_default(),
        &kvc.name_any(),
    );
    let directory = Path::from(layout.directory(BackupKind::Scheduled));
    let listed: Vec<_> = store
        .list(Some(&directory))
        .try_collect()
        .await
        .map_err(BackupError::Upload)?;
    let stored: Vec<StoredBackup> = listed
        .iter()
        .filter(|meta| meta.location.as_ref().ends_with(".db"))
        .filter_map(|meta| {
            Some(StoredBackup {
                key: meta.location.to_string(),
                time: Timestamp::from_second(meta.last_modified.timestamp()).ok()?,
            })
        })
        .collect();
    let doomed = expired(&stored, spec.retention.count, max_age, Timestamp::now());
    let mut deleted = Vec::new();
    for backup in &doomed {
        // The manifest first: a snapshot without one is never taken for a whole backup.
        deleted.push(manifest_key(&backup.key));
        deleted.push(backup.key.clone());
    }
    // The change log before the oldest scheduled backup kept serves no restore of theirs.
    let oldest_kept = stored
        .iter()
        .filter(|backup| !doomed.contains(backup))
        .filter_map(|backup| snapshot_revision(&backup.key))
        .min();
    if let (Some(oldest_kept), true) = (oldest_kept, spec.continuous.is_some()) {
        let segments: Vec<_> = store
            .list(Some(&Path::from(layout.segments_directory())))
            .try_collect()
            .await
            .map_err(BackupError::Upload)?;
        deleted.extend(
            segments
                .iter()
                .map(|meta| meta.location.to_string())
                .filter(|key| segment_revisions(key).is_some_and(|(_, last)| last <= oldest_kept)),
        );
    }
    for key in deleted {
        match store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(BackupError::Upload(error)),
        }
    }
    Ok(doomed.len())
}

/// Changes `status.backup` of the named KVCluster with `change`, under the backup field
/// manager. A failed write is logged: the next one carries the whole backup status again.
pub(crate) async fn update_status(
    api: &Api<KVCluster>,
    name: &str,
    change: impl FnOnce(&mut BackupStatus),
) {
    let current = match api.get_status(name).await {
        Ok(kvc) => kvc,
        Err(error) => {
            warn!(cluster = %name, %error, "reading the KVCluster's backup status");
            return;
        }
    };
    let mut backup = current.status.and_then(|s| s.backup).unwrap_or_default();
    change(&mut backup);
    let patch = serde_json::json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "status": {"backup": backup},
    });
    if let Err(error) = api
        .patch_status(
            name,
            &PatchParams::apply(BACKUP_FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        warn!(cluster = %name, %error, "writing the KVCluster's backup status");
    }
}

pub(crate) async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Backup".to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object.object_ref(&())).await {
        warn!(%error, "could not publish event");
    }
}
