//! The KVCluster's status, derived from what was observed and the step the planner chose.
//!
//! Pure functions, so every phase and condition is tested without a cluster. Conditions keep
//! their `lastTransitionTime` while their status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::children::names_of;
use crate::crd::{KVCluster, KVClusterStatus, MemberStatus, Phase};
use crate::membership::Defragmented;
use crate::names::ClusterNames;
use crate::planner::{
    image_decision, rolling_out, valid_replicas, Action, DefragReason, Observed, RemovalReason,
    RestartReason, VoterCount, WaitReason,
};
use crate::upgrade::Version;

/// What a step is, for Events and the `Progressing` condition.
pub fn step_reason(action: &Action) -> &'static str {
    match action {
        Action::WriteBootstrapConfig(_) => "BootstrapConfigWritten",
        Action::ScaleStatefulSet { .. } => "StatefulSetScaled",
        Action::AddLearner { .. } => "MemberAdded",
        Action::PromoteLearner { .. } => "MemberPromoted",
        Action::MoveLeader { .. } => "LeaderMoved",
        Action::RemoveMember { .. } => "MemberRemoved",
        Action::DeleteClaims { .. } => "ClaimsDeleted",
        Action::DiscardMemberData { .. } => "MemberDataDiscarded",
        Action::ForceDeletePod { .. } => "PodMovedOffLostNode",
        Action::RestartPod { .. } => "PodRestarted",
        Action::Defragment { .. } => "MemberDefragmented",
        Action::BackUpBeforeRollOut { .. } => "PreUpgradeBackup",
        Action::Wait(_) => "Waiting",
        Action::Converged => "Converged",
    }
}

/// A sentence saying what a step did, for Events.
pub fn describe_step(names: &ClusterNames, action: &Action) -> String {
    match action {
        Action::WriteBootstrapConfig(config) => format!(
            "bootstrap state {} with members {:?}",
            config.state.as_flag_value(),
            config.members.iter().map(|&o| names.member(o)).collect::<Vec<_>>()
        ),
        Action::ScaleStatefulSet { replicas } => {
            format!("StatefulSet {} set to {replicas} replicas", names.stateful_set())
        }
        Action::AddLearner { ordinal } => format!(
            "added {} as a learner at {}",
            names.member(*ordinal),
            names.peer_url(*ordinal)
        ),
        Action::PromoteLearner { id, ordinal } => {
            format!("promoted learner {} ({id:x}) to voter", names.member(*ordinal))
        }
        Action::MoveLeader { from, to } => format!("moved leadership from {from:x} to {to:x}"),
        Action::RemoveMember {
            id,
            ordinal,
            reason,
        } => {
            let why = match reason {
                RemovalReason::ScaleDown => "to scale down",
                RemovalReason::DataLost => "because its data volume lost its data; it will be added again",
            };
            format!("removed member {} ({id:x}) {why}", names.member(*ordinal))
        }
        Action::DeleteClaims { ordinal } => {
            format!("deleted the volumes of removed member {}", names.member(*ordinal))
        }
        Action::DiscardMemberData { ordinal } => format!(
            "discarded the unusable volumes of {} and restarted its pod",
            names.member(*ordinal)
        ),
        Action::ForceDeletePod { ordinal } => format!(
            "force-deleted pod {} from its lost node; it comes back elsewhere with the same volumes",
            names.member(*ordinal)
        ),
        Action::RestartPod { ordinal, reason } => {
            let why = match reason {
                RestartReason::Rejoin => "to rejoin without waiting for crash back-off",
                RestartReason::Update => "to run the updated template",
                RestartReason::ClaimReplaced => "because its volume claim was replaced",
            };
            format!("restarted pod {} {why}", names.member(*ordinal))
        }
        Action::Defragment { id, ordinal, reason } => {
            let why = match reason {
                DefragReason::Scheduled => "on schedule",
                DefragReason::Threshold => "because its free space passed the threshold",
            };
            format!("defragmented member {} ({id:x}) {why}", names.member(*ordinal))
        }
        Action::BackUpBeforeRollOut {
            image,
            attempt,
            replaces,
        } => {
            let retry = match replaces {
                Some(failed) => format!(", attempt {attempt} after {failed} failed"),
                None => String::new(),
            };
            format!(
                "created KVClusterBackup {} to back up the cluster before rolling out \
                 {image}{retry}; members are restarted once it succeeds",
                names.pre_upgrade_backup(image, *attempt)
            )
        }
        Action::Wait(reason) => reason.to_string(),
        Action::Converged => "cluster matches its spec".to_string(),
    }
}

/// What a defragmentation did, for its Event.
pub fn describe_defragmented(done: &Defragmented) -> String {
    format!(
        "database {} → {} bytes, {} reclaimed, in {:.1}s{}",
        done.db_size_before,
        done.db_size_after,
        done.reclaimed(),
        done.took.as_secs_f64(),
        if done.led { ", as the leader" } else { "" }
    )
}

/// Whether a step changes the cluster (its membership, pods, volumes or databases); each of
/// these gets an Event.
pub fn is_membership_step(action: &Action) -> bool {
    !matches!(action, Action::Wait(_) | Action::Converged)
}

fn phase(observed: &Observed, action: &Action) -> Phase {
    let members = observed.members.as_deref().unwrap_or_default();
    let registered = members.len() as u32;
    let scaling = valid_replicas(observed.spec_replicas).is_some_and(|d| d != registered);
    match action {
        // Everything else done, but the spec's version is refused.
        Action::Converged | Action::Defragment { .. }
            if image_decision(observed).refused.is_some() =>
        {
            Phase::Degraded
        }
        Action::Converged | Action::Defragment { .. } => Phase::Running,
        // The roll-out has not begun, and the backup it waits for is taken only from a
        // cluster that is Running.
        Action::BackUpBeforeRollOut { .. }
        | Action::Wait(
            WaitReason::PreUpgradeBackupRunning { .. } | WaitReason::PreUpgradeBackupFailed { .. },
        ) => Phase::Running,
        Action::Wait(WaitReason::ClusterForming | WaitReason::RestoreSourceUnchecked) => {
            Phase::Bootstrapping
        }
        Action::Wait(WaitReason::QuorumLost { .. } | WaitReason::NoMemberAnswers) => {
            Phase::QuorumLost
        }
        Action::Wait(
            WaitReason::InvalidReplicas(_)
            | WaitReason::MembersUnhealthy { .. }
            | WaitReason::WouldLoseQuorum
            | WaitReason::UnregisteredMemberData { .. }
            | WaitReason::InvalidSchedule(_)
            | WaitReason::RolloutPaused { .. }
            | WaitReason::RestoreSourceInvalid(_),
        ) => Phase::Degraded,
        _ if observed.members.is_none() => {
            if VoterCount::of(members).voters == 0 && observed.stateful_set.is_some() {
                Phase::QuorumLost
            } else {
                Phase::Bootstrapping
            }
        }
        Action::RemoveMember {
            reason: RemovalReason::DataLost,
            ..
        }
        | Action::ForceDeletePod { .. }
        | Action::DiscardMemberData { .. }
        | Action::RestartPod {
            reason: RestartReason::Rejoin | RestartReason::ClaimReplaced,
            ..
        } => Phase::Repairing,
        Action::RestartPod {
            reason: RestartReason::Update,
            ..
        }
        | Action::Wait(WaitReason::MembersCatchingUp { .. }) => Phase::Updating,
        Action::MoveLeader { .. } | Action::Wait(WaitReason::PodStarting { .. })
            if rolling_out(observed) =>
        {
            Phase::Updating
        }
        _ if scaling => Phase::Scaling,
        _ => Phase::Repairing,
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// The status to write for this pass over `kvc`. `step_error` is the error of the step just
/// tried; `defragmented` what the step did when it defragmented a member.
pub fn build_status(
    kvc: &KVCluster,
    observed: &Observed,
    action: &Action,
    cluster_id: Option<u64>,
    step_error: Option<&str>,
    defragmented: Option<&Defragmented>,
    now: Timestamp,
) -> KVClusterStatus {
    let names = &names_of(kvc);
    let generation = kvc.metadata.generation;
    let previous = kvc.status.as_ref();
    let members = observed.members.as_deref().unwrap_or_default();
    let count = VoterCount::of(members);
    let leader = members.iter().find(|m| m.is_leader);

    let available = match &observed.members {
        Some(_) if count.has_quorum() => condition(
            "Available",
            true,
            "QuorumHealthy",
            format!("{} of {} voters are healthy", count.healthy, count.voters),
        ),
        Some(_) => condition(
            "Available",
            false,
            "QuorumLost",
            format!("{} of {} voters are healthy", count.healthy, count.voters),
        ),
        None => condition(
            "Available",
            false,
            "NoMemberAnswers",
            "no member answers the etcd API".to_string(),
        ),
    };

    let progressing = match (step_error, action) {
        (Some(error), _) => condition(
            "Progressing",
            true,
            "StepFailed",
            format!("{}: {error}", describe_step(names, action)),
        ),
        (
            None,
            Action::Wait(
                reason @ (WaitReason::ClusterForming
                | WaitReason::PodStarting { .. }
                | WaitReason::RestoreSourceUnchecked
                | WaitReason::LearnerCatchingUp { .. }
                | WaitReason::PodTerminating { .. }
                | WaitReason::MembersCatchingUp { .. }),
            ),
        ) => condition("Progressing", true, "Waiting", reason.to_string()),
        (None, Action::Wait(reason @ WaitReason::PreUpgradeBackupRunning { .. })) => {
            condition("Progressing", true, "PreUpgradeBackup", reason.to_string())
        }
        (None, Action::Wait(reason @ WaitReason::PreUpgradeBackupFailed { .. })) => condition(
            "Progressing",
            false,
            "PreUpgradeBackupFailed",
            reason.to_string(),
        ),
        (None, Action::Wait(reason)) => {
            condition("Progressing", false, "Blocked", reason.to_string())
        }
        (None, Action::Converged) => condition(
            "Progressing",
            false,
            "Converged",
            "cluster matches its spec".to_string(),
        ),
        (None, step) => condition(
            "Progressing",
            true,
            step_reason(step),
            describe_step(names, step),
        ),
    };

    let progressing = match roll_out_progress(observed) {
        Some(progress) if !matches!(action, Action::Converged) => Condition {
            message: format!("{progress}; {}", progressing.message),
            ..progressing
        },
        _ => progressing,
    };

    let refused = image_decision(observed).refused;
    let unhealthy: Vec<String> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| {
            m.ordinal
                .map_or_else(|| format!("{:x}", m.id), |o| names.member(o))
        })
        .collect();
    // A member whose pod cannot restore the snapshot never starts: say why.
    let restore_failures: Vec<String> = observed
        .pods
        .iter()
        .filter(|p| !p.running)
        .filter_map(|p| {
            Some(format!(
                "{}: {}",
                names.member(p.ordinal),
                p.restore_failure.as_ref()?
            ))
        })
        .collect();
    let degraded = match action {
        Action::Wait(reason @ WaitReason::InvalidReplicas(_)) => {
            condition("Degraded", true, "InvalidReplicas", reason.to_string())
        }
        Action::Wait(reason @ (WaitReason::QuorumLost { .. } | WaitReason::NoMemberAnswers)) => {
            condition("Degraded", true, "QuorumLost", reason.to_string())
        }
        Action::Wait(reason @ WaitReason::WouldLoseQuorum) => {
            condition("Degraded", true, "WouldLoseQuorum", reason.to_string())
        }
        Action::Wait(reason @ WaitReason::UnregisteredMemberData { .. }) => condition(
            "Degraded",
            true,
            "UnregisteredMemberData",
            reason.to_string(),
        ),
        Action::Wait(reason @ WaitReason::InvalidSchedule(_)) => {
            condition("Degraded", true, "InvalidSchedule", reason.to_string())
        }
        Action::Wait(reason @ WaitReason::RolloutPaused { .. }) => {
            condition("Degraded", true, "RolloutPaused", reason.to_string())
        }
        Action::Wait(reason @ WaitReason::RestoreSourceInvalid(_)) => {
            condition("Degraded", true, "RestoreSourceInvalid", reason.to_string())
        }
        _ if refused.is_some() => condition(
            "Degraded",
            true,
            "UpgradeRefused",
            refused
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
        _ if !restore_failures.is_empty() => condition(
            "Degraded",
            true,
            "RestoreFailed",
            format!(
                "the restore init step failed: {}",
                restore_failures.join("; ")
            ),
        ),
        _ if !unhealthy.is_empty() => condition(
            "Degraded",
            true,
            "MembersUnhealthy",
            format!("unhealthy members: {}", unhealthy.join(", ")),
        ),
        _ => condition("Degraded", false, "AllMembersHealthy", String::new()),
    };

    let restore = previous.and_then(|p| p.restore.clone()).map(|mut restore| {
        if restore.restored_time.is_none() && available.status == "True" {
            restore.restored_time = Some(Time(now));
        }
        restore
    });
    let conditions = [available, progressing, degraded]
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            let unchanged = previous
                .and_then(|p| p.conditions.iter().find(|old| old.type_ == c.type_))
                .filter(|old| old.status == c.status);
            c.last_transition_time = match unchanged {
                Some(old) => old.last_transition_time.clone(),
                None => Time(now),
            };
            c
        })
        .collect();

    let image = rolled_out_image(observed).or_else(|| previous.and_then(|p| p.image.clone()));
    KVClusterStatus {
        phase: Some(phase(observed, action)),
        replicas: members.len() as i32,
        ready_replicas: count.healthy as i32,
        selector: names.selector(),
        leader: leader.map(|m| {
            m.ordinal
                .map_or_else(|| m.name.clone(), |o| names.member(o))
        }),
        cluster_id: cluster_id.filter(|&id| id != 0).map(|id| format!("{id:x}")),
        version: image.as_deref().map(version_of),
        image,
        updated_replicas: updated_pods(observed) as i32,
        members: members
            .iter()
            .map(|m| {
                let name = m
                    .ordinal
                    .map_or_else(|| m.name.clone(), |o| names.member(o));
                let last = previous
                    .and_then(|p| p.members.iter().find(|old| old.name == name))
                    .map(|old| {
                        (
                            old.last_defragmentation_time.clone(),
                            old.last_defragmentation_reclaimed_bytes,
                        )
                    });
                let (last_defragmentation_time, last_defragmentation_reclaimed_bytes) =
                    match (action, defragmented) {
                        (Action::Defragment { id, .. }, Some(done)) if *id == m.id => {
                            (Some(Time(now)), Some(done.reclaimed()))
                        }
                        _ => last.unwrap_or_default(),
                    };
                // The member just defragmented: its size as the defragmentation left it, not as
                // observed before it.
                let db_size = match (action, defragmented) {
                    (Action::Defragment { id, .. }, Some(done)) if *id == m.id => {
                        Some(done.db_size_after)
                    }
                    _ => m.db_size,
                };
                MemberStatus {
                    name,
                    id: format!("{:x}", m.id),
                    peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
                    client_url: m.client_url(names).unwrap_or_default(),
                    healthy: m.healthy,
                    leader: m.is_leader,
                    learner: m.is_learner,
                    db_size,
                    db_size_in_use: m.db_size_in_use,
                    last_defragmentation_time,
                    last_defragmentation_reclaimed_bytes,
                }
            })
            .collect(),
        conditions,
        observed_generation: generation,
        // The backup scheduler's own, under its own field manager.
        backup: None,
        restore,
    }
}

/// Pods on the StatefulSet's current template.
fn updated_pods(observed: &Observed) -> usize {
    let Some(update_revision) = observed
        .stateful_set
        .as_ref()
        .and_then(|s| s.update_revision.as_ref())
    else {
        return 0;
    };
    observed
        .pods
        .iter()
        .filter(|p| p.revision.as_ref() == Some(update_revision))
        .count()
}

/// The image every member runs, when every pod of the StatefulSet runs the current template,
/// the same image, and is ready.
fn rolled_out_image(observed: &Observed) -> Option<String> {
    let sts = observed.stateful_set.as_ref()?;
    let complete = observed.pods.len() == sts.replicas.max(0) as usize
        && updated_pods(observed) == observed.pods.len()
        && observed
            .pods
            .iter()
            .all(|p| p.ready && p.image == sts.image);
    complete.then(|| sts.image.clone()).flatten()
}

/// "rolling out the pod template (image IMAGE): members updated 2/5", while a roll-out is
/// under way.
fn roll_out_progress(observed: &Observed) -> Option<String> {
    if !rolling_out(observed) {
        return None;
    }
    let sts = observed.stateful_set.as_ref()?;
    let image = sts.image.as_deref().unwrap_or("unknown");
    Some(format!(
        "rolling out the pod template (image {image}): members updated {}/{}",
        updated_pods(observed),
        sts.replicas
    ))
}

/// An image's version as `kubectl get kvc` shows it: `0.3.1` for `repo:v0.3.1`, the tag when
/// it is not a version, the whole reference when it has no tag.
pub fn version_of(image: &str) -> String {
    if let Some(version) = Version::of_image(image) {
        return version.to_string();
    }
    image
        .rsplit('/')
        .next()
        .and_then(|last| last.split('@').next())
        .and_then(|last| last.rsplit_once(':'))
        .map_or_else(|| image.to_string(), |(_, tag)| tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::BootstrapConfig;
    use crate::planner::{
        Member, MemberPod, NodeState, ObservedStatefulSet, RestoreSourceCheck, UpgradePolicy,
    };
    use std::time::Duration;

    fn names() -> ClusterNames {
        ClusterNames::new("kv", "ns")
    }

    fn observed(healthy: &[bool]) -> Observed {
        Observed {
            spec_replicas: healthy.len() as i32,
            node_lost_timeout: Duration::from_secs(300),
            now: Timestamp::from_second(1_000).unwrap(),
            bootstrap: Some(BootstrapConfig::existing_cluster(0..healthy.len() as u32)),
            stateful_set: Some(ObservedStatefulSet {
                replicas: healthy.len() as i32,
                update_revision: None,
                image: Some("kv:v0.1.0".into()),
            }),
            members: Some(
                healthy
                    .iter()
                    .enumerate()
                    .map(|(o, &healthy)| Member {
                        id: 0xa0 + o as u64,
                        name: names().member(o as u32),
                        ordinal: Some(o as u32),
                        peer_urls: vec![names().peer_url(o as u32)],
                        client_urls: vec![],
                        is_learner: false,
                        healthy,
                        is_leader: o == 0,
                        db_size: Some(3000),
                        db_size_in_use: Some(1000),
                        committed_index: Some(50),
                        applied_index: Some(50),
                    })
                    .collect(),
            ),
            pods: vec![],
            claims: vec![],
            defragmentation: None,
            last_defragmented: Default::default(),
            created: Timestamp::from_second(0).unwrap(),
            desired_image: "kv:v0.1.0".into(),
            rolled_out_image: None,
            upgrade: UpgradePolicy {
                force: false,
                member_ready_timeout: Duration::from_secs(300),
            },
            restore_source: RestoreSourceCheck::NotRequested,
            pre_upgrade_backup: crate::planner::PreUpgradeBackup::NotWanted,
        }
    }

    fn condition_of<'a>(status: &'a KVClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn kvc(previous: Option<KVClusterStatus>) -> KVCluster {
        let mut kvc = KVCluster::new("kv", serde_json::from_str("{}").unwrap());
        kvc.metadata.namespace = Some("ns".into());
        kvc.metadata.generation = Some(4);
        kvc.status = previous;
        kvc
    }

    fn status(o: &Observed, action: &Action) -> KVClusterStatus {
        let now = Timestamp::from_second(2_000).unwrap();
        build_status(&kvc(None), o, action, Some(0xc1), None, None, now)
    }

    fn member_pod(ordinal: u32, revision: &str, image: &str) -> MemberPod {
        MemberPod {
            ordinal,
            ready: true,
            running: true,
            not_ready_since: None,
            terminating: false,
            node: NodeState::Ready,
            start_refusal: None,
            restore_failure: None,
            revision: Some(revision.into()),
            image: Some(image.into()),
        }
    }

    #[test]
    fn a_roll_out_shows_its_progress_and_the_version_changes_when_every_member_runs_it() {
        let mut o = observed(&[true, true, true]);
        let sts = o.stateful_set.as_mut().unwrap();
        sts.update_revision = Some("r2".into());
        sts.image = Some("kv:v0.2.0".into());
        o.rolled_out_image = Some("kv:v0.1.0".into());
        o.desired_image = "kv:v0.2.0".into();
        o.pods = vec![
            member_pod(0, "r1", "kv:v0.1.0"),
            member_pod(1, "r1", "kv:v0.1.0"),
            member_pod(2, "r2", "kv:v0.2.0"),
        ];
        let previous = KVClusterStatus {
            image: Some("kv:v0.1.0".into()),
            version: Some("0.1.0".into()),
            ..KVClusterStatus::default()
        };
        let now = Timestamp::from_second(2_000).unwrap();
        let restart = Action::RestartPod {
            ordinal: 1,
            reason: RestartReason::Update,
        };
        let s = build_status(
            &kvc(Some(previous.clone())),
            &o,
            &restart,
            None,
            None,
            None,
            now,
        );
        assert_eq!(s.phase, Some(Phase::Updating));
        assert_eq!(
            s.version.as_deref(),
            Some("0.1.0"),
            "not every member runs 0.2.0"
        );
        assert_eq!(s.updated_replicas, 1);
        let progressing = condition_of(&s, "Progressing");
        assert!(
            progressing
                .message
                .starts_with("rolling out the pod template (image kv:v0.2.0): members updated 1/3; restarted pod kv-1"),
            "{}",
            progressing.message
        );

        o.desired_image = "kv:v0.2.0".into();
        o.pods = (0..3).map(|i| member_pod(i, "r2", "kv:v0.2.0")).collect();
        let s = build_status(
            &kvc(Some(previous)),
            &o,
            &Action::Converged,
            None,
            None,
            None,
            now,
        );
        assert_eq!(s.image.as_deref(), Some("kv:v0.2.0"));
        assert_eq!(s.version.as_deref(), Some("0.2.0"));
        assert_eq!(s.updated_replicas, 3);
        assert_eq!(s.phase, Some(Phase::Running));
    }

    #[test]
    fn a_refused_version_is_degraded_with_the_reason_and_how_to_force_it() {
        let mut o = observed(&[true, true, true]);
        o.pods = (0..3).map(|i| member_pod(i, "r1", "kv:v0.1.0")).collect();
        o.stateful_set.as_mut().unwrap().update_revision = Some("r1".into());
        o.desired_image = "kv:v0.3.0".into();
        let s = status(&o, &Action::Converged);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = condition_of(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "UpgradeRefused")
        );
        assert!(
            degraded.message.contains("0.3.0 is refused"),
            "{}",
            degraded.message
        );
        assert!(degraded.message.contains("spec.upgrade.force"));
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn versions_shown_are_tags_or_versions() {
        assert_eq!(version_of("repo/kv:v0.3.1"), "0.3.1");
        assert_eq!(version_of("registry:5000/kv:latest"), "latest");
        assert_eq!(version_of("registry:5000/kv"), "registry:5000/kv");
    }

    #[test]
    fn converged_cluster_is_running_available_and_not_degraded() {
        let s = status(&observed(&[true, true, true]), &Action::Converged);
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.replicas, 3);
        assert_eq!(s.ready_replicas, 3);
        assert_eq!(s.leader.as_deref(), Some("kv-0"));
        assert_eq!(s.cluster_id.as_deref(), Some("c1"));
        assert_eq!(s.selector, names().selector());
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(condition_of(&s, "Available").status, "True");
        assert_eq!(condition_of(&s, "Progressing").status, "False");
        assert_eq!(condition_of(&s, "Degraded").status, "False");
        assert_eq!(s.members[2].client_url, names().client_url(2));
        assert_eq!(s.members[0].id, "a0");
    }

    #[test]
    fn an_unhealthy_member_is_reported_as_degraded() {
        let o = observed(&[true, false, true]);
        let action = crate::planner::plan(&o);
        let s = status(&o, &action);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = condition_of(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "MembersUnhealthy")
        );
        assert!(degraded.message.contains("kv-1"));
        assert_eq!(condition_of(&s, "Available").status, "True");
    }

    #[test]
    fn a_refused_restore_source_is_degraded_with_the_problem_and_no_member() {
        let mut o = observed(&[]);
        o.spec_replicas = 3;
        o.bootstrap = None;
        o.members = None;
        o.stateful_set = None;
        o.pods.clear();
        o.restore_source =
            RestoreSourceCheck::Invalid("s3://b/k.db: not a valid snapshot: trailer".into());
        let action = crate::planner::plan(&o);
        let s = status(&o, &action);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = condition_of(&s, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "RestoreSourceInvalid")
        );
        assert!(
            degraded.message.contains("s3://b/k.db"),
            "{}",
            degraded.message
        );
        assert_eq!(condition_of(&s, "Progressing").status, "False");
        assert_eq!(condition_of(&s, "Available").status, "False");
    }

    #[test]
    fn a_member_that_cannot_restore_is_named_with_its_init_step_s_message() {
        let mut o = observed(&[true, true, false]);
        o.pods = (0..3).map(|i| member_pod(i, "r1", "kv:v0.1.0")).collect();
        let pod = o.pods.iter_mut().find(|p| p.ordinal == 2).unwrap();
        pod.running = false;
        pod.restore_failure = Some("snapshot source: downloading s3://b/k: timed out".into());
        let s = status(&o, &crate::planner::plan(&o));
        let degraded = condition_of(&s, "Degraded");
        assert_eq!(degraded.reason, "RestoreFailed");
        assert!(
            degraded.message.contains("kv-2") && degraded.message.contains("timed out"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn lost_quorum_says_so_in_phase_and_conditions() {
        let o = observed(&[true, false, false]);
        let s = status(&o, &crate::planner::plan(&o));
        assert_eq!(s.phase, Some(Phase::QuorumLost));
        assert_eq!(condition_of(&s, "Available").reason, "QuorumLost");
        assert_eq!(condition_of(&s, "Degraded").reason, "QuorumLost");
        assert!(condition_of(&s, "Degraded")
            .message
            .contains("no membership change"));
    }

    #[test]
    fn scaling_step_is_progressing_with_the_step_as_reason() {
        let mut o = observed(&[true, true, true]);
        o.spec_replicas = 5;
        let s = status(&o, &Action::AddLearner { ordinal: 3 });
        assert_eq!(s.phase, Some(Phase::Scaling));
        let progressing = condition_of(&s, "Progressing");
        assert_eq!(progressing.reason, "MemberAdded");
        assert!(progressing.message.contains("kv-3"));
    }

    #[test]
    fn invalid_replicas_are_degraded_with_the_reason() {
        let mut o = observed(&[true, true, true]);
        o.spec_replicas = 4;
        let action = Action::Wait(WaitReason::InvalidReplicas(4));
        let s = status(&o, &action);
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(condition_of(&s, "Degraded").reason, "InvalidReplicas");
        assert!(condition_of(&s, "Degraded").message.contains("odd"));
    }

    #[test]
    fn transition_time_is_kept_while_a_condition_holds() {
        let o = observed(&[true, true, true]);
        let first = status(&o, &Action::Converged);
        let later = Timestamp::from_second(9_000).unwrap();
        let second = build_status(
            &kvc(Some(first.clone())),
            &o,
            &Action::Converged,
            None,
            None,
            None,
            later,
        );
        assert_eq!(
            condition_of(&second, "Available").last_transition_time,
            condition_of(&first, "Available").last_transition_time
        );
        let failing = observed(&[true, false, false]);
        let third = build_status(
            &kvc(Some(second.clone())),
            &failing,
            &Action::Converged,
            None,
            None,
            None,
            later,
        );
        assert_eq!(
            condition_of(&third, "Available").last_transition_time,
            Time(later)
        );
    }

    #[test]
    fn a_failed_step_is_reported_in_progressing() {
        let o = observed(&[true, true, true]);
        let now = Timestamp::from_second(2_000).unwrap();
        let s = build_status(
            &kvc(None),
            &o,
            &Action::PromoteLearner {
                id: 0xa3,
                ordinal: 3,
            },
            None,
            Some("learner not ready"),
            None,
            now,
        );
        let progressing = condition_of(&s, "Progressing");
        assert_eq!(progressing.reason, "StepFailed");
        assert!(progressing.message.contains("learner not ready"));
    }

    #[test]
    fn a_defragmentation_of_the_leader_says_so() {
        let done = |led| Defragmented {
            db_size_before: 3000,
            db_size_after: 1200,
            took: std::time::Duration::from_millis(300),
            led,
        };
        assert_eq!(
            describe_defragmented(&done(false)),
            "database 3000 → 1200 bytes, 1800 reclaimed, in 0.3s"
        );
        assert!(describe_defragmented(&done(true)).ends_with(", as the leader"));
    }

    #[test]
    fn a_defragmentation_is_recorded_on_its_member_and_kept_on_later_passes() {
        let o = observed(&[true, true, true]);
        let at = |second| Timestamp::from_second(second).unwrap();
        let defragment = Action::Defragment {
            id: 0xa1,
            ordinal: 1,
            reason: DefragReason::Threshold,
        };
        let done = Defragmented {
            db_size_before: 3000,
            db_size_after: 1200,
            took: std::time::Duration::from_millis(300),
            led: false,
        };
        let first = build_status(
            &kvc(None),
            &o,
            &defragment,
            None,
            None,
            Some(&done),
            at(5_000),
        );
        assert_eq!(first.phase, Some(Phase::Running));
        let member = |s: &KVClusterStatus, o: usize| s.members[o].clone();
        assert_eq!(
            member(&first, 1).last_defragmentation_time,
            Some(Time(at(5_000)))
        );
        assert_eq!(
            member(&first, 1).last_defragmentation_reclaimed_bytes,
            Some(1800)
        );
        // Its size as the defragmentation left it, not as observed before.
        assert_eq!(member(&first, 1).db_size, Some(1200));
        assert_eq!(member(&first, 1).db_size_in_use, Some(1000));
        assert_eq!(member(&first, 0).last_defragmentation_time, None);

        // The next pass defragments the leader; member 1's record stays.
        let leader = Action::Defragment {
            id: 0xa0,
            ordinal: 0,
            reason: DefragReason::Threshold,
        };
        let second = build_status(
            &kvc(Some(first)),
            &o,
            &leader,
            None,
            None,
            Some(&done),
            at(6_000),
        );
        assert_eq!(
            member(&second, 1).last_defragmentation_time,
            Some(Time(at(5_000)))
        );
        assert_eq!(
            member(&second, 0).last_defragmentation_time,
            Some(Time(at(6_000)))
        );

        // A defragmentation that failed records nothing.
        let third = build_status(
            &kvc(Some(second)),
            &o,
            &defragment,
            None,
            Some("deadline exceeded"),
            None,
            at(7_000),
        );
        assert_eq!(
            member(&third, 1).last_defragmentation_time,
            Some(Time(at(5_000)))
        );
        assert_eq!(condition_of(&third, "Progressing").reason, "StepFailed");
    }
}
