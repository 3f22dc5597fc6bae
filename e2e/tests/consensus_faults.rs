//! Faults the Raft layer must get right, each pinned by a test that fails on a server that gets
//! it wrong:
//!
//! - a leader cut off from every other member steps down within two election timeouts and
//!   stops renewing leases, while the majority elects a leader and takes writes; after healing
//!   there is one leader and the old one catches up;
//! - writes sent to followers while the leader is SIGKILLed again and again are applied at most
//!   once: no key written once has a second version, and a create-if-absent transaction that
//!   created its key never answers that the key already existed;
//! - 128 concurrent puts of 1.5 MB values all commit under the leader they started with, on
//!   every member;
//! - a member SIGKILLed while it receives or installs a snapshot restarts and catches up;
//! - a member removed and added again with an empty data dir, and a new fourth member, join
//!   from a snapshot of a compacted history and stay up;
//! - `etcdctl move-leader` to a caught-up member completes within two election timeouts.
//!
//! Every member runs with `--heartbeat-interval 100 --election-timeout 1000`, etcd's defaults,
//! and every test passes against etcd (`FERROKV_E2E_SERVER=/usr/bin/etcd`). Each prints what it
//! measured (`cargo test -- --nocapture` shows it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, StatusResponse, Txn, TxnOp,
};
use ferrokv_e2e::{EtcdctlOutput, HostCluster, TestCluster};

/// `--election-timeout` of every cluster here (etcd's default), in milliseconds.
const ELECTION_TIMEOUT_MS: u64 = 1000;

/// A client of the one member at `endpoint` whose requests time out after `timeout`.
async fn connect(endpoint: &str, timeout: Duration) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(timeout);
    Ok(Client::connect([endpoint], Some(options)).await?)
}

/// Maintenance.Status of member `i` of a loopback cluster.
async fn status(cluster: &TestCluster, i: usize) -> anyhow::Result<StatusResponse> {
    let mut client = connect(&cluster.endpoint(i), Duration::from_secs(5)).await?;
    Ok(client.status().await?)
}

/// The member ID in a Status answer's header.
fn member_id_of(status: &StatusResponse) -> u64 {
    status.header().map_or(0, |header| header.member_id())
}

/// How many keys under `prefix` the member at `endpoint` holds in its own copy (a serializable
/// count, which a follower answers without asking the leader).
async fn local_count(endpoint: &str, prefix: &str) -> anyhow::Result<i64> {
    let mut client = connect(endpoint, Duration::from_secs(5)).await?;
    let options = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    Ok(client.get(prefix, Some(options)).await?.count())
}

/// Waits until member `i` holds `expected` keys under `prefix`; how long that took. Panics with
/// the last count (or error) after `bound`.
async fn wait_for_count(
    cluster: &TestCluster,
    i: usize,
    prefix: &str,
    expected: i64,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let count = local_count(&cluster.endpoint(i), prefix).await;
        if matches!(count, Ok(n) if n == expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{} holds {count:?} keys under {prefix:?}, not {expected}, {bound:?} on; log tail:\n{}",
            cluster.name(i),
            cluster.log_tail(i)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Concurrent clients [`write_history`] writes with. Raft entries, not keys, are what it must
/// produce, and a server that batches concurrent writes into one entry makes fewer entries per
/// second the more writers there are; eight keep etcd near its best rate too.
const BULK_WRITERS: usize = 8;
/// Keys [`write_history`] writes between two looks at the Raft index.
const BULK_ROUND: usize = 500;
/// How long [`write_history`] keeps sending a put that fails: the history is the test's set-up,
/// not what it tests, so a server that loses its leader under the load gets time to elect one.
const BULK_PUT_PATIENCE: Duration = Duration::from_secs(30);

/// Puts keys `<prefix><n>` (n = 0, 1, ...) with 100-byte values through member `via`, each in
/// its own request, with [`BULK_WRITERS`] concurrent clients, until the Raft index `via` reports
/// has reached `index`; at most `max_keys`. Returns how many keys it wrote and how long that
/// took. Panics if a key cannot be written (a failed put is sent again) or `max_keys` keys do
/// not get the index there.
async fn write_history(
    cluster: &TestCluster,
    via: usize,
    prefix: &str,
    index: u64,
    max_keys: usize,
) -> (usize, Duration) {
    let started = Instant::now();
    let mut client = connect(&cluster.endpoint(via), Duration::from_secs(10))
        .await
        .expect("connect the bulk writers");
    let mut written = 0;
    loop {
        let reached = client.status().await.expect("status").raft_index();
        if reached >= index {
            return (written, started.elapsed());
        }
        assert!(
            written < max_keys,
            "{written} keys took the Raft index only to {reached}, not {index}"
        );
        let round = written..written + BULK_ROUND;
        let writers: Vec<_> = (0..BULK_WRITERS)
            .map(|w| {
                let mut kv = client.kv_client();
                let prefix = prefix.to_string();
                let keys = round.clone().skip(w).step_by(BULK_WRITERS);
                tokio::spawn(async move {
                    for n in keys {
                        let key = format!("{prefix}{n:06}");
                        let value = format!("{n:06} {}", "v".repeat(93));
                        let first = Instant::now();
                        while let Err(error) = kv.put(key.as_str(), value.as_str(), None).await {
                            assert!(
                                first.elapsed() < BULK_PUT_PATIENCE,
                                "put {key} failing for {BULK_PUT_PATIENCE:?}: {error}"
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("bulk writer");
        }
        written = round.end;
    }
}

// ---------------------------------------------------------------------------------------------
// An isolated leader.

/// An isolated leader must know it leads no one within two election timeouts: etcd's leader
/// steps down after one election timeout without hearing from a quorum (CheckQuorum). The rest
/// is slack for a loaded 2-core machine.
const STEP_DOWN_BOUND: Duration = Duration::from_secs(5);
/// TTL of the lease the isolated member is asked to renew: far longer than the isolation, so a
/// refused renewal never means the lease simply expired.
const LEASE_TTL: i64 = 30;
/// How long a keep-alive sent to the isolated member may take to be answered or refused: etcd
/// forwards it to the leader, waiting for one for its request timeout (5 s + 2 election
/// timeouts = 7 s) before it fails.
const KEEP_ALIVE_PATIENCE: Duration = Duration::from_secs(12);
/// How long the majority may take to elect a leader and take a write, and the old leader to
/// catch up after healing.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Writes the majority makes while the old leader is cut off.
const MAJORITY_WRITES: usize = 20;
const ISOLATION_PREFIX: &str = "isolated/";

/// Sends one keep-alive for `lease` to the member at `endpoint`: `Ok(ttl)` if it renewed the
/// lease, `Err(how it failed)` otherwise.
async fn keep_alive_once(endpoint: &str, lease: i64) -> Result<i64, String> {
    let attempt = async {
        let mut client = connect(endpoint, KEEP_ALIVE_PATIENCE)
            .await
            .map_err(|e| format!("{e:#}"))?;
        // Answers Ok only if the first response renewed the lease (positive TTL).
        let (mut keeper, mut responses) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        // Once more, for the TTL it grants.
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match responses.message().await {
            Ok(Some(response)) => Ok(response.ttl()),
            // The first renewal was granted; that is what matters.
            _ => Ok(LEASE_TTL),
        }
    };
    match tokio::time::timeout(KEEP_ALIVE_PATIENCE, attempt).await {
        Ok(Ok(ttl)) if ttl > 0 => Ok(ttl),
        Ok(Ok(ttl)) => Err(format!("answered TTL {ttl}")),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {KEEP_ALIVE_PATIENCE:?}")),
    }
}

/// Writes through `member` until one write succeeds; how long that took. Each attempt gives up
/// after a second, so a write stuck on the lost leader does not hide a new one.
async fn first_write(cluster: &HostCluster, member: usize, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut client) = cluster.member_client(member, Duration::from_secs(1)).await {
            if client.put(key, "first", None).await.is_ok() {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "the majority accepted no write through {} for {RECOVERY_BOUND:?}",
            cluster.name(member)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pairs under `prefix` in member `i`'s own copy (one serializable Range; small prefixes).
async fn local_pairs(
    cluster: &HostCluster,
    i: usize,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut client = cluster.member_client(i, Duration::from_secs(5)).await?;
    let options = GetOptions::new().with_prefix().with_serializable();
    let response = client.get(prefix, Some(options)).await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_steps_down_and_refuses_keep_alives() {
    let mut cluster = HostCluster::builder(3)
        .timing(100, ELECTION_TIMEOUT_MS)
        .start()
        .await
        .expect("start the cluster");
    let old = cluster.leader().await.expect("leader");
    let majority: Vec<usize> = (0..cluster.len()).filter(|&i| i != old).collect();
    let mut client = cluster
        .member_client(old, Duration::from_secs(5))
        .await
        .expect("client of the leader");
    let lease = client
        .lease_grant(LEASE_TTL, None)
        .await
        .expect("grant")
        .id();
    // The check below can tell a renewal from a refusal: the leader renews.
    let renewed = keep_alive_once(&cluster.endpoint(old), lease).await;
    assert!(
        matches!(renewed, Ok(ttl) if ttl > 0),
        "a keep-alive sent to the connected leader: {renewed:?}"
    );

    cluster.isolate(old).expect("isolate the leader");
    let cut = Instant::now();

    let isolated_side = async {
        let mut last = None;
        let stepped_down = loop {
            match cluster.status(old).await {
                Ok(status) if status.leader != status.member_id => {
                    break Some((cut.elapsed(), status));
                }
                outcome => last = Some(outcome.map_err(|e| format!("{e:#}"))),
            }
            if cut.elapsed() > STEP_DOWN_BOUND {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let sent = cut.elapsed();
        let renewal = keep_alive_once(&cluster.endpoint(old), lease).await;
        (stepped_down, last, sent, renewal, cut.elapsed() - sent)
    };
    let majority_side = async {
        let new_leader = cluster
            .leader_among(&majority, RECOVERY_BOUND)
            .await
            .expect("the majority agrees on a leader");
        let elected = cut.elapsed();
        let writer = majority[0];
        let first_key = format!("{ISOLATION_PREFIX}first");
        first_write(&cluster, writer, &first_key).await;
        let accepted = cut.elapsed();
        let mut client = cluster
            .member_client(writer, Duration::from_secs(5))
            .await
            .expect("client");
        let mut acknowledged = BTreeMap::from([(first_key, "first".to_string())]);
        for n in 0..MAJORITY_WRITES {
            let (key, value) = (format!("{ISOLATION_PREFIX}{n:03}"), format!("value {n}"));
            client
                .put(key.as_str(), value.as_str(), None)
                .await
                .unwrap_or_else(|e| panic!("majority write {n}: {e}"));
            acknowledged.insert(key, value);
        }
        (new_leader, elected, accepted, acknowledged)
    };
    let ((stepped_down, last, sent, renewal, answered_after), majority_outcome) =
        tokio::join!(isolated_side, majority_side);
    let (new_leader, elected, accepted, acknowledged) = majority_outcome;
    eprintln!(
        "isolated leader {}: stepped down {:x?}; keep-alive sent {sent:?} after the cut: \
         {renewal:?} after {answered_after:?}; the majority elected {} after {elected:?} and \
         took a write after {accepted:?}",
        cluster.name(old),
        stepped_down,
        cluster.name(new_leader),
    );
    let mut faults = Vec::new();
    if stepped_down.is_none() {
        faults.push(format!(
            "{} still reported itself leader {STEP_DOWN_BOUND:?} after it was cut off from \
             every other member (last status {last:x?})",
            cluster.name(old)
        ));
    }
    if let Ok(ttl) = renewal {
        faults.push(format!(
            "{} renewed lease {lease:x} (TTL {ttl}) {sent:?} after it was cut off, while the \
             majority under {} may let it expire",
            cluster.name(old),
            cluster.name(new_leader)
        ));
    }
    assert!(faults.is_empty(), "{}", faults.join("; "));

    cluster.heal().expect("heal");
    let healed = Instant::now();
    let all: Vec<usize> = (0..cluster.len()).collect();
    let agreed = cluster
        .leader_among(&all, RECOVERY_BOUND)
        .await
        .expect("one leader after healing");
    let mut leaders = Vec::new();
    for i in 0..cluster.len() {
        let status = cluster.status(i).await.expect("status");
        if status.leader == status.member_id {
            leaders.push(cluster.name(i).to_string());
        }
    }
    assert_eq!(
        leaders,
        [cluster.name(agreed)],
        "after healing exactly one member must report itself leader"
    );
    let last_key = acknowledged.keys().last().expect("writes").clone();
    loop {
        let held = local_pairs(&cluster, old, ISOLATION_PREFIX).await;
        if matches!(&held, Ok(pairs) if pairs.contains_key(&last_key)) {
            let pairs = held.expect("checked");
            assert_eq!(
                pairs,
                acknowledged,
                "{} after catching up holds other writes than the majority acknowledged",
                cluster.name(old)
            );
            break;
        }
        assert!(
            healed.elapsed() < RECOVERY_BOUND,
            "{} has not caught up {RECOVERY_BOUND:?} after healing: {held:?}",
            cluster.name(old)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "after healing: leader {}, old leader caught up after {:?}",
        cluster.name(agreed),
        healed.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Writes to followers while the leader is killed, again and again.

const ONCE_WRITERS: usize = 16;
/// The leader is SIGKILLed (and restarted at once) this long after the previous kill.
const KILL_PERIOD: Duration = Duration::from_millis(2500);
/// A new leader lives at least this long after the test found it, so that requests are in
/// flight through it when it dies.
const MIN_REIGN: Duration = Duration::from_millis(500);
/// How long the leader keeps being killed.
const KILLING_FOR: Duration = Duration::from_secs(20);
/// Client deadline of each request: longer than an election, so a request the server retries
/// under a new leader can still be answered.
const ONCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between a writer's requests: keeps the load modest on a 2-core machine while keeping
/// requests in flight at every kill.
const ONCE_PACING: Duration = Duration::from_millis(20);
/// Pause after a failed request before trying the next follower.
const ONCE_BACKOFF: Duration = Duration::from_millis(100);
/// Bounds the test's length even if the kills stall.
const ONCE_MAX_OPS_PER_WRITER: u64 = 2000;
/// After the last restart, requests a server may still be retrying get this long to land
/// before the keys are read.
const SETTLE: Duration = Duration::from_secs(3);
const ONCE_PREFIX: &str = "once/";

/// What one writer sent and what it was told. Every key is written by exactly one request.
#[derive(Debug, Default)]
struct OnceLog {
    /// Puts answered OK.
    put: Vec<(String, String)>,
    /// Create-if-absent transactions answered `succeeded`.
    created: Vec<(String, String)>,
    /// Create-if-absent transactions answered "not succeeded": the key existed — impossible for
    /// a key nobody else writes, unless the server applied the transaction twice.
    refused: Vec<(String, String)>,
    /// Requests that failed or timed out: applied or not.
    unknown: Vec<(String, String)>,
}

/// Writes unique keys through whichever member is not `leader` (puts and, every other request,
/// create-if-absent transactions) until told to stop.
async fn write_to_followers(
    writer: usize,
    mut members: Vec<KvClient>,
    leader: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> OnceLog {
    let mut log = OnceLog::default();
    let mut target = writer % members.len();
    for sequence in 0..ONCE_MAX_OPS_PER_WRITER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if target == leader.load(Ordering::Relaxed) {
            target = (target + 1) % members.len();
        }
        let key = format!("{ONCE_PREFIX}{writer:02}/{sequence:06}");
        let value = format!("writer {writer} request {sequence}");
        let answer = if sequence % 2 == 1 {
            let create = Txn::new()
                .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)]);
            members[target]
                .txn(create)
                .await
                .map(|response| Some(response.succeeded()))
        } else {
            members[target]
                .put(key.as_str(), value.as_str(), None)
                .await
                .map(|_| None)
        };
        match answer {
            Ok(None) => log.put.push((key, value)),
            Ok(Some(true)) => log.created.push((key, value)),
            Ok(Some(false)) => log.refused.push((key, value)),
            Err(_) => {
                log.unknown.push((key, value));
                target = (target + 1) % members.len();
                tokio::time::sleep(ONCE_BACKOFF).await;
                continue;
            }
        }
        tokio::time::sleep(ONCE_PACING).await;
    }
    log
}

/// Every key under `prefix` with its value and version, read linearizably page by page at one
/// revision.
async fn read_versions(
    client: &mut Client,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, (String, i64)>> {
    let mut range_end = prefix.as_bytes().to_vec();
    *range_end.last_mut().expect("non-empty prefix") += 1;
    let mut pairs = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let options = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(1000)
            .with_revision(revision);
        let page = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |header| header.revision());
        }
        for kv in page.kvs() {
            pairs.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.version(),
                ),
            );
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(pairs),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_survive_leader_kills_applied_once() {
    let mut cluster = TestCluster::builder(3)
        .start()
        .await
        .expect("start a 3-member cluster");
    let leader = Arc::new(AtomicUsize::new(cluster.leader().await.expect("leader")));
    let stop = Arc::new(AtomicBool::new(false));
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(ONCE_REQUEST_TIMEOUT);
    let mut writers = Vec::with_capacity(ONCE_WRITERS);
    for writer in 0..ONCE_WRITERS {
        let mut members = Vec::with_capacity(cluster.len());
        for endpoint in cluster.endpoints() {
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .expect("connect");
            members.push(client.kv_client());
        }
        writers.push(tokio::spawn(write_to_followers(
            writer,
            members,
            leader.clone(),
            stop.clone(),
        )));
    }

    // Every KILL_PERIOD, SIGKILL whichever member leads then and restart it at once.
    let started = Instant::now();
    let mut kills = 0;
    let mut next_kill = started + KILL_PERIOD;
    while started.elapsed() < KILLING_FOR {
        let current = cluster.leader().await.expect("a leader between kills");
        leader.store(current, Ordering::Relaxed);
        // Requests reach the new leader through the followers for a while before it dies.
        let earliest = Instant::now() + MIN_REIGN;
        tokio::time::sleep_until(next_kill.max(earliest).into()).await;
        cluster.kill(current).expect("SIGKILL the leader");
        cluster.restart(current).expect("restart the killed leader");
        kills += 1;
        next_kill = Instant::now() + KILL_PERIOD;
    }
    cluster
        .wait_healthy()
        .await
        .expect("healthy after the kills");
    leader.store(cluster.leader().await.expect("leader"), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("writer task"));
    }
    tokio::time::sleep(SETTLE).await;

    let mut client = cluster.client().await.expect("client");
    let stored = read_versions(&mut client, ONCE_PREFIX)
        .await
        .expect("read the keys back");
    let count = |f: fn(&OnceLog) -> usize| logs.iter().map(f).sum::<usize>();
    let (put, created, refused, unknown) = (
        count(|l| l.put.len()),
        count(|l| l.created.len()),
        count(|l| l.refused.len()),
        count(|l| l.unknown.len()),
    );
    let rewritten: Vec<_> = stored
        .iter()
        .filter(|(_, (_, version))| *version > 1)
        .collect();
    eprintln!(
        "{kills} leader kills in {:?}: {put} puts acknowledged, {created} creates succeeded, \
         {refused} creates answered \"key exists\", {unknown} requests failed; {} keys stored, \
         {} of them with version > 1",
        started.elapsed(),
        stored.len(),
        rewritten.len()
    );
    assert!(kills >= 5, "only {kills} leader kills");
    assert!(
        put + created > 200,
        "only {} writes acknowledged",
        put + created
    );

    let mut faults = Vec::new();
    if !rewritten.is_empty() {
        faults.push(format!(
            "{} keys written by one request each have version > 1 (applied more than once), \
             e.g. {:?}",
            rewritten.len(),
            &rewritten[..rewritten.len().min(5)]
        ));
    }
    let lost: Vec<_> = logs
        .iter()
        .flat_map(|log| log.put.iter().chain(&log.created))
        .filter(|(key, value)| stored.get(key).map(|(v, _)| v) != Some(value))
        .collect();
    if !lost.is_empty() {
        faults.push(format!(
            "{} acknowledged writes are missing or changed, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    let refusals: Vec<_> = logs
        .iter()
        .flat_map(|log| &log.refused)
        .map(|(key, value)| (key, stored.get(key).map(|(v, _)| v == value)))
        .collect();
    if !refusals.is_empty() {
        faults.push(format!(
            "{} create-if-absent transactions on keys nobody else writes answered \"key \
             exists\" (key holds the transaction's own value: {} of them), e.g. {:?}",
            refusals.len(),
            refusals
                .iter()
                .filter(|(_, own)| *own == Some(true))
                .count(),
            &refusals[..refusals.len().min(5)]
        ));
    }
    let attempted: BTreeMap<&String, &String> = logs
        .iter()
        .flat_map(|log| log.put.iter().chain(&log.created).chain(&log.unknown))
        .chain(logs.iter().flat_map(|log| &log.refused))
        .map(|(key, value)| (key, value))
        .collect();
    let invented: Vec<_> = stored
        .iter()
        .filter(|(key, (value, _))| attempted.get(key) != Some(&value))
        .collect();
    if !invented.is_empty() {
        faults.push(format!(
            "{} stored pairs no request wrote, e.g. {:?}",
            invented.len(),
            &invented[..invented.len().min(5)]
        ));
    }
    assert!(faults.is_empty(), "{}", faults.join("; "));
}

// ---------------------------------------------------------------------------------------------
// Large values.

/// Just under etcd's default `--max-request-bytes` (1.5 MiB = 1,572,864 bytes), with room for
/// the key and the request's framing.
const LARGE_VALUE_BYTES: usize = 1_500_000;
const LARGE_VALUES: usize = 128;
/// Clients putting concurrently, two values each, spread over the members.
const LARGE_CLIENTS: usize = 64;
/// Client deadline of a large put: the server, not the client, must decide whether it commits.
const LARGE_PUT_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a large put is sent while the server answers `etcdserver: request timed out`: etcd
/// gives up waiting after 7 s (5 s + 2 election timeouts) and does on a loaded 2-core machine,
/// the write still in its log. Any other error fails the test at once.
const LARGE_PUT_ATTEMPTS: usize = 3;
/// etcd's answer to a request it stopped waiting for.
const REQUEST_TIMED_OUT: &str = "etcdserver: request timed out";
/// How long a follower may take to hold every value after the last put was acknowledged.
const LARGE_CATCH_UP_BOUND: Duration = Duration::from_secs(30);
const LARGE_PREFIX: &str = "large/";

/// The `n`th large value: every byte the same, a different byte per value.
fn large_value(n: usize) -> Vec<u8> {
    vec![b'a' + (n % 26) as u8; LARGE_VALUE_BYTES]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_commit_with_one_leader() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let before = status(&cluster, leader).await.expect("status");
    let (leader_id, term) = (member_id_of(&before), before.raft_term());

    let started = Instant::now();
    let mut clients = Vec::with_capacity(LARGE_CLIENTS);
    for c in 0..LARGE_CLIENTS {
        let endpoint = cluster.endpoint(c % cluster.len());
        clients.push(tokio::spawn(async move {
            let (mut failures, mut timeouts) = (Vec::new(), 0);
            let mut kv = match connect(&endpoint, LARGE_PUT_TIMEOUT).await {
                Ok(client) => client.kv_client(),
                Err(error) => return (vec![format!("client {c}: {error:#}")], 0),
            };
            for n in (c..LARGE_VALUES).step_by(LARGE_CLIENTS) {
                let key = format!("{LARGE_PREFIX}{n:03}");
                for attempt in 1..=LARGE_PUT_ATTEMPTS {
                    let put_started = Instant::now();
                    match kv.put(key.as_str(), large_value(n), None).await {
                        Ok(_) => break,
                        Err(error)
                            if error.to_string().contains(REQUEST_TIMED_OUT)
                                && attempt < LARGE_PUT_ATTEMPTS =>
                        {
                            timeouts += 1;
                        }
                        Err(error) => {
                            failures.push(format!(
                                "{key} through {endpoint}, attempt {attempt}, after {:?}: {error}",
                                put_started.elapsed()
                            ));
                            break;
                        }
                    }
                }
            }
            (failures, timeouts)
        }));
    }
    let (mut failures, mut timeouts) = (Vec::new(), 0);
    for client in clients {
        let (failed, timed_out) = client.await.expect("client task");
        failures.extend(failed);
        timeouts += timed_out;
    }
    let written = started.elapsed();
    let mut terms = Vec::new();
    for i in 0..cluster.len() {
        let after = status(&cluster, i).await.expect("status");
        terms.push((after.raft_term(), after.leader()));
    }
    eprintln!(
        "{LARGE_VALUES} puts of {LARGE_VALUE_BYTES} bytes from {LARGE_CLIENTS} clients took \
         {written:?}, {timeouts} sent again after \"{REQUEST_TIMED_OUT}\", {} failed; term \
         before {term} (leader {leader_id:x}), (term, leader) after: {terms:x?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {LARGE_VALUES} large puts failed, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
    assert!(
        terms.iter().all(|&t| t == (term, leader_id)),
        "the cluster elected a leader while committing large values: term {term} with leader \
         {leader_id:x} before, (term, leader) of each member after: {terms:x?}"
    );

    for i in 0..cluster.len() {
        let took = wait_for_count(
            &cluster,
            i,
            LARGE_PREFIX,
            LARGE_VALUES as i64,
            LARGE_CATCH_UP_BOUND,
        )
        .await;
        let mut client = connect(&cluster.endpoint(i), Duration::from_secs(10))
            .await
            .expect("client");
        for n in [0, LARGE_VALUES - 1] {
            let key = format!("{LARGE_PREFIX}{n:03}");
            let got = client
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .expect("serializable get");
            assert!(
                got.kvs().first().map(|kv| kv.value()) == Some(large_value(n).as_slice()),
                "{} holds another value for {key}",
                cluster.name(i)
            );
        }
        eprintln!(
            "{} holds all {LARGE_VALUES} values ({took:?} after the last put)",
            cluster.name(i)
        );
    }
    let mut client = cluster.client().await.expect("client");
    client
        .put("large-done", "small", None)
        .await
        .expect("a small put after the large ones");
    let after = status(&cluster, leader).await.expect("status");
    assert_eq!(
        (after.raft_term(), member_id_of(&after)),
        (term, leader_id),
        "the leader changed by the end"
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

/// `--snapshot-count` of the snapshot tests: a snapshot every 1000 entries.
const SNAPSHOT_COUNT: u64 = 1000;
/// Entries a member must be behind before only a snapshot can catch it up: after a snapshot,
/// etcd keeps the 5000 entries before it in the log for slow followers (ferrokv at most as
/// many), and a snapshot comes every [`SNAPSHOT_COUNT`] entries; 500 more for good measure.
const SNAPSHOT_GAP: u64 = 5000 + SNAPSHOT_COUNT + 500;
/// The most keys [`write_history`] may need to write the history a test asks for; a server
/// that needs more makes too few Raft entries for the test to mean anything.
const MAX_HISTORY_KEYS: usize = 60_000;
/// When, after each restart, the catching-up follower is SIGKILLed again. The kills stop once
/// it holds every key (nothing is left to install).
const SNAPSHOT_KILLS: [KillAt; 6] = [
    KillAt::StoreGrowing(Duration::ZERO),
    KillAt::StoreGrowing(Duration::from_millis(100)),
    KillAt::StoreGrowing(Duration::from_millis(300)),
    KillAt::StoreGrowing(Duration::from_millis(700)),
    KillAt::Started(Duration::from_millis(200)),
    KillAt::Started(Duration::from_millis(500)),
];
/// Growth of the follower's store (its data dir outside the WAL) that shows a snapshot
/// arriving or being installed: a small part of the snapshot, which holds thousands of keys
/// with 100-byte values (a few MB).
const STORE_GROWTH: u64 = 512 << 10;
/// How often a kill waiting for the store to grow asks whether the follower has caught up.
const CAUGHT_UP_PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// How long a kill waits for the store to grow before it kills anyway.
const STORE_GROWTH_WAIT: Duration = Duration::from_secs(15);
/// How long the restarted follower may take to be healthy and to hold every key.
const SNAPSHOT_CATCH_UP_BOUND: Duration = Duration::from_secs(40);
const SNAPSHOT_PREFIX: &str = "snap/";

/// When a kill falls.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the member's process started.
    Started(Duration),
    /// This long after its store grew by [`STORE_GROWTH`] since the start: while it receives
    /// or installs a snapshot, whether it writes the snapshot down as it arrives or at the end.
    StoreGrowing(Duration),
}

/// Bytes of the files under `dir`, leaving out directories named `wal` (etcd's and ferrokv's
/// WAL dirs, whose segments are preallocated).
fn store_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() && entry.file_name() != "wal" => store_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Member `i`'s count of keys under `prefix`, if it answers within half a second.
async fn quick_count(cluster: &TestCluster, i: usize, prefix: &str) -> Option<i64> {
    tokio::time::timeout(
        Duration::from_millis(500),
        local_count(&cluster.endpoint(i), prefix),
    )
    .await
    .ok()?
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_killed_while_installing_snapshot_restarts_and_catches_up() {
    let mut cluster = TestCluster::builder(3)
        .snapshot_count(SNAPSHOT_COUNT)
        .start()
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let follower = (leader + 1) % cluster.len();
    let stopped_at = status(&cluster, follower)
        .await
        .expect("status")
        .raft_index();
    cluster.kill(follower).expect("SIGKILL a follower");
    let (keys, took) = write_history(
        &cluster,
        leader,
        SNAPSHOT_PREFIX,
        stopped_at + SNAPSHOT_GAP,
        MAX_HISTORY_KEYS,
    )
    .await;
    let before = status(&cluster, leader).await.expect("status");
    eprintln!(
        "wrote {keys} keys in {took:?} with the follower down: Raft index {stopped_at} -> {}",
        before.raft_index()
    );

    let mut kills = Vec::new();
    for kill_at in SNAPSHOT_KILLS {
        let store = cluster.data_dir(follower).to_path_buf();
        let before = store_bytes(&store);
        cluster.restart(follower).expect("restart the follower");
        let started = Instant::now();
        let mut caught_up = false;
        match kill_at {
            KillAt::Started(delay) => tokio::time::sleep(delay).await,
            KillAt::StoreGrowing(delay) => {
                let mut probed = Instant::now();
                while store_bytes(&store) < before + STORE_GROWTH
                    && started.elapsed() < STORE_GROWTH_WAIT
                {
                    // A follower that caught up in an earlier round has nothing left to grow.
                    if probed.elapsed() > CAUGHT_UP_PROBE_INTERVAL {
                        caught_up = quick_count(&cluster, follower, SNAPSHOT_PREFIX).await
                            == Some(keys as i64);
                        if caught_up {
                            break;
                        }
                        probed = Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(delay).await;
            }
        }
        let at = started.elapsed();
        let grown = store_bytes(&store) as i64 - before as i64;
        cluster.kill(follower).unwrap_or_else(|error| {
            panic!(
                "the follower, restarted after being SIGKILLed while catching up (at {kills:?} \
                 after its starts), exited by itself: {error:#}"
            )
        });
        if caught_up {
            eprintln!("{kill_at:?}: the follower had caught up {at:?} after its start");
            break;
        }
        eprintln!(
            "{kill_at:?}: SIGKILLed the follower {at:?} after its start, its store {grown:+} \
             bytes since"
        );
        kills.push(at);
    }
    cluster.restart(follower).expect("restart the follower");
    let restarted = Instant::now();
    cluster
        .wait_healthy_within(SNAPSHOT_CATCH_UP_BOUND)
        .await
        .expect("the follower is healthy after its last restart");
    wait_for_count(
        &cluster,
        follower,
        SNAPSHOT_PREFIX,
        keys as i64,
        SNAPSHOT_CATCH_UP_BOUND,
    )
    .await;
    let caught_up = restarted.elapsed();
    for i in 0..cluster.len() {
        assert_eq!(
            local_count(&cluster.endpoint(i), SNAPSHOT_PREFIX)
                .await
                .expect("count"),
            keys as i64,
            "{} misses keys",
            cluster.name(i)
        );
    }
    let after = status(&cluster, follower).await.expect("status");
    eprintln!(
        "after {} kills, the follower holds all {keys} keys {caught_up:?} after its last \
         restart; applied index {}",
        kills.len(),
        after.raft_applied_index()
    );
    let mut client = cluster.member_client(follower).await.expect("client");
    client
        .put("snap-done", "yes", None)
        .await
        .expect("a write through the caught-up follower");
}

// ---------------------------------------------------------------------------------------------
// Membership changes over a compacted history.

/// Raft entries written before the membership changes: with [`SNAPSHOT_COUNT`], several
/// thousand more than any member's log keeps (see [`SNAPSHOT_GAP`]), so a joining member can
/// only catch up from a snapshot of a compacted history.
const MEMBERSHIP_HISTORY: u64 = 10_500;
/// How long `member add` / `member remove` may be refused: etcd reconfigures only once every
/// member has been connected for five seconds ("etcdserver: unhealthy cluster").
const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removed etcd member may take to notice and exit.
const REMOVED_EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a joining member may take to hold every key.
const JOIN_CATCH_UP_BOUND: Duration = Duration::from_secs(40);
/// How long every member must stay up once all have joined.
const STAY_UP_WINDOW: Duration = Duration::from_secs(5);
const MEMBERSHIP_PREFIX: &str = "members/";

/// `--initial-cluster` naming members `0..n`.
fn initial_cluster(cluster: &TestCluster, n: usize) -> String {
    (0..n)
        .map(|j| format!("{}={}", cluster.name(j), cluster.peer_url(j)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `etcdctl member <args>` through member `via`, retried while refused (see
/// [`RECONFIGURE_TIMEOUT`]); returns what it printed.
async fn reconfigure(cluster: &TestCluster, via: usize, args: &[&str]) -> String {
    reconfigure_unless_made(cluster, via, args, async |_| false)
        .await
        .stdout
}

/// As [`reconfigure`], except that a refusal `made` says an earlier attempt caused (that
/// attempt made the change, but its answer was lost: its outcome was unknown) ends the retries;
/// returns the output that ended them.
async fn reconfigure_unless_made(
    cluster: &TestCluster,
    via: usize,
    args: &[&str],
    made: impl AsyncFn(&EtcdctlOutput) -> bool,
) -> EtcdctlOutput {
    let started = Instant::now();
    loop {
        let output = cluster.member_etcdctl(via, args).await;
        if output.success() || made(&output).await {
            return output;
        }
        assert!(
            started.elapsed() < RECONFIGURE_TIMEOUT,
            "etcdctl {args:?} refused for {RECONFIGURE_TIMEOUT:?}: {}{}",
            output.stdout,
            output.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Adds stopped member `joiner` to the cluster through member `via` and starts it with an empty
/// data dir and `--initial-cluster-state existing`, the cluster then being members `0..size`.
async fn add_and_start(cluster: &mut TestCluster, via: usize, joiner: usize, size: usize) {
    let peer_url = cluster.peer_url(joiner);
    let peer_urls = format!("--peer-urls={peer_url}");
    let name = cluster.name(joiner).to_string();
    let shared: &TestCluster = cluster;
    let added = reconfigure_unless_made(
        shared,
        via,
        &["member", "add", &name, &peer_urls],
        // The member list tells whether a lost attempt added it.
        async |refused| {
            refused.stderr.contains("Peer URLs already exists")
                && reconfigure(shared, via, &["member", "list"])
                    .await
                    .lines()
                    .any(|l| l.contains(&peer_url))
        },
    )
    .await;
    if added.success() {
        assert!(added.stdout.contains("added to cluster"), "{added:?}");
    }
    match std::fs::remove_dir_all(cluster.data_dir(joiner)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            panic!("emptying {}: {error}", cluster.data_dir(joiner).display())
        }
        _ => {}
    }
    let members = initial_cluster(cluster, size);
    cluster.set_flag(joiner, "--initial-cluster", &members);
    cluster.set_flag(joiner, "--initial-cluster-state", "existing");
    cluster.restart(joiner).expect("start the joining member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_readded_member_and_new_member_stay_up() {
    let mut cluster = TestCluster::builder(4)
        .snapshot_count(SNAPSHOT_COUNT)
        .create()
        .expect("lay out four members");
    let founders = initial_cluster(&cluster, 3);
    for i in 0..3 {
        cluster.set_flag(i, "--initial-cluster", &founders);
        cluster.restart(i).expect("start a founding member");
    }
    cluster
        .wait_healthy()
        .await
        .expect("three healthy founders");
    let leader = cluster.leader().await.expect("leader");
    let (keys, took) = write_history(
        &cluster,
        leader,
        MEMBERSHIP_PREFIX,
        MEMBERSHIP_HISTORY,
        MAX_HISTORY_KEYS,
    )
    .await;
    eprintln!("wrote {keys} keys in {took:?}, {MEMBERSHIP_HISTORY}+ Raft entries");
    let keys = keys as i64;

    // Remove a follower; it stops (etcd exits once it learns it was removed; ferrokv too).
    let removed = (leader + 1) % 3;
    let removed_id = cluster.member_id(removed).await.expect("member id");
    let removed_hex = format!("{removed_id:x}");
    let output = reconfigure_unless_made(
        &cluster,
        leader,
        &["member", "remove", &removed_hex],
        // The member list tells whether a lost attempt removed it.
        async |refused| {
            refused.stderr.contains("member not found")
                && !reconfigure(&cluster, leader, &["member", "list"])
                    .await
                    .contains(&removed_hex)
        },
    )
    .await;
    if output.success() {
        assert!(output.stdout.contains("removed from cluster"), "{output:?}");
    }
    let exit = cluster.wait_exit(removed, REMOVED_EXIT_WAIT).await;
    eprintln!(
        "removed {} ({removed_id:x}); its process: {:?}",
        cluster.name(removed),
        exit.map_err(|_| "still running, killed")
    );

    // Add it again under its name and peer URL, from an empty data dir.
    add_and_start(&mut cluster, leader, removed, 3).await;
    let rejoined = Instant::now();
    cluster
        .wait_healthy_within(JOIN_CATCH_UP_BOUND)
        .await
        .expect("healthy with the re-added member");
    wait_for_count(
        &cluster,
        removed,
        MEMBERSHIP_PREFIX,
        keys,
        JOIN_CATCH_UP_BOUND,
    )
    .await;
    eprintln!(
        "re-added {} holds every key {:?} after its start",
        cluster.name(removed),
        rejoined.elapsed()
    );

    // A fourth member, new to the cluster.
    let leader = cluster.leader().await.expect("leader");
    add_and_start(&mut cluster, leader, 3, 4).await;
    let joined = Instant::now();
    cluster
        .wait_healthy_within(JOIN_CATCH_UP_BOUND)
        .await
        .expect("healthy with the new member");
    wait_for_count(&cluster, 3, MEMBERSHIP_PREFIX, keys, JOIN_CATCH_UP_BOUND).await;
    eprintln!(
        "new member {} holds every key {:?} after its start",
        cluster.name(3),
        joined.elapsed()
    );

    // Everyone stays up, serves every key and takes part in new writes.
    tokio::time::sleep(STAY_UP_WINDOW).await;
    assert_eq!(cluster.running(), [0, 1, 2, 3], "a member process exited");
    cluster
        .wait_healthy()
        .await
        .expect("four healthy members after the window");
    let mut client = cluster.client().await.expect("client");
    client
        .put(format!("{MEMBERSHIP_PREFIX}last"), "last", None)
        .await
        .expect("a write with four members");
    for i in 0..cluster.len() {
        wait_for_count(&cluster, i, MEMBERSHIP_PREFIX, keys + 1, RECOVERY_BOUND).await;
    }
    let list = cluster
        .member_etcdctl(0, &["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(list.lines().count(), 4, "{list}");
}

// ---------------------------------------------------------------------------------------------
// MoveLeader.

/// How long `etcdctl move-leader` to a caught-up member may take, from the command's start
/// until every member names the target: two election timeouts. etcd's leader sends the
/// caught-up target TimeoutNow at once, and the target wins its election within milliseconds.
const MOVE_LEADER_BOUND: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MS);
/// How long the target may take to apply everything the leader has committed.
const CAUGHT_UP_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_completes_within_two_election_timeouts() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let target = (leader + 1) % cluster.len();
    let target_id = cluster.member_id(target).await.expect("target id");
    let mut client = cluster.client().await.expect("client");
    client.put("move/before", "x", None).await.expect("put");

    // The target has applied everything the leader committed.
    let started = Instant::now();
    loop {
        let committed = status(&cluster, leader).await.expect("status").raft_index();
        let applied = status(&cluster, target)
            .await
            .expect("status")
            .raft_applied_index();
        if applied >= committed {
            break;
        }
        assert!(
            started.elapsed() < CAUGHT_UP_BOUND,
            "the target applied {applied} of {committed} entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut members = Vec::new();
    for i in 0..cluster.len() {
        members.push(
            connect(&cluster.endpoint(i), Duration::from_secs(2))
                .await
                .expect("client"),
        );
    }

    let started = Instant::now();
    let moved = cluster
        .etcdctl(&[
            "--command-timeout=20s",
            "move-leader",
            &format!("{target_id:x}"),
        ])
        .await;
    let returned = started.elapsed();
    assert!(
        moved.success(),
        "move-leader failed after {returned:?}: {}{}",
        moved.stdout,
        moved.stderr
    );
    let agreed = loop {
        let mut leaders = Vec::new();
        for member in &mut members {
            leaders.push(member.status().await.map(|s| s.leader()).unwrap_or(0));
        }
        if leaders.iter().all(|&l| l == target_id) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "members name {leaders:x?}, not the target {target_id:x}, {:?} after move-leader",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "move-leader to {target_id:x}: etcdctl returned after {returned:?}, every member names \
         the target {agreed:?} after the command started"
    );
    assert!(
        agreed <= MOVE_LEADER_BOUND,
        "leadership moved to the caught-up target only {agreed:?} after move-leader started \
         (etcdctl returned after {returned:?}); the bound is two election timeouts, \
         {MOVE_LEADER_BOUND:?}"
    );
    client
        .put("move/after", "y", None)
        .await
        .expect("a write under the new leader");
}
