//! The continuous-backup task of one KVCluster: find where the change log goes on from, watch
//! the whole keyspace on a healthy follower from there, and upload a segment each period.
//!
//! A period ends with a progress request; its answer says every revision up to its header's
//! was delivered, so the segment cut then holds whole revisions up to there. The recovery point
//! is written after each upload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tracing::{info, warn};

use super::buffer::{logged_change, ChangeBuffer};
use crate::backup::destination::open_bucket;
use crate::backup::manifest::{
    segment_revisions, snapshot_key_of_manifest, snapshot_revision, BackupKind, BackupLayout,
};
use crate::backup::scheduled::{publish, update_status, BackupDeps};
use crate::backup::take::{snapshot_source, take_backup};
use crate::backup::tasks::cluster_key;
use crate::backup::BackupError;
use crate::crd::{BackupAttempt, BackupSpec, KVCluster, RecoveryPoint};
use crate::etcd_access;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A period ends early when this many bytes of keys and values are pending.
const MAX_SEGMENT_BYTES: usize = 16 << 20;
/// How long a task waits after a failure, or for a first full backup, before it tries again.
const RETRY: Duration = Duration::from_secs(5);
/// How often a failure that persists is told again as an Event: the task retries every
/// [`RETRY`], and an Event each time would bury every other Event of the cluster.
const REPEAT_EVENT_AFTER: Duration = Duration::from_secs(300);

/// Why one run of the stream ended without an error.
enum Ended {
    /// The KVCluster is gone.
    ClusterGone,
}

/// The task: streams until the KVCluster is gone, starting over after each failure.
pub async fn run(deps: BackupDeps, namespace: String, name: String, spec: BackupSpec) {
    let api: Api<KVCluster> = Api::namespaced(deps.client.clone(), &namespace);
    let mut told = FailureEvents::default();
    loop {
        let error = match stream(&deps, &api, &name, &spec).await {
            Ok(Ended::ClusterGone) => return,
            Err(error) => error,
        };
        let attempt = BackupAttempt {
            time: Time(Timestamp::now()),
            reason: error.reason().to_string(),
            message: error.to_string(),
        };
        warn!(cluster = %name, reason = attempt.reason, message = attempt.message, "continuous backup stopped");
        update_status(&api, &name, |s| {
            s.continuous_failure = Some(attempt.clone())
        })
        .await;
        let kvc = match api.get_opt(&name).await {
            Ok(Some(kvc)) => kvc,
            Ok(None) => return,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if !matches!(error, BackupError::NoFullBackup) && told.due(&attempt.reason, Instant::now())
        {
            publish(
                &deps.recorder,
                &kvc,
                EventType::Warning,
                "ContinuousBackupFailed",
                format!("{}: {}", attempt.reason, attempt.message),
            )
            .await;
        }
        if matches!(error, BackupError::ChangeLogGap { .. }) {
            full_backup_after_gap(&deps, &api, &kvc, &spec).await;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The failures told as Events: one that persists is told once per [`REPEAT_EVENT_AFTER`],
/// not at every retry. The status and the log record every attempt.
#[derive(Debug, Default)]
struct FailureEvents {
    /// The reason last told, and when.
    last: Option<(String, Instant)>,
}

impl FailureEvents {
    /// Whether a failure for `reason` at `now` is to be told; if so, it counts as told.
    fn due(&mut self, reason: &str, now: Instant) -> bool {
        let due = match &self.last {
            Some((last, at)) => last != reason || now.duration_since(*at) >= REPEAT_EVENT_AFTER,
            None => true,
        };
        if due {
            self.last = Some((reason.to_string(), now));
        }
        due
    }
}

/// A full backup, so that the change log can go on from it.
async fn full_backup_after_gap(
    deps: &BackupDeps,
    api: &Api<KVCluster>,
    kvc: &KVCluster,
    spec: &BackupSpec,
) {
    let Some(s3) = &spec.destination.s3 else {
        return;
    };
    let Some(_slot) = deps.slots.claim(&cluster_key(kvc)) else {
        return;
    };
    match take_backup(&deps.client, kvc, s3, BackupKind::Scheduled).await {
        Ok(taken) => {
            let record = taken.record.clone();
            update_status(api, &kvc.name_any(), |s| {
                s.last_successful_backup = Some(record.clone())
            })
            .await;
            publish(
                &deps.recorder,
                kvc,
                EventType::Normal,
                "BackupSucceeded",
                format!(
                    "full backup of revision {} after a gap in the change log, uploaded to {}",
                    taken.record.revision, taken.record.key
                ),
            )
            .await;
        }
        Err(error) => {
            warn!(cluster = %kvc.name_any(), %error, "full backup after a change-log gap failed");
        }
    }
}

fn now_millis() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Keys under `directory`.
async fn list(store: &Arc<dyn ObjectStore>, directory: String) -> Result<Vec<String>, BackupError> {
    let listed: Vec<_> = store
        .list(Some(&Path::from(directory)))
        .try_collect()
        .await
        .map_err(BackupError::Upload)?;
    Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
}

/// Revisions of every full backup of the cluster with a manifest (a whole backup).
pub async fn snapshot_revisions(
    store: &Arc<dyn ObjectStore>,
    layout: &BackupLayout,
) -> Result<Vec<(i64, String)>, BackupError> {
    let mut found = Vec::new();
    for kind in [BackupKind::Scheduled, BackupKind::OnDemand] {
        for key in list(store, layout.directory(kind)).await? {
            if let Some(snapshot) = snapshot_key_of_manifest(&key) {
                if let Some(revision) = snapshot_revision(&snapshot) {
                    found.push((revision, snapshot));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Where the change log can go on from, most continuous first: after the last segment (when
/// the log reaches back to a full backup), then after each full backup from the oldest on (a
/// watch replays the history the cluster still holds; a compacted start is skipped).
fn starts(last_segment: Option<i64>, snapshots: &[i64]) -> Vec<i64> {
    let mut sorted = snapshots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut starts = Vec::new();
    if let (Some(last), Some(&oldest)) = (last_segment, sorted.first()) {
        if last >= oldest {
            starts.push(last + 1);
        }
    }
    for snapshot in sorted {
        if starts.first().is_none_or(|&first| snapshot + 1 > first) {
            starts.push(snapshot + 1);
        }
    }
    starts
}

async fn stream(
    deps: &BackupDeps,
    api: &Api<KVCluster>,
    name: &str,
    spec: &BackupSpec,
) -> Result<Ended, BackupError> {
    let Some(kvc) = api.get_opt(name).await? else {
        return Ok(Ended::ClusterGone);
    };
    let Some(s3) = spec.destination.s3.clone() else {
        return Err(BackupError::Destination(
            "continuous backup needs an s3 destination".to_string(),
        ));
    };
    let period = Duration::from_secs(
        spec.continuous
            .as_ref()
            .map_or(5, |c| u64::from(c.segment_seconds.max(1))),
    );
    let namespace = kvc.namespace().unwrap_or_default();
    let store = open_bucket(&deps.client, &namespace, &s3).await?;
    let layout = BackupLayout::new(s3.prefix.as_deref(), &namespace, name);
    let last_segment = list(&store, layout.segments_directory())
        .await?
        .iter()
        .filter_map(|key| segment_revisions(key))
        .map(|(_, last)| last)
        .max();
    let snapshots: Vec<i64> = snapshot_revisions(&store, &layout)
        .await?
        .into_iter()
        .map(|(revision, _)| revision)
        .collect();
    if snapshots.is_empty() {
        return Err(BackupError::NoFullBackup);
    }

    let members = kvc.status.clone().unwrap_or_default().members;
    let follower = snapshot_source(&members).ok_or(BackupError::NoHealthyMember)?;
    let leader_url = members
        .iter()
        .find(|m| m.leader && m.healthy)
        .map_or(follower.client_url.clone(), |m| m.client_url.clone());
    let access = etcd_access::current(&deps.client, &kvc, &namespace)
        .await
        .map_err(|e| BackupError::ClusterAccess(e.to_string()))?;
    let mut watcher = access
        .connect(
            std::slice::from_ref(&follower.client_url),
            CONNECT_TIMEOUT,
            REQUEST_TIMEOUT,
        )
        .await?;
    let mut leader = access
        .connect(&[leader_url], CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .await?;

    let candidates = starts(last_segment, &snapshots);
    let mut gap = None;
    for start in candidates {
        match follow(
            deps,
            api,
            &kvc,
            &store,
            &layout,
            &mut watcher,
            &mut leader,
            start,
            period,
        )
        .await
        {
            Err(BackupError::ChangeLogGap { from, compacted }) => {
                info!(cluster = %name, from, compacted, "change log cannot go on from here");
                gap = Some(BackupError::ChangeLogGap { from, compacted });
            }
            other => return other,
        }
    }
    Err(gap.unwrap_or(BackupError::NoFullBackup))
}

/// Watches from `start` and uploads a segment each `period`, until the watch fails.
#[allow(clippy::too_many_arguments)]
async fn follow(
    deps: &BackupDeps,
    api: &Api<KVCluster>,
    kvc: &KVCluster,
    store: &Arc<dyn ObjectStore>,
    layout: &BackupLayout,
    watcher: &mut Client,
    leader: &mut Client,
    start: i64,
    period: Duration,
) -> Result<Ended, BackupError> {
    let name = kvc.name_any();
    let namespace = kvc.namespace().unwrap_or_default();
    let labels = [namespace.as_str(), name.as_str()];
    let mut stream = watcher
        .watch(
            vec![0],
            Some(
                WatchOptions::new()
                    .with_range(vec![0])
                    .with_start_revision(start)
                    .with_progress_notify(),
            ),
        )
        .await?;
    let mut buffer = ChangeBuffer::new(start);
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    let mut cut_asked = false;
    info!(cluster = %name, start, "continuous backup streaming");
    loop {
        let response = tokio::select! {
            response = stream.message() => response?,
            _ = ticker.tick() => {
                stream.request_progress().await?;
                cut_asked = true;
                continue;
            }
        };
        let Some(mut response) = response else {
            return Err(BackupError::WatchEnded);
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                return Err(BackupError::ChangeLogGap {
                    from: buffer.next_revision(),
                    compacted: response.compact_revision(),
                });
            }
            return Err(BackupError::WatchEnded);
        }
        let header_revision = response.take_header().map_or(0, |h| h.revision());
        if !response.events().is_empty() {
            let changes = response.events().iter().filter_map(logged_change).collect();
            buffer.add(changes, now_millis());
            if buffer.pending_bytes() >= MAX_SEGMENT_BYTES && !cut_asked {
                stream.request_progress().await?;
                cut_asked = true;
            }
            continue;
        }
        if response.created() {
            continue;
        }
        // A progress response: every revision up to its header's was delivered.
        buffer.progress(header_revision, now_millis());
        if !cut_asked {
            continue;
        }
        cut_asked = false;
        for lease in buffer.leases_to_learn() {
            let ttl = leader.lease_time_to_live(lease, None).await?;
            buffer.learn_lease(lease, (ttl.ttl() >= 0).then(|| ttl.granted_ttl()));
        }
        let oldest_pending = buffer.oldest_pending();
        let Some(segment) = buffer.cut(now_millis()) else {
            continue;
        };
        let started = Instant::now();
        let bytes = ferrokv_storage::change_log::encode_segment(&segment)?;
        let key = layout.segment_key(segment.first_revision, segment.last_revision);
        let size = bytes.len();
        store
            .put(&Path::from(key.as_str()), PutPayload::from(bytes))
            .await
            .map_err(BackupError::Upload)?;
        let leader_revision = leader
            .status()
            .await?
            .header()
            .map_or(segment.last_revision, |h| h.revision());
        let uploaded_at = now_millis();
        let lag_seconds = oldest_pending.map_or(0.0, |t| (uploaded_at - t).max(0) as f64 / 1000.0);
        let point = RecoveryPoint {
            revision: segment.last_revision,
            time: Time(
                Timestamp::from_millisecond(uploaded_at).unwrap_or_else(|_| Timestamp::now()),
            ),
            leader_revision,
            lag_revisions: (leader_revision - segment.last_revision).max(0),
            lag_seconds,
            segment: key.clone(),
        };
        deps.metrics.recovery_point(labels, &point, size);
        tracing::debug!(cluster = %name, key, size, took = ?started.elapsed(), "segment uploaded");
        update_status(api, &name, |s| {
            s.recovery_point = Some(point.clone());
            s.continuous_failure = None;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_persists_is_told_once_per_period_and_a_new_one_at_once() {
        let mut told = FailureEvents::default();
        let start = Instant::now();
        assert!(told.due("Upload", start));
        // Retries of the same failure stay quiet until the period has passed.
        assert!(!told.due("Upload", start + RETRY));
        assert!(!told.due("Upload", start + REPEAT_EVENT_AFTER - RETRY));
        assert!(told.due("Upload", start + REPEAT_EVENT_AFTER));
        // Another reason is told at once, and so is the first one when it comes back.
        let later = start + REPEAT_EVENT_AFTER + RETRY;
        assert!(told.due("ChangeLogGap", later));
        assert!(told.due("Upload", later + RETRY));
    }

    #[test]
    fn change_log_goes_on_after_its_last_segment_or_the_oldest_backup_in_history() {
        // Nothing yet: after the oldest backup, then the next ones.
        assert_eq!(starts(None, &[40, 10]), [11, 41]);
        // A log reaching back to a backup goes on where it ends, then after later backups.
        assert_eq!(starts(Some(55), &[10, 40]), [56]);
        assert_eq!(starts(Some(30), &[10, 40]), [31, 41]);
        // A log older than every backup kept is of no use.
        assert_eq!(starts(Some(5), &[10, 40]), [11, 41]);
        assert!(starts(Some(5), &[]).is_empty());
    }
}
