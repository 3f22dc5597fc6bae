//! Table tests of the planner. Each case is an observed state and the one step the planner
//! must choose; the walks drive a small model of Kubernetes and the cluster with the planner's
//! own steps, so every intermediate state of a scale or a repair is planned from scratch, as it
//! is after an operator restart.

use super::*;

const NOW: i64 = 1_750_000_000;
const TIMEOUT_SECS: u64 = 300;
const IMAGE_V1: &str = "ghcr.io/ferrokv/ferrokv:v0.1.0";
const IMAGE_V2: &str = "ghcr.io/ferrokv/ferrokv:v0.2.0";

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap()
}

fn id(ordinal: u32) -> u64 {
    0x8e9e_05c5_2164_0000 + ordinal as u64
}

fn member(ordinal: u32) -> Member {
    Member {
        id: id(ordinal),
        name: format!("kv-{ordinal}"),
        ordinal: Some(ordinal),
        peer_urls: vec![format!("http://kv-{ordinal}.kv-peer.ns.svc:2380")],
        client_urls: vec![format!("http://kv-{ordinal}.kv-peer.ns.svc:2379")],
        is_learner: false,
        healthy: true,
        is_leader: ordinal == 0,
        db_size: Some(100 << 20),
        db_size_in_use: Some(90 << 20),
        committed_index: Some(10_000),
        applied_index: Some(10_000),
    }
}

fn pod(ordinal: u32) -> MemberPod {
    MemberPod {
        ordinal,
        ready: true,
        running: true,
        not_ready_since: None,
        terminating: false,
        node: NodeState::Ready,
        start_refusal: None,
        restore_failure: None,
        revision: Some("r1".into()),
        image: Some(IMAGE_V1.into()),
    }
}

fn claims(ordinal: u32) -> [Claim; 2] {
    [VolumeKind::Data, VolumeKind::Wal].map(|kind| Claim {
        ordinal,
        kind,
        terminating: false,
    })
}

/// A converged cluster of `n` healthy voters led by member 0, asked to have `spec` members.
fn cluster(n: u32, spec: i32) -> Observed {
    Observed {
        spec_replicas: spec,
        node_lost_timeout: Duration::from_secs(TIMEOUT_SECS),
        now: at(NOW),
        bootstrap: Some(BootstrapConfig::existing_cluster(0..n)),
        stateful_set: Some(ObservedStatefulSet {
            replicas: n as i32,
            update_revision: Some("r1".into()),
            image: Some(IMAGE_V1.into()),
        }),
        members: Some((0..n).map(member).collect()),
        pods: (0..n).map(pod).collect(),
        claims: (0..n).flat_map(claims).collect(),
        defragmentation: None,
        last_defragmented: BTreeMap::new(),
        created: at(NOW - 86_400),
        desired_image: IMAGE_V1.into(),
        rolled_out_image: Some(IMAGE_V1.into()),
        upgrade: UpgradePolicy {
            force: false,
            member_ready_timeout: Duration::from_secs(TIMEOUT_SECS),
        },
        restore_source: RestoreSourceCheck::NotRequested,
        pre_upgrade_backup: PreUpgradeBackup::NotWanted,
    }
}

fn members_mut(o: &mut Observed) -> &mut Vec<Member> {
    o.members.as_mut().unwrap()
}

fn member_mut(o: &mut Observed, ordinal: u32) -> &mut Member {
    members_mut(o)
        .iter_mut()
        .find(|m| m.ordinal == Some(ordinal))
        .unwrap()
}

fn pod_mut(o: &mut Observed, ordinal: u32) -> &mut MemberPod {
    o.pods.iter_mut().find(|p| p.ordinal == ordinal).unwrap()
}

/// The member's pod is gone and the member stopped answering.
fn lose_pod(o: &mut Observed, ordinal: u32) {
    o.pods.retain(|p| p.ordinal != ordinal);
    member_mut(o, ordinal).healthy = false;
}

/// The member's node stopped reporting `seconds_ago`.
fn lose_node(o: &mut Observed, ordinal: u32, seconds_ago: i64) {
    let since = at(NOW - seconds_ago);
    let pod = pod_mut(o, ordinal);
    pod.node = NodeState::NotReady { since };
    pod.ready = false;
    pod.not_ready_since = Some(since);
    member_mut(o, ordinal).healthy = false;
}

/// The member's volume came back empty: the node refuses to start and says why.
fn lose_data(o: &mut Observed, ordinal: u32) {
    let pod = pod_mut(o, ordinal);
    pod.ready = false;
    pod.running = false;
    pod.start_refusal = StartRefusal::parse(&format!(
        "data dir empty but member kv-{ordinal} is registered as ID {:x}",
        id(ordinal)
    ));
    member_mut(o, ordinal).healthy = false;
}

/// The node's refusal when only the data volume came back empty: the WAL volume still holds the
/// log of member `member_id`.
fn wal_refusal(ordinal: u32, member_id: u64) -> Option<StartRefusal> {
    StartRefusal::parse(&format!(
        "data dir empty but --wal-dir /var/lib/ferrokv/wal holds the log of member kv-{ordinal} \
         (ID {member_id:x}) of cluster 5e1f0c4a9d3b7e21, whose data in --data-dir \
         /var/lib/ferrokv/data is lost and cannot be rebuilt from the log: remove the member \
         with `etcdctl member remove {member_id:x}`, add it again with `etcdctl member add \
         kv-{ordinal} --peer-urls=http://kv-{ordinal}.kv-peer.ns.svc:2380`, empty \
         /var/lib/ferrokv/wal, and start it with --initial-cluster-state=existing"
    ))
}

/// Only the member's data volume came back empty; its WAL volume still holds its log.
fn lose_data_volume(o: &mut Observed, ordinal: u32) {
    let member_id = member_mut(o, ordinal).id;
    let pod = pod_mut(o, ordinal);
    pod.ready = false;
    pod.running = false;
    pod.start_refusal = wal_refusal(ordinal, member_id);
    member_mut(o, ordinal).healthy = false;
}

/// The StatefulSet's new pod for `ordinal`, started on its claims. Volumes that made the last
/// start refuse make this one refuse alike; empty volumes join as the member registered at the
/// pod's peer URL, refusing as the node does when that member has run already or when there is
/// none.
fn recreate_pod(o: &mut Observed, ordinal: u32, previous: Option<StartRefusal>) {
    o.pods.retain(|p| p.ordinal != ordinal);
    let empty_volumes = match previous {
        None => false,
        Some(
            StartRefusal::EmptyDataDir {
                wal_holds_log: false,
                ..
            }
            | StartRefusal::NotAdded,
        ) => true,
        Some(refusal) => {
            o.pods.push(refusing_pod(ordinal, refusal));
            return;
        }
    };
    if empty_volumes {
        start_on_empty_volumes(o, ordinal);
    } else {
        o.pods.push(pod(ordinal));
    }
}

/// A pod that exited because of `refusal`.
fn refusing_pod(ordinal: u32, refusal: StartRefusal) -> MemberPod {
    MemberPod {
        ready: false,
        running: false,
        start_refusal: Some(refusal),
        restore_failure: None,
        ..pod(ordinal)
    }
}

/// A new pod of `ordinal` on empty volumes, started with `--initial-cluster-state=existing`.
fn start_on_empty_volumes(o: &mut Observed, ordinal: u32) {
    o.pods.retain(|p| p.ordinal != ordinal);
    let registered = members_mut(o)
        .iter()
        .find(|m| m.ordinal == Some(ordinal))
        .cloned();
    match registered {
        None => o.pods.push(refusing_pod(ordinal, StartRefusal::NotAdded)),
        Some(m) if m.is_started() => o.pods.push(refusing_pod(
            ordinal,
            StartRefusal::EmptyDataDir {
                registered_id: Some(m.id),
                wal_holds_log: false,
            },
        )),
        Some(_) => o.pods.push(pod(ordinal)),
    }
}

/// What Kubernetes and the cluster do after a step, when everything goes well. The pods of
/// the StatefulSet start, a learner whose pod runs catches up, and a pod refuses to start as
/// the node does on the volumes it has (see [`recreate_pod`]).
fn carry_out(o: &mut Observed, action: &Action) {
    match action {
        Action::WriteBootstrapConfig(config) => o.bootstrap = Some(config.clone()),
        Action::ScaleStatefulSet { replicas } => {
            let replicas = *replicas as u32;
            match &mut o.stateful_set {
                Some(sts) => sts.replicas = replicas as i32,
                None => {
                    o.stateful_set = Some(ObservedStatefulSet {
                        replicas: replicas as i32,
                        update_revision: Some("r1".into()),
                        image: Some(IMAGE_V1.into()),
                    })
                }
            }
            o.pods.retain(|p| p.ordinal < replicas);
            for ordinal in 0..replicas {
                if !o.pods.iter().any(|p| p.ordinal == ordinal) {
                    o.pods.push(pod(ordinal));
                }
                if !o.claims.iter().any(|c| c.ordinal == ordinal) {
                    o.claims.extend(claims(ordinal));
                }
            }
        }
        Action::AddLearner { ordinal } => {
            let mut learner = member(*ordinal);
            learner.id = id(*ordinal) + 0x100 * (members_mut(o).len() as u64 + 1);
            learner.name.clear();
            learner.is_learner = true;
            learner.healthy = false;
            learner.is_leader = false;
            members_mut(o).push(learner);
        }
        Action::PromoteLearner { id, .. } => {
            let m = members_mut(o).iter_mut().find(|m| m.id == *id).unwrap();
            m.is_learner = false;
        }
        Action::MoveLeader { from, to } => {
            for m in members_mut(o) {
                if m.id == *from {
                    m.is_leader = false;
                }
                if m.id == *to {
                    m.is_leader = true;
                }
            }
        }
        Action::RemoveMember { id, .. } => members_mut(o).retain(|m| m.id != *id),
        Action::DeleteClaims { ordinal } => o.claims.retain(|c| c.ordinal != *ordinal),
        Action::DiscardMemberData { ordinal } => {
            // The StatefulSet recreates the pod with new, empty claims.
            o.claims.retain(|c| c.ordinal != *ordinal);
            o.claims.extend(claims(*ordinal));
            start_on_empty_volumes(o, *ordinal);
        }
        Action::ForceDeletePod { ordinal } | Action::RestartPod { ordinal, .. } => {
            // The StatefulSet recreates the pod on a Ready node, with the same claims.
            let previous = pod_mut(o, *ordinal).start_refusal.clone();
            recreate_pod(o, *ordinal, previous);
            let sts = o.stateful_set.clone().unwrap();
            let pod = pod_mut(o, *ordinal);
            pod.revision = sts.update_revision;
            pod.image = sts.image;
            let running = pod_mut(o, *ordinal).running;
            if let Some(m) = members_mut(o)
                .iter_mut()
                .find(|m| m.ordinal == Some(*ordinal))
            {
                m.healthy = running && m.is_started();
            }
        }
        Action::Defragment { id, .. } => {
            let now = o.now;
            let m = members_mut(o).iter_mut().find(|m| m.id == *id).unwrap();
            m.db_size = m.db_size_in_use;
            let name = m.name.clone();
            o.last_defragmented.insert(name, now);
        }
        // The backup is made; the walks need it to have succeeded.
        Action::BackUpBeforeRollOut { attempt, .. } => {
            o.pre_upgrade_backup = PreUpgradeBackup::Wanted(Some(PreUpgradeBackupAttempt {
                name: format!("kv-pre-upgrade-{attempt}"),
                attempt: *attempt,
                state: PreUpgradeBackupState::Succeeded,
            }))
        }
        Action::Wait(_) | Action::Converged => {}
    }
    // A learner whose pod runs starts and catches up; a started member with a running pod is
    // healthy.
    let running: Vec<u32> = o
        .pods
        .iter()
        .filter(|p| p.running)
        .map(|p| p.ordinal)
        .collect();
    if let Some(members) = &mut o.members {
        for m in members.iter_mut() {
            if m.ordinal.is_some_and(|ord| running.contains(&ord)) {
                if !m.is_started() {
                    m.name = format!("kv-{}", m.ordinal.unwrap());
                }
                m.healthy = true;
            }
        }
    }
}

/// Plans one step and carries it out.
fn step(o: &mut Observed) -> Action {
    let action = plan(o);
    carry_out(o, &action);
    action
}

/// Plans and carries out steps until the planner has nothing left to do; returns the steps.
fn walk(o: &mut Observed) -> Vec<Action> {
    let mut steps = Vec::new();
    for _ in 0..64 {
        let action = plan(o);
        steps.push(action.clone());
        if matches!(action, Action::Converged | Action::Wait(_)) {
            return steps;
        }
        carry_out(o, &action);
    }
    panic!("no convergence after 64 steps: {steps:?}");
}

fn existing(ordinals: impl IntoIterator<Item = u32>) -> Action {
    Action::WriteBootstrapConfig(BootstrapConfig::existing_cluster(ordinals))
}

fn scale_up_steps(ordinal: u32, learner_id: u64) -> Vec<Action> {
    vec![
        Action::AddLearner { ordinal },
        existing(0..=ordinal),
        Action::ScaleStatefulSet {
            replicas: ordinal as i32 + 1,
        },
        Action::PromoteLearner {
            id: learner_id,
            ordinal,
        },
    ]
}

fn scale_down_steps(ordinal: u32) -> Vec<Action> {
    vec![
        Action::RemoveMember {
            id: id(ordinal),
            ordinal,
            reason: RemovalReason::ScaleDown,
        },
        existing(0..ordinal),
        Action::ScaleStatefulSet {
            replicas: ordinal as i32,
        },
        Action::DeleteClaims { ordinal },
    ]
}

fn learner_id(ordinal: u32, members_before: u64) -> u64 {
    id(ordinal) + 0x100 * (members_before + 1)
}

// ----- bootstrap ---------------------------------------------------------------------------

#[test]
fn bootstrap_writes_config_then_statefulset_then_waits_for_the_cluster_to_form() {
    let mut o = Observed {
        spec_replicas: 3,
        node_lost_timeout: Duration::from_secs(TIMEOUT_SECS),
        now: at(NOW),
        bootstrap: None,
        stateful_set: None,
        members: None,
        pods: vec![],
        claims: vec![],
        ..cluster(0, 3)
    };
    assert_eq!(
        plan(&o),
        Action::WriteBootstrapConfig(BootstrapConfig::new_cluster(3))
    );
    step(&mut o);
    assert_eq!(plan(&o), Action::ScaleStatefulSet { replicas: 3 });
    step(&mut o);
    assert_eq!(plan(&o), Action::Wait(WaitReason::ClusterForming));

    // The members formed a cluster: from now on a starting member joins it.
    o.members = Some((0..3).map(member).collect());
    assert_eq!(plan(&o), existing(0..3));
    step(&mut o);
    assert_eq!(plan(&o), Action::Converged);
}

#[test]
fn bootstrap_with_an_even_count_creates_nothing() {
    let o = Observed {
        spec_replicas: 4,
        bootstrap: None,
        stateful_set: None,
        members: None,
        pods: vec![],
        claims: vec![],
        ..cluster(0, 4)
    };
    assert_eq!(plan(&o), Action::Wait(WaitReason::InvalidReplicas(4)));
}

#[test]
fn a_restore_makes_nothing_until_its_snapshot_is_verified() {
    let empty = Observed {
        bootstrap: None,
        stateful_set: None,
        members: None,
        pods: vec![],
        claims: vec![],
        ..cluster(0, 3)
    };
    let refused = "s3://b/k: no such object".to_string();
    for (check, expected) in [
        (
            RestoreSourceCheck::Unchecked,
            Action::Wait(WaitReason::RestoreSourceUnchecked),
        ),
        (
            RestoreSourceCheck::Invalid(refused.clone()),
            Action::Wait(WaitReason::RestoreSourceInvalid(refused.clone())),
        ),
        (
            RestoreSourceCheck::Verified,
            Action::WriteBootstrapConfig(BootstrapConfig::new_cluster(3)),
        ),
    ] {
        let o = Observed {
            restore_source: check.clone(),
            ..empty.clone()
        };
        assert_eq!(plan(&o), expected, "{check:?}");
        // Not even the StatefulSet once the bootstrap state is written.
        let written = Observed {
            bootstrap: Some(BootstrapConfig::new_cluster(3)),
            ..o
        };
        if check != RestoreSourceCheck::Verified {
            assert_eq!(plan(&written), expected, "{check:?}");
        } else {
            assert_eq!(plan(&written), Action::ScaleStatefulSet { replicas: 3 });
        }
    }
    // Once members exist, the check is history: a cluster that runs is never held back by it.
    let running = Observed {
        restore_source: RestoreSourceCheck::Invalid(refused),
        ..cluster(3, 3)
    };
    assert_eq!(plan(&running), Action::Converged);
}

#[test]
fn formed_cluster_with_an_unstarted_initial_member_lists_it_in_the_config() {
    // Two of three initial members formed quorum; the third has not started and has no name.
    let mut o = cluster(3, 3);
    o.bootstrap = Some(BootstrapConfig::new_cluster(3));
    member_mut(&mut o, 2).name.clear();
    member_mut(&mut o, 2).healthy = false;
    assert_eq!(plan(&o), existing(0..3));
}

// ----- scaling 1 → 3 → 5 → 3 → 1 --------------------------------------------------------

#[test]
fn scale_one_to_three_to_five_to_three_to_one_one_member_per_step() {
    let mut o = cluster(1, 3);
    let mut expected = scale_up_steps(1, learner_id(1, 1));
    expected.extend(scale_up_steps(2, learner_id(2, 2)));
    expected.push(Action::Converged);
    assert_eq!(walk(&mut o), expected, "1 -> 3");

    o.spec_replicas = 5;
    let mut expected = scale_up_steps(3, learner_id(3, 3));
    expected.extend(scale_up_steps(4, learner_id(4, 4)));
    expected.push(Action::Converged);
    assert_eq!(walk(&mut o), expected, "3 -> 5");

    // Fresh IDs for the remaining members so the removals can be named.
    for m in members_mut(&mut o) {
        m.id = id(m.ordinal.unwrap());
    }
    o.spec_replicas = 3;
    let mut expected = scale_down_steps(4);
    expected.extend(scale_down_steps(3));
    expected.push(Action::Converged);
    assert_eq!(walk(&mut o), expected, "5 -> 3");

    o.spec_replicas = 1;
    let mut expected = scale_down_steps(2);
    expected.extend(scale_down_steps(1));
    expected.push(Action::Converged);
    assert_eq!(walk(&mut o), expected, "3 -> 1");
    assert_eq!(o.members.as_ref().unwrap().len(), 1);
    assert!(o.claims.iter().all(|c| c.ordinal == 0));
}

#[test]
fn every_intermediate_step_of_scaling_keeps_quorum() {
    let mut o = cluster(1, 5);
    for _ in 0..64 {
        let action = plan(&o);
        if action == Action::Converged {
            break;
        }
        carry_out(&mut o, &action);
        assert!(
            VoterCount::of(o.members.as_ref().unwrap()).has_quorum(),
            "{action:?}"
        );
    }
    o.spec_replicas = 1;
    for _ in 0..64 {
        let action = plan(&o);
        if action == Action::Converged {
            break;
        }
        carry_out(&mut o, &action);
        assert!(
            VoterCount::of(o.members.as_ref().unwrap()).has_quorum(),
            "{action:?}"
        );
    }
    assert_eq!(o.members.as_ref().unwrap().len(), 1);
}

#[test]
fn scale_up_waits_for_the_learner_to_catch_up_before_promoting() {
    let mut o = cluster(3, 5);
    carry_out(&mut o, &Action::AddLearner { ordinal: 3 });
    carry_out(&mut o, &existing(0..4));
    // The StatefulSet was raised, but the new pod has not started yet.
    o.stateful_set.as_mut().unwrap().replicas = 4;
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::LearnerCatchingUp { ordinal: 3 })
    );
}

#[test]
fn scale_up_resumes_after_a_restart_between_member_add_and_config_update() {
    let mut o = cluster(3, 5);
    carry_out(&mut o, &Action::AddLearner { ordinal: 3 });
    // The operator died here: the ConfigMap and StatefulSet still describe three members.
    assert_eq!(plan(&o), existing(0..4));
    step(&mut o);
    assert_eq!(plan(&o), Action::ScaleStatefulSet { replicas: 4 });
}

#[test]
fn scale_up_waits_while_a_member_is_unhealthy() {
    let mut o = cluster(3, 5);
    member_mut(&mut o, 1).healthy = false;
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy {
            unhealthy: vec!["kv-1".into()]
        })
    );
}

#[test]
fn scale_down_moves_leadership_off_the_member_it_removes() {
    let mut o = cluster(5, 3);
    member_mut(&mut o, 0).is_leader = false;
    member_mut(&mut o, 4).is_leader = true;
    assert_eq!(
        plan(&o),
        Action::MoveLeader {
            from: id(4),
            to: id(0)
        }
    );
}

#[test]
fn scale_down_refuses_a_removal_that_would_lose_quorum() {
    // Five voters, two of them down: removing a healthy one leaves 2 of 4, below quorum.
    let mut o = cluster(5, 3);
    member_mut(&mut o, 1).healthy = false;
    member_mut(&mut o, 2).healthy = false;
    assert_eq!(plan(&o), Action::Wait(WaitReason::WouldLoseQuorum));
}

#[test]
fn scale_down_removes_an_unhealthy_highest_member_when_quorum_holds() {
    let mut o = cluster(5, 3);
    member_mut(&mut o, 4).healthy = false;
    assert_eq!(
        plan(&o),
        Action::RemoveMember {
            id: id(4),
            ordinal: 4,
            reason: RemovalReason::ScaleDown
        }
    );
}

#[test]
fn removed_members_claims_wait_for_its_pod_to_terminate() {
    let mut o = cluster(3, 3);
    o.claims.extend(claims(3));
    o.pods.push(MemberPod {
        terminating: true,
        ..pod(3)
    });
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::PodTerminating { ordinal: 3 })
    );
    o.pods.retain(|p| p.ordinal != 3);
    assert_eq!(plan(&o), Action::DeleteClaims { ordinal: 3 });
}

#[test]
fn leftover_claims_are_deleted_before_their_ordinal_is_added_again() {
    // The operator died after lowering the StatefulSet from 4 to 3 but before deleting the
    // claims of member 3, and the user then asked for 5 members.
    let mut o = cluster(3, 5);
    o.claims.extend(claims(3));
    assert_eq!(plan(&o), Action::DeleteClaims { ordinal: 3 });
    step(&mut o);
    assert_eq!(plan(&o), Action::AddLearner { ordinal: 3 });
}

#[test]
fn an_unregistered_pod_with_volumes_is_never_added_blindly() {
    // Member 2 was removed by hand while its pod still runs with the old member's data.
    let mut o = cluster(3, 3);
    members_mut(&mut o).retain(|m| m.ordinal != Some(2));
    o.bootstrap = Some(BootstrapConfig::existing_cluster(0..2));
    o.stateful_set.as_mut().unwrap().replicas = 3;
    // Lowering the StatefulSet to the registered members comes first ...
    assert_eq!(plan(&o), Action::ScaleStatefulSet { replicas: 2 });
    // ... and with a StatefulSet kept at 3 by a user, nothing is added on top of that data.
    let mut held = o.clone();
    held.members = Some(vec![member(0), member(1)]);
    held.stateful_set.as_mut().unwrap().replicas = 2;
    held.pods.push(pod(2));
    held.claims.retain(|c| c.ordinal != 2);
    assert_eq!(
        plan(&held),
        Action::Wait(WaitReason::UnregisteredMemberData { ordinal: 2 })
    );
}

#[test]
fn a_learner_beyond_the_spec_is_removed_not_promoted() {
    // Scale-up 3 -> 5 was started, then the user went back to 3.
    let mut o = cluster(3, 3);
    carry_out(&mut o, &Action::AddLearner { ordinal: 3 });
    carry_out(&mut o, &existing(0..4));
    let learner = members_mut(&mut o)[3].id;
    assert_eq!(
        plan(&o),
        Action::RemoveMember {
            id: learner,
            ordinal: 3,
            reason: RemovalReason::ScaleDown
        }
    );
}

// ----- even counts -------------------------------------------------------------------------

#[test]
fn an_even_count_changes_no_membership_and_says_why() {
    for spec in [0, 2, 4, 6, 10, -1] {
        let o = cluster(3, spec);
        assert_eq!(
            plan(&o),
            Action::Wait(WaitReason::InvalidReplicas(spec)),
            "spec {spec}"
        );
    }
}

#[test]
fn an_even_count_still_moves_pods_off_lost_nodes() {
    let mut o = cluster(3, 4);
    lose_node(&mut o, 2, TIMEOUT_SECS as i64 + 1);
    assert_eq!(plan(&o), Action::ForceDeletePod { ordinal: 2 });
}

// ----- pod and node loss -------------------------------------------------------------------

#[test]
fn a_lost_pod_at_any_ordinal_is_never_a_scale_in() {
    for n in [3, 5] {
        for ordinal in 0..n {
            let mut o = cluster(n, n as i32);
            lose_pod(&mut o, ordinal);
            if ordinal == 0 {
                member_mut(&mut o, 0).is_leader = false;
                member_mut(&mut o, 1).is_leader = true;
            }
            assert_eq!(
                plan(&o),
                Action::Wait(WaitReason::MembersUnhealthy {
                    unhealthy: vec![format!("kv-{ordinal}")]
                }),
                "{n} members, pod {ordinal} lost"
            );
        }
    }
}

#[test]
fn a_pod_on_a_not_ready_node_is_moved_only_after_the_timeout() {
    for ordinal in 0..3 {
        let mut o = cluster(3, 3);
        lose_node(&mut o, ordinal, TIMEOUT_SECS as i64 - 1);
        assert!(
            matches!(plan(&o), Action::Wait(WaitReason::MembersUnhealthy { .. })),
            "ordinal {ordinal} before the timeout"
        );
        lose_node(&mut o, ordinal, TIMEOUT_SECS as i64);
        assert_eq!(plan(&o), Action::ForceDeletePod { ordinal });
        // The StatefulSet brings it back elsewhere with the same claims: same member.
        step(&mut o);
        assert_eq!(plan(&o), Action::Converged, "ordinal {ordinal}");
        assert_eq!(member_mut(&mut o, ordinal).id, id(ordinal));
    }
}

#[test]
fn a_pod_on_a_deleted_node_is_moved_after_the_timeout_or_at_once_if_it_looked_ready() {
    let mut o = cluster(3, 3);
    pod_mut(&mut o, 1).node = NodeState::Missing;
    member_mut(&mut o, 1).healthy = false;
    assert_eq!(plan(&o), Action::ForceDeletePod { ordinal: 1 });

    pod_mut(&mut o, 1).not_ready_since = Some(at(NOW - 10));
    assert!(matches!(plan(&o), Action::Wait(_)));
}

#[test]
fn loss_of_the_leaders_node_moves_its_pod_without_membership_change() {
    let mut o = cluster(3, 3);
    lose_node(&mut o, 0, TIMEOUT_SECS as i64 + 60);
    // The others elected a new leader.
    member_mut(&mut o, 0).is_leader = false;
    member_mut(&mut o, 2).is_leader = true;
    let steps = walk(&mut o);
    assert_eq!(
        steps,
        vec![Action::ForceDeletePod { ordinal: 0 }, Action::Converged]
    );
}

// ----- data loss ---------------------------------------------------------------------------

#[test]
fn data_loss_at_any_ordinal_replaces_the_member_under_the_same_name() {
    for n in [1, 3, 5] {
        for ordinal in 0..n {
            if n == 1 {
                // A single member with no data has no cluster to rejoin; see the quorum test.
                continue;
            }
            let mut o = cluster(n, n as i32);
            if ordinal == 0 {
                member_mut(&mut o, 0).is_leader = false;
                member_mut(&mut o, 1).is_leader = true;
            }
            lose_data(&mut o, ordinal);
            let others: Vec<u32> = (0..n).filter(|&o| o != ordinal).collect();
            let new_id = learner_id(ordinal, n as u64 - 1);
            let expected = vec![
                Action::RemoveMember {
                    id: id(ordinal),
                    ordinal,
                    reason: RemovalReason::DataLost,
                },
                existing(others.clone()),
                Action::AddLearner { ordinal },
                existing(0..n),
                Action::RestartPod {
                    ordinal,
                    reason: RestartReason::Rejoin,
                },
                Action::PromoteLearner {
                    id: new_id,
                    ordinal,
                },
                Action::Converged,
            ];
            assert_eq!(
                walk(&mut o),
                expected,
                "{n} members, data lost at {ordinal}"
            );
            // The StatefulSet never shrank and the claims were kept.
            assert_eq!(o.stateful_set.as_ref().unwrap().replicas, n as i32);
            assert_eq!(o.claims.len(), 2 * n as usize);
        }
    }
}

#[test]
fn data_loss_with_a_stale_refusal_for_an_older_id_is_not_replaced_again() {
    let mut o = cluster(3, 3);
    lose_data(&mut o, 2);
    // The member was already replaced: it is registered under a new ID and started elsewhere.
    member_mut(&mut o, 2).id = id(2) + 1;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));
}

/// The steps that replace member `ordinal` of `n` whose volumes can never start it again: it
/// is removed, added again as a learner, and only then are its volumes replaced, so the fresh
/// pod joins at its first start.
fn replace_on_fresh_volumes_steps(n: u32, ordinal: u32, new_id: u64) -> Vec<Action> {
    let others: Vec<u32> = (0..n).filter(|&o| o != ordinal).collect();
    vec![
        Action::RemoveMember {
            id: id(ordinal),
            ordinal,
            reason: RemovalReason::DataLost,
        },
        existing(others),
        Action::AddLearner { ordinal },
        existing(0..n),
        Action::DiscardMemberData { ordinal },
        Action::PromoteLearner {
            id: new_id,
            ordinal,
        },
        Action::Converged,
    ]
}

/// [`walk`], checking after every step that a healthy quorum of voters remains.
fn walk_keeping_quorum(o: &mut Observed) -> Vec<Action> {
    let mut steps = Vec::new();
    for _ in 0..64 {
        let action = plan(o);
        steps.push(action.clone());
        if matches!(action, Action::Converged | Action::Wait(_)) {
            return steps;
        }
        carry_out(o, &action);
        assert!(
            VoterCount::of(o.members.as_ref().unwrap()).has_quorum(),
            "quorum lost after {steps:?}"
        );
    }
    panic!("no convergence after 64 steps: {steps:?}");
}

#[test]
fn an_unusable_data_dir_is_discarded_once_the_member_is_added_again() {
    let mut o = cluster(3, 3);
    lose_data(&mut o, 1);
    pod_mut(&mut o, 1).start_refusal = StartRefusal::parse("data dir unusable: checksum mismatch");
    assert_eq!(
        walk(&mut o),
        replace_on_fresh_volumes_steps(3, 1, learner_id(1, 2))
    );
}

#[test]
fn data_volume_loss_at_any_ordinal_replaces_the_member_on_fresh_volumes() {
    for n in [3, 5] {
        for ordinal in 0..n {
            let mut o = cluster(n, n as i32);
            if ordinal == 0 {
                member_mut(&mut o, 0).is_leader = false;
                member_mut(&mut o, 1).is_leader = true;
            }
            lose_data_volume(&mut o, ordinal);
            let new_id = learner_id(ordinal, n as u64 - 1);
            assert_eq!(
                walk_keeping_quorum(&mut o),
                replace_on_fresh_volumes_steps(n, ordinal, new_id),
                "{n} members, data volume lost at {ordinal}"
            );
            assert_eq!(member_mut(&mut o, ordinal).id, new_id);
            assert!(pod_mut(&mut o, ordinal).running);
            assert_eq!(o.stateful_set.as_ref().unwrap().replicas, n as i32);
            assert_eq!(o.claims.len(), 2 * n as usize);
        }
    }
}

#[test]
fn data_volume_loss_of_the_member_the_operator_sees_as_leader_is_replaced_without_a_hand_off() {
    // The survivors still name the lost member as leader: a hand-off could only be sent to the
    // member that is down, so the removal goes ahead (the cluster commits it once they elect).
    for ordinal in 0..3 {
        let mut o = cluster(3, 3);
        for m in members_mut(&mut o) {
            m.is_leader = m.ordinal == Some(ordinal);
        }
        lose_data_volume(&mut o, ordinal);
        assert_eq!(
            walk_keeping_quorum(&mut o),
            replace_on_fresh_volumes_steps(3, ordinal, learner_id(ordinal, 2)),
            "leader {ordinal} lost its data volume"
        );
    }
}

/// The cluster after the operator removed member 1, whose data volume was lost, and added it
/// again as a learner; pod 1 still refuses on the old member's WAL.
fn data_volume_loss_with_learner_added() -> (Observed, u64) {
    let mut o = cluster(3, 3);
    lose_data_volume(&mut o, 1);
    for _ in 0..4 {
        step(&mut o); // RemoveMember, config, AddLearner, config
    }
    let learner = member_mut(&mut o, 1).clone();
    assert!(learner.is_learner && !learner.is_started(), "{learner:?}");
    (o, learner.id)
}

#[test]
fn data_volume_loss_every_intermediate_state_leads_forward() {
    let learner_waits = Action::Wait(WaitReason::LearnerCatchingUp { ordinal: 1 });

    // The pod refuses and the member is still registered: it is removed.
    let mut o = cluster(3, 3);
    lose_data_volume(&mut o, 1);
    assert_eq!(
        plan(&o),
        Action::RemoveMember {
            id: id(1),
            ordinal: 1,
            reason: RemovalReason::DataLost
        }
    );

    // Removed, the ConfigMap not yet updated (the operator died): the ConfigMap first ...
    step(&mut o);
    assert_eq!(plan(&o), existing([0, 2]));
    // ... then the same peer URL is added again, before anything touches the volumes.
    step(&mut o);
    assert_eq!(plan(&o), Action::AddLearner { ordinal: 1 });

    // Added again, while the pod refuses on the old member's WAL: its volumes are replaced.
    let (o, learner) = data_volume_loss_with_learner_added();
    assert_eq!(plan(&o), Action::DiscardMemberData { ordinal: 1 });

    // The kubelet restarted the refusing container and it has not refused yet: no step.
    let mut starting = o.clone();
    pod_mut(&mut starting, 1).running = true;
    assert_eq!(plan(&starting), learner_waits);

    // The operator died after deleting the claims, before deleting the pod: done again.
    let mut half = o.clone();
    for c in half.claims.iter_mut().filter(|c| c.ordinal == 1) {
        c.terminating = true;
    }
    assert_eq!(plan(&half), Action::DiscardMemberData { ordinal: 1 });

    // The old pod and its claims are terminating: wait, without deleting again.
    let mut terminating = half.clone();
    pod_mut(&mut terminating, 1).terminating = true;
    assert_eq!(plan(&terminating), learner_waits);

    // The old pod is gone, its claims still terminating.
    let mut gone = half.clone();
    gone.pods.retain(|p| p.ordinal != 1);
    assert_eq!(plan(&gone), learner_waits);

    // The StatefulSet made the new pod before the claims were gone: it would wait for them
    // forever; a pod made after they are gone gets new claims.
    let mut pending = gone.clone();
    pending.pods.push(MemberPod {
        ready: false,
        running: false,
        ..pod(1)
    });
    assert_eq!(
        plan(&pending),
        Action::RestartPod {
            ordinal: 1,
            reason: RestartReason::ClaimReplaced
        }
    );

    // The new pod on new claims is starting.
    let mut fresh = pending.clone();
    fresh.claims.retain(|c| c.ordinal != 1);
    fresh.claims.extend(claims(1));
    assert_eq!(plan(&fresh), learner_waits);

    // It joined as the learner and caught up: promoted.
    let mut joined = fresh.clone();
    pod_mut(&mut joined, 1).running = true;
    pod_mut(&mut joined, 1).ready = true;
    let m = member_mut(&mut joined, 1);
    m.name = "kv-1".into();
    m.healthy = true;
    assert_eq!(
        plan(&joined),
        Action::PromoteLearner {
            id: learner,
            ordinal: 1
        }
    );
    step(&mut joined);
    assert_eq!(plan(&joined), Action::Converged);
}

#[test]
fn a_fresh_pod_that_started_before_its_member_was_added_is_added_not_stranded() {
    // Volumes replaced while the member was not registered (by hand, or by an older operator):
    // the node on them finds no member with its peer URL. Its volumes are empty, so adding it
    // is safe, and it joins once restarted.
    let mut o = cluster(3, 3);
    members_mut(&mut o).retain(|m| m.ordinal != Some(1));
    o.bootstrap = Some(BootstrapConfig::existing_cluster([0, 2]));
    *pod_mut(&mut o, 1) = refusing_pod(
        1,
        StartRefusal::parse(
            "the cluster at http://kv-0.kv-peer.ns.svc:2380 has no member with peer URLs \
             http://kv-1.kv-peer.ns.svc:2380; add this member first with `etcdctl member add \
             kv-1 --peer-urls=http://kv-1.kv-peer.ns.svc:2380`",
        )
        .unwrap(),
    );
    assert_eq!(
        walk_keeping_quorum(&mut o),
        vec![
            Action::AddLearner { ordinal: 1 },
            existing(0..3),
            Action::RestartPod {
                ordinal: 1,
                reason: RestartReason::Rejoin
            },
            Action::PromoteLearner {
                id: learner_id(1, 2),
                ordinal: 1
            },
            Action::Converged,
        ]
    );
}

#[test]
fn data_volume_loss_never_risks_quorum() {
    // Three members, one down: the one that lost its data volume is not removed.
    let mut o = cluster(3, 3);
    lose_pod(&mut o, 2);
    lose_data_volume(&mut o, 1);
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::QuorumLost {
            healthy: 1,
            voters: 3
        })
    );

    // Five members, one down: three of the four others stay healthy through every step, and
    // the replacement is promoted only when the voters it joins keep a healthy quorum.
    let mut o = cluster(5, 5);
    lose_pod(&mut o, 4);
    lose_data_volume(&mut o, 1);
    let mut expected = replace_on_fresh_volumes_steps(5, 1, learner_id(1, 4));
    expected.pop();
    expected.push(Action::Wait(WaitReason::MembersUnhealthy {
        unhealthy: vec!["kv-4".into()],
    }));
    assert_eq!(walk_keeping_quorum(&mut o), expected);

    // A second member losing its data volume while the first is being replaced waits for it.
    let (mut o, _) = data_volume_loss_with_learner_added();
    lose_data_volume(&mut o, 2);
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::QuorumLost {
            healthy: 1,
            voters: 2
        })
    );
}

#[test]
fn data_volume_loss_with_a_refusal_for_an_older_id_is_not_replaced_again() {
    let mut o = cluster(3, 3);
    lose_data_volume(&mut o, 2);
    // The member was already replaced: it is registered under a new ID and has started.
    member_mut(&mut o, 2).id = id(2) + 1;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));
}

#[test]
fn a_terminating_claim_does_not_strand_a_pending_pod() {
    let mut o = cluster(3, 3);
    pod_mut(&mut o, 1).running = false;
    pod_mut(&mut o, 1).ready = false;
    member_mut(&mut o, 1).healthy = false;
    o.claims[2].terminating = true;
    assert_eq!(
        plan(&o),
        Action::RestartPod {
            ordinal: 1,
            reason: RestartReason::ClaimReplaced
        }
    );
}

// ----- quorum loss -------------------------------------------------------------------------

#[test]
fn lost_quorum_takes_no_membership_step() {
    let mut o = cluster(3, 3);
    member_mut(&mut o, 1).healthy = false;
    member_mut(&mut o, 2).healthy = false;
    let lost = Action::Wait(WaitReason::QuorumLost {
        healthy: 1,
        voters: 3,
    });
    assert_eq!(plan(&o), lost);

    // Not even the replacement of a member that lost its data ...
    lose_data(&mut o, 2);
    assert_eq!(plan(&o), lost);
    // ... nor scaling.
    o.spec_replicas = 1;
    assert_eq!(plan(&o), lost);
}

#[test]
fn lost_quorum_still_moves_pods_off_lost_nodes() {
    let mut o = cluster(3, 3);
    lose_node(&mut o, 1, TIMEOUT_SECS as i64 + 1);
    lose_node(&mut o, 2, 10);
    assert_eq!(plan(&o), Action::ForceDeletePod { ordinal: 1 });
}

#[test]
fn no_answer_from_a_formed_cluster_is_reported_not_acted_upon() {
    let mut o = cluster(3, 5);
    o.members = None;
    assert_eq!(plan(&o), Action::Wait(WaitReason::NoMemberAnswers));
}

#[test]
fn a_single_member_that_lost_its_data_is_not_removed() {
    let mut o = cluster(1, 1);
    lose_data(&mut o, 0);
    // Its only member is down: no quorum, nothing to remove it through.
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::QuorumLost {
            healthy: 0,
            voters: 1
        })
    );
}

// ----- updates -----------------------------------------------------------------------------

/// `cluster(3, 3)` led by member 1, whose StatefulSet template moved to `IMAGE_V2` (revision
/// r2) while every pod runs r1.
fn rolling_to_v2() -> Observed {
    let mut o = cluster(3, 3);
    let sts = o.stateful_set.as_mut().unwrap();
    sts.update_revision = Some("r2".into());
    sts.image = Some(IMAGE_V2.into());
    o.desired_image = IMAGE_V2.into();
    member_mut(&mut o, 0).is_leader = false;
    member_mut(&mut o, 1).is_leader = true;
    o
}

#[test]
fn roll_out_restarts_followers_first_then_the_leader_after_handing_off_to_an_updated_member() {
    let mut o = rolling_to_v2();
    assert_eq!(
        walk(&mut o),
        vec![
            Action::RestartPod {
                ordinal: 2,
                reason: RestartReason::Update
            },
            Action::RestartPod {
                ordinal: 0,
                reason: RestartReason::Update
            },
            Action::MoveLeader {
                from: id(1),
                to: id(0)
            },
            Action::RestartPod {
                ordinal: 1,
                reason: RestartReason::Update
            },
            Action::Converged,
        ]
    );
    assert!(o.pods.iter().all(|p| p.image.as_deref() == Some(IMAGE_V2)));
}

#[test]
fn while_an_updated_member_restarts_or_catches_up_nobody_else_is_touched() {
    let mut o = rolling_to_v2();
    step(&mut o);
    // Restarting: not ready yet.
    let pod = pod_mut(&mut o, 2);
    pod.ready = false;
    pod.not_ready_since = Some(at(NOW - 10));
    member_mut(&mut o, 2).healthy = false;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));
    // Back, but still applying what it missed.
    pod_mut(&mut o, 2).ready = true;
    member_mut(&mut o, 2).healthy = true;
    member_mut(&mut o, 2).applied_index = Some(10_000 - CAUGHT_UP_ENTRIES - 1);
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::MembersCatchingUp {
            behind: vec!["kv-2".into()]
        })
    );
    member_mut(&mut o, 2).applied_index = Some(10_000 - CAUGHT_UP_ENTRIES);
    assert_eq!(
        plan(&o),
        Action::RestartPod {
            ordinal: 0,
            reason: RestartReason::Update
        }
    );
}

#[test]
fn an_updated_member_not_ready_in_time_pauses_the_roll_out_and_setting_the_version_back_undoes_it()
{
    let mut o = rolling_to_v2();
    step(&mut o);
    let pod = pod_mut(&mut o, 2);
    pod.ready = false;
    pod.running = false;
    pod.not_ready_since = Some(at(NOW - TIMEOUT_SECS as i64));
    member_mut(&mut o, 2).healthy = false;
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::RolloutPaused {
            member: "kv-2".into(),
            image: IMAGE_V2.into(),
            seconds: TIMEOUT_SECS as i64,
        })
    );

    // The user sets the version back: the template is r1 again, and the stuck member, which
    // serves nothing, is restarted onto it at once.
    let sts = o.stateful_set.as_mut().unwrap();
    sts.update_revision = Some("r1".into());
    sts.image = Some(IMAGE_V1.into());
    o.desired_image = IMAGE_V1.into();
    assert_eq!(
        plan(&o),
        Action::RestartPod {
            ordinal: 2,
            reason: RestartReason::Update
        }
    );
    step(&mut o);
    assert_eq!(plan(&o), Action::Converged);
    assert_eq!(pod_mut(&mut o, 2).image.as_deref(), Some(IMAGE_V1));
}

#[test]
fn a_new_version_that_refuses_the_data_pauses_the_roll_out_and_keeps_the_data() {
    let mut o = rolling_to_v2();
    step(&mut o);
    let pod = pod_mut(&mut o, 2);
    pod.ready = false;
    pod.running = false;
    pod.not_ready_since = Some(at(NOW - 10));
    pod.start_refusal = StartRefusal::parse("data dir unusable: written by a newer format");
    member_mut(&mut o, 2).healthy = false;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));
    pod_mut(&mut o, 2).not_ready_since = Some(at(NOW - TIMEOUT_SECS as i64 - 1));
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::RolloutPaused { ref member, .. }) if member == "kv-2"
    ));

    // Outside a roll-out the same refusal means data that can never be used: it is replaced.
    let mut o = cluster(3, 3);
    let pod = pod_mut(&mut o, 2);
    pod.ready = false;
    pod.running = false;
    pod.start_refusal = Some(StartRefusal::UnusableDataDir);
    member_mut(&mut o, 2).healthy = false;
    assert!(matches!(plan(&o), Action::RemoveMember { ordinal: 2, .. }));
}

#[test]
fn a_refused_version_leaves_the_template_as_it_is() {
    let mut o = cluster(3, 3);
    o.desired_image = "ghcr.io/ferrokv/ferrokv:v0.3.0".into();
    let decision = image_decision(&o);
    assert_eq!(decision.image, IMAGE_V1);
    assert!(decision.refused.is_some());
    o.upgrade.force = true;
    assert_eq!(image_decision(&o).image, "ghcr.io/ferrokv/ferrokv:v0.3.0");

    o.upgrade.force = false;
    o.desired_image = IMAGE_V2.into();
    assert_eq!(image_decision(&o).refused, None);
}

/// A converged cluster on v1 whose spec asks for v2, with backups configured.
fn asked_for_v2_with_backups() -> Observed {
    let mut o = cluster(3, 3);
    o.desired_image = IMAGE_V2.into();
    o.pre_upgrade_backup = PreUpgradeBackup::Wanted(None);
    o
}

fn backup_attempt(attempt: u32, state: PreUpgradeBackupState) -> PreUpgradeBackup {
    PreUpgradeBackup::Wanted(Some(PreUpgradeBackupAttempt {
        name: format!("kv-pre-upgrade-{attempt}"),
        attempt,
        state,
    }))
}

#[test]
fn with_backups_configured_a_roll_out_starts_only_after_its_backup_succeeded() {
    let mut o = asked_for_v2_with_backups();
    let held = image_decision(&o);
    assert_eq!((held.image.as_str(), held.awaits_backup), (IMAGE_V1, true));
    assert_eq!(
        plan(&o),
        Action::BackUpBeforeRollOut {
            image: IMAGE_V2.into(),
            attempt: 1,
            replaces: None
        }
    );

    o.pre_upgrade_backup = backup_attempt(1, PreUpgradeBackupState::InProgress);
    assert_eq!(image_decision(&o).image, IMAGE_V1);
    assert_eq!(
        plan(&o),
        Action::Wait(WaitReason::PreUpgradeBackupRunning {
            backup: "kv-pre-upgrade-1".into(),
            image: IMAGE_V2.into()
        })
    );

    o.pre_upgrade_backup = backup_attempt(1, PreUpgradeBackupState::Succeeded);
    let allowed = image_decision(&o);
    assert_eq!(
        (allowed.image.as_str(), allowed.awaits_backup),
        (IMAGE_V2, false)
    );
}

#[test]
fn a_failed_backup_before_a_roll_out_is_retried_after_a_growing_delay() {
    let mut o = asked_for_v2_with_backups();
    let failed = |attempt, seconds_ago| {
        backup_attempt(
            attempt,
            PreUpgradeBackupState::Failed {
                reason: "UploadFailed".into(),
                message: "connection refused".into(),
                finished: at(NOW - seconds_ago),
            },
        )
    };
    o.pre_upgrade_backup = failed(1, 5);
    let Action::Wait(reason @ WaitReason::PreUpgradeBackupFailed { retry_at, .. }) = plan(&o)
    else {
        panic!("{:?}", plan(&o));
    };
    assert_eq!(retry_at, at(NOW - 5 + 15));
    let message = reason.to_string();
    for says in [
        "kv-pre-upgrade-1",
        "UploadFailed",
        "connection refused",
        "skipBackup",
    ] {
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(image_decision(&o).image, IMAGE_V1, "no member is touched");

    o.pre_upgrade_backup = failed(1, 15);
    assert_eq!(
        plan(&o),
        Action::BackUpBeforeRollOut {
            image: IMAGE_V2.into(),
            attempt: 2,
            replaces: Some("kv-pre-upgrade-1".into())
        }
    );
    // The third failure waits 60 s.
    o.pre_upgrade_backup = failed(3, 59);
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::PreUpgradeBackupFailed { .. })
    ));
    o.pre_upgrade_backup = failed(3, 60);
    assert!(matches!(
        plan(&o),
        Action::BackUpBeforeRollOut { attempt: 4, .. }
    ));
    assert_eq!(pre_upgrade_backup_retry_delay(30), Duration::from_secs(600));
}

#[test]
fn without_backups_a_refused_version_or_an_unhealthy_cluster_no_backup_is_taken() {
    // Not wanted (no spec.backup, or spec.upgrade.skipBackup): the template moves at once.
    let mut o = asked_for_v2_with_backups();
    o.pre_upgrade_backup = PreUpgradeBackup::NotWanted;
    assert_eq!(image_decision(&o).image, IMAGE_V2);

    // A refused version is refused; nothing is backed up for it.
    let mut o = asked_for_v2_with_backups();
    o.desired_image = "ghcr.io/ferrokv/ferrokv:v0.3.0".into();
    assert!(image_decision(&o).refused.is_some());
    assert_eq!(plan(&o), Action::Converged);

    // An unhealthy member is waited for first.
    let mut o = asked_for_v2_with_backups();
    member_mut(&mut o, 2).healthy = false;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));

    // A new cluster has no template yet, so nothing to roll out.
    let mut o = asked_for_v2_with_backups();
    o.stateful_set = None;
    o.bootstrap = None;
    assert_eq!(image_decision(&o).image, IMAGE_V2);
}

// ----- termination messages ----------------------------------------------------------------

#[test]
fn termination_messages_are_read_as_start_refusals() {
    assert_eq!(
        StartRefusal::parse(
            "data dir empty but member kv-2 is registered as ID 8e9e05c52164694d\n"
        ),
        Some(StartRefusal::EmptyDataDir {
            registered_id: Some(0x8e9e05c52164694d),
            wal_holds_log: false,
        })
    );
    assert_eq!(
        StartRefusal::parse("data dir empty but member kv-2 is registered"),
        Some(StartRefusal::EmptyDataDir {
            registered_id: None,
            wal_holds_log: false,
        })
    );
    // The node's whole message, as Error::AlreadyBootstrapped writes it.
    assert_eq!(
        StartRefusal::parse(
            "data dir empty but member kv-2 is registered as ID 8e9e05c52164694d in cluster \
             cdf818194e3a8c32 (member already bootstrapped): remove it with `etcdctl member \
             remove 8e9e05c52164694d`, add it again with `etcdctl member add`, and start it with \
             --initial-cluster-state=existing"
        ),
        Some(StartRefusal::EmptyDataDir {
            registered_id: Some(0x8e9e05c52164694d),
            wal_holds_log: false,
        })
    );
    assert_eq!(
        wal_refusal(2, 0x8e9e05c52164694d),
        Some(StartRefusal::EmptyDataDir {
            registered_id: Some(0x8e9e05c52164694d),
            wal_holds_log: true,
        })
    );
    assert_eq!(
        StartRefusal::parse(
            "the cluster at http://kv-0.kv-peer.ns.svc:2380 has no member with peer URLs \
             http://kv-2.kv-peer.ns.svc:2380; add this member first"
        ),
        Some(StartRefusal::NotAdded)
    );
    assert_eq!(
        StartRefusal::parse("data dir corrupt: wal record 12 checksum mismatch"),
        Some(StartRefusal::UnusableDataDir)
    );
    assert_eq!(
        StartRefusal::parse("member 8e9e05c52164694d has been removed from the cluster"),
        Some(StartRefusal::RemovedMember)
    );
    assert_eq!(
        StartRefusal::parse("listen tcp :2380: address in use"),
        Some(StartRefusal::Other(
            "listen tcp :2380: address in use".into()
        ))
    );
    assert_eq!(StartRefusal::parse(""), None);
}

#[test]
fn quorum_is_a_strict_majority() {
    assert_eq!([1, 2, 3, 4, 5, 9].map(quorum), [1, 2, 2, 3, 3, 5]);
    assert_eq!(valid_replicas(3), Some(3));
    assert_eq!(valid_replicas(11), None);
    assert_eq!(valid_replicas(8), None);
}

// ----- defragmentation -----------------------------------------------------------------------

fn defragment(ordinal: u32, reason: DefragReason) -> Action {
    Action::Defragment {
        id: id(ordinal),
        ordinal,
        reason,
    }
}

fn threshold(ratio: f64, min_free_bytes: i64) -> Option<DefragPolicy> {
    Some(DefragPolicy::new(
        None,
        Some(DefragmentationThreshold {
            free_to_in_use_ratio: ratio,
            min_free_bytes,
        }),
    ))
}

/// Gives member `ordinal` `free` bytes of free space over 100 MiB in use.
fn with_free_space(o: &mut Observed, ordinal: u32, free: i64) {
    let m = member_mut(o, ordinal);
    m.db_size_in_use = Some(100 << 20);
    m.db_size = Some((100 << 20) + free);
}

#[test]
fn free_space_past_the_threshold_defragments_followers_first_and_the_leader_last() {
    let mut o = cluster(3, 3);
    o.defragmentation = threshold(0.5, 1 << 20);
    for ordinal in 0..3 {
        with_free_space(&mut o, ordinal, 80 << 20);
    }
    assert_eq!(
        walk(&mut o),
        [
            defragment(1, DefragReason::Threshold),
            defragment(2, DefragReason::Threshold),
            defragment(0, DefragReason::Threshold),
            Action::Converged,
        ]
    );
}

#[test]
fn free_space_under_the_ratio_or_the_minimum_is_left_alone() {
    let mut o = cluster(3, 3);
    o.defragmentation = threshold(0.5, 64 << 20);
    // 40 MiB free over 100 MiB in use: under the ratio.
    with_free_space(&mut o, 1, 40 << 20);
    // 60 MiB free over 10 MiB in use: over the ratio, under the 64 MiB minimum.
    let m = member_mut(&mut o, 2);
    m.db_size_in_use = Some(10 << 20);
    m.db_size = Some(70 << 20);
    assert_eq!(plan(&o), Action::Converged);
    with_free_space(&mut o, 1, 50 << 20);
    assert_eq!(
        plan(&o),
        Action::Converged,
        "50 MiB is under the 64 MiB minimum"
    );
    with_free_space(&mut o, 1, 64 << 20);
    assert_eq!(plan(&o), defragment(1, DefragReason::Threshold));
}

#[test]
fn a_defragmentation_that_gave_nothing_back_is_not_repeated_at_once() {
    let mut o = cluster(3, 3);
    o.defragmentation = threshold(0.5, 1 << 20);
    with_free_space(&mut o, 1, 80 << 20);
    o.last_defragmented.insert("kv-1".into(), at(NOW - 60));
    assert_eq!(plan(&o), Action::Converged);
    o.now = at(NOW - 60 + THRESHOLD_DEFRAGMENT_PAUSE.as_secs() as i64);
    assert_eq!(plan(&o), defragment(1, DefragReason::Threshold));
}

#[test]
fn a_schedule_defragments_every_member_once_after_each_time_it_names() {
    let mut o = cluster(3, 3);
    // Every day at 03:00 UTC; NOW is 2025-06-15 15:06:40 UTC.
    o.defragmentation = Some(DefragPolicy::new(Some("0 3 * * *"), None));
    o.created = at(NOW - 3600);
    assert_eq!(
        plan(&o),
        Action::Converged,
        "no 03:00 since the cluster was made"
    );

    o.now = at(NOW + 86_400);
    assert_eq!(
        walk(&mut o),
        [
            defragment(1, DefragReason::Scheduled),
            defragment(2, DefragReason::Scheduled),
            defragment(0, DefragReason::Scheduled),
            Action::Converged,
        ]
    );
    // Done for today; tomorrow's 03:00 brings the next round.
    o.now = at(NOW + 2 * 86_400);
    assert_eq!(plan(&o), defragment(1, DefragReason::Scheduled));
}

#[test]
fn defragmentation_waits_for_a_whole_cluster_and_for_other_steps() {
    let mut o = cluster(3, 3);
    o.defragmentation = threshold(0.5, 1 << 20);
    with_free_space(&mut o, 1, 80 << 20);
    member_mut(&mut o, 2).healthy = false;
    assert!(matches!(
        plan(&o),
        Action::Wait(WaitReason::MembersUnhealthy { .. })
    ));
    member_mut(&mut o, 2).healthy = true;
    // Scaling comes first.
    o.spec_replicas = 5;
    assert_eq!(plan(&o), Action::AddLearner { ordinal: 3 });
}

#[test]
fn an_invalid_schedule_is_reported_and_blocks_only_defragmentation() {
    let mut o = cluster(3, 3);
    o.defragmentation = Some(DefragPolicy::new(Some("every night"), None));
    let Action::Wait(WaitReason::InvalidSchedule(message)) = plan(&o) else {
        panic!("{:?}", plan(&o));
    };
    assert!(message.contains("\"every night\""), "{message}");
    o.spec_replicas = 5;
    assert_eq!(plan(&o), Action::AddLearner { ordinal: 3 });
}
