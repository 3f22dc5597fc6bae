//! The runbooks of docs/operations.md, each done here as an administrator would do it, with
//! etcdctl and real member processes: migrating a member to another machine, replacing a failed
//! member, and recovering a cluster that lost quorum from a snapshot.

use std::process::Command;

use etcd_client::GetOptions;
use ferrokv_e2e::TestCluster;

/// The `key=value` pairs under `prefix`, read from member `i` (serializably: what it holds).
async fn held_by(cluster: &TestCluster, i: usize, prefix: &str) -> Vec<(String, String)> {
    let mut client = cluster
        .member_client(i)
        .await
        .expect("client of one member");
    let resp = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable range");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8").to_string(),
                kv.value_str().expect("utf-8").to_string(),
            )
        })
        .collect()
}

/// Writes `count` keys under `prefix` through member 0 (the others may be down).
async fn write_keys(cluster: &TestCluster, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut client = cluster.member_client(0).await.expect("client");
    let mut written = Vec::new();
    for n in 0..count {
        let (k, v) = (format!("{prefix}{n:04}"), format!("value {n}"));
        client.put(k.clone(), v.clone(), None).await.expect("put");
        written.push((k, v));
    }
    written
}

/// Waits until member `i` holds exactly `expected` under `prefix` (it may still be catching up).
async fn wait_until_held(
    cluster: &TestCluster,
    i: usize,
    prefix: &str,
    expected: &[(String, String)],
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held = held_by(cluster, i, prefix).await;
        if held == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {} holds {} of {} keys under {prefix} after 30 s",
            cluster.name(i),
            held.len(),
            expected.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_moved_to_another_machine_keeps_its_id_and_data() {
    let mut cluster = TestCluster::builder(3)
        .separate_wal_dir()
        .start()
        .await
        .expect("start a 3-member cluster");
    let written = write_keys(&cluster, "move/", 200).await;
    let moved = 2;
    let id = cluster.member_id(moved).await.expect("member ID");

    // Stop the member, copy its data dir and WAL dir to the new machine, tell the cluster its
    // new peer URL, and start it there under the same name.
    cluster.stop(moved).await.expect("stop the member");
    let new_peer_url = cluster.relocate(moved).expect("copy the member's dirs");
    let output = cluster
        .member_etcdctl(
            0,
            &[
                "member",
                "update",
                &format!("{id:x}"),
                &format!("--peer-urls={new_peer_url}"),
            ],
        )
        .await;
    assert!(
        output.stdout.contains("updated in cluster"),
        "member update: {}{}",
        output.stdout,
        output.stderr
    );
    // Writes go on while the member is away.
    let mut more = write_keys(&cluster, "move/later-", 50).await;
    cluster
        .restart(moved)
        .expect("start the member on its new machine");
    cluster
        .wait_healthy()
        .await
        .expect("the cluster is healthy again");

    assert_eq!(
        cluster.member_id(moved).await.expect("member ID"),
        id,
        "the moved member must keep its member ID"
    );
    let members = cluster
        .etcdctl(&["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains(&new_peer_url), "{members}");
    let mut all = written;
    all.append(&mut more);
    all.sort();
    wait_until_held(&cluster, moved, "move/", &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_member_is_replaced_by_remove_add_and_existing_state() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let written = write_keys(&cluster, "replace/", 200).await;
    let failed = 1;
    let old_id = cluster.member_id(failed).await.expect("member ID");

    // The machine dies and its disk is lost.
    cluster.kill(failed).expect("SIGKILL the member");
    std::fs::remove_dir_all(cluster.data_dir(failed)).expect("lose the data dir");

    let removed = cluster
        .member_etcdctl(0, &["member", "remove", &format!("{old_id:x}")])
        .await;
    assert!(
        removed.stdout.contains("removed from cluster"),
        "member remove: {}{}",
        removed.stdout,
        removed.stderr
    );
    let peer_url = cluster.peer_url(failed);
    // etcd refuses to add a voter until the remaining members have been connected for a few
    // seconds ("unhealthy cluster"); an administrator retries, and so does this test.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let added = loop {
        let added = cluster
            .member_etcdctl(
                0,
                &[
                    "member",
                    "add",
                    cluster.name(failed),
                    &format!("--peer-urls={peer_url}"),
                ],
            )
            .await;
        if added.status.success() || std::time::Instant::now() >= deadline {
            break added;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        added
            .stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "member add: {}{}",
        added.stdout,
        added.stderr
    );
    cluster.set_flag(failed, "--initial-cluster-state", "existing");
    cluster.restart(failed).expect("start the replacement");
    cluster
        .wait_healthy()
        .await
        .expect("the cluster is healthy again");

    let new_id = cluster.member_id(failed).await.expect("member ID");
    assert_ne!(new_id, old_id, "a replaced member gets a new ID");
    let members = cluster
        .etcdctl(&["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(!members.contains(&format!("{old_id:x}")), "{members}");
    wait_until_held(&cluster, failed, "replace/", &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_that_lost_quorum_is_rebuilt_from_a_survivors_snapshot() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let written = write_keys(&cluster, "quorum/", 200).await;
    // Two of three machines are gone for good: no quorum, no writes.
    cluster.kill(1).expect("SIGKILL");
    cluster.kill(2).expect("SIGKILL");

    let dir = tempfile::Builder::new()
        .prefix("ferrokv-e2e-quorum-")
        .tempdir()
        .expect("temp dir");
    let snapshot = dir.path().join("survivor.db");
    let snapshot = snapshot.to_str().expect("utf-8 path");
    let saved = cluster
        .member_etcdctl(0, &["snapshot", "save", snapshot])
        .await;
    assert_eq!(
        saved.expect_stdout(),
        format!("Snapshot saved at {snapshot}\n")
    );
    if cluster.server_is_etcd() {
        // Restoring is ferrokv's own subcommand (etcd's is etcdutl).
        return;
    }

    let mut rebuilt = TestCluster::builder(3)
        .create()
        .expect("lay out a new cluster");
    for i in 0..rebuilt.len() {
        let output = Command::new(rebuilt.server())
            .args(["snapshot", "restore", snapshot])
            .arg(format!("--name={}", rebuilt.name(i)))
            .arg(format!("--data-dir={}", rebuilt.data_dir(i).display()))
            .arg(format!("--initial-cluster={}", rebuilt.initial_cluster()))
            .arg(format!("--initial-cluster-token={}", rebuilt.token()))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                rebuilt.peer_url(i)
            ))
            .output()
            .expect("run ferrokv snapshot restore");
        assert!(
            output.status.success(),
            "restore: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for i in 0..rebuilt.len() {
        rebuilt.restart(i).expect("start a rebuilt member");
    }
    rebuilt
        .wait_healthy()
        .await
        .expect("the rebuilt cluster is healthy");
    for i in 0..rebuilt.len() {
        wait_until_held(&rebuilt, i, "quorum/", &written).await;
    }
    // And it takes writes.
    let mut client = rebuilt.client().await.expect("client");
    client
        .put("quorum/after", "yes", None)
        .await
        .expect("put after rebuild");
}
