//! Crash safety of a 3-member cluster: while 16 clients write, members are SIGKILLed — the
//! leader, then a follower, then all three at once — and restarted. Every write a client saw
//! acknowledged must survive on every member; a write that failed may or may not have happened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient};
use ferrokv_e2e::keyspace::{read_prefix, read_prefix_at};
use ferrokv_e2e::TestCluster;

const WRITERS: usize = 16;
/// Bounds the test's length even if the fault schedule stalls.
const MAX_WRITES_PER_WRITER: u64 = 1500;
/// Pause between a writer's requests: keeps the load (and CPU use on a 2-core machine) modest
/// while keeping writes in flight throughout the fault schedule.
const WRITE_PACING: Duration = Duration::from_millis(20);
/// Pause after a failed write before trying the next member.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
const PREFIX: &str = "crash/";

/// What one writer attempted.
#[derive(Debug, Default)]
struct WriterLog {
    /// Writes the cluster acknowledged: they must survive.
    acknowledged: Vec<(String, String)>,
    /// Writes that returned an error or timed out: they may or may not have been applied.
    uncertain: Vec<(String, String)>,
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
                log.uncertain.push((key, value));
                target = (target + 1) % members.len();
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    log
}

/// Writes continue for `duration` while the cluster is in its current state.
async fn let_writes_run(duration: Duration) {
    tokio::time::sleep(duration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_leader_follower_and_all_members() {
    let mut cluster = TestCluster::builder(3)
        .separate_wal_dir()
        // Small, so snapshots and WAL truncation happen during the test.
        .snapshot_count(1000)
        .start()
        .await
        .expect("start a 3-member cluster");

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_total = Arc::new(AtomicU64::new(0));
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(3));
    let mut writers = Vec::with_capacity(WRITERS);
    for writer in 0..WRITERS {
        let mut members = Vec::with_capacity(cluster.len());
        for endpoint in cluster.endpoints() {
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .expect("connect");
            members.push(client.kv_client());
        }
        writers.push(tokio::spawn(write_until_stopped(
            writer,
            members,
            stop.clone(),
            acknowledged_total.clone(),
        )));
    }

    let_writes_run(Duration::from_secs(2)).await;
    let leader = cluster.leader().await.expect("leader");
    cluster.kill(leader).expect("kill the leader");
    let_writes_run(Duration::from_secs(2)).await;
    cluster.restart(leader).expect("restart the old leader");
    cluster
        .wait_healthy()
        .await
        .expect("healthy after leader restart");
    let_writes_run(Duration::from_secs(1)).await;

    let leader = cluster.leader().await.expect("leader");
    let follower = (leader + 1) % cluster.len();
    cluster.kill(follower).expect("kill a follower");
    let_writes_run(Duration::from_secs(2)).await;
    cluster.restart(follower).expect("restart the follower");
    cluster
        .wait_healthy()
        .await
        .expect("healthy after follower restart");
    let_writes_run(Duration::from_secs(1)).await;

    let acknowledged_before_total_loss = acknowledged_total.load(Ordering::Relaxed);
    cluster.kill_all().expect("kill every member");
    let_writes_run(Duration::from_millis(500)).await;
    for i in 0..cluster.len() {
        cluster.restart(i).expect("restart");
    }
    cluster
        .wait_healthy()
        .await
        .expect("healthy after total loss");
    let_writes_run(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    let mut attempted = BTreeMap::new();
    for writer in writers {
        let log = writer.await.expect("writer task");
        attempted.extend(log.uncertain.iter().cloned());
        attempted.extend(log.acknowledged.iter().cloned());
        acknowledged.extend(log.acknowledged);
    }
    // A test that acknowledged nothing, or nothing after the total loss, would prove nothing.
    assert!(
        acknowledged.len() > 500,
        "only {} writes were acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged_total.load(Ordering::Relaxed) > acknowledged_before_total_loss,
        "no write was acknowledged after every member restarted"
    );

    eprintln!(
        "crash test: {} writes acknowledged, {} uncertain",
        acknowledged.len(),
        attempted.len() - acknowledged.len()
    );

    // Members are compared at one revision: a write that timed out on the client may still be
    // committed later, so two reads at "now" could legitimately differ.
    let mut client = cluster.member_client(0).await.expect("member client");
    let reference = read_prefix(&mut client, PREFIX)
        .await
        .expect("reading the reference view");
    for i in 0..cluster.len() {
        let mut client = cluster.member_client(i).await.expect("member client");
        let view = read_prefix_at(&mut client, PREFIX, reference.revision)
            .await
            .unwrap_or_else(|error| panic!("reading from {}: {error:#}", cluster.name(i)));
        let lost: Vec<_> = acknowledged
            .iter()
            .filter(|&(key, value)| view.pairs.get(key) != Some(value))
            .collect();
        assert!(
            lost.is_empty(),
            "{} lost or changed {} of {} acknowledged writes, e.g. {:?}",
            cluster.name(i),
            lost.len(),
            acknowledged.len(),
            &lost[..lost.len().min(5)]
        );
        let invented: Vec<_> = view
            .pairs
            .iter()
            .filter(|&(key, value)| attempted.get(key) != Some(value))
            .collect();
        assert!(
            invented.is_empty(),
            "{} holds {} pairs no client wrote, e.g. {:?}",
            cluster.name(i),
            invented.len(),
            &invented[..invented.len().min(5)]
        );
        assert!(
            view == reference,
            "{} and {} disagree at revision {} ({} vs {} keys)",
            cluster.name(0),
            cluster.name(i),
            reference.revision,
            reference.pairs.len(),
            view.pairs.len()
        );
    }
}
