//! The KVCluster controller: one reconcile observes the cluster, asks the planner for the next
//! step, takes at most that one step, and writes status.
//!
//! Every write is a server-side apply under the one field manager, except deletions and the
//! etcd membership calls. The finalizer deletes the members' volumes when a KVCluster goes (unless
//! its `volumeClaimRetentionPolicy` says `Retain`), so a new cluster of the same name never
//! finds an old one's data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, instrument, warn};

use crate::backup::metrics::BackupMetrics;
use crate::backup::scheduled::{BackupDeps, BackupScheduler};
use crate::backup::BackupSlots;
use crate::children::{self, BuildDefaults};
use crate::crd::{KVCluster, KVClusterBackup, KVClusterStatus, WhenDeleted};
use crate::error::Error;
use crate::etcd_access::{ensure_auth, AuthOutcome, EtcdAccess};
use crate::membership::{self, Defragmented};
use crate::metrics::Metrics;
use crate::names::{ClusterNames, CLUSTER_LABEL, FIELD_MANAGER};
use crate::observe::{observe, Observation};
use crate::planner::{
    image_decision, next_scheduled_defragmentation, plan, Action, Member, Observed,
    RestoreSourceCheck, VoterCount, WaitReason,
};
use crate::restore::{check_source, RestoreError};
use crate::status::{
    build_status, describe_defragmented, describe_step, is_membership_step, step_reason,
};
use crate::tls::{self, TlsSettings};

/// Finalizer that deletes the members' volumes when the KVCluster is deleted.
pub const FINALIZER: &str = "ferrokv.io/volumes";

/// How soon to look again while a step is under way, and when all is quiet.
const REQUEUE_BUSY: Duration = Duration::from_secs(5);
const REQUEUE_IDLE: Duration = Duration::from_secs(60);
/// How soon a snapshot to restore that was refused is read again (it may have been uploaded
/// or fixed since): each check reads the whole object.
const REQUEUE_RESTORE_SOURCE: Duration = Duration::from_secs(30);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub defaults: BuildDefaults,
    /// The scheduled-backup tasks; its deps serve the KVClusterBackup controller too.
    pub backups: BackupScheduler,
    pub tls: TlsSettings,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        defaults: BuildDefaults,
        tls: TlsSettings,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let backups = BackupScheduler::new(BackupDeps {
            client: client.clone(),
            recorder: recorder.clone(),
            metrics: BackupMetrics::register(&metrics.registry),
            slots: BackupSlots::default(),
            defaults: defaults.clone(),
        });
        Self {
            recorder,
            client,
            metrics,
            defaults,
            backups,
            tls,
        }
    }
}

/// Runs the controller until the process is stopped.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let clusters: Api<KVCluster> = Api::all(client.clone());
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=ferrokv-operator");
    Controller::new(clusters, watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        // Pods belong to the StatefulSet; map them to their cluster by label.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(CLUSTER_LABEL),
            |pod: Pod| {
                let cluster = pod.labels().get(CLUSTER_LABEL)?.clone();
                Some(ObjectRef::<KVCluster>::new(&cluster).within(&pod.namespace()?))
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
}

#[instrument(skip_all, fields(cluster = %kvc.name_any(), namespace = kvc.namespace().unwrap_or_default()))]
async fn reconcile(kvc: Arc<KVCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let ns = kvc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<KVCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, kvc, |event| async {
        match event {
            FinalizerEvent::Apply(kvc) => apply(&kvc, &ctx).await,
            FinalizerEvent::Cleanup(kvc) => cleanup(&kvc, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // A second pass over a KVCluster whose finalizer an earlier pass removed, queued before
        // the deletion took effect: the object is gone, and so is the work.
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Requeue::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    let outcome = result.as_ref().map_or_else(Error::kind, |_| "ok");
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

fn error_policy(_kvc: Arc<KVCluster>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    warn!(%error, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(15))
}

async fn apply_object<K>(client: &Client, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&object.name_any(), &params, &Patch::Apply(object))
        .await?;
    Ok(())
}

/// One pass: children that do not depend on membership, then observe, plan, one step, status.
async fn apply(kvc: &KVCluster, ctx: &Context) -> Result<Requeue, Error> {
    ctx.backups.ensure(kvc);
    let names = children::names_of(kvc);
    let ns = names.namespace.clone();
    let client = &ctx.client;
    apply_object(client, &ns, &children::peer_service(kvc)).await?;
    apply_object(client, &ns, &children::client_service(kvc)).await?;
    apply_object(client, &ns, &children::pod_disruption_budget(kvc)).await?;

    let certificates = tls::ensure(client, kvc, ctx.tls, Timestamp::now()).await?;
    for (reason, note) in &certificates.events {
        publish(ctx, kvc, EventType::Normal, reason, note.clone()).await;
    }
    let access = cluster_access(kvc, ctx, &names, certificates.identity.clone()).await?;

    let Observation {
        mut observed,
        cluster_id,
    } = observe(client, kvc, &names, &ctx.defaults, &access).await?;
    // Before the StatefulSet exists, a restore's snapshot is checked: a good one is recorded in
    // the status this pass writes, and the pod template's init step is built from it.
    let mut checked;
    let kvc = match check_restore_source(ctx, kvc, &mut observed).await? {
        Some(status) => {
            checked = kvc.clone();
            checked.status.get_or_insert_with(Default::default).restore = Some(status);
            &checked
        }
        None => kvc,
    };
    let action = plan(&observed);
    let image = image_decision(&observed);

    // Keep the StatefulSet's template in step with the spec at its current size; its size is
    // changed only as a planned step.
    if let Some(sts) = &observed.stateful_set {
        if !matches!(action, Action::ScaleStatefulSet { .. }) {
            let sts = children::stateful_set(kvc, sts.replicas, &image.image);
            apply_object(client, &ns, &sts).await?;
        }
    }

    let members = observed.members.clone().unwrap_or_default();
    let step_result = take_step(kvc, ctx, &access, &names, &members, &action, &image.image).await;
    let step_error = step_result.as_ref().err().map(ToString::to_string);
    let defragmented = step_result.as_ref().ok().copied().flatten();
    if is_membership_step(&action) {
        let reason = step_reason(&action);
        ctx.metrics.steps.with_label_values(&[reason]).inc();
        let (type_, note) = match &step_error {
            None => match &defragmented {
                Some(done) => (
                    EventType::Normal,
                    format!(
                        "{}: {}",
                        describe_step(&names, &action),
                        describe_defragmented(done)
                    ),
                ),
                None => (EventType::Normal, describe_step(&names, &action)),
            },
            Some(error) => (
                EventType::Warning,
                format!("{} failed: {error}", describe_step(&names, &action)),
            ),
        };
        info!(step = reason, note, "step");
        let pod = action.member_ordinal().map(|ordinal| ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            name: Some(names.member(ordinal)),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        });
        publish_about(ctx, kvc, pod, type_, reason, note).await;
    }

    let count = VoterCount::of(&members);
    let labels = [ns.as_str(), names.cluster.as_str()];
    ctx.metrics
        .members
        .with_label_values(&labels)
        .set(members.len() as i64);
    ctx.metrics
        .healthy_voters
        .with_label_values(&labels)
        .set(count.healthy as i64);

    let status = build_status(
        kvc,
        &observed,
        &action,
        cluster_id,
        step_error.as_deref(),
        defragmented.as_ref(),
        Timestamp::now(),
    );
    publish_version_events(ctx, kvc, &status).await;
    publish_restore_events(ctx, kvc, &status).await;
    let api: Api<KVCluster> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "status": status,
    });
    api.patch_status(
        &names.cluster,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;

    step_result?;
    let requeue = match action {
        Action::Converged => idle_requeue(&observed),
        Action::Wait(WaitReason::RestoreSourceInvalid(_)) => REQUEUE_RESTORE_SOURCE,
        _ => REQUEUE_BUSY,
    };
    // A certificate renewal or the next step of a CA rotation may fall due sooner.
    let tls_due = certificates.next_check.map(|next| {
        Duration::from_secs((next.as_second() - observed.now.as_second()).max(1) as u64)
    });
    Ok(Requeue::requeue(
        tls_due.map_or(requeue, |due| due.min(requeue)),
    ))
}

/// The access the operator's etcd clients use for this cluster: its TLS identity, and root's
/// credentials once auth is on (turned on here when the spec asks for it).
async fn cluster_access(
    kvc: &KVCluster,
    ctx: &Context,
    names: &ClusterNames,
    identity: Option<tls::ClientIdentity>,
) -> Result<EtcdAccess, Error> {
    let endpoints = membership::endpoints(names, kvc.spec.replicas.max(1) as u32);
    let (access, outcome) = ensure_auth(
        &ctx.client,
        kvc,
        &names.namespace,
        &endpoints,
        EtcdAccess::new(identity),
    )
    .await?;
    if outcome == AuthOutcome::Enabled {
        let note = "added user root with role root and enabled authentication".to_string();
        publish(ctx, kvc, EventType::Normal, "AuthEnabled", note).await;
    }
    Ok(access)
}

/// Checks the snapshot `spec.bootstrap.restore` names while no member exists and it has not
/// been checked: answers what was found when it is good, and records in `observed` why it is
/// not when it is not. The API server failing fails the pass.
async fn check_restore_source(
    ctx: &Context,
    kvc: &KVCluster,
    observed: &mut Observed,
) -> Result<Option<crate::crd::RestoreStatus>, Error> {
    let Some(source) = kvc.spec.restore_source() else {
        return Ok(None);
    };
    if observed.stateful_set.is_some() || observed.restore_source != RestoreSourceCheck::Unchecked {
        return Ok(None);
    }
    match check_source(&ctx.client, kvc, source).await {
        Ok(status) => {
            let note = format!(
                "{} verified; each member restores it in its init step",
                describe_snapshot(&status)
            );
            info!(note, "restore source verified");
            publish(ctx, kvc, EventType::Normal, "RestoreSourceVerified", note).await;
            observed.restore_source = RestoreSourceCheck::Verified;
            Ok(Some(status))
        }
        Err(RestoreError::Kube(error)) => Err(error.into()),
        Err(error) => {
            warn!(%error, "restore source refused");
            observed.restore_source = RestoreSourceCheck::Invalid(error.to_string());
            Ok(None)
        }
    }
}

/// Events for a restore that `status` shows: its source refused (once per distinct problem),
/// and the cluster first Available with it. (Its verification is published where it happens.)
async fn publish_restore_events(ctx: &Context, kvc: &KVCluster, status: &KVClusterStatus) {
    let refused = |s: &KVClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .filter(|c| c.reason == "RestoreSourceInvalid")
            .map(|c| c.message.clone())
    };
    let previous = kvc.status.as_ref();
    if let Some(message) = refused(status) {
        if previous.and_then(refused).as_ref() != Some(&message) {
            publish(
                ctx,
                kvc,
                EventType::Warning,
                "RestoreSourceInvalid",
                message,
            )
            .await;
        }
    }
    let Some(restore) = &status.restore else {
        return;
    };
    let newly_restored = previous
        .and_then(|p| p.restore.as_ref())
        .is_some_and(|r| r.restored_time.is_none())
        && restore.restored_time.is_some();
    if newly_restored {
        let took = restore
            .restored_time
            .as_ref()
            .map(|t| t.0.as_second() - restore.verified_time.0.as_second())
            .unwrap_or_default();
        let note = format!(
            "restored from {}: Available {took}s after the snapshot was verified",
            describe_snapshot(restore)
        );
        publish(ctx, kvc, EventType::Normal, "Restored", note).await;
    }
}

/// The snapshot a restore starts from, for a person: its source, revision, size and hash.
fn describe_snapshot(restore: &crate::crd::RestoreStatus) -> String {
    let mut facts = Vec::new();
    if let Some(revision) = restore.revision {
        facts.push(format!("revision {revision}"));
    }
    if let Some(size) = restore.size {
        facts.push(format!("{size} bytes"));
    }
    if let Some(sha256) = &restore.sha256 {
        facts.push(format!("SHA-256 {sha256}"));
    }
    match facts.is_empty() {
        true => restore.source.clone(),
        false => format!("{} ({})", restore.source, facts.join(", ")),
    }
}

/// How long a quiet cluster waits for its next look: [`REQUEUE_IDLE`], or less when a
/// scheduled defragmentation comes due sooner.
fn idle_requeue(observed: &Observed) -> Duration {
    next_scheduled_defragmentation(observed)
        .map(|next| next.as_second() - observed.now.as_second() + 1)
        .map_or(REQUEUE_IDLE, |secs| {
            REQUEUE_IDLE.min(Duration::from_secs(secs.max(1) as u64))
        })
}

/// Events for what `status` says about versions that the last status did not: a refused
/// version, a failed backup a roll-out waits for, and a roll-out completed.
async fn publish_version_events(ctx: &Context, kvc: &KVCluster, status: &KVClusterStatus) {
    let previous = kvc.status.as_ref();
    let degraded = |s: &KVClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let refused = degraded(status).filter(|(reason, _)| reason == "UpgradeRefused");
    if let Some((reason, message)) = refused {
        if previous.and_then(degraded).as_ref().map(|(_, m)| m) != Some(&message) {
            publish(ctx, kvc, EventType::Warning, &reason, message).await;
        }
    }
    let backup_failed = |s: &KVClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.reason == "PreUpgradeBackupFailed")
            .map(|c| c.message.clone())
    };
    if let Some(message) = backup_failed(status) {
        if previous.and_then(backup_failed).is_none() {
            publish(
                ctx,
                kvc,
                EventType::Warning,
                "PreUpgradeBackupFailed",
                message,
            )
            .await;
        }
    }
    let before = previous.and_then(|p| p.image.as_deref());
    if let (Some(before), Some(now)) = (before, status.image.as_deref()) {
        if before != now {
            let note = format!("every member runs {now} (was {before})");
            publish(ctx, kvc, EventType::Normal, "RolledOut", note).await;
        }
    }
}

async fn publish(ctx: &Context, kvc: &KVCluster, type_: EventType, reason: &str, note: String) {
    publish_about(ctx, kvc, None, type_, reason, note).await
}

/// Publishes an Event about the KVCluster, related to `secondary` (the pod of the member a step
/// was about): steps of one kind on different members stay separate Events instead of being
/// counted as repeats of the first.
async fn publish_about(
    ctx: &Context,
    kvc: &KVCluster,
    secondary: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary,
    };
    if let Err(error) = ctx.recorder.publish(&event, &kvc.object_ref(&())).await {
        warn!(%error, "could not publish event");
    }
}

/// Carries out one planned step; a defragmentation answers what it gave back.
async fn take_step(
    kvc: &KVCluster,
    ctx: &Context,
    access: &EtcdAccess,
    names: &ClusterNames,
    members: &[Member],
    action: &Action,
    image: &str,
) -> Result<Option<Defragmented>, Error> {
    if let Action::Defragment { id, .. } = action {
        let url = members
            .iter()
            .find(|m| m.id == *id)
            .and_then(|m| m.client_url(names))
            .ok_or(Error::MemberUnreachable(*id))?;
        return membership::defragment(access, &url).await.map(Some);
    }
    take_change_step(kvc, ctx, access, names, members, action, image)
        .await
        .map(|()| None)
}

/// Carries out one planned change of membership, pods or volumes.
async fn take_change_step(
    kvc: &KVCluster,
    ctx: &Context,
    access: &EtcdAccess,
    names: &ClusterNames,
    members: &[Member],
    action: &Action,
    image: &str,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = &names.namespace;
    let reach = members
        .iter()
        .filter_map(|m| m.ordinal)
        .max()
        .map_or(1, |o| o + 1);
    let endpoints =
        membership::change_endpoints(names, members, membership::endpoints(names, reach));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    match action {
        Action::WriteBootstrapConfig(config) => {
            apply_object(client, ns, &children::bootstrap_config_map(kvc, config)).await
        }
        Action::ScaleStatefulSet { replicas } => {
            apply_object(client, ns, &children::stateful_set(kvc, *replicas, image)).await
        }
        Action::AddLearner { ordinal } => {
            membership::add_learner(access, &endpoints, &names.peer_url(*ordinal))
                .await
                .map(drop)
        }
        Action::PromoteLearner { id, .. } => membership::promote(access, &endpoints, *id).await,
        Action::RemoveMember { id, .. } => membership::remove(access, &endpoints, *id).await,
        Action::MoveLeader { from, to } => {
            let leader = members
                .iter()
                .find(|m| m.id == *from)
                .and_then(|m| m.client_url(names))
                .ok_or(Error::MemberUnreachable(*from))?;
            membership::move_leader(access, &leader, *to).await
        }
        Action::DeleteClaims { ordinal } => delete_claims(client, names, *ordinal).await,
        Action::DiscardMemberData { ordinal } => {
            delete_claims(client, names, *ordinal).await?;
            delete_pod(&pods, &names.member(*ordinal), DeleteParams::default()).await
        }
        Action::ForceDeletePod { ordinal } => {
            let force = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            delete_pod(&pods, &names.member(*ordinal), force).await
        }
        Action::RestartPod { ordinal, .. } => {
            delete_pod(&pods, &names.member(*ordinal), DeleteParams::default()).await
        }
        Action::BackUpBeforeRollOut {
            image,
            attempt,
            replaces,
        } => {
            let backup = children::pre_upgrade_backup(kvc, image, *attempt);
            apply_object(client, ns, &backup).await?;
            // The failed attempt goes once the next exists, so the attempts keep counting.
            if let Some(failed) = replaces {
                let backups: Api<KVClusterBackup> = Api::namespaced(client.clone(), ns);
                match backups.delete(failed, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Ok(())
        }
        Action::Defragment { .. } | Action::Wait(_) | Action::Converged => Ok(()),
    }
}

async fn delete_pod(pods: &Api<Pod>, name: &str, params: DeleteParams) -> Result<(), Error> {
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already: the step is done.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn delete_claims(client: &Client, names: &ClusterNames, ordinal: u32) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    for claim in names.claims(ordinal) {
        match claims.delete(&claim, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The KVCluster is being deleted: its owned children go by garbage collection; the volumes
/// are not owned by it, so they are deleted here, unless the policy keeps them.
async fn cleanup(kvc: &KVCluster, ctx: &Context) -> Result<Requeue, Error> {
    ctx.backups.stop(kvc);
    if kvc.spec.volume_claim_retention_policy.when_deleted == WhenDeleted::Retain {
        publish(
            ctx,
            kvc,
            EventType::Normal,
            "VolumesRetained",
            "volumeClaimRetentionPolicy.whenDeleted is Retain: the member volume claims are kept"
                .to_string(),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    let names = children::names_of(kvc);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let list = claims.list(&ListParams::default()).await?;
    let mut deleted = 0;
    for claim in list {
        if names.ordinal_of_claim(&claim.name_any()).is_some() {
            match claims
                .delete(&claim.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    publish(
        ctx,
        kvc,
        EventType::Normal,
        "VolumesDeleted",
        format!("deleted {deleted} member volume claims"),
    )
    .await;
    Ok(Requeue::await_change())
}
