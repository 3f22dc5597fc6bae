//! The faults a schedule injects into its cluster, and how each is undone.
//!
//! A [`Nemesis`] is a plan ("kill the leader"); [`Faults`] carries it out on a [`HostCluster`]
//! (members on network-namespace hosts, so partitions are real nftables rules), resolves its
//! targets at that moment ("the leader" becomes member m2) and records what it did in the
//! schedule's timeline. [`Faults::recover`] heals the network, resumes paused members and
//! restarts killed ones. Membership changes use the cluster's one spare host.
//!
//! Crashes at chosen points inside the node (`Failpoint`: tikv's `fail` crate, in the
//! `ferrokv-failpoints` build only) arm the point on a running member through its failpoint
//! endpoint, make the member reach it, and are undone by restarting the member, which starts
//! with no point armed. Against a server without failpoints they are skipped and say so.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use rand::rngs::StdRng;
use rand::Rng;

use super::failpoints::{self, has_failpoints, CrashPoint, Reached, ACK_BEFORE_FSYNC, CRASH};
use super::history::{Operation, Time};
use super::traffic::{self, Clock, TrafficContext};
use crate::host_cluster::{HostCluster, PEER_PORT};

/// `--election-timeout` of every schedule's cluster, in milliseconds (etcd's default).
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// How long a membership change may be refused (no leader yet, learner not caught up) before
/// the nemesis gives up on it.
const RECONFIGURE_PATIENCE: Duration = Duration::from_secs(30);
/// How many of the cluster's health waits (a minute each) recovery may take.
const RECOVERY_WAITS: u32 = 3;
/// How long a removed member gets to exit by itself.
const REMOVED_EXIT_WAIT: Duration = Duration::from_secs(10);
/// Raft entries written while a member is down, so it must catch up from a snapshot: etcd keeps
/// 5000 entries after a snapshot, and the cluster snapshots every [`SNAPSHOT_COUNT`].
const CATCH_UP_GAP: u64 = 5000 + SNAPSHOT_COUNT + 500;
/// `--snapshot-count` of schedules that crash a member while it installs a snapshot.
pub const SNAPSHOT_COUNT: u64 = 1000;
/// How long a member armed with a crash point gets to reach it before it is disarmed.
const FAILPOINT_PATIENCE: Duration = Duration::from_secs(30);
/// Bulk writes of the snapshot nemesis go here, outside the checked keys.
const BULK_PREFIX: &str = "bulk/";
/// Values of the large-put burst (issue 11: 64 concurrent 1.5 MiB puts; etcd's default
/// `--max-request-bytes` is 1.5 MiB, so the value leaves room for the key).
pub const LARGE_VALUE_BYTES: usize = 1_500_000;
pub const LARGE_PUTS: usize = 64;

/// Which member a nemesis hits, resolved when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// A member other than the leader, chosen by the schedule's generator.
    Follower,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nemesis {
    /// SIGKILL one member; restart it when the fault is undone.
    Kill(Target),
    /// SIGKILL every member at once; restart them all.
    KillAll,
    /// SIGSTOP one member for longer than an election timeout; SIGCONT.
    Pause(Target),
    /// Cut the leader off from every other member.
    IsolateLeader,
    /// Split the members into a minority holding the leader and a majority (2/3 of five).
    SplitWithLeaderInMinority,
    /// Split the others in two sides that do not see each other, with one follower seeing both.
    Bridge,
    /// Drop the packets one member sends to every other member; it still hears them.
    OneWayDrop(Target),
    /// Remove a member, wipe it, and add the spare host as a new member in its place.
    Replace(Target),
    /// Add the spare host as a learner, promote it once it has caught up, then remove a
    /// follower so the cluster keeps its size.
    AddLearnerPromoteRemove,
    /// Move leadership to a follower.
    TransferLeader,
    /// Defragment one member's backend while traffic runs.
    Defragment(Target),
    /// 64 concurrent puts of 1.5 MB values.
    LargePuts,
    /// Kill a follower, write past its log so it must install a snapshot, restart it and kill
    /// it again while it installs.
    CrashWhileInstallingSnapshot,
    /// Arm a crash point in one member (for the snapshot-install points: a follower made to
    /// fall behind), make it reach the point, and restart it without the point once it died;
    /// disarmed if not reached within [`FAILPOINT_PATIENCE`]. Failpoint builds only.
    Failpoint(CrashPoint, Target),
    /// The negative control's broken model on every member: acknowledge WAL writes before
    /// making them, and keep store commits from being durable ([`ACK_BEFORE_FSYNC`]). Undone
    /// only by restarting the members. Failpoint builds only.
    AcknowledgeBeforeFsync,
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Nemesis {
    /// A random crash point and target (a snapshot-install point always hits a follower).
    pub fn random_failpoint(rng: &mut StdRng) -> Nemesis {
        let point = CrashPoint::ALL[rng.gen_range(0..CrashPoint::ALL.len())];
        let target = if rng.gen_bool(0.5) && point.reached() != Reached::BySnapshotInstall {
            Target::Leader
        } else {
            Target::Follower
        };
        Nemesis::Failpoint(point, target)
    }

    /// Whether the nemesis needs members that snapshot often (`--snapshot-count`).
    pub fn needs_snapshots(&self) -> bool {
        match self {
            Nemesis::CrashWhileInstallingSnapshot => true,
            Nemesis::Failpoint(point, _) => point.reached() == Reached::BySnapshotInstall,
            _ => false,
        }
    }

    /// Whether the nemesis needs the failpoint build.
    pub fn needs_failpoints(&self) -> bool {
        matches!(
            self,
            Nemesis::Failpoint(..) | Nemesis::AcknowledgeBeforeFsync
        )
    }

    /// A random nemesis for a cluster of `members` members.
    pub fn random(rng: &mut StdRng, members: usize) -> Nemesis {
        let target = |rng: &mut StdRng| {
            if rng.gen_bool(0.5) {
                Target::Leader
            } else {
                Target::Follower
            }
        };
        // Weights: the cheap faults often, the costly ones (bulk writes, 96 MB of values) rarely.
        let choices: [(u32, Nemesis); 13] = [
            (6, Nemesis::Kill(target(rng))),
            (2, Nemesis::KillAll),
            (4, Nemesis::Pause(target(rng))),
            (4, Nemesis::IsolateLeader),
            (3, Nemesis::SplitWithLeaderInMinority),
            (if members >= 3 { 2 } else { 0 }, Nemesis::Bridge),
            (3, Nemesis::OneWayDrop(target(rng))),
            (2, Nemesis::Replace(Target::Follower)),
            (2, Nemesis::AddLearnerPromoteRemove),
            (3, Nemesis::TransferLeader),
            (2, Nemesis::Defragment(target(rng))),
            (1, Nemesis::LargePuts),
            (1, Nemesis::CrashWhileInstallingSnapshot),
        ];
        let total: u32 = choices.iter().map(|(w, _)| w).sum();
        let mut pick = rng.gen_range(0..total);
        for (weight, nemesis) in choices {
            if pick < weight {
                return nemesis;
            }
            pick -= weight;
        }
        unreachable!("pick is below the total weight")
    }
}

/// One line of a schedule's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub at: Time,
    pub what: String,
}

/// The cluster of a schedule and the faults currently in force.
pub struct Faults {
    pub cluster: HostCluster,
    clock: Clock,
    /// Hosts that are members, in the order they joined.
    pub voters: Vec<usize>,
    /// Hosts that are not members (their data is wiped before they join).
    pub spares: Vec<usize>,
    killed: Vec<usize>,
    paused: Vec<usize>,
    cut: bool,
    /// Large-put bursts so far: each writes values of its own.
    large_put_bursts: usize,
    pub timeline: Vec<TimelineEntry>,
}

impl Faults {
    pub fn new(cluster: HostCluster, members: usize, clock: Clock) -> Faults {
        let spares = (members..cluster.len()).collect();
        Faults {
            cluster,
            clock,
            voters: (0..members).collect(),
            spares,
            killed: Vec::new(),
            paused: Vec::new(),
            cut: false,
            large_put_bursts: 0,
            timeline: Vec::new(),
        }
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.timeline.push(TimelineEntry {
            at: self.clock.now(),
            what: what.into(),
        });
    }

    fn name(&self, i: usize) -> String {
        self.cluster.name(i).to_string()
    }

    async fn client(&self, i: usize) -> anyhow::Result<Client> {
        self.cluster.member_client(i, Duration::from_secs(5)).await
    }

    /// The voters other than `member`, in order.
    fn voters_except(&self, member: usize) -> Vec<usize> {
        self.voters
            .iter()
            .copied()
            .filter(|&v| v != member)
            .collect()
    }

    /// The leader the running voters agree on.
    async fn leader(&self) -> anyhow::Result<usize> {
        let running: Vec<usize> = self
            .voters
            .iter()
            .copied()
            .filter(|v| !self.killed.contains(v) && !self.paused.contains(v))
            .collect();
        self.cluster
            .leader_among(&running, Duration::from_secs(30))
            .await
    }

    async fn resolve(&self, target: Target, rng: &mut StdRng) -> anyhow::Result<usize> {
        let leader = self.leader().await?;
        Ok(match target {
            Target::Leader => leader,
            Target::Follower => {
                let followers = self.voters_except(leader);
                followers[rng.gen_range(0..followers.len())]
            }
        })
    }

    /// Injects `nemesis`; returns operations it recorded itself (the large puts). Instant
    /// nemeses (membership, leader transfer, defragment, bursts) are complete when this returns.
    pub async fn inject(
        &mut self,
        nemesis: &Nemesis,
        rng: &mut StdRng,
        context: &TrafficContext,
    ) -> anyhow::Result<Vec<Operation>> {
        if nemesis.needs_failpoints() && !has_failpoints(self.cluster.server()) {
            self.note(format!(
                "skipped {nemesis}: {} has no failpoints",
                self.cluster.server().display()
            ));
            return Ok(Vec::new());
        }
        match nemesis {
            Nemesis::Kill(target) => {
                let member = self.resolve(*target, rng).await?;
                self.cluster.kill(member)?;
                self.killed.push(member);
                self.note(format!("SIGKILL {} ({target:?})", self.name(member)));
            }
            Nemesis::KillAll => {
                for &member in &self.voters.clone() {
                    if !self.killed.contains(&member) {
                        self.cluster.kill(member)?;
                        self.killed.push(member);
                    }
                }
                self.note("SIGKILL every member");
            }
            Nemesis::Pause(target) => {
                let member = self.resolve(*target, rng).await?;
                self.cluster.pause(member)?;
                self.paused.push(member);
                self.note(format!("SIGSTOP {} ({target:?})", self.name(member)));
            }
            Nemesis::IsolateLeader => {
                let leader = self.leader().await?;
                self.cluster.isolate(leader)?;
                self.cut = true;
                self.note(format!("isolate leader {}", self.name(leader)));
            }
            Nemesis::SplitWithLeaderInMinority => {
                let leader = self.leader().await?;
                let mut others = self.voters_except(leader);
                let mut minority = vec![leader];
                while minority.len() < self.voters.len() / 2 {
                    minority.push(others.remove(rng.gen_range(0..others.len())));
                }
                self.cluster.partition(&[&minority, &others])?;
                self.cut = true;
                self.note(format!(
                    "partition: minority {} (with the leader) | majority {}",
                    self.names(&minority),
                    self.names(&others)
                ));
            }
            Nemesis::Bridge => {
                let leader = self.leader().await?;
                let mut others = self.voters_except(leader);
                let bridge = others.remove(rng.gen_range(0..others.len()));
                let mut side_a = vec![leader];
                let half = others.len() / 2;
                side_a.extend(others.drain(..half));
                let side_b = others;
                let mut links = Vec::new();
                for &a in &side_a {
                    for &b in &side_b {
                        links.push((a, b));
                        links.push((b, a));
                    }
                }
                self.cluster.drop_links(&links)?;
                self.cut = true;
                self.note(format!(
                    "bridge: {} | {} bridges | {}",
                    self.names(&side_a),
                    self.name(bridge),
                    self.names(&side_b)
                ));
            }
            Nemesis::OneWayDrop(target) => {
                let member = self.resolve(*target, rng).await?;
                let links: Vec<(usize, usize)> = self
                    .voters
                    .iter()
                    .filter(|&&v| v != member)
                    .map(|&v| (member, v))
                    .collect();
                self.cluster.drop_links(&links)?;
                self.cut = true;
                self.note(format!(
                    "drop every packet {} ({target:?}) sends to the others",
                    self.name(member)
                ));
            }
            Nemesis::Replace(target) => {
                let member = self.resolve(*target, rng).await?;
                self.remove(member).await?;
                let spare = self.spares[0];
                self.add(spare, false).await?;
                self.note(format!(
                    "replaced {} by new member {}",
                    self.name(member),
                    self.name(spare)
                ));
            }
            Nemesis::AddLearnerPromoteRemove => {
                let spare = self.spares[0];
                self.add(spare, true).await?;
                self.note(format!("added learner {}", self.name(spare)));
                self.promote(spare).await?;
                self.note(format!("promoted {}", self.name(spare)));
                let member = self.resolve(Target::Follower, rng).await?;
                self.remove(member).await?;
                self.note(format!("removed {}", self.name(member)));
            }
            Nemesis::TransferLeader => {
                let leader = self.leader().await?;
                let target = self.resolve(Target::Follower, rng).await?;
                let target_id = self.cluster.status(target).await?.member_id;
                let moved = self.client(leader).await?.move_leader(target_id).await;
                self.note(format!(
                    "move leader {} -> {}: {}",
                    self.name(leader),
                    self.name(target),
                    moved.map_or_else(|e| e.to_string(), |_| "done".to_string())
                ));
            }
            Nemesis::Defragment(target) => {
                let member = self.resolve(*target, rng).await?;
                let started = Instant::now();
                let done = self.client(member).await?.defragment().await;
                self.note(format!(
                    "defragment {} ({target:?}): {} after {:?}",
                    self.name(member),
                    done.map_or_else(|e| e.to_string(), |_| "done".to_string()),
                    started.elapsed()
                ));
            }
            Nemesis::LargePuts => {
                self.note(format!(
                    "{LARGE_PUTS} concurrent puts of {LARGE_VALUE_BYTES} bytes"
                ));
                // A client id per burst: its values name it, and the checker tells writes apart
                // by value, so a second burst with the same values would look like the first
                // one applied twice.
                let client = LARGE_PUT_CLIENT + self.large_put_bursts;
                self.large_put_bursts += 1;
                let operations = traffic::run_large_puts(
                    context.clone(),
                    client,
                    self.voters.clone(),
                    LARGE_PUTS,
                    LARGE_VALUE_BYTES,
                )
                .await;
                let acknowledged = operations
                    .iter()
                    .filter(|op| op.response().is_some())
                    .count();
                self.note(format!(
                    "large puts: {acknowledged} of {LARGE_PUTS} acknowledged"
                ));
                return Ok(operations);
            }
            Nemesis::CrashWhileInstallingSnapshot => {
                let member = self.fall_behind_and_restart(rng).await?;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
                self.cluster.kill(member)?;
                self.killed.push(member);
                self.note(format!(
                    "restarted {0} and SIGKILLed it again while it caught up",
                    self.name(member)
                ));
            }
            Nemesis::Failpoint(point, target) => self.crash_at(*point, *target, rng).await?,
            Nemesis::AcknowledgeBeforeFsync => {
                for &member in &self.voters.clone() {
                    for (point, actions) in ACK_BEFORE_FSYNC {
                        self.arm(member, point, actions).await?;
                    }
                }
                self.note(format!(
                    "every member acknowledges before fsync: {}",
                    ACK_BEFORE_FSYNC.map(|(p, a)| format!("{p}={a}")).join(", ")
                ));
            }
        }
        Ok(Vec::new())
    }

    /// Kills a follower, writes past its log so it must install a snapshot, and restarts it;
    /// returns it.
    async fn fall_behind_and_restart(&mut self, rng: &mut StdRng) -> anyhow::Result<usize> {
        let member = self.resolve(Target::Follower, rng).await?;
        let leader = self.leader().await?;
        let stopped_at = self.cluster.status(member).await?.raft_index;
        self.cluster.kill(member)?;
        self.note(format!("SIGKILL {} to make it lag", self.name(member)));
        let written = bulk_write(&self.cluster, leader, stopped_at + CATCH_UP_GAP).await?;
        self.note(format!("wrote {written} bulk keys past its log"));
        self.cluster.restart(member)?;
        Ok(member)
    }

    /// Arms `point` with `actions` on `member`, retrying while its endpoint is not up yet (a
    /// member just started); a member that exited meanwhile fails it with its log.
    async fn arm(&mut self, member: usize, point: &str, actions: &str) -> anyhow::Result<()> {
        let host = self.cluster.network().address(member);
        let started = Instant::now();
        loop {
            self.cluster
                .check_alive(member)
                .with_context(|| format!("arming {point} on {}", self.name(member)))?;
            match failpoints::arm(host, point, actions).await {
                Ok(()) => return Ok(()),
                Err(error) if started.elapsed() > Duration::from_secs(10) => {
                    return Err(error)
                        .with_context(|| format!("arming {point} on {}", self.name(member)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The `Failpoint` nemesis: arms `point` to crash a member, makes the member reach it and
    /// waits for its death (it joins the killed members, restarted by `recover`), or disarms
    /// the point after [`FAILPOINT_PATIENCE`].
    async fn crash_at(
        &mut self,
        point: CrashPoint,
        target: Target,
        rng: &mut StdRng,
    ) -> anyhow::Result<()> {
        let member = match point.reached() {
            Reached::BySnapshotInstall => self.fall_behind_and_restart(rng).await?,
            Reached::ByWrites | Reached::ByDefragment => self.resolve(target, rng).await?,
        };
        self.arm(member, point.name(), CRASH).await?;
        self.note(format!(
            "armed {} on {} ({target:?}) to crash",
            point.name(),
            self.name(member)
        ));
        if point.reached() == Reached::ByDefragment {
            // The call fails when the member dies in it; its death is what is checked.
            let endpoint = self.cluster.endpoint(member);
            tokio::spawn(async move {
                let options = ConnectOptions::new().with_timeout(FAILPOINT_PATIENCE);
                if let Ok(mut client) = Client::connect([endpoint], Some(options)).await {
                    let _ = client.defragment().await;
                }
            });
        }
        let started = Instant::now();
        while started.elapsed() < FAILPOINT_PATIENCE {
            if let Err(exit) = self.cluster.check_alive(member) {
                let exit = format!("{exit:#}");
                self.killed.push(member);
                if exit.contains(&point.crash_line()) {
                    self.note(format!(
                        "{} crashed at {} after {:?}",
                        self.name(member),
                        point.name(),
                        started.elapsed()
                    ));
                } else {
                    self.note(format!(
                        "{} exited, not at {}: {exit}",
                        self.name(member),
                        point.name()
                    ));
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let disarmed = failpoints::disarm(self.cluster.network().address(member), point.name())
            .await
            .map_or_else(
                |e| format!("disarming failed: {e:#}"),
                |()| "disarmed".into(),
            );
        self.note(format!(
            "{} not reached on {} within {FAILPOINT_PATIENCE:?}; {disarmed}",
            point.name(),
            self.name(member)
        ));
        Ok(())
    }

    fn names(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&m| self.name(m))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Undoes every fault in force: heals the network, resumes paused members, restarts killed
    /// ones, and waits until every member is healthy.
    pub async fn recover(&mut self) -> anyhow::Result<()> {
        let mut undone = Vec::new();
        if self.cut {
            self.cluster.heal()?;
            self.cut = false;
            undone.push("healed the network".to_string());
        }
        for member in std::mem::take(&mut self.paused) {
            self.cluster.resume(member)?;
            undone.push(format!("SIGCONT {}", self.name(member)));
        }
        for member in std::mem::take(&mut self.killed) {
            self.cluster.restart(member)?;
            undone.push(format!("restarted {}", self.name(member)));
        }
        if !undone.is_empty() {
            self.note(undone.join(", "));
        }
        // A member that must install a large snapshot in a debug build can take minutes.
        let running = self.cluster.running().len();
        let mut waited = 1;
        loop {
            match self.cluster.wait_healthy().await {
                Ok(()) => return Ok(()),
                // A member that exited needs no more time: the error says how, with its log.
                Err(error) if self.cluster.running().len() < running => {
                    return Err(error).context("a member exited while the cluster recovered")
                }
                Err(error) if waited == RECOVERY_WAITS => {
                    return Err(error)
                        .context("the cluster did not recover after its faults were undone")
                }
                Err(_) => waited += 1,
            }
        }
    }

    /// SIGKILLs every member at once and restarts them all (the durability check's crash).
    pub async fn kill_all_and_restart(&mut self) -> anyhow::Result<()> {
        for &member in &self.voters {
            self.cluster.kill(member)?;
        }
        for &member in &self.voters {
            self.cluster.restart(member)?;
        }
        self.note("SIGKILL every member and restart them (durability)");
        self.cluster
            .wait_healthy()
            .await
            .context("the cluster did not come back after every member was killed")
    }

    /// A member's ID as the cluster lists it, found by its peer URL.
    async fn member_id(&self, via: usize, member: usize) -> anyhow::Result<u64> {
        let url = self.peer_url(member);
        let list = self.client(via).await?.member_list().await?;
        list.members()
            .iter()
            .find(|m| m.peer_urls().contains(&url))
            .map(|m| m.id())
            .ok_or_else(|| anyhow!("{url} is not in the member list"))
    }

    fn peer_url(&self, member: usize) -> String {
        format!("http://{}:{PEER_PORT}", self.name(member))
    }

    /// A voter other than `except` to send a membership change through: the leader if it is one.
    async fn via(&self, except: usize) -> anyhow::Result<usize> {
        let leader = self.leader().await?;
        if leader != except {
            return Ok(leader);
        }
        self.voters
            .iter()
            .copied()
            .find(|&v| v != except)
            .ok_or_else(|| anyhow!("no other member"))
    }

    /// Removes `member` from the cluster, waits for it to stop, wipes it and makes it a spare.
    async fn remove(&mut self, member: usize) -> anyhow::Result<()> {
        let via = self.via(member).await?;
        let id = self.member_id(via, member).await?;
        retry(&format!("member remove {}", self.name(member)), || async {
            self.client(self.via(member).await?)
                .await?
                .member_remove(id)
                .await?;
            Ok(())
        })
        .await?;
        self.voters.retain(|&v| v != member);
        let exited = self.cluster.wait_exit(member, REMOVED_EXIT_WAIT).await?;
        self.note(format!(
            "removed {} ({id:x}); {}",
            self.name(member),
            if exited {
                "it exited by itself"
            } else {
                "it did not exit, SIGKILLed"
            }
        ));
        self.cluster.wipe_data(member)?;
        self.spares.push(member);
        Ok(())
    }

    /// Adds spare `spare` (as a learner if asked) and starts it.
    async fn add(&mut self, spare: usize, learner: bool) -> anyhow::Result<()> {
        let url = self.peer_url(spare);
        retry(&format!("member add {url}"), || async {
            let options = learner.then(|| MemberAddOptions::new().with_is_learner());
            self.client(self.leader().await?)
                .await?
                .member_add([url.as_str()], options)
                .await?;
            Ok(())
        })
        .await?;
        self.spares.retain(|&s| s != spare);
        self.voters.push(spare);
        let initial_cluster = self
            .voters
            .iter()
            .map(|&v| format!("{}={}", self.name(v), self.peer_url(v)))
            .collect::<Vec<_>>()
            .join(",");
        self.cluster
            .set_flag(spare, "--initial-cluster", &initial_cluster);
        self.cluster
            .set_flag(spare, "--initial-cluster-state", "existing");
        self.cluster.wipe_data(spare)?;
        self.cluster.restart(spare)?;
        Ok(())
    }

    async fn promote(&mut self, learner: usize) -> anyhow::Result<()> {
        let via = self.via(learner).await?;
        let id = self.member_id(via, learner).await?;
        retry(
            &format!("member promote {}", self.name(learner)),
            || async {
                self.client(self.via(learner).await?)
                    .await?
                    .member_promote(id)
                    .await?;
                Ok(())
            },
        )
        .await
    }
}

/// Client id of the first large-put burst's operations; the next ones count up from it.
pub const LARGE_PUT_CLIENT: usize = 900;

/// Tries `attempt` every half second until it succeeds or [`RECONFIGURE_PATIENCE`] passes.
async fn retry<F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(error) if started.elapsed() > RECONFIGURE_PATIENCE => {
                bail!("{what} refused for {RECONFIGURE_PATIENCE:?}: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Puts 100-byte values under `bulk/` through `leader` with 8 concurrent writers until its Raft
/// index reaches `index`; returns how many it wrote.
async fn bulk_write(cluster: &HostCluster, leader: usize, index: u64) -> anyhow::Result<usize> {
    const WRITERS: usize = 8;
    const ROUND: usize = 400;
    let endpoint = cluster.endpoint(leader);
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    let mut client = Client::connect([endpoint.as_str()], Some(options)).await?;
    let mut written = 0;
    let started = Instant::now();
    while client.status().await?.raft_index() < index {
        if started.elapsed() > Duration::from_secs(180) {
            bail!(
                "{written} bulk writes in {:?} did not reach index {index}",
                started.elapsed()
            );
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let mut kv = client.kv_client();
                let keys = (written + w..written + ROUND).step_by(WRITERS);
                tokio::spawn(async move {
                    for n in keys {
                        let key = format!("{BULK_PREFIX}{n:06}");
                        // A failed bulk write only means one entry fewer: the loop writes until
                        // the index is reached.
                        let _ = kv.put(key, vec![b'b'; 100], None).await;
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await?;
        }
        written += ROUND;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn same_seed_same_nemeses() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| Nemesis::random(&mut rng, 5))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
