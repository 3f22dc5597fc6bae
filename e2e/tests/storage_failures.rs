//! Members whose storage or flags are wrong, and members that fall behind or die:
//! - a WAL with a damaged frame in the middle makes the member refuse to start, saying it is
//!   corrupt, without touching a file (ferrokv's WAL format: ferrokv only);
//! - a data dir restarted with another `--initial-cluster-token` makes the member refuse to start
//!   naming both tokens (etcd silently ignores the flag then: ferrokv only);
//! - a member that was down while far more entries than `--snapshot-count` were written catches
//!   up after its restart and holds every key;
//! - a 5-member cluster keeps taking writes after two members are SIGKILLed;
//! - after the leader is SIGKILLed the others elect a new one within Raft's bound, as etcd's
//!   followers do: a follower campaigns after a random 1–2 election timeouts without hearing from
//!   its leader, and a split vote costs another such timeout and a term;
//! - a member whose data dir was lost refuses to come back under its old member ID: bootstrapping
//!   again, joining again as `existing` (ferrokv only), or, with its separate WAL dir intact,
//!   starting on that log alone (ferrokv only), which it refuses in its termination message
//!   with the steps that replace it, leaving the log untouched; the others keep serving;
//! - a member one of whose threads panics (the apply stage, through a failpoint) exits, as a
//!   panic stops etcd, instead of answering on while never applying a write again (ferrokv's
//!   failpoint build only).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use ferrokv_e2e::binaries::server_is_etcd;
use ferrokv_e2e::cluster::ELECTION_TIMEOUT;
use ferrokv_e2e::keyspace::{read_prefix, read_prefix_at};
use ferrokv_e2e::ports::ReservedPort;
use ferrokv_e2e::robustness::failpoints::{arm_at, failpoint_server, has_failpoints};
use ferrokv_e2e::TestCluster;

/// How long writes may pause while the survivors of a SIGKILL elect a leader, at most: far more
/// than any election takes, so that only a cluster that stays stuck fails.
const WRITES_RESUME_WITHIN: Duration = Duration::from_secs(30);

/// How long a member that refuses to start may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every regular file under `dir` with its contents, by path relative to `dir`.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
                files.insert(relative, fs::read(&path).expect("read file"));
            }
        }
    }
    files
}

/// The names of files that differ between two [`files_under`] listings.
fn changed_files(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The WAL segment files (`*.wal`) in `wal_dir`, oldest first.
fn wal_segments(wal_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(wal_dir)
        .expect("read the WAL dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    segments
}

/// Offsets of the frames at the start of a WAL segment: each a 16-byte header (magic "FKVW",
/// little-endian payload length, checksum, reserved) and its payload, padded to 8 bytes; the
/// first all-zero header ends the written part.
fn frame_offsets(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset + 16 <= segment.len() && &segment[offset..offset + 4] == b"FKVW" {
        let len = u32::from_le_bytes(segment[offset + 4..offset + 8].try_into().unwrap()) as usize;
        frames.push((offset, len));
        offset += (16 + len).div_ceil(8) * 8;
    }
    frames
}

/// Bytes of frames written into the segments in `wal_dir`, summed: grows with every entry the
/// member appends to its log (purging a prefix of the log does not rewrite frames).
fn wal_written_bytes(wal_dir: &Path) -> usize {
    wal_segments(wal_dir)
        .iter()
        .map(|segment| {
            let bytes = fs::read(segment).expect("read segment");
            frame_offsets(&bytes)
                .last()
                .map_or(0, |&(offset, len)| offset + (16 + len).div_ceil(8) * 8)
        })
        .sum()
}

#[tokio::test]
async fn member_with_a_corrupted_wal_frame_refuses_to_start_and_leaves_files_untouched() {
    if server_is_etcd() {
        // The WAL layout is ferrokv's.
        return;
    }
    let mut cluster = TestCluster::builder(3)
        .separate_wal_dir()
        .start()
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    for n in 0..50 {
        client
            .put(format!("wal/{n:02}"), format!("value {n}"), None)
            .await
            .expect("put");
    }
    let victim = 2;
    cluster.stop(victim).await.expect("stop the member");

    let wal_dir = cluster
        .wal_dir(victim)
        .expect("separate WAL dir")
        .to_path_buf();
    let data_dir = cluster.data_dir(victim).to_path_buf();
    let segment = wal_segments(&wal_dir)
        .into_iter()
        .next()
        .expect("a WAL segment");
    let mut bytes = fs::read(&segment).expect("read the segment");
    let frames = frame_offsets(&bytes);
    assert!(
        frames.len() >= 10,
        "expected many frames in {}, found {}",
        segment.display(),
        frames.len()
    );
    // A byte in the payload of an early frame, with intact frames after it: not a torn tail.
    let (offset, len) = frames[2];
    assert!(len > 0);
    let damaged_at = offset + 16 + len / 2;
    bytes[damaged_at] ^= 0x5a;
    let wal_before = files_under(&wal_dir);
    let data_before = files_under(&data_dir);
    fs::write(&segment, &bytes).expect("write the damaged segment");
    let wal_damaged = files_under(&wal_dir);

    cluster.restart(victim).expect("start the member");
    let status = cluster
        .wait_exit(victim, REFUSAL_TIMEOUT)
        .await
        .expect("the member exits instead of starting");
    assert!(!status.success(), "exited with {status}");
    let log = fs::read_to_string(cluster.log_path(victim)).expect("log");
    let last_start = log.rsplit("=== ferrokv-e2e: start").next().expect("log");
    assert!(
        last_start.to_lowercase().contains("corrupt"),
        "the refusal does not say the WAL is corrupt:\n{last_start}"
    );
    assert!(
        last_start.contains(&segment.file_name().unwrap().to_string_lossy().to_string()),
        "the refusal does not name the damaged segment:\n{last_start}"
    );
    assert_eq!(
        changed_files(&wal_damaged, &files_under(&wal_dir)),
        Vec::<PathBuf>::new(),
        "the refusing member changed its WAL"
    );
    assert_eq!(
        changed_files(&data_before, &files_under(&data_dir)),
        Vec::<PathBuf>::new(),
        "the refusing member changed its data dir"
    );

    // With the byte put back, the same files start and the member catches up.
    for (path, contents) in &wal_before {
        fs::write(wal_dir.join(path), contents).expect("restore the WAL");
    }
    client.put("wal/after", "x", None).await.expect("put");
    cluster.restart(victim).expect("start the repaired member");
    cluster
        .wait_healthy()
        .await
        .expect("the repaired member starts");
    let mut member = cluster.member_client(victim).await.expect("client");
    let view = read_prefix(&mut member, "wal/").await.expect("read");
    assert_eq!(view.pairs.len(), 51);
}

#[tokio::test]
async fn member_restarted_with_another_cluster_token_refuses_naming_both_tokens() {
    if server_is_etcd() {
        // etcd ignores --initial-cluster-token for an initialised data dir.
        return;
    }
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    client.put("token/key", "v", None).await.expect("put");
    let victim = 1;
    cluster.stop(victim).await.expect("stop the member");
    let data_before = files_under(cluster.data_dir(victim));

    let token = cluster.token().to_string();
    let other = format!("{token}-other");
    cluster.set_flag(victim, "--initial-cluster-token", &other);
    cluster.restart(victim).expect("start with another token");
    let status = cluster
        .wait_exit(victim, REFUSAL_TIMEOUT)
        .await
        .expect("the member exits instead of starting");
    assert!(!status.success(), "exited with {status}");
    let log = fs::read_to_string(cluster.log_path(victim)).expect("log");
    let last_start = log.rsplit("=== ferrokv-e2e: start").next().expect("log");
    // The error line itself, not the echoed command line.
    let error: String = last_start.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        error.contains(&format!("{token:?}")) && error.contains(&format!("{other:?}")),
        "the refusal does not name both tokens {token:?} and {other:?}:\n{error}"
    );
    assert_eq!(
        changed_files(&data_before, &files_under(cluster.data_dir(victim))),
        Vec::<PathBuf>::new(),
        "the refusing member changed its data dir"
    );

    cluster.set_flag(victim, "--initial-cluster-token", &token);
    cluster.restart(victim).expect("start with the right token");
    cluster.wait_healthy().await.expect("healthy again");
    let mut member = cluster.member_client(victim).await.expect("client");
    let got = member.get("token/key", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
}

#[tokio::test]
async fn member_down_for_many_snapshots_catches_up_and_holds_every_key() {
    const KEYS: usize = 1000;
    let mut cluster = TestCluster::builder(3)
        .separate_wal_dir()
        .snapshot_count(100)
        .start()
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let lagging = (leader + 1) % cluster.len();
    cluster.kill(lagging).expect("SIGKILL a follower");
    let wal_bytes = |cluster: &TestCluster, i: usize| {
        wal_written_bytes(cluster.wal_dir(i).expect("separate WAL dir"))
    };
    let lagging_wal_at_kill = wal_bytes(&cluster, lagging);
    let leader_wal_at_kill = wal_bytes(&cluster, leader);

    let mut client = cluster.member_client(leader).await.expect("client");
    let mut expected = BTreeMap::new();
    for n in 0..KEYS {
        let (key, value) = (format!("behind/{n:04}"), format!("value {n}"));
        client
            .put(key.clone(), value.clone(), None)
            .await
            .expect("put");
        expected.insert(key, value);
    }
    // Overwrites and deletes too, so the snapshot is not just the log replayed.
    for n in (0..KEYS).step_by(10) {
        let key = format!("behind/{n:04}");
        client.delete(key.clone(), None).await.expect("delete");
        expected.remove(&key);
    }
    let reference = read_prefix(&mut client, "behind/").await.expect("read");
    assert_eq!(reference.pairs, expected);

    cluster.restart(lagging).expect("restart the follower");
    cluster
        .wait_healthy()
        .await
        .expect("the follower catches up");
    let mut member = cluster.member_client(lagging).await.expect("client");
    let view = read_prefix_at(&mut member, "behind/", reference.revision)
        .await
        .expect("read the lagging member");
    assert_eq!(
        view.pairs.len(),
        expected.len(),
        "the restarted member holds {} of {} keys",
        view.pairs.len(),
        expected.len()
    );
    assert!(view.pairs == expected, "the restarted member's keys differ");
    if !cluster.server_is_etcd() {
        // Caught up from a snapshot, the member appended only the entries after it — at most
        // about two snapshot counts — not the 1,100 the leader appended meanwhile.
        let leader_appended = wal_bytes(&cluster, leader) - leader_wal_at_kill;
        let lagging_appended = wal_bytes(&cluster, lagging) - lagging_wal_at_kill;
        assert!(
            lagging_appended * 2 < leader_appended,
            "the lagging member appended {lagging_appended} WAL bytes, the leader \
             {leader_appended}: it caught up by log replication, not from a snapshot"
        );
    }

    // And it follows new writes like any member.
    client.put("behind/last", "x", None).await.expect("put");
    let got = member.get("behind/last", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_member_cluster_takes_writes_after_two_members_are_sigkilled() {
    let mut cluster = TestCluster::start(5)
        .await
        .expect("start a 5-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let follower = (leader + 2) % cluster.len();

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_total = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let endpoints = cluster.endpoints();
        let stop = stop.clone();
        let acknowledged_total = acknowledged_total.clone();
        writers.push(tokio::spawn(async move {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(3));
            let mut members = Vec::new();
            for endpoint in &endpoints {
                let client = Client::connect([endpoint], Some(options.clone()))
                    .await
                    .expect("connect");
                members.push(client.kv_client());
            }
            let mut acknowledged = BTreeMap::new();
            let mut target = writer % members.len();
            for n in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (key, value) = (format!("five/{writer}/{n:05}"), format!("{writer}:{n}"));
                match members[target].put(key.clone(), value.clone(), None).await {
                    Ok(_) => {
                        acknowledged.insert(key, value);
                        acknowledged_total.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        target = (target + 1) % members.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            acknowledged
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    // The leader and a follower at once: the three left are still a majority of five.
    cluster.kill(leader).expect("SIGKILL the leader");
    cluster.kill(follower).expect("SIGKILL a follower");
    let acknowledged_at_kill = acknowledged_total.load(Ordering::Relaxed);
    // Writes resume once the three elect a leader (how soon is the next test's concern), and
    // go on for a while after that.
    let deadline = Instant::now() + WRITES_RESUME_WITHIN;
    while acknowledged_total.load(Ordering::Relaxed) < acknowledged_at_kill + 50 {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged in {WRITES_RESUME_WITHIN:?} after two of five members \
             died",
            acknowledged_total.load(Ordering::Relaxed) - acknowledged_at_kill
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(
        acknowledged_at_kill > 20,
        "only {acknowledged_at_kill} writes before the kill"
    );

    let survivors = cluster.running();
    assert_eq!(survivors.len(), 3);
    let survivor_leader = cluster.leader().await.expect("a leader among the three");
    assert!(survivors.contains(&survivor_leader));
    for &i in &survivors {
        let mut member = cluster.member_client(i).await.expect("client");
        let view = read_prefix(&mut member, "five/").await.expect("read");
        let lost = acknowledged
            .iter()
            .filter(|&(key, value)| view.pairs.get(key) != Some(value))
            .count();
        assert_eq!(lost, 0, "{} lost acknowledged writes", cluster.name(i));
    }

    // The two come back and catch up.
    cluster.restart(leader).expect("restart");
    cluster.restart(follower).expect("restart");
    cluster.wait_healthy().await.expect("all five healthy");
    let mut client = cluster
        .member_client(survivor_leader)
        .await
        .expect("client");
    let reference = read_prefix(&mut client, "five/").await.expect("read");
    for i in [leader, follower] {
        let mut member = cluster.member_client(i).await.expect("client");
        let view = read_prefix_at(&mut member, "five/", reference.revision)
            .await
            .expect("read");
        assert!(
            view == reference,
            "{} differs after catching up",
            cluster.name(i)
        );
    }
}

/// The leader all `members` agree on and the highest term among them, if they agree, from
/// Maintenance.Status with short timeouts.
async fn agreed_leader(cluster: &TestCluster, members: &[usize]) -> Option<(u64, u64)> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(200))
        .with_timeout(Duration::from_millis(200));
    let mut leaders = Vec::new();
    let mut term = 0;
    for &i in members {
        let mut client = Client::connect([cluster.endpoint(i)], Some(options.clone()))
            .await
            .ok()?;
        let status = client.status().await.ok()?;
        leaders.push(status.leader());
        term = term.max(status.raft_term());
    }
    (leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0])).then_some((leaders[0], term))
}

/// Raft's bound on a failover, as etcd configures it: a follower campaigns once it has heard
/// nothing from a leader for a random 1–2 election timeouts, so an election decided in its first
/// round ends within 2 election timeouts of the last heartbeat. A round split between two
/// candidates costs another random timeout and a term, so each term the election took allows 2
/// election timeouts more. One more election timeout is allowed for the debug builds' ticks on a
/// busy machine and for this test's polling.
#[tokio::test]
async fn survivors_elect_a_new_leader_within_two_election_timeouts_per_round_of_leader_sigkill() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let old_leader_id = cluster.member_id(leader).await.expect("member id");
    let survivors: Vec<usize> = (0..cluster.len()).filter(|&i| i != leader).collect();
    // Heartbeats have been flowing for a while: the followers know their leader well.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, old_term) = agreed_leader(&cluster, &survivors)
        .await
        .expect("the followers agree on their leader");

    cluster.kill(leader).expect("SIGKILL the leader");
    let killed_at = Instant::now();
    let (new_leader, new_term) = loop {
        match agreed_leader(&cluster, &survivors).await {
            Some((id, term)) if id != old_leader_id => break (id, term),
            _ => {}
        }
        assert!(
            killed_at.elapsed() < WRITES_RESUME_WITHIN,
            "no new leader {WRITES_RESUME_WITHIN:?} after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = killed_at.elapsed();
    let rounds = new_term.saturating_sub(old_term).max(1);
    let bound = ELECTION_TIMEOUT * (2 * rounds as u32 + 1);
    eprintln!("a new leader {took:?} after the SIGKILL, in {rounds} round(s)");
    assert!(
        took < bound,
        "the survivors took {took:?} to elect a new leader ({new_leader:x}) in {rounds} round(s) \
         (term {old_term} to {new_term}) with --election-timeout={}ms: more than {bound:?}",
        ELECTION_TIMEOUT.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_data_dir_was_lost_refuses_to_bootstrap_again() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.member_client(0).await.expect("client");
    client.put("lost/k", "v", None).await.expect("put");
    let lost = 2;
    cluster.kill(lost).expect("SIGKILL");
    std::fs::remove_dir_all(cluster.data_dir(lost)).expect("lose the data dir");
    // Same flags as before, --initial-cluster-state=new included: bootstrapping again under its
    // old member ID with a fresh log and vote is what must not happen.
    cluster.restart(lost).expect("restart on an empty data dir");
    cluster
        .wait_exit(lost, std::time::Duration::from_secs(20))
        .await
        .expect("the member refuses to start");
    let log = cluster.log_tail(lost);
    let refused = if cluster.server_is_etcd() {
        log.contains("has already been bootstrapped")
    } else {
        log.contains(&format!(
            "data dir empty but member {} is registered as ID",
            cluster.name(lost)
        ))
    };
    assert!(refused, "{log}");
    // The others go on.
    client.put("lost/after", "v", None).await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_data_dir_alone_was_lost_refuses_naming_its_wal_and_the_others_serve() {
    if server_is_etcd() {
        // The message and the termination log are ferrokv's.
        return;
    }
    let mut cluster = TestCluster::builder(3)
        .separate_wal_dir()
        .start()
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.member_client(0).await.expect("client");
    client.put("lost/k", "v", None).await.expect("put");
    let cluster_id = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .cluster_id();
    let lost = 2;
    let member_id = cluster.member_id(lost).await.expect("member id");
    cluster.stop(lost).await.expect("stop the member");
    let wal_dir = cluster
        .wal_dir(lost)
        .expect("separate WAL dir")
        .to_path_buf();
    fs::remove_dir_all(cluster.data_dir(lost)).expect("lose the data dir");
    let wal_before = files_under(&wal_dir);

    // As under Kubernetes, the file exists before the container starts.
    let termination_log = cluster
        .data_dir(lost)
        .parent()
        .expect("member dir")
        .join("termination-log");
    fs::write(&termination_log, "").expect("create the termination log");
    cluster.set_env(lost, "FERROKV_TERMINATION_LOG", &termination_log);
    cluster.restart(lost).expect("restart on an empty data dir");
    let exit = cluster
        .wait_exit(lost, REFUSAL_TIMEOUT)
        .await
        .expect("the member refuses to start");
    assert!(!exit.success(), "{exit}");

    let message = fs::read_to_string(&termination_log).expect("read the termination log");
    let wal = wal_dir.display();
    let expected = format!(
        "data dir empty but --wal-dir {wal} holds the log of member {} (ID {member_id:x}) of \
         cluster {cluster_id:x}, whose data in --data-dir {} is lost and cannot be rebuilt from \
         the log: remove the member with `etcdctl member remove {member_id:x}`, add it again \
         with `etcdctl member add {} --peer-urls={}`, empty {wal}, and start it with \
         --initial-cluster-state=existing",
        cluster.name(lost),
        cluster.data_dir(lost).display(),
        cluster.name(lost),
        cluster.peer_url(lost),
    );
    assert_eq!(
        message, expected,
        "the termination message is the reason alone"
    );
    assert!(
        cluster.log_tail(lost).contains(&expected),
        "{}",
        cluster.log_tail(lost)
    );
    assert!(
        changed_files(&wal_before, &files_under(&wal_dir)).is_empty(),
        "the refusal changed the WAL dir"
    );
    // The others go on.
    client.put("lost/after", "v", None).await.expect("put");
    let mut other = cluster.member_client(1).await.expect("client");
    let held = other.get("lost/after", None).await.expect("get");
    assert_eq!(held.kvs().len(), 1, "member 1 serves the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_dirs_were_lost_refuses_to_join_again_under_its_old_id() {
    if server_is_etcd() {
        // etcd checks for an already-bootstrapped member only with --initial-cluster-state=new.
        return;
    }
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.member_client(0).await.expect("client");
    client.put("lost/k", "v", None).await.expect("put");
    let lost = 1;
    let member_id = cluster.member_id(lost).await.expect("member id");
    cluster.kill(lost).expect("SIGKILL");
    fs::remove_dir_all(cluster.data_dir(lost)).expect("lose the data dir");
    // As the operator's pods start once the cluster runs: its peer URL is still registered, to
    // the member that lost its data.
    cluster.set_flag(lost, "--initial-cluster-state", "existing");
    cluster.restart(lost).expect("restart on an empty data dir");
    cluster
        .wait_exit(lost, REFUSAL_TIMEOUT)
        .await
        .expect("the member refuses to start");
    let log = cluster.log_tail(lost);
    assert!(
        log.contains(&format!(
            "data dir empty but member {} is registered as ID {member_id:x}",
            cluster.name(lost)
        )),
        "{log}"
    );
    client.put("lost/after", "v", None).await.expect("put");
}

#[tokio::test]
async fn member_whose_apply_thread_panics_exits_instead_of_serving_half_alive() {
    let server = failpoint_server();
    if !has_failpoints(&server) {
        eprintln!("skipped: {} has no failpoints", server.display());
        return;
    }
    let endpoint = ReservedPort::reserve().unwrap();
    let address = format!("127.0.0.1:{}", endpoint.port());
    let mut cluster = TestCluster::builder(1).server(&server).create().unwrap();
    cluster.set_env(0, "FERROKV_FAILPOINTS_HTTP", &address);
    cluster.restart(0).unwrap();
    cluster.wait_healthy().await.unwrap();
    let mut client = cluster.client().await.unwrap();
    client.put("before", "applied", None).await.unwrap();

    arm_at(
        address.parse().unwrap(),
        "applyBeforeCommit",
        "panic(apply stage failpoint)",
    )
    .await
    .unwrap();
    // The put's outcome is unknown to its client: the member dies before applying it.
    let put = tokio::time::timeout(Duration::from_secs(5), client.put("after", "lost?", None));
    let _ = put.await;
    let status = cluster
        .wait_exit(0, Duration::from_secs(10))
        .await
        .expect("the member exits once its apply thread panicked");
    // 101 is a panic's status: the process stopped at the panic, not later for its effects.
    assert_eq!(status.code(), Some(101), "exited with {status}");
    let log = cluster.log_tail(0);
    assert!(
        log.contains("apply stage failpoint"),
        "the log names the panic:\n{log}"
    );

    // Restarted (the point is armed only in memory), it serves again and holds the first write.
    cluster.restart(0).unwrap();
    cluster.wait_healthy().await.unwrap();
    let mut client = cluster.client().await.unwrap();
    let got = client.get("before", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"applied");
}
