//! The planner: a pure function from what the operator observed to the next single step.
//!
//! Nothing here talks to Kubernetes or to the cluster, and nothing is remembered between
//! passes: every decision is derived from the [`Observed`] state alone, so an operator killed in
//! the middle of any step resumes by planning again. The rules are ordered like a runbook: keep
//! quorum, repair before scaling, finish a started step before starting the next, one member at
//! a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use croner::Cron;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;

use crate::bootstrap::{BootstrapConfig, InitialClusterState};
use crate::crd::{DefragmentationThreshold, MAX_REPLICAS, MIN_REPLICAS};
use crate::names::{ClusterNames, VolumeKind};
use crate::upgrade::{self, ImageDecision};

/// Everything one reconcile pass observed about a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `spec.replicas` as the user wrote it; it may be invalid if the CRD's rule was bypassed.
    pub spec_replicas: i32,
    /// How long a pod may sit on a lost node before it is force-deleted.
    pub node_lost_timeout: Duration,
    pub now: Timestamp,
    /// The bootstrap ConfigMap's content; `None` when it does not exist.
    pub bootstrap: Option<BootstrapConfig>,
    /// The StatefulSet; `None` when it does not exist.
    pub stateful_set: Option<ObservedStatefulSet>,
    /// The members as MemberList and Status report them; `None` when no member answered.
    pub members: Option<Vec<Member>>,
    /// The member pods that exist.
    pub pods: Vec<MemberPod>,
    /// The members' PersistentVolumeClaims that exist.
    pub claims: Vec<Claim>,
    /// When members are defragmented; `None` when the spec asks for no defragmentation.
    pub defragmentation: Option<DefragPolicy>,
    /// When each member (by name) was last defragmented, from the status the operator wrote.
    pub last_defragmented: BTreeMap<String, Timestamp>,
    /// When the KVCluster was created: a schedule's first time is the first one after it.
    pub created: Timestamp,
    /// The image the spec asks the members to run.
    pub desired_image: String,
    /// The image every member ran when they last all ran one and were ready (`status.image`).
    pub rolled_out_image: Option<String>,
    pub upgrade: UpgradePolicy,
    /// Whether the snapshot `spec.bootstrap.restore` names was checked, and what was found.
    pub restore_source: RestoreSourceCheck,
    /// The backup a roll-out waits for, when backups are configured.
    pub pre_upgrade_backup: PreUpgradeBackup,
}

/// The backup taken before a roll-out starts: wanted when `spec.backup` names a destination
/// and `spec.upgrade.skipBackup` is not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PreUpgradeBackup {
    /// A roll-out starts without one.
    #[default]
    NotWanted,
    /// A roll-out waits for one; this is the latest `KVClusterBackup` made for the image the
    /// spec asks for, if any.
    Wanted(Option<PreUpgradeBackupAttempt>),
}

/// One `KVClusterBackup` the operator made before rolling out an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreUpgradeBackupAttempt {
    pub name: String,
    /// 1 for the first try for this image, one more for each retry.
    pub attempt: u32,
    pub state: PreUpgradeBackupState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreUpgradeBackupState {
    /// Waiting to be taken, or being taken.
    InProgress,
    Succeeded,
    /// `reason` is the backup's stable code (`UploadFailed`...), `message` what happened.
    Failed {
        reason: String,
        message: String,
        finished: Timestamp,
    },
}

/// How long after a failed backup before a roll-out the next attempt is made: 15 s, doubled
/// for each attempt, at most 10 minutes.
pub fn pre_upgrade_backup_retry_delay(attempt: u32) -> Duration {
    let seconds = 15u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(600))
}

/// The check of a restore's source, made once before the StatefulSet exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RestoreSourceCheck {
    /// The cluster starts empty.
    #[default]
    NotRequested,
    /// Not checked yet.
    Unchecked,
    /// Found, and its hash and format are right (`status.restore` says what it is).
    Verified,
    /// Missing, unreadable or damaged; the message names it and the problem.
    Invalid(String),
}

/// `spec.upgrade`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradePolicy {
    /// Roll out versions the rules refuse.
    pub force: bool,
    /// How long an updated member may take to become ready before the roll-out pauses.
    pub member_ready_timeout: Duration,
}

/// A voter this many entries behind the leader's commit index is still catching up: a member is
/// restarted onto a new template only while every other voter is within it.
pub const CAUGHT_UP_ENTRIES: u64 = 1000;

/// `spec.maintenance.defragmentation`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct DefragPolicy {
    /// The cron schedule, or why it does not parse.
    pub schedule: Option<Result<Cron, String>>,
    pub threshold: Option<DefragmentationThreshold>,
}

impl DefragPolicy {
    pub fn new(schedule: Option<&str>, threshold: Option<DefragmentationThreshold>) -> Self {
        let schedule = schedule.map(|text| {
            text.parse::<Cron>()
                .map_err(|e| format!("spec.maintenance.defragmentation.schedule {text:?}: {e}"))
        });
        Self {
            schedule,
            threshold,
        }
    }
}

/// A member is not defragmented for its free space again this soon: a defragmentation that
/// gives nothing back must not repeat every pass.
pub const THRESHOLD_DEFRAGMENT_PAUSE: Duration = Duration::from_secs(10 * 60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedStatefulSet {
    pub replicas: i32,
    /// The revision pods must run once updated (`status.updateRevision`).
    pub update_revision: Option<String>,
    /// The image of the `ferrokv` container in its pod template.
    pub image: Option<String>,
}

/// One registered member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started: etcd lists an added member without a name.
    pub name: String,
    /// Ordinal of the member's pod, from its name or peer URL; `None` for a member the
    /// operator did not add (it is reported, never touched).
    pub ordinal: Option<u32>,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    /// The member answered a Status request and follows a leader.
    pub healthy: bool,
    pub is_leader: bool,
    /// Its database file's size and the bytes of it in use, when it answered.
    pub db_size: Option<i64>,
    pub db_size_in_use: Option<i64>,
    /// Its Raft commit index and applied index, when it answered.
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
}

impl Member {
    pub fn is_started(&self) -> bool {
        !self.name.is_empty()
    }

    /// Where the member serves clients: the URL it published, or (before it has started) the
    /// stable one of its ordinal.
    pub fn client_url(&self, names: &ClusterNames) -> Option<String> {
        self.client_urls
            .first()
            .cloned()
            .or_else(|| self.ordinal.map(|o| names.client_url(o)))
    }

    fn is_healthy_voter(&self) -> bool {
        !self.is_learner && self.healthy
    }
}

/// One member pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPod {
    pub ordinal: u32,
    /// The pod's Ready condition is true.
    pub ready: bool,
    /// The `ferrokv` container is running now (not waiting to restart, not terminated).
    pub running: bool,
    /// Since when the pod has not been ready, from its Ready condition.
    pub not_ready_since: Option<Timestamp>,
    /// The pod has a deletion timestamp.
    pub terminating: bool,
    pub node: NodeState,
    /// Why the node last refused to start, from the container's termination message.
    pub start_refusal: Option<StartRefusal>,
    /// Why the restore init step last failed, from its termination message.
    pub restore_failure: Option<String>,
    /// The pod's `controller-revision-hash`.
    pub revision: Option<String>,
    /// The image of its `ferrokv` container.
    pub image: Option<String>,
}

/// The state of the node a pod is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not scheduled yet.
    Unscheduled,
    Ready,
    /// The node's Ready condition is False or Unknown since the given time.
    NotReady {
        since: Timestamp,
    },
    /// The pod is bound to a node that no longer exists.
    Missing,
}

/// Why a member refused to start, as the node writes it to its termination log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartRefusal {
    /// "data dir empty but member NAME is registered as ID X": the volume lost its data while
    /// the member is still registered. Or, with `wal_holds_log`, "data dir empty but --wal-dir
    /// DIR holds the log of member NAME (ID X)": only the data volume was lost, and the WAL
    /// volume still holds the log of member X, which keeps the pod from starting until both
    /// volumes are replaced.
    EmptyDataDir {
        registered_id: Option<u64>,
        wal_holds_log: bool,
    },
    /// The data dir holds something the node cannot use (corrupt, another cluster's).
    UnusableDataDir,
    /// The data dir belongs to a member that was removed from the cluster.
    RemovedMember,
    /// "... has no member with peer URLs ...": the node started on empty volumes to join the
    /// running cluster, which has not added it.
    NotAdded,
    /// Any other reason; reported, not acted upon.
    Other(String),
}

impl StartRefusal {
    /// Reads the first line of a termination message. The node's reasons start with a fixed
    /// phrase; member IDs are hex, as etcd prints them.
    pub fn parse(message: &str) -> Option<Self> {
        let line = message.lines().next()?.trim();
        if line.is_empty() {
            return None;
        }
        let lower = line.to_ascii_lowercase();
        let refusal = if lower.starts_with("data dir empty") {
            let hex = |id: &str| u64::from_str_radix(id.trim_end_matches(['.', ',', ')']), 16).ok();
            match lower.split_once(" holds the log of member ") {
                Some((_, rest)) => Self::EmptyDataDir {
                    registered_id: rest
                        .split_once("(id ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(hex),
                    wal_holds_log: true,
                },
                None => Self::EmptyDataDir {
                    registered_id: lower
                        .split_once("registered as id ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(hex),
                    wal_holds_log: false,
                },
            }
        } else if lower.starts_with("data dir unusable") || lower.starts_with("data dir corrupt") {
            Self::UnusableDataDir
        } else if lower.contains("has no member with peer urls") {
            Self::NotAdded
        } else if lower.contains("member") && lower.contains("removed") {
            Self::RemovedMember
        } else {
            Self::Other(line.to_string())
        };
        Some(refusal)
    }
}

/// One PersistentVolumeClaim of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub ordinal: u32,
    pub kind: VolumeKind,
    pub terminating: bool,
}

/// The next step, at most one membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the bootstrap ConfigMap.
    WriteBootstrapConfig(BootstrapConfig),
    /// Create the StatefulSet or change its size.
    ScaleStatefulSet { replicas: i32 },
    /// MemberAdd the member of this ordinal as a learner, at its stable peer URL.
    AddLearner { ordinal: u32 },
    /// MemberPromote a caught-up learner.
    PromoteLearner { id: u64, ordinal: u32 },
    /// Hand leadership to another voter before the leader is removed or restarted.
    MoveLeader { from: u64, to: u64 },
    /// MemberRemove.
    RemoveMember {
        id: u64,
        ordinal: u32,
        reason: RemovalReason,
    },
    /// Delete a member's PVCs (and with them, its data).
    DeleteClaims { ordinal: u32 },
    /// Delete a member's PVCs and its pod, because the data on them can never be used again.
    DiscardMemberData { ordinal: u32 },
    /// Force-delete a pod stuck on a lost node so the StatefulSet recreates it elsewhere.
    ForceDeletePod { ordinal: u32 },
    /// Delete a pod so that it starts again now.
    RestartPod { ordinal: u32, reason: RestartReason },
    /// Defragment one member's database.
    Defragment {
        id: u64,
        ordinal: u32,
        reason: DefragReason,
    },
    /// Make a `KVClusterBackup` of the cluster before rolling out `image`; `replaces` is the
    /// failed attempt it follows, deleted once the new one exists.
    BackUpBeforeRollOut {
        image: String,
        attempt: u32,
        replaces: Option<String>,
    },
    /// Nothing can be done until the cluster changes by itself.
    Wait(WaitReason),
    /// The cluster is what the spec asks for.
    Converged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// `spec.replicas` is lower than the member count.
    ScaleDown,
    /// The member's volume lost its data; it will be added again under the same name.
    DataLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// A member added again after losing its data waits in crash back-off; start it now.
    Rejoin,
    /// The pod runs an outdated template.
    Update,
    /// The pod waits for a claim that is being deleted; a new pod gets a new claim.
    ClaimReplaced,
}

impl Action {
    /// The ordinal of the member the step is about, if it is about one.
    pub fn member_ordinal(&self) -> Option<u32> {
        match self {
            Self::AddLearner { ordinal }
            | Self::PromoteLearner { ordinal, .. }
            | Self::RemoveMember { ordinal, .. }
            | Self::DeleteClaims { ordinal }
            | Self::DiscardMemberData { ordinal }
            | Self::ForceDeletePod { ordinal }
            | Self::RestartPod { ordinal, .. }
            | Self::Defragment { ordinal, .. } => Some(*ordinal),
            Self::WriteBootstrapConfig(_)
            | Self::ScaleStatefulSet { .. }
            | Self::BackUpBeforeRollOut { .. }
            | Self::MoveLeader { .. }
            | Self::Wait(_)
            | Self::Converged => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefragReason {
    /// A time of `schedule` has come since the member was last defragmented.
    Scheduled,
    /// Its free space passed `threshold`.
    Threshold,
}

/// Why the operator does nothing this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// `spec.replicas` is even or out of range.
    InvalidReplicas(i32),
    /// The initial members have not formed a cluster yet.
    ClusterForming,
    /// No member answers and the cluster had been formed.
    NoMemberAnswers,
    /// Fewer than a quorum of voters are healthy.
    QuorumLost { healthy: usize, voters: usize },
    /// A member's pod is not running yet.
    PodStarting { ordinal: u32 },
    /// A learner has not started or caught up yet.
    LearnerCatchingUp { ordinal: u32 },
    /// A removed member's pod is still terminating.
    PodTerminating { ordinal: u32 },
    /// The step needs every voter healthy, and some are not.
    MembersUnhealthy { unhealthy: Vec<String> },
    /// A member's pod exists with data the operator cannot vouch for, but it is not registered.
    UnregisteredMemberData { ordinal: u32 },
    /// The step would leave fewer healthy voters than a quorum.
    WouldLoseQuorum,
    /// The defragmentation schedule does not parse; the message says why.
    InvalidSchedule(String),
    /// The snapshot to restore has not been checked yet: no member starts before it is.
    RestoreSourceUnchecked,
    /// The snapshot to restore cannot be used; no StatefulSet is made until it can.
    RestoreSourceInvalid(String),
    /// Voters that are still catching up with the leader's log; the next member is restarted
    /// onto the new template once they have.
    MembersCatchingUp { behind: Vec<String> },
    /// A member restarted onto the new template has not become ready within
    /// `spec.upgrade.memberReadyTimeoutSeconds`: the roll-out stops until it does or the spec
    /// changes.
    RolloutPaused {
        member: String,
        image: String,
        seconds: i64,
    },
    /// The backup taken before rolling out `image` is waiting or under way; no member is
    /// restarted until it succeeds.
    PreUpgradeBackupRunning { backup: String, image: String },
    /// That backup failed; the next attempt is made at `retry_at`.
    PreUpgradeBackupFailed {
        backup: String,
        image: String,
        reason: String,
        message: String,
        retry_at: Timestamp,
    },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidReplicas(n) => write!(
                f,
                "spec.replicas is {n}: members must be odd, from {MIN_REPLICAS} to \
                 {MAX_REPLICAS}; membership is left as it is"
            ),
            Self::ClusterForming => {
                write!(f, "waiting for the initial members to form the cluster")
            }
            Self::NoMemberAnswers => write!(
                f,
                "no member answers: quorum is lost or the members are unreachable; \
                 no membership change is possible"
            ),
            Self::QuorumLost { healthy, voters } => write!(
                f,
                "quorum lost: {healthy} of {voters} voters are healthy; the operator makes no \
                 membership change and only moves pods off lost nodes"
            ),
            Self::PodStarting { ordinal } => write!(f, "waiting for member {ordinal}'s pod"),
            Self::LearnerCatchingUp { ordinal } => {
                write!(f, "waiting for learner {ordinal} to start and catch up")
            }
            Self::PodTerminating { ordinal } => {
                write!(f, "waiting for removed member {ordinal}'s pod to terminate")
            }
            Self::MembersUnhealthy { unhealthy } => {
                write!(f, "unhealthy members: {}", unhealthy.join(", "))
            }
            Self::UnregisteredMemberData { ordinal } => write!(
                f,
                "pod {ordinal} has volumes but no registered member; it is left alone"
            ),
            Self::WouldLoseQuorum => {
                write!(
                    f,
                    "the next step would leave fewer healthy voters than a quorum"
                )
            }
            Self::InvalidSchedule(message) => {
                write!(
                    f,
                    "{message}: no scheduled defragmentation until it is fixed"
                )
            }
            Self::RestoreSourceUnchecked => {
                write!(f, "waiting for the check of the snapshot to restore")
            }
            Self::RestoreSourceInvalid(problem) => write!(
                f,
                "{problem}; no member is created until spec.bootstrap.restore names a valid snapshot"
            ),
            Self::MembersCatchingUp { behind } => write!(
                f,
                "waiting for {} to catch up with the leader before the next member restarts",
                behind.join(", ")
            ),
            Self::RolloutPaused {
                member,
                image,
                seconds,
            } => write!(
                f,
                "roll-out of {image} paused: member {member} has not become ready in the {seconds}s \
                 since it was restarted onto it; no other member is touched until it is ready or \
                 spec.version (or spec.image) changes"
            ),
            Self::PreUpgradeBackupRunning { backup, image } => write!(
                f,
                "backing up to KVClusterBackup {backup} before rolling out {image}; no member is \
                 restarted until it succeeds"
            ),
            Self::PreUpgradeBackupFailed {
                backup,
                image,
                reason,
                message,
                retry_at,
            } => write!(
                f,
                "the backup before rolling out {image} failed: KVClusterBackup {backup}: \
                 {reason}: {message}; no member is restarted until a backup succeeds (next \
                 attempt at {retry_at}, or set spec.upgrade.skipBackup: true)"
            ),
        }
    }
}

/// Votes needed for a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The replica count the planner works towards, or `None` when the spec's is invalid.
pub fn valid_replicas(replicas: i32) -> Option<u32> {
    let valid = (MIN_REPLICAS..=MAX_REPLICAS).contains(&replicas) && replicas % 2 == 1;
    valid.then_some(replicas as u32)
}

/// Counts of the voters, for quorum arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoterCount {
    pub voters: usize,
    pub healthy: usize,
}

impl VoterCount {
    pub fn of(members: &[Member]) -> Self {
        Self {
            voters: members.iter().filter(|m| !m.is_learner).count(),
            healthy: members.iter().filter(|m| m.is_healthy_voter()).count(),
        }
    }

    pub fn has_quorum(self) -> bool {
        self.voters > 0 && self.healthy >= quorum(self.voters)
    }

    /// Whether the cluster keeps a healthy quorum once `member` is removed.
    fn keeps_quorum_without(self, member: &Member) -> bool {
        let voters = self.voters - usize::from(!member.is_learner);
        let healthy = self.healthy - usize::from(member.is_healthy_voter());
        voters > 0 && healthy >= quorum(voters)
    }

    /// Whether the cluster keeps a healthy quorum once the healthy learner `member` votes.
    fn keeps_quorum_with_promoted(self, member: &Member) -> bool {
        let voters = self.voters + 1;
        let healthy = self.healthy + usize::from(member.healthy);
        healthy >= quorum(voters)
    }
}

/// The next step for the observed cluster.
pub fn plan(observed: &Observed) -> Action {
    let desired = valid_replicas(observed.spec_replicas);

    // A cluster restored from a snapshot is created only once the snapshot is known to be good:
    // a bad one leaves nothing half made.
    if observed.stateful_set.is_none() {
        match &observed.restore_source {
            RestoreSourceCheck::Unchecked => {
                return Action::Wait(WaitReason::RestoreSourceUnchecked)
            }
            RestoreSourceCheck::Invalid(problem) => {
                return Action::Wait(WaitReason::RestoreSourceInvalid(problem.clone()))
            }
            RestoreSourceCheck::NotRequested | RestoreSourceCheck::Verified => {}
        }
    }

    // Creation: the bootstrap state first, since the StatefulSet's pods read it.
    let stateful_set = match (&observed.bootstrap, &observed.stateful_set) {
        (None, None) => {
            return match desired {
                Some(replicas) => {
                    Action::WriteBootstrapConfig(BootstrapConfig::new_cluster(replicas))
                }
                None => Action::Wait(WaitReason::InvalidReplicas(observed.spec_replicas)),
            };
        }
        (Some(config), None) => {
            let replicas = config.members.iter().max().map_or(0, |&max| max + 1);
            return Action::ScaleStatefulSet {
                replicas: replicas as i32,
            };
        }
        (_, Some(stateful_set)) => stateful_set,
    };

    let Some(members) = &observed.members else {
        if let Some(action) = move_pod_off_lost_node(observed) {
            return action;
        }
        let forming = observed
            .bootstrap
            .as_ref()
            .is_some_and(|config| config.state == InitialClusterState::New);
        return Action::Wait(if forming {
            WaitReason::ClusterForming
        } else {
            WaitReason::NoMemberAnswers
        });
    };

    let count = VoterCount::of(members);
    if !count.has_quorum() {
        // Moving a pod off a dead node can only bring a member back; nothing else is safe.
        return move_pod_off_lost_node(observed).unwrap_or(Action::Wait(WaitReason::QuorumLost {
            healthy: count.healthy,
            voters: count.voters,
        }));
    }

    // The bootstrap state follows membership, so that any member that starts joins the
    // cluster as it is now.
    let registered: BTreeSet<u32> = members.iter().filter_map(|m| m.ordinal).collect();
    let config = BootstrapConfig::existing_cluster(registered.iter().copied());
    if observed.bootstrap.as_ref() != Some(&config) {
        return Action::WriteBootstrapConfig(config);
    }

    if let Some(action) = move_pod_off_lost_node(observed) {
        return action;
    }
    if let Some(action) = restart_outdated_unready_pod(observed) {
        return action;
    }
    if let Some(paused) = stalled_rollout(observed, members) {
        return Action::Wait(paused);
    }
    if let Some(action) = repair_lost_data(observed, members, count, desired) {
        return action;
    }

    let target = registered.iter().max().map_or(0, |&max| max + 1) as i32;
    // A removed member's pod goes first, then its claims, so that they can never bring a stale
    // member back on a later scale-up.
    if stateful_set.replicas > target {
        return Action::ScaleStatefulSet { replicas: target };
    }
    if let Some(action) = delete_claims_of_removed_members(observed, stateful_set.replicas) {
        return action;
    }

    // A learner is finished before anything else changes.
    let goal = desired.unwrap_or(registered.len() as u32);
    if let Some((learner, ordinal)) = members
        .iter()
        .filter(|m| m.is_learner)
        .find_map(|m| Some((m, m.ordinal?)))
    {
        if ordinal >= goal {
            return Action::RemoveMember {
                id: learner.id,
                ordinal,
                reason: RemovalReason::ScaleDown,
            };
        }
        if stateful_set.replicas < target {
            return Action::ScaleStatefulSet { replicas: target };
        }
        if !(learner.is_started() && learner.healthy) {
            return Action::Wait(WaitReason::LearnerCatchingUp { ordinal });
        }
        if !count.keeps_quorum_with_promoted(learner) {
            return Action::Wait(WaitReason::WouldLoseQuorum);
        }
        return Action::PromoteLearner {
            id: learner.id,
            ordinal,
        };
    }
    if stateful_set.replicas < target {
        return Action::ScaleStatefulSet { replicas: target };
    }

    let unhealthy: Vec<String> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(member_label)
        .collect();

    if let Some(desired) = desired {
        let voters = registered.len() as u32;
        if voters < desired {
            if !unhealthy.is_empty() {
                return Action::Wait(WaitReason::MembersUnhealthy { unhealthy });
            }
            let ordinal = (0..desired)
                .find(|o| !registered.contains(o))
                .expect("fewer members than ordinals");
            if has_pod_or_claims(observed, ordinal) {
                return Action::Wait(WaitReason::UnregisteredMemberData { ordinal });
            }
            return Action::AddLearner { ordinal };
        }
        if voters > desired {
            return remove_highest_member(members, count);
        }
    }

    if !unhealthy.is_empty() {
        // Present but unhealthy: reported as Degraded, never churned.
        return Action::Wait(WaitReason::MembersUnhealthy { unhealthy });
    }
    if let Some(action) = restart_outdated_pod(observed, members) {
        return action;
    }
    if let Some(ordinal) =
        (0..target as u32).find(|o| !pod_of(observed, *o).is_some_and(|p| p.ready))
    {
        return Action::Wait(WaitReason::PodStarting { ordinal });
    }
    if desired.is_none() {
        return Action::Wait(WaitReason::InvalidReplicas(observed.spec_replicas));
    }
    // A roll-out starts from a whole cluster, once its backup is taken.
    if image_decision(observed).awaits_backup {
        return backup_before_roll_out(observed);
    }
    // Upkeep only on a cluster that is whole: every voter healthy, nothing else to do.
    defragmentation_due(observed, members).unwrap_or(Action::Converged)
}

/// The step towards the backup a roll-out of the spec's image waits for: make it, wait for it,
/// or make it again once the delay after a failed attempt has passed.
fn backup_before_roll_out(observed: &Observed) -> Action {
    let image = observed.desired_image.clone();
    let PreUpgradeBackup::Wanted(latest) = &observed.pre_upgrade_backup else {
        return Action::Converged;
    };
    let Some(latest) = latest else {
        return Action::BackUpBeforeRollOut {
            image,
            attempt: 1,
            replaces: None,
        };
    };
    match &latest.state {
        PreUpgradeBackupState::InProgress | PreUpgradeBackupState::Succeeded => {
            Action::Wait(WaitReason::PreUpgradeBackupRunning {
                backup: latest.name.clone(),
                image,
            })
        }
        PreUpgradeBackupState::Failed {
            reason,
            message,
            finished,
        } => {
            let delay = pre_upgrade_backup_retry_delay(latest.attempt);
            let retry_at = finished.checked_add(delay).unwrap_or(*finished);
            if observed.now >= retry_at {
                Action::BackUpBeforeRollOut {
                    image,
                    attempt: latest.attempt + 1,
                    replaces: Some(latest.name.clone()),
                }
            } else {
                Action::Wait(WaitReason::PreUpgradeBackupFailed {
                    backup: latest.name.clone(),
                    image,
                    reason: reason.clone(),
                    message: message.clone(),
                    retry_at,
                })
            }
        }
    }
}

/// The member to defragment now, if any: one at a time, followers first and the leader last
/// (defragmenting blocks a member's writes while it runs).
fn defragmentation_due(observed: &Observed, members: &[Member]) -> Option<Action> {
    let policy = observed.defragmentation.as_ref()?;
    let schedule = match &policy.schedule {
        Some(Err(message)) => {
            return Some(Action::Wait(WaitReason::InvalidSchedule(message.clone())))
        }
        Some(Ok(cron)) => Some(cron),
        None => None,
    };
    members
        .iter()
        .filter_map(|member| {
            let ordinal = member.ordinal?;
            let last = observed.last_defragmented.get(&member.name).copied();
            let reason = if policy
                .threshold
                .as_ref()
                .is_some_and(|t| over_threshold(member, t, last, observed.now))
            {
                DefragReason::Threshold
            } else if schedule.is_some_and(|cron| {
                scheduled_since(cron, last.unwrap_or(observed.created), observed.now)
            }) {
                DefragReason::Scheduled
            } else {
                return None;
            };
            Some((member.is_leader, ordinal, member.id, reason))
        })
        .min_by_key(|&(is_leader, ordinal, ..)| (is_leader, ordinal))
        .map(|(_, ordinal, id, reason)| Action::Defragment {
            id,
            ordinal,
            reason,
        })
}

/// The member's free space (database size minus bytes in use) passes the threshold, and it was not
/// defragmented for it a moment ago.
fn over_threshold(
    member: &Member,
    threshold: &DefragmentationThreshold,
    last: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    let (Some(size), Some(in_use)) = (member.db_size, member.db_size_in_use) else {
        return false;
    };
    let paused = last.is_some_and(|last| {
        now.as_second() - last.as_second() < THRESHOLD_DEFRAGMENT_PAUSE.as_secs() as i64
    });
    let free = size - in_use;
    !paused
        && free >= threshold.min_free_bytes
        && free as f64 >= threshold.free_to_in_use_ratio * in_use as f64
}

/// The next time the defragmentation schedule names, after `observed.now`.
pub fn next_scheduled_defragmentation(observed: &Observed) -> Option<Timestamp> {
    let Some(Ok(cron)) = &observed.defragmentation.as_ref()?.schedule else {
        return None;
    };
    cron.find_next_occurrence(&observed.now.to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|next| next.timestamp())
}

/// A time the schedule names has come after `since` and by `now`.
fn scheduled_since(cron: &Cron, since: Timestamp, now: Timestamp) -> bool {
    cron.find_next_occurrence(&since.to_zoned(TimeZone::UTC), false)
        .is_ok_and(|next| next.timestamp() <= now)
}

fn member_label(member: &Member) -> String {
    if member.is_started() {
        member.name.clone()
    } else {
        format!("{:x}", member.id)
    }
}

fn pod_of(observed: &Observed, ordinal: u32) -> Option<&MemberPod> {
    observed.pods.iter().find(|p| p.ordinal == ordinal)
}

fn has_pod_or_claims(observed: &Observed, ordinal: u32) -> bool {
    pod_of(observed, ordinal).is_some() || observed.claims.iter().any(|c| c.ordinal == ordinal)
}

fn member_at(members: &[Member], ordinal: u32) -> Option<&Member> {
    members.iter().find(|m| m.ordinal == Some(ordinal))
}

/// A pod that has sat on a NotReady or vanished node for longer than the policy allows is
/// force-deleted: the StatefulSet recreates it on another node with the same claims, so it
/// comes back as the same member. No membership changes.
fn move_pod_off_lost_node(observed: &Observed) -> Option<Action> {
    let timeout = observed.node_lost_timeout.as_secs() as i64;
    observed.pods.iter().find_map(|pod| {
        let lost_since = match &pod.node {
            NodeState::NotReady { since } => *since,
            // A deleted node is gone for good, and its pods keep their last status forever:
            // the clock starts when the pod stopped being ready, or has run out if it never did.
            NodeState::Missing => match pod.not_ready_since {
                Some(since) => since,
                None => {
                    return Some(Action::ForceDeletePod {
                        ordinal: pod.ordinal,
                    })
                }
            },
            NodeState::Unscheduled | NodeState::Ready => return None,
        };
        let waited = observed.now.as_second() - lost_since.as_second();
        (waited >= timeout).then_some(Action::ForceDeletePod {
            ordinal: pod.ordinal,
        })
    })
}

/// Replacement of a member whose pod cannot start on its volumes while its name is still
/// registered: remove the old ID, add the same peer URL again as a learner, then let the pod
/// join as `existing` — on its own volumes when they are empty, on fresh ones when they hold
/// something it can never start from (a WAL volume with the old member's log, unusable data).
/// Volumes are discarded only once the learner is added, so the fresh pod joins at its first
/// start. Also clears data that can never be used again.
fn repair_lost_data(
    observed: &Observed,
    members: &[Member],
    count: VoterCount,
    desired: Option<u32>,
) -> Option<Action> {
    let update_revision = observed
        .stateful_set
        .as_ref()
        .and_then(|s| s.update_revision.as_ref());
    let in_roll_out = rolling_out(observed);
    for pod in &observed.pods {
        let Some(refusal) = &pod.start_refusal else {
            continue;
        };
        // A new version that cannot use the data it finds is a failed roll-out, not lost
        // data: the data stays, and the roll-out pauses (see `stalled_rollout`).
        if *refusal == StartRefusal::UnusableDataDir
            && in_roll_out
            && pod.revision.as_ref() == update_revision
        {
            continue;
        }
        // A running pod got past its earlier refusal; a terminating one is being replaced.
        if pod.running || pod.terminating {
            continue;
        }
        let member = member_at(members, pod.ordinal);
        let started = member.is_some_and(Member::is_started);
        // The ID of the member the volumes belonged to, when the node named it, and whether the
        // pod can join from its volumes once it is registered again (they are empty).
        let (named_id, volumes_empty) = match refusal {
            StartRefusal::EmptyDataDir {
                registered_id,
                wal_holds_log,
            } => (*registered_id, !wal_holds_log),
            StartRefusal::UnusableDataDir => (None, false),
            // Once a member has started at its URL, a refusal for its absence is stale.
            StartRefusal::NotAdded if !started => (None, true),
            StartRefusal::RemovedMember if !started => {
                return Some(Action::DiscardMemberData {
                    ordinal: pod.ordinal,
                })
            }
            StartRefusal::NotAdded | StartRefusal::RemovedMember | StartRefusal::Other(_) => {
                continue
            }
        };
        match member {
            Some(m) if started => {
                // A refusal naming another ID predates the member's latest addition.
                if named_id.is_some_and(|id| id != m.id) {
                    continue;
                }
                if !count.keeps_quorum_without(m) {
                    return Some(Action::Wait(WaitReason::WouldLoseQuorum));
                }
                return Some(Action::RemoveMember {
                    id: m.id,
                    ordinal: pod.ordinal,
                    reason: RemovalReason::DataLost,
                });
            }
            // Added again and not started yet: start it where it can join.
            Some(_) if volumes_empty => {
                return Some(Action::RestartPod {
                    ordinal: pod.ordinal,
                    reason: RestartReason::Rejoin,
                });
            }
            Some(_) => {
                return Some(Action::DiscardMemberData {
                    ordinal: pod.ordinal,
                });
            }
            None if desired.is_some_and(|d| pod.ordinal < d)
                && !members.iter().any(|m| m.is_learner) =>
            {
                return Some(Action::AddLearner {
                    ordinal: pod.ordinal,
                });
            }
            None => {}
        }
    }
    // A pod waiting for a claim that is being deleted never starts; a new pod gets new claims.
    for claim in observed.claims.iter().filter(|c| c.terminating) {
        if let Some(pod) = pod_of(observed, claim.ordinal) {
            if !pod.running && !pod.terminating {
                return Some(Action::RestartPod {
                    ordinal: pod.ordinal,
                    reason: RestartReason::ClaimReplaced,
                });
            }
        }
    }
    None
}

/// Claims of ordinals beyond the StatefulSet belong to removed members.
fn delete_claims_of_removed_members(observed: &Observed, replicas: i32) -> Option<Action> {
    let ordinal = observed
        .claims
        .iter()
        .filter(|c| c.ordinal as i64 >= replicas as i64 && !c.terminating)
        .map(|c| c.ordinal)
        .max()?;
    Some(if pod_of(observed, ordinal).is_some() {
        Action::Wait(WaitReason::PodTerminating { ordinal })
    } else {
        Action::DeleteClaims { ordinal }
    })
}

/// Scale-down: the highest ordinal leaves, after handing off leadership.
fn remove_highest_member(members: &[Member], count: VoterCount) -> Action {
    let victim = members
        .iter()
        .filter(|m| m.ordinal.is_some())
        .max_by_key(|m| m.ordinal)
        .expect("more members than desired");
    let ordinal = victim.ordinal.expect("filtered on ordinal");
    if victim.is_leader {
        return match members
            .iter()
            .filter(|m| m.id != victim.id && m.is_healthy_voter())
            .min_by_key(|m| m.ordinal)
        {
            Some(to) => Action::MoveLeader {
                from: victim.id,
                to: to.id,
            },
            None => Action::Wait(WaitReason::WouldLoseQuorum),
        };
    }
    if !count.keeps_quorum_without(victim) {
        return Action::Wait(WaitReason::WouldLoseQuorum);
    }
    Action::RemoveMember {
        id: victim.id,
        ordinal,
        reason: RemovalReason::ScaleDown,
    }
}

/// With the StatefulSet's `OnDelete` strategy, members move to a new template only when the
/// operator restarts them: one at a time, followers first (highest ordinal first) and the leader
/// last, after it hands leadership to an updated voter; each only while every voter is healthy
/// (the caller checked) and caught up with the leader's log.
fn restart_outdated_pod(observed: &Observed, members: &[Member]) -> Option<Action> {
    let update_revision = observed.stateful_set.as_ref()?.update_revision.as_ref()?;
    if observed.pods.iter().any(|p| !p.ready) {
        return None;
    }
    let is_outdated = |p: &&MemberPod| p.revision.as_ref().is_some_and(|r| r != update_revision);
    let outdated: Vec<(&MemberPod, &Member)> = observed
        .pods
        .iter()
        .filter(is_outdated)
        .filter_map(|p| Some((p, member_at(members, p.ordinal)?)))
        .collect();
    let (pod, member) = outdated
        .iter()
        .filter(|(_, m)| !m.is_leader)
        .max_by_key(|(p, _)| p.ordinal)
        .or_else(|| outdated.first())?;
    let behind = behind_leader(members);
    if !behind.is_empty() {
        return Some(Action::Wait(WaitReason::MembersCatchingUp { behind }));
    }
    if member.is_leader {
        let updated = |m: &&Member| {
            m.ordinal
                .and_then(|o| pod_of(observed, o))
                .is_some_and(|p| p.revision.as_ref() == Some(update_revision))
        };
        let candidates = || {
            members
                .iter()
                .filter(|m| m.id != member.id && m.is_healthy_voter())
        };
        let to = candidates()
            .filter(updated)
            .min_by_key(|m| m.ordinal)
            .or_else(|| candidates().min_by_key(|m| m.ordinal))?;
        return Some(Action::MoveLeader {
            from: member.id,
            to: to.id,
        });
    }
    Some(Action::RestartPod {
        ordinal: pod.ordinal,
        reason: RestartReason::Update,
    })
}

/// Voters more than [`CAUGHT_UP_ENTRIES`] behind the leader's commit index.
fn behind_leader(members: &[Member]) -> Vec<String> {
    let Some(commit) = members
        .iter()
        .find(|m| m.is_leader)
        .and_then(|m| m.committed_index)
    else {
        return Vec::new();
    };
    members
        .iter()
        .filter(|m| !m.is_learner)
        .filter(|m| {
            m.applied_index
                .is_some_and(|applied| applied + CAUGHT_UP_ENTRIES < commit)
        })
        .map(member_label)
        .collect()
}

/// A pod on an older template that is not ready, on a node that is, serves nothing, so moving
/// it to the current template costs nothing: this is how a roll-out that stalled on a bad version is undone (set
/// the version back, and the stuck member is restarted onto it).
fn restart_outdated_unready_pod(observed: &Observed) -> Option<Action> {
    let update_revision = observed.stateful_set.as_ref()?.update_revision.as_ref()?;
    // Refusals about the member's data are the repairs' business.
    let pod = observed.pods.iter().find(|p| {
        !p.ready
            && !p.terminating
            && p.node == NodeState::Ready
            && matches!(p.start_refusal, None | Some(StartRefusal::Other(_)))
            && p.revision.as_ref().is_some_and(|r| r != update_revision)
    })?;
    Some(Action::RestartPod {
        ordinal: pod.ordinal,
        reason: RestartReason::Update,
    })
}

/// Whether a roll-out is under way: a pod runs an older template, or the members have not all
/// run the template's image since it changed.
pub fn rolling_out(observed: &Observed) -> bool {
    let Some(sts) = &observed.stateful_set else {
        return false;
    };
    let Some(update_revision) = &sts.update_revision else {
        return false;
    };
    let outdated = observed
        .pods
        .iter()
        .any(|p| p.revision.as_ref() != Some(update_revision));
    let new_image = observed.rolled_out_image.is_some() && sts.image != observed.rolled_out_image;
    outdated || new_image
}

/// During a roll-out, a member on the new template that has not become ready in time.
fn stalled_rollout(observed: &Observed, members: &[Member]) -> Option<WaitReason> {
    if !rolling_out(observed) {
        return None;
    }
    let sts = observed.stateful_set.as_ref()?;
    let update_revision = sts.update_revision.as_ref()?;
    let timeout = observed.upgrade.member_ready_timeout.as_secs() as i64;
    observed
        .pods
        .iter()
        .filter(|p| !p.ready && !p.terminating && p.revision.as_ref() == Some(update_revision))
        .find_map(|p| {
            let seconds = observed.now.as_second() - p.not_ready_since?.as_second();
            (seconds >= timeout).then(|| WaitReason::RolloutPaused {
                member: member_at(members, p.ordinal)
                    .map_or_else(|| format!("of ordinal {}", p.ordinal), member_label),
                image: sts.image.clone().unwrap_or_default(),
                seconds,
            })
        })
}

/// The image the StatefulSet's template gets this pass: the spec's, unless the version rules
/// refuse it (see [`upgrade`]) or the backup a roll-out waits for has not succeeded yet.
pub fn image_decision(observed: &Observed) -> ImageDecision {
    let current = observed
        .stateful_set
        .as_ref()
        .and_then(|s| s.image.as_deref());
    let running = observed
        .pods
        .iter()
        .filter_map(|p| p.image.as_deref())
        .chain(observed.rolled_out_image.as_deref());
    let mut decision = upgrade::decide(
        &observed.desired_image,
        current,
        running,
        observed.upgrade.force,
    );
    let backed_up = match &observed.pre_upgrade_backup {
        PreUpgradeBackup::NotWanted => true,
        PreUpgradeBackup::Wanted(latest) => latest
            .as_ref()
            .is_some_and(|b| b.state == PreUpgradeBackupState::Succeeded),
    };
    if let Some(current) = current {
        if decision.image != current && !backed_up {
            decision.image = current.to_string();
            decision.awaits_backup = true;
        }
    }
    decision
}

#[cfg(test)]
mod tests;
