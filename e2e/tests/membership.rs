//! Membership changes through etcdctl (learners, promotion, update, removal and its refusals)
//! and the plain HTTP endpoints on the client port (health, readiness, metrics, and the process
//! metrics `etcdctl check datascale` reads).

use std::time::{Duration, Instant};

use ferrokv_e2e::TestCluster;

/// Member IDs (hex) by name, from `etcdctl member list` (`ID, status, name, peers, clients, learner`).
fn member_ids(list: &str) -> Vec<(String, String, bool)> {
    list.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            (
                fields[2].to_string(),
                fields[0].to_string(),
                fields.last() == Some(&"true"),
            )
        })
        .collect()
}

async fn http_get(url: &str) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_is_added_promoted_updated_and_removed_with_etcdctl() {
    // Snapshots every 100 entries: the learner joins from a snapshot taken before it was
    // added, whose membership does not name it yet.
    let mut cluster = TestCluster::builder(4)
        .snapshot_count(100)
        .create()
        .expect("lay out four members");
    // Start three; the fourth joins later as a learner.
    for i in 0..3 {
        cluster.set_flag(
            i,
            "--initial-cluster",
            &(0..3)
                .map(|j| format!("{}={}", cluster.name(j), cluster.peer_url(j)))
                .collect::<Vec<_>>()
                .join(","),
        );
        cluster.restart(i).expect("start a founding member");
    }
    let founders: Vec<usize> = (0..3).collect();
    let mut client = cluster.member_client(0).await.expect("client");
    // The founders are starting: the first write waits for them to elect a leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put("learner/ready", "yes", None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no leader among the founders within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        client = cluster.member_client(0).await.expect("client");
    }
    client.delete("learner/ready", None).await.expect("delete");
    for n in 0..300 {
        client
            .put(format!("learner/{n:04}"), format!("value {n}"), None)
            .await
            .expect("put");
    }

    let joiner = 3;
    // etcd refuses membership changes until its members have been connected for a few
    // seconds ("unhealthy cluster"); an administrator retries, and so does this test.
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        let added = cluster
            .member_etcdctl(
                0,
                &[
                    "member",
                    "add",
                    cluster.name(joiner),
                    &format!("--peer-urls={}", cluster.peer_url(joiner)),
                    "--learner",
                ],
            )
            .await;
        if added.status.success() || Instant::now() >= deadline {
            break added;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        added.stdout.contains("added to cluster"),
        "member add --learner: {}{}",
        added.stdout,
        added.stderr
    );
    let list = cluster
        .member_etcdctl(0, &["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    let learner_id = member_ids(&list)
        .into_iter()
        .find(|(_, _, learner)| *learner)
        .map(|(_, id, _)| id)
        .expect("a learner in the member list");

    // Not started yet: promoting it is refused with etcd's error.
    let early = cluster
        .member_etcdctl(0, &["member", "promote", &learner_id])
        .await;
    assert!(
        early
            .stderr
            .contains("can only promote a learner member which is in sync with leader"),
        "early promote: {}{}",
        early.stdout,
        early.stderr
    );

    cluster.set_flag(
        joiner,
        "--initial-cluster",
        &(0..4)
            .map(|j| format!("{}={}", cluster.name(j), cluster.peer_url(j)))
            .collect::<Vec<_>>()
            .join(","),
    );
    cluster.set_flag(joiner, "--initial-cluster-state", "existing");
    cluster.restart(joiner).expect("start the learner");

    // It catches up; then promotion succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let promoted = cluster
            .member_etcdctl(0, &["member", "promote", &learner_id])
            .await;
        if promoted.status.success() {
            assert!(promoted.stdout.contains("promoted"), "{}", promoted.stdout);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner was not promotable within 30 s: {}",
            promoted.stderr
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.wait_healthy().await.expect("four healthy voters");
    let list = cluster
        .member_etcdctl(0, &["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert!(
        member_ids(&list).iter().all(|(_, _, learner)| !learner),
        "{list}"
    );
    let mut on_joiner = cluster.member_client(joiner).await.expect("client");
    let held = on_joiner
        .get(
            "learner/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("range on the new voter");
    assert_eq!(held.count(), 300);

    // Update a peer URL to the same value it has (the member stays reachable) and then remove
    // the new voter; a removed member that is restarted refuses to rejoin.
    let updated = cluster
        .member_etcdctl(
            0,
            &[
                "member",
                "update",
                &learner_id,
                &format!("--peer-urls={}", cluster.peer_url(joiner)),
            ],
        )
        .await;
    assert!(
        updated.stdout.contains("updated in cluster"),
        "{}{}",
        updated.stdout,
        updated.stderr
    );
    let removed = cluster
        .member_etcdctl(0, &["member", "remove", &learner_id])
        .await;
    assert!(
        removed.stdout.contains("removed from cluster"),
        "{}{}",
        removed.stdout,
        removed.stderr
    );
    if !cluster.server_is_etcd() {
        let exit = cluster
            .wait_exit(joiner, Duration::from_secs(20))
            .await
            .expect("the removed member stops by itself");
        assert!(
            !exit.success(),
            "the removed member must exit with an error"
        );
        cluster.restart(joiner).expect("restart the removed member");
        cluster
            .wait_exit(joiner, Duration::from_secs(10))
            .await
            .expect("a removed member refuses to start");
        assert!(
            cluster
                .log_tail(joiner)
                .contains("has been removed from the cluster"),
            "{}",
            cluster.log_tail(joiner)
        );
    }
    let list = cluster
        .member_etcdctl(0, &["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(list.lines().count(), 3, "{list}");
    let _ = founders;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_voter_that_would_cost_the_quorum_is_refused() {
    if ferrokv_e2e::binaries::server_is_etcd() {
        // etcd 3.4 checks this only with --strict-reconfig-check, which is off by default.
        return;
    }
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    cluster.kill(others[0]).expect("SIGKILL a follower");
    // Two of three voters are up; removing the healthy follower would leave one healthy voter
    // of two.
    let healthy_follower = cluster.member_id(others[1]).await.expect("member ID");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = cluster
        .member_etcdctl(
            leader,
            &["member", "remove", &format!("{healthy_follower:x}")],
        )
        .await;
    assert!(
        refused.stderr.contains("etcdserver: unhealthy cluster"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let list = cluster
        .member_etcdctl(leader, &["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(list.lines().count(), 3, "nothing was removed: {list}");
}

/// `etcdctl check datascale` puts 10,000 keys of 1 KiB through 50 clients and reads the member's
/// resident memory from its /metrics (`process_resident_memory_bytes`) before and after.
#[tokio::test]
async fn etcdctl_check_datascale_passes() {
    let cluster = TestCluster::start(1).await.expect("start a member");
    let out = cluster
        .etcdctl(&[
            "check",
            "datascale",
            "--load=s",
            "--auto-compact",
            "--auto-defrag",
        ])
        .await;
    let stdout = out.expect_stdout();
    assert!(
        stdout.contains("PASS: Approximate system memory used"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_version_and_metrics_are_served_on_the_client_port() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let mut client = cluster.client().await.expect("client");
    client.put("metrics/k", "v", None).await.expect("put");

    for i in 0..3 {
        let base = cluster.endpoint(i);
        let (code, body) = http_get(&format!("{base}/health")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""health":"true""#), "{body}");
        let (code, _) = http_get(&format!("{base}/version")).await;
        assert_eq!(code, 200);
        if cluster.server_is_etcd() {
            // etcd 3.4 has no /livez or /readyz.
            continue;
        }
        assert_eq!(http_get(&format!("{base}/livez")).await.0, 200);
        assert_eq!(http_get(&format!("{base}/readyz")).await.0, 200);
        let (code, metrics) = http_get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        for series in [
            "etcd_server_has_leader 1",
            &format!("etcd_server_is_leader {}", u8::from(i == leader)),
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "etcd_server_proposals_pending",
            "etcd_server_proposals_failed_total",
            "etcd_disk_wal_fsync_duration_seconds_bucket",
            "etcd_disk_backend_commit_duration_seconds_bucket",
            "etcd_mvcc_db_total_size_in_bytes",
            // The process metrics of Go's client, which etcd's dashboards read.
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                metrics.contains(series),
                "{series} missing from {base}/metrics"
            );
        }
        if i == leader {
            assert!(
                metrics.contains("etcd_network_peer_round_trip_time_seconds_bucket"),
                "the leader measures its peers' round trips"
            );
        }
    }

    // A member that has lost its quorum is not ready and not healthy.
    if !cluster.server_is_etcd() {
        let survivor = (0..3).find(|i| *i != leader).expect("a follower");
        for i in 0..3 {
            if i != survivor {
                cluster.kill(i).expect("SIGKILL");
            }
        }
        let base = cluster.endpoint(survivor);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ready, _) = http_get(&format!("{base}/readyz")).await;
            let (healthy, body) = http_get(&format!("{base}/health")).await;
            if ready == 503 && healthy == 503 {
                assert!(body.contains(r#""health":"false""#), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still ready/healthy without a quorum"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
