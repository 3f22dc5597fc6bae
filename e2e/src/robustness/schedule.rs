//! A schedule: a fresh cluster, traffic from several clients on different members, a timeline
//! of nemeses, and at the end every member killed and restarted and the store's history read
//! back. [`Plan::from_seed`] makes every choice from the seed, so a seed replays its schedule
//! (the same clients, requests and faults; the timing is the run's own).
//!
//! Some seeds (one in [`REGRESSION_EVERY`]) plan a regression case of issue 11 instead of a
//! random schedule, so long campaigns keep running them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::checker::{self, CheckOptions, Verdict};
use super::failpoints::CrashPoint;
use super::history::{FinalState, History, Operation, Request, Response};
use super::nemesis::{Faults, Nemesis, Target, TimelineEntry, ELECTION_TIMEOUT_MS, SNAPSHOT_COUNT};
use super::traffic::{self, Clock, KvMix, Recorder, TrafficContext, FENCE_KEY, PREFIX};
use crate::host_cluster::HostCluster;

/// One seed in this many plans a regression case.
pub const REGRESSION_EVERY: u64 = 5;

/// Names of the regression cases, in the order seeds pick them.
pub const REGRESSIONS: [&str; 9] = [
    "write-applied-once-after-leader-kills",
    "isolated-leader-renews-no-lease",
    "replace-member-and-promote-learner",
    "crash-while-installing-snapshot",
    "64-concurrent-large-puts",
    "defragment-under-load",
    "crashes-in-the-write-path",
    "crashes-in-snapshot-install",
    "crashes-in-defragment",
];

/// One random plan in this many (by a draw of its own, so the rest of the plan is what the
/// seed made before failpoints existed) ends with a crash at a failpoint.
const FAILPOINT_ONE_IN: u32 = 3;
/// Salt of that draw's generator.
const FAILPOINT_SALT: u64 = 0xfa11_9017;

/// Client ids of the operations the schedule itself records.
const FENCE_CLIENT: usize = 901;
const FINAL_CLIENT: usize = 902;

/// Traffic runs alone this long before the first nemesis.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the store's history may take to be read back.
const FINAL_READ_PATIENCE: Duration = Duration::from_secs(60);

/// One nemesis of a plan: inject, keep it for `hold`, undo it, let traffic run for `quiet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFault {
    pub nemesis: Nemesis,
    pub hold: Duration,
    pub quiet: Duration,
}

/// Everything a schedule does, decided from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    /// "random", a regression case's name, "stale-read-control" or "ack-before-fsync-control".
    pub name: String,
    pub members: usize,
    pub keys: usize,
    pub kv_clients: usize,
    pub lease_clients: usize,
    pub watch_clients: usize,
    pub mix: KvMix,
    pub pace: Duration,
    pub faults: Vec<PlannedFault>,
    /// `--snapshot-count` of the members, when a nemesis needs snapshots to happen.
    pub snapshot_count: Option<u64>,
    pub check: CheckOptions,
}

impl Plan {
    /// The plan of schedule `seed` on `members` members.
    pub fn from_seed(seed: u64, members: usize) -> Plan {
        if seed.is_multiple_of(REGRESSION_EVERY) {
            let case = (seed / REGRESSION_EVERY) as usize % REGRESSIONS.len();
            return Plan::regression(REGRESSIONS[case], seed, members)
                .expect("every listed regression has a plan");
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults: Vec<PlannedFault> = (0..rng.gen_range(2..=4))
            .map(|_| PlannedFault {
                nemesis: Nemesis::random(&mut rng, members),
                // Longer than an election timeout, so pauses and partitions make elections.
                hold: Duration::from_millis(rng.gen_range(1500..4000)),
                quiet: Duration::from_millis(rng.gen_range(1000..2500)),
            })
            .collect();
        let mut crash_rng = StdRng::seed_from_u64(seed ^ FAILPOINT_SALT);
        if crash_rng.gen_ratio(1, FAILPOINT_ONE_IN) {
            faults.push(PlannedFault {
                nemesis: Nemesis::random_failpoint(&mut crash_rng),
                hold: Duration::from_millis(crash_rng.gen_range(500..2000)),
                quiet: Duration::from_millis(crash_rng.gen_range(1000..2500)),
            });
        }
        Plan::with_faults("random", seed, members, &mut rng, faults)
    }

    fn with_faults(
        name: &str,
        seed: u64,
        members: usize,
        rng: &mut StdRng,
        faults: Vec<PlannedFault>,
    ) -> Plan {
        let needs_snapshots = faults.iter().any(|f| f.nemesis.needs_snapshots());
        Plan {
            seed,
            name: name.to_string(),
            members,
            keys: rng.gen_range(4..=12),
            kv_clients: rng.gen_range(members + 1..=2 * members),
            lease_clients: rng.gen_range(1..=2),
            watch_clients: rng.gen_range(1..=2),
            mix: KvMix::random(rng),
            pace: Duration::from_millis(rng.gen_range(20..60)),
            faults,
            snapshot_count: needs_snapshots.then_some(SNAPSHOT_COUNT),
            check: CheckOptions::default(),
        }
    }

    /// The plan of regression case `name` (one of [`REGRESSIONS`]).
    pub fn regression(name: &str, seed: u64, members: usize) -> Option<Plan> {
        let mut rng = StdRng::seed_from_u64(seed);
        let fault = |nemesis, hold_ms, quiet_ms| PlannedFault {
            nemesis,
            hold: Duration::from_millis(hold_ms),
            quiet: Duration::from_millis(quiet_ms),
        };
        let crash = |point, target| fault(Nemesis::Failpoint(point, target), 500, 1500);
        let faults = match name {
            "write-applied-once-after-leader-kills" => {
                vec![fault(Nemesis::Kill(Target::Leader), 1000, 1500); 4]
            }
            "isolated-leader-renews-no-lease" => {
                vec![fault(Nemesis::IsolateLeader, 5000, 2000); 2]
            }
            "replace-member-and-promote-learner" => vec![
                fault(Nemesis::Replace(Target::Follower), 0, 1500),
                fault(Nemesis::AddLearnerPromoteRemove, 0, 1500),
                fault(Nemesis::Replace(Target::Leader), 0, 1500),
            ],
            "crash-while-installing-snapshot" => {
                vec![fault(Nemesis::CrashWhileInstallingSnapshot, 1000, 2000)]
            }
            "64-concurrent-large-puts" => vec![fault(Nemesis::LargePuts, 0, 2000)],
            "defragment-under-load" => vec![
                fault(Nemesis::Defragment(Target::Leader), 0, 1000),
                fault(Nemesis::Defragment(Target::Follower), 0, 1000),
            ],
            "crashes-in-the-write-path" => vec![
                crash(CrashPoint::WalAfterSync, Target::Leader),
                crash(CrashPoint::RaftAfterSave, Target::Follower),
                crash(CrashPoint::ApplyBeforeCommit, Target::Leader),
                crash(CrashPoint::ApplyAfterCommit, Target::Follower),
            ],
            "crashes-in-snapshot-install" => {
                vec![crash(CrashPoint::RaftDuringApplySnap, Target::Follower)]
            }
            "crashes-in-defragment" => vec![
                crash(CrashPoint::DefragBeforeRename, Target::Leader),
                crash(CrashPoint::DefragBeforeCopy, Target::Follower),
            ],
            _ => return None,
        };
        let mut plan = Plan::with_faults(name, seed, members, &mut rng, faults);
        if name == "isolated-leader-renews-no-lease" {
            plan.lease_clients = 3;
        }
        if name == "write-applied-once-after-leader-kills" {
            plan.mix.create = 10;
            plan.mix.put = 10;
        }
        Some(plan)
    }

    /// The negative control: serializable reads from an isolated leader, checked as if they were
    /// linearizable. A checker that passes this schedule cannot see stale reads.
    pub fn stale_read_control(seed: u64, members: usize) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let faults = vec![PlannedFault {
            nemesis: Nemesis::IsolateLeader,
            hold: Duration::from_secs(5),
            quiet: Duration::from_secs(1),
        }];
        let mut plan = Plan::with_faults("stale-read-control", seed, members, &mut rng, faults);
        plan.mix.get_serializable = 20;
        plan.kv_clients = 2 * members;
        plan.check.serializable_as_linearizable = true;
        plan
    }

    /// The second negative control: every member acknowledges WAL writes before making them
    /// and keeps its store commits from being durable, then every member is killed under
    /// traffic. Acknowledged writes are lost; a durability checker that passes this schedule
    /// cannot see lost writes. Needs the failpoint build.
    pub fn ack_before_fsync_control(seed: u64, members: usize) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let faults = vec![
            PlannedFault {
                nemesis: Nemesis::AcknowledgeBeforeFsync,
                hold: Duration::from_secs(3),
                quiet: Duration::ZERO,
            },
            PlannedFault {
                nemesis: Nemesis::KillAll,
                hold: Duration::from_secs(1),
                quiet: Duration::from_secs(2),
            },
        ];
        let mut plan =
            Plan::with_faults("ack-before-fsync-control", seed, members, &mut rng, faults);
        plan.mix.put = 20;
        plan.kv_clients = 2 * members;
        plan
    }

    /// One line describing the plan.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{} ({:?})", f.nemesis, f.hold))
            .collect();
        format!(
            "{} on {} members: {} keys, {} kv / {} lease / {} watch clients; {}",
            self.name,
            self.members,
            self.keys,
            self.kv_clients,
            self.lease_clients,
            self.watch_clients,
            faults.join(", ")
        )
    }
}

/// What one schedule produced.
#[derive(Debug)]
pub struct ScheduleOutcome {
    pub plan: Plan,
    pub history: History,
    pub final_state: FinalState,
    pub timeline: Vec<TimelineEntry>,
    pub verdict: Verdict,
    /// Set when the schedule could not finish: a cluster that did not start or did not
    /// recover once its faults were undone. Counted as an anomaly.
    pub failure: Option<String>,
    pub took: Duration,
}

impl ScheduleOutcome {
    /// Anomalies found, a failure to finish counting as one.
    pub fn anomaly_count(&self) -> usize {
        self.verdict.anomalies.len() + usize::from(self.failure.is_some())
    }
}

/// Runs `plan` against a fresh cluster of `server`.
pub async fn run(plan: &Plan, server: &Path) -> ScheduleOutcome {
    let started = Instant::now();
    let clock = Clock::start();
    let mut outcome = ScheduleOutcome {
        plan: plan.clone(),
        history: History::default(),
        final_state: FinalState::default(),
        timeline: Vec::new(),
        verdict: Verdict::default(),
        failure: None,
        took: Duration::ZERO,
    };
    let mut builder = HostCluster::builder(plan.members)
        .server(server)
        .spare_hosts(1)
        .timing(100, ELECTION_TIMEOUT_MS);
    if let Some(entries) = plan.snapshot_count {
        builder = builder.arg(format!("--snapshot-count={entries}"));
    }
    let cluster = match builder.start().await {
        Ok(cluster) => cluster,
        Err(error) => {
            outcome.failure = Some(format!("the cluster did not start: {error:#}"));
            return outcome;
        }
    };
    let mut faults = Faults::new(cluster, plan.members, clock);
    let result = drive(plan, &mut faults, clock).await;
    outcome.timeline = std::mem::take(&mut faults.timeline);
    match result {
        Ok((history, final_state)) => {
            outcome.verdict = checker::check(&history, &final_state, plan.check);
            outcome.history = history;
            outcome.final_state = final_state;
        }
        Err((error, history)) => {
            outcome.failure = Some(format!("{error:#}"));
            outcome.history = history;
        }
    }
    outcome.took = started.elapsed();
    outcome
}

type Drive = Result<(History, FinalState), (anyhow::Error, History)>;

async fn drive(plan: &Plan, faults: &mut Faults, clock: Clock) -> Drive {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x5eed);
    let context = TrafficContext {
        clock,
        endpoints: (0..faults.cluster.len())
            .map(|i| faults.cluster.endpoint(i))
            .collect(),
        stop: Arc::new(AtomicBool::new(false)),
        fence: Arc::new(AtomicI64::new(0)),
        pace: plan.pace,
    };
    let voters = faults.voters.clone();
    let mut clients = Vec::new();
    for c in 0..plan.kv_clients {
        clients.push(tokio::spawn(traffic::run_kv_client(
            context.clone(),
            c,
            voters[c % voters.len()],
            plan.keys,
            plan.mix.clone(),
            StdRng::seed_from_u64(rng.gen()),
        )));
    }
    for c in 0..plan.lease_clients {
        clients.push(tokio::spawn(traffic::run_lease_client(
            context.clone(),
            100 + c,
            voters.clone(),
            StdRng::seed_from_u64(rng.gen()),
        )));
    }
    let watchers: Vec<_> = (0..plan.watch_clients)
        .map(|c| {
            tokio::spawn(traffic::run_watch_client(
                context.clone(),
                200 + c,
                voters.clone(),
                plan.keys,
                StdRng::seed_from_u64(rng.gen()),
            ))
        })
        .collect();

    let mut operations: Vec<Operation> = Vec::new();
    let mut failure = None;
    tokio::time::sleep(WARM_UP).await;
    for fault in &plan.faults {
        faults.note(format!("inject {}", fault.nemesis));
        match faults.inject(&fault.nemesis, &mut rng, &context).await {
            Ok(recorded) => operations.extend(recorded),
            Err(error) => faults.note(format!("could not inject {}: {error:#}", fault.nemesis)),
        }
        tokio::time::sleep(fault.hold).await;
        if let Err(error) = faults.recover().await {
            failure = Some(error);
            break;
        }
        tokio::time::sleep(fault.quiet).await;
    }
    context.stop.store(true, Ordering::Relaxed);
    for client in clients {
        operations.extend(client.await.unwrap_or_default());
    }
    faults.note("traffic stopped");

    let finish = async {
        if let Some(error) = failure {
            return Err(error);
        }
        let mut recorder = Recorder::new(FENCE_CLIENT, clock);
        let fence = write_fence(&mut recorder, faults, "fence").await;
        operations.extend(recorder.operations);
        context.fence.store(fence?, Ordering::Relaxed);
        Ok(())
    }
    .await;
    let mut watches = Vec::new();
    // Watchers end once they waited for the fence; without a fence they would wait forever.
    let patience = traffic::FENCE_WAIT + Duration::from_secs(30);
    for watcher in watchers {
        if finish.is_err() {
            watcher.abort();
        }
        let abort = watcher.abort_handle();
        match tokio::time::timeout(patience, watcher).await {
            Ok(records) => watches.extend(records.unwrap_or_default()),
            Err(_) => {
                abort.abort();
                faults.note(format!("a watch client did not finish within {patience:?}"));
            }
        }
    }
    if let Err(error) = finish {
        return Err((error, History::new(operations, watches)));
    }
    faults.note("watchers finished");

    let final_state = async {
        faults.kill_all_and_restart().await?;
        let mut recorder = Recorder::new(FINAL_CLIENT, clock);
        let last = write_fence(&mut recorder, faults, "final").await;
        operations.extend(recorder.operations);
        read_final_state(faults, last?).await
    }
    .await;
    let history = History::new(operations, watches);
    match final_state {
        Ok(final_state) => Ok((history, final_state)),
        Err(error) => Err((error, history)),
    }
}

/// Puts [`FENCE_KEY`] (recorded) through the voters in turn until one acknowledges; returns
/// its revision.
async fn write_fence(
    recorder: &mut Recorder,
    faults: &mut Faults,
    value: &str,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        let member = faults.voters[attempt % faults.voters.len()];
        attempt += 1;
        let value = format!("{value}-{attempt}");
        let request = Request::Put {
            key: FENCE_KEY.to_string(),
            value: value.clone(),
            lease: None,
        };
        if let Ok(mut client) = faults
            .cluster
            .member_client(member, Duration::from_secs(5))
            .await
        {
            let call = traffic::put(&mut client, FENCE_KEY, value.into_bytes(), None);
            if let Some(Response::Put { revision }) = recorder.record(member, request, call).await {
                faults.note(format!("fence {FENCE_KEY} at revision {revision}"));
                return Ok(revision);
            }
        }
        if Instant::now() > deadline {
            bail!("no member acknowledged the fence write for 30 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Maximum size of a message the final read accepts: the store's history may hold 64 values of
/// 1.5 MB.
const FINAL_MESSAGE_BYTES: usize = 512 << 20;

/// The store's history under [`PREFIX`] up to revision `last` (a watch from revision 1), and its
/// pairs at `last`.
async fn read_final_state(faults: &Faults, last: i64) -> anyhow::Result<FinalState> {
    let member = faults.voters[0];
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(FINAL_READ_PATIENCE);
    let client = Client::connect([faults.cluster.endpoint(member)], Some(options))
        .await
        .context("connecting to read the store's history")?;
    let end = traffic::prefix_end(PREFIX);
    let mut watch = client
        .watch_client()
        .max_decoding_message_size(FINAL_MESSAGE_BYTES);
    let mut stream = watch
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_range(end.as_str())
                    .with_start_revision(1),
            ),
        )
        .await
        .context("watching the store's history from revision 1")?;
    let mut events = Vec::new();
    let deadline = Instant::now() + FINAL_READ_PATIENCE;
    while events
        .last()
        .is_none_or(|e: &super::history::Event| e.revision < last)
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, stream.message())
            .await
            .context("reading the store's history took too long")??
            .context("the history watch ended")?;
        events.extend(message.events().iter().filter_map(traffic::event));
    }
    events.retain(|e| e.revision <= last);

    // The pairs, a few at a time (large values).
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(FINAL_MESSAGE_BYTES);
    let mut kvs = Vec::new();
    let mut from = PREFIX.as_bytes().to_vec();
    loop {
        let options = GetOptions::new()
            .with_range(end.as_str())
            .with_revision(last)
            .with_limit(8);
        let page = kv
            .get(from.clone(), Some(options))
            .await
            .context("reading the store's pairs")?;
        kvs.extend(page.kvs().iter().map(traffic::key_value));
        match page.kvs().last() {
            Some(last_kv) if page.more() => {
                from = last_kv.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(FinalState {
        events,
        kvs,
        revision: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_makes_the_same_plan() {
        for seed in [1, 2, 3, 5, 10, 12345] {
            assert_eq!(Plan::from_seed(seed, 3), Plan::from_seed(seed, 3));
        }
        assert_ne!(Plan::from_seed(1, 3), Plan::from_seed(2, 3));
    }

    #[test]
    fn some_random_plans_crash_at_failpoints_with_snapshots_when_they_need_them() {
        let plans: Vec<Plan> = (1..200)
            .filter(|seed| seed % REGRESSION_EVERY != 0)
            .map(|seed| Plan::from_seed(seed, 3))
            .collect();
        let crashing = plans
            .iter()
            .filter(|p| {
                p.faults
                    .iter()
                    .any(|f| matches!(f.nemesis, Nemesis::Failpoint(..)))
            })
            .count();
        assert!(
            crashing > 30 && crashing < 100,
            "{crashing} of {}",
            plans.len()
        );
        for plan in &plans {
            let needs = plan.faults.iter().any(|f| f.nemesis.needs_snapshots());
            assert_eq!(plan.snapshot_count.is_some(), needs, "{}", plan.summary());
        }
    }

    #[test]
    fn every_regression_case_is_planned_by_some_seed() {
        let planned: Vec<String> = (0..REGRESSIONS.len() as u64)
            .map(|k| Plan::from_seed(k * REGRESSION_EVERY, 3).name)
            .collect();
        assert_eq!(planned, REGRESSIONS.map(String::from));
    }
}
