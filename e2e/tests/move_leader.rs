//! Maintenance.MoveLeader as an operator uses it through `etcdctl move-leader <hex id>`: sent to
//! the leader it hands leadership to the target, which every member's `endpoint status` then
//! names; it works while clients write, losing no acknowledged write, and writes resume on the
//! new leader. Sent to a follower it fails with etcd's "etcdserver: not leader", and a target
//! that is not a member, or is a learner, fails with "etcdserver: bad leader transferee".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::KvClient;
use ferrokv_e2e::keyspace::read_prefix;
use ferrokv_e2e::TestCluster;
use serde_json::Value;
use tonic::Code;

/// How long every member may take to name the new leader after `move-leader` returns.
const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The leader every member names in `etcdctl endpoint status -w json`, once they all name the
/// same one (bounded by [`AGREEMENT_TIMEOUT`]).
async fn leader_in_endpoint_status(cluster: &TestCluster) -> u64 {
    let deadline = Instant::now() + AGREEMENT_TIMEOUT;
    loop {
        let output = cluster.etcdctl(&["endpoint", "status", "-w", "json"]).await;
        let leaders: Vec<u64> = match serde_json::from_str::<Value>(output.stdout.trim()) {
            Ok(Value::Array(entries)) => entries
                .iter()
                .filter_map(|entry| entry["Status"]["leader"].as_u64())
                .collect(),
            _ => Vec::new(),
        };
        if leaders.len() == cluster.len() && leaders.iter().all(|&l| l != 0 && l == leaders[0]) {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "members do not agree on a leader after {AGREEMENT_TIMEOUT:?}: {output:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `etcdctl move-leader <target>` through every member.
async fn try_move_leader(cluster: &TestCluster, target: u64) -> ferrokv_e2e::EtcdctlOutput {
    // ferrokv's transfer waits out the followers' lease (about one election timeout, more on
    // a loaded machine while writes drain), so allow more than etcdctl's default 5 s.
    cluster
        .etcdctl(&[
            "--command-timeout=20s",
            "move-leader",
            &format!("{target:x}"),
        ])
        .await
}

/// `etcdctl move-leader <target>`, which must succeed; returns what it printed.
async fn move_leader(cluster: &TestCluster, target: u64) -> String {
    try_move_leader(cluster, target)
        .await
        .expect_stdout()
        .to_string()
}

/// Makes `target` the leader for a test about what follows, however long it takes: a transfer
/// that times out ("leader transfer took too long", which a loaded machine can cause) may still
/// complete, or be tried again, as an operator would.
async fn hand_leadership_to(cluster: &TestCluster, target: u64) {
    for attempt in 1..=3 {
        let output = try_move_leader(cluster, target).await;
        let leader = leader_in_endpoint_status(cluster).await;
        if leader == target {
            return;
        }
        assert!(
            attempt < 3,
            "leadership stayed with {leader:x} after three move-leader attempts; the last: {output:?}"
        );
    }
}

/// Asserts that `result` is the gRPC error `code` with exactly `message`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!((status.code(), status.message()), (code, message));
        }
        other => panic!("expected {code:?} {message:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn move_leader_sent_to_the_leader_hands_leadership_to_the_target() {
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let leader = cluster.leader().await.expect("leader");
    let leader_id = cluster.member_id(leader).await.expect("leader id");
    let target = (leader + 1) % cluster.len();
    let target_id = cluster.member_id(target).await.expect("target id");

    assert_eq!(
        move_leader(&cluster, target_id).await,
        format!("Leadership transferred from {leader_id:x} to {target_id:x}\n")
    );
    assert_eq!(leader_in_endpoint_status(&cluster).await, target_id);
    assert_eq!(cluster.leader().await.expect("leader"), target);

    // The new leader takes writes, and the old one is an ordinary follower.
    let put = cluster.etcdctl(&["put", "moved", "yes"]).await;
    assert_eq!(put.expect_stdout(), "OK\n");
    assert_eq!(
        cluster
            .member_etcdctl(leader, &["get", "moved", "--print-value-only"])
            .await
            .expect_stdout(),
        "yes\n"
    );

    // Moving leadership to the leader itself changes nothing, as in etcd.
    assert_eq!(
        move_leader(&cluster, target_id).await,
        format!("Leadership transferred from {target_id:x} to {target_id:x}\n")
    );
    assert_eq!(leader_in_endpoint_status(&cluster).await, target_id);

    // And back to the first leader.
    assert_eq!(
        move_leader(&cluster, leader_id).await,
        format!("Leadership transferred from {target_id:x} to {leader_id:x}\n")
    );
    assert_eq!(leader_in_endpoint_status(&cluster).await, leader_id);
}

/// How long `member add` may be refused while the cluster is young: etcd adds a member only once
/// every member has been connected for five seconds ("etcdserver: unhealthy cluster").
const MEMBER_ADD_TIMEOUT: Duration = Duration::from_secs(20);

/// `etcdctl member add learner --learner`, for a learner that is never started.
async fn add_learner(cluster: &TestCluster) -> ferrokv_e2e::EtcdctlOutput {
    let deadline = Instant::now() + MEMBER_ADD_TIMEOUT;
    loop {
        let added = cluster
            .etcdctl(&[
                "member",
                "add",
                "learner",
                "--learner",
                "--peer-urls=http://127.0.0.1:1",
            ])
            .await;
        if added.success()
            || !added.stderr.contains("unhealthy cluster")
            || Instant::now() >= deadline
        {
            return added;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn move_leader_sent_to_a_follower_or_naming_a_non_member_fails_with_etcds_errors() {
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let leader = cluster.leader().await.expect("leader");
    let leader_id = cluster.member_id(leader).await.expect("leader id");
    let follower = (leader + 1) % cluster.len();
    let other = (leader + 2) % cluster.len();
    let other_id = cluster.member_id(other).await.expect("member id");

    // The RPC itself, sent to a follower.
    let mut at_follower = cluster.member_client(follower).await.expect("client");
    assert_refused(
        at_follower.move_leader(other_id).await,
        Code::FailedPrecondition,
        "etcdserver: not leader",
    );
    // etcdctl looks for the leader among its endpoints and sends nothing without one.
    let only_follower = cluster
        .member_etcdctl(follower, &["move-leader", &format!("{other_id:x}")])
        .await;
    assert!(
        only_follower
            .expect_failure()
            .contains("Error: no leader endpoint given at"),
        "{only_follower:?}"
    );

    // A target that is not a member, through etcdctl and through the RPC.
    let unknown = cluster.etcdctl(&["move-leader", "1234"]).await;
    assert!(
        unknown
            .expect_failure()
            .contains("Error: etcdserver: bad leader transferee"),
        "{unknown:?}"
    );
    let mut at_leader = cluster.member_client(leader).await.expect("client");
    assert_refused(
        at_leader.move_leader(0x1234).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );

    // A learner is a member but cannot lead. (It is never started: a learner does not count
    // towards the quorum, so the cluster stays available.)
    let added = add_learner(&cluster).await;
    let learner_id = added
        .expect_stdout()
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no member ID in {added:?}"));
    let to_learner = cluster.etcdctl(&["move-leader", &learner_id]).await;
    assert!(
        to_learner
            .expect_failure()
            .contains("Error: etcdserver: bad leader transferee"),
        "{to_learner:?}"
    );

    // None of that moved leadership, and the cluster still takes writes.
    assert_eq!(leader_in_endpoint_status(&cluster).await, leader_id);
    let put = cluster.etcdctl(&["put", "still", "here"]).await;
    assert_eq!(put.expect_stdout(), "OK\n");
}

const WRITERS: usize = 8;
/// Bounds the test's length even if writes never resume.
const MAX_WRITES_PER_WRITER: u64 = 2000;
/// Pause between a writer's requests: keeps the load modest on a 2-core machine while keeping
/// writes in flight throughout each move.
const WRITE_PACING: Duration = Duration::from_millis(10);
/// Pause after a failed write before trying the next member.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Acknowledged writes, after a move, that show writes have resumed.
const WRITES_AFTER_A_MOVE: u64 = 100;
/// How long writes may take to resume after a move.
const RESUME_TIMEOUT: Duration = Duration::from_secs(20);
const PREFIX: &str = "move/";

/// What one writer attempted.
#[derive(Debug, Default)]
struct WriterLog {
    /// Writes the cluster acknowledged: they must survive.
    acknowledged: Vec<(String, String)>,
    /// Writes that failed: they may or may not have happened.
    uncertain: usize,
}

/// Puts unique keys until told to stop, moving to the next member whenever a request fails.
async fn write_until_stopped(
    writer: usize,
    mut members: Vec<KvClient>,
    stop: Arc<AtomicBool>,
    acknowledged_total: Arc<AtomicU64>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut target = writer % members.len();
    for sequence in 0..MAX_WRITES_PER_WRITER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{PREFIX}{writer:02}/{sequence:06}");
        let value = format!("writer {writer} write {sequence}");
        match members[target].put(key.clone(), value.clone(), None).await {
            Ok(_) => {
                log.acknowledged.push((key, value));
                acknowledged_total.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(WRITE_PACING).await;
            }
            Err(_) => {
                log.uncertain += 1;
                target = (target + 1) % members.len();
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    log
}

/// Waits until `count` more writes than `from` have been acknowledged.
async fn wait_for_writes(acknowledged: &AtomicU64, from: u64, count: u64) {
    let deadline = Instant::now() + RESUME_TIMEOUT;
    while acknowledged.load(Ordering::Relaxed) < from + count {
        assert!(
            Instant::now() < deadline,
            "writes did not resume within {RESUME_TIMEOUT:?}: {} acknowledged since",
            acknowledged.load(Ordering::Relaxed) - from
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_while_writes_run_loses_no_acknowledged_write_and_writes_resume() {
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let first_leader = cluster.leader().await.expect("leader");
    let mut ids = Vec::new();
    let mut members = Vec::new();
    for i in 0..cluster.len() {
        ids.push(cluster.member_id(i).await.expect("member id"));
        members.push(cluster.member_client(i).await.expect("client").kv_client());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write_until_stopped(
                w,
                members.clone(),
                stop.clone(),
                acknowledged.clone(),
            ))
        })
        .collect();
    wait_for_writes(&acknowledged, 0, WRITES_AFTER_A_MOVE).await;

    // Two moves: leader -> next member -> the one after, each while the writers write.
    for step in 1..=2 {
        let target = (first_leader + step) % cluster.len();
        let before = acknowledged.load(Ordering::Relaxed);
        hand_leadership_to(&cluster, ids[target]).await;
        wait_for_writes(&acknowledged, before, WRITES_AFTER_A_MOVE).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut expected = BTreeMap::new();
    let mut uncertain = 0;
    for writer in writers {
        let log = writer.await.expect("writer");
        expected.extend(log.acknowledged);
        uncertain += log.uncertain;
    }
    assert!(
        expected.len() >= 3 * WRITES_AFTER_A_MOVE as usize,
        "only {} writes acknowledged",
        expected.len()
    );
    for i in 0..cluster.len() {
        let mut client = cluster.member_client(i).await.expect("client");
        let stored = read_prefix(&mut client, PREFIX).await.expect("read back");
        let lost: Vec<&String> = expected
            .keys()
            .filter(|key| stored.pairs.get(*key) != expected.get(*key))
            .collect();
        assert!(
            lost.is_empty(),
            "member {i} lost {} of {} acknowledged writes ({uncertain} writes failed), e.g. {:?}",
            lost.len(),
            expected.len(),
            &lost[..lost.len().min(5)]
        );
        // Nothing but what the writers attempted.
        assert!(stored.pairs.len() <= expected.len() + uncertain);
    }
}

/// How long writes may be unavailable while leadership cannot move: etcd's leader drops
/// proposals during a transfer but gives it up after one election timeout (1 s here); three
/// allow for a loaded machine.
const STALL_LIMIT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_to_a_stopped_member_fails_and_writes_resume_within_an_election_timeout() {
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let leader = cluster.leader().await.expect("leader");
    let leader_id = cluster.member_id(leader).await.expect("leader id");
    let target = (leader + 1) % cluster.len();
    let target_id = cluster.member_id(target).await.expect("target id");
    cluster.stop(target).await.expect("stop the target");

    // One writer through the leader, recording when each put was acknowledged. A put may fail
    // while leadership is being handed over (etcd drops proposals meanwhile); what matters is
    // how long no put succeeds.
    let mut kv = cluster
        .member_client(leader)
        .await
        .expect("client")
        .kv_client();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acknowledged = vec![Instant::now()];
            let mut failures = Vec::new();
            for n in 0..MAX_WRITES_PER_WRITER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match kv.put(format!("{PREFIX}stalled/{n:06}"), "v", None).await {
                    Ok(_) => acknowledged.push(Instant::now()),
                    Err(error) => failures.push(error.to_string()),
                }
                tokio::time::sleep(WRITE_PACING).await;
            }
            acknowledged.push(Instant::now());
            (acknowledged, failures)
        })
    };
    // Writes the stopped target has not got, so it is behind the leader.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // etcdctl asks every endpoint for its status first, so give it only the leader's.
    let moved = cluster
        .member_etcdctl(leader, &["move-leader", &format!("{target_id:x}")])
        .await;
    moved.expect_failure();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failures) = writer.await.expect("writer");

    assert_eq!(cluster.leader().await.expect("leader"), leader);
    assert_eq!(
        cluster.member_id(leader).await.expect("leader id"),
        leader_id
    );
    let longest_gap = acknowledged
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap < STALL_LIMIT,
        "no write was acknowledged for {longest_gap:?} while leadership could not move \
         ({} writes acknowledged, {} failed: {:?}; move-leader said {:?})",
        acknowledged.len() - 2,
        failures.len(),
        failures.first(),
        moved.stderr
    );
}

/// How long a leader must keep leadership, with every member up, to count as stable: five
/// election timeouts.
const STABLE_FOR: Duration = Duration::from_secs(5);

#[tokio::test]
async fn move_leader_abandoned_by_its_client_leaves_a_leader_that_keeps_leadership() {
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let first = cluster.leader().await.expect("leader");
    let first_id = cluster.member_id(first).await.expect("leader id");
    let target = (first + 1) % cluster.len();
    let target_id = cluster.member_id(target).await.expect("target id");

    // A client that gives up early, as any client with a deadline may. etcd hands leadership
    // over within this deadline; either way the server must be left whole.
    let hurried = cluster
        .etcdctl(&[
            "--command-timeout=300ms",
            "move-leader",
            &format!("{target_id:x}"),
        ])
        .await;
    // Let whatever the abandoned transfer started play out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader_id = leader_in_endpoint_status(&cluster).await;

    // Leadership to the first leader, by a patient client; it must then stay there.
    if leader_id != first_id {
        hand_leadership_to(&cluster, first_id).await;
    }
    let deadline = Instant::now() + STABLE_FOR;
    while Instant::now() < deadline {
        let leader = leader_in_endpoint_status(&cluster).await;
        assert_eq!(
            leader, first_id,
            "leadership left {first_id:x} for {leader:x} with every member up, after a \
             move-leader whose client gave up ({hurried:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let put = cluster.etcdctl(&["put", "stable", "yes"]).await;
    assert_eq!(put.expect_stdout(), "OK\n");
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) member `i`'s process.
fn freeze(cluster: &TestCluster, i: usize, frozen: bool) {
    let pid = cluster.pid(i).expect("member is running");
    let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill(2) on a child the cluster has not reaped, so the pid is still its.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "signalling member {i}");
}

/// The Raft term member `i` reports in Maintenance.Status, which it answers on its own.
async fn raft_term(cluster: &TestCluster, i: usize) -> u64 {
    let mut client = cluster.member_client(i).await.expect("client");
    client.status().await.expect("status").raft_term()
}

#[tokio::test]
async fn after_move_leader_the_old_leader_cut_off_alone_does_not_raise_its_term() {
    // ferrokv campaigns only after a pre-vote, as etcd does with --pre-vote (on by default from
    // etcd 3.5); Debian's etcd 3.4 has it off, so its cut-off member does raise its term.
    if ferrokv_e2e::binaries::server_is_etcd() {
        return;
    }
    let mut cluster = TestCluster::start(3).await.expect("start 3 members");
    let old = cluster.leader().await.expect("leader");
    let target = (old + 1) % cluster.len();
    let other = (old + 2) % cluster.len();
    let target_id = cluster.member_id(target).await.expect("target id");
    hand_leadership_to(&cluster, target_id).await;

    // The old leader hears from nobody for four election timeouts.
    let term = raft_term(&cluster, old).await;
    freeze(&cluster, target, true);
    freeze(&cluster, other, true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let term_alone = raft_term(&cluster, old).await;
    freeze(&cluster, target, false);
    freeze(&cluster, other, false);

    assert_eq!(
        term_alone, term,
        "the old leader campaigned on its own while cut off, as if it had no pre-vote"
    );
    // The leader itself was frozen for four election timeouts: when everyone resumes, the
    // followers may rightly elect another one. What matters is that the cluster has a leader.
    cluster
        .leader()
        .await
        .expect("a leader after everyone resumes");
}
