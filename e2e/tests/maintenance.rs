//! The Maintenance service as an operator uses it through etcdctl: `snapshot save` and (ferrokv's
//! own) `ferrokv snapshot restore` into a new cluster; `defrag`; `endpoint hashkv` agreeing on
//! every member; and the NOSPACE alarm — a member over `--quota-backend-bytes` refuses writes
//! with etcd's error, `alarm list` shows it, reads and deletes go on, and compact + defrag +
//! `alarm disarm` make the cluster writable again.

use std::collections::BTreeMap;
use std::process::Command;

use ferrokv_e2e::keyspace::{read_prefix, read_prefix_at};
use ferrokv_e2e::TestCluster;

async fn put(cluster: &TestCluster, key: &str, value: &str) {
    let output = cluster.etcdctl(&["put", key, value]).await;
    assert_eq!(output.expect_stdout(), "OK\n");
}

/// The store revision, from a linearizable read of member 0.
async fn revision(cluster: &TestCluster) -> i64 {
    let mut client = cluster.member_client(0).await.expect("client");
    client
        .get("maintenance-test/revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// `etcdctl endpoint hashkv` for every member: (endpoint, hash) per line.
async fn hashkv(cluster: &TestCluster) -> Vec<(String, String)> {
    let output = cluster.etcdctl(&["endpoint", "hashkv"]).await;
    let mut hashes: Vec<(String, String)> = output
        .expect_stdout()
        .lines()
        .map(|line| {
            let (endpoint, hash) = line
                .split_once(", ")
                .unwrap_or_else(|| panic!("unexpected hashkv line {line:?}"));
            (endpoint.to_string(), hash.to_string())
        })
        .collect();
    hashes.sort();
    let mut endpoints: Vec<String> = hashes.iter().map(|(e, _)| e.clone()).collect();
    endpoints.dedup();
    let mut expected = cluster.endpoints();
    expected.sort();
    assert_eq!(endpoints, expected, "one hash per member");
    hashes
}

fn assert_all_equal(hashes: &[(String, String)]) {
    assert!(
        hashes.iter().all(|(_, hash)| *hash == hashes[0].1),
        "members disagree on HashKV: {hashes:?}"
    );
}

#[tokio::test]
async fn snapshot_restored_into_a_new_cluster_holds_the_same_keys() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    for n in 0..300 {
        client
            .put(format!("snap/{n:03}"), format!("value {n}"), None)
            .await
            .expect("put");
    }
    for n in (0..300).step_by(7) {
        client
            .delete(format!("snap/{n:03}"), None)
            .await
            .expect("delete");
    }
    client
        .put("snap/010", "overwritten", None)
        .await
        .expect("put");
    let original = read_prefix(&mut client, "snap/").await.expect("read");

    let file = tempfile::Builder::new()
        .prefix("ferrokv-e2e-snapshot-")
        .tempdir()
        .expect("temp dir");
    let snapshot = file.path().join("backup.db");
    let snapshot = snapshot.to_str().expect("utf-8 path");
    // `snapshot save` takes exactly one endpoint.
    let output = cluster
        .member_etcdctl(1, &["snapshot", "save", snapshot])
        .await;
    assert_eq!(
        output.expect_stdout(),
        format!("Snapshot saved at {snapshot}\n")
    );
    assert!(
        std::fs::metadata(snapshot).expect("snapshot file").len() > 0,
        "empty snapshot"
    );
    if cluster.server_is_etcd() {
        // Restoring is ferrokv's own subcommand (etcd's is etcdutl / etcdctl snapshot restore).
        return;
    }

    let mut restored = TestCluster::builder(3)
        .create()
        .expect("lay out a new cluster");
    for i in 0..restored.len() {
        let output = Command::new(restored.server())
            .args(["snapshot", "restore", snapshot])
            .arg(format!("--name={}", restored.name(i)))
            .arg(format!("--data-dir={}", restored.data_dir(i).display()))
            .arg(format!("--initial-cluster={}", restored.initial_cluster()))
            .arg(format!("--initial-cluster-token={}", restored.token()))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                restored.peer_url(i)
            ))
            .output()
            .expect("run ferrokv snapshot restore");
        assert!(
            output.status.success(),
            "snapshot restore for {} failed ({}):\n{}{}",
            restored.name(i),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for i in 0..restored.len() {
        restored.restart(i).expect("start a restored member");
    }
    restored
        .wait_healthy()
        .await
        .expect("the restored cluster becomes healthy");

    // The new cluster is its own: its members and peer URLs, none of the old ones.
    let members = restored
        .etcdctl(&["member", "list"])
        .await
        .expect_stdout()
        .to_string();
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..restored.len() {
        assert!(members.contains(&restored.peer_url(i)), "{members}");
        assert!(!members.contains(&cluster.peer_url(i)), "{members}");
    }

    // Every member holds the snapshot's keys, at the snapshot's revision.
    for i in 0..restored.len() {
        let mut member = restored.member_client(i).await.expect("client");
        let view = read_prefix_at(&mut member, "snap/", original.revision)
            .await
            .unwrap_or_else(|e| panic!("reading {}: {e:#}", restored.name(i)));
        assert_eq!(view.pairs, original.pairs, "{}", restored.name(i));
    }
    let mut client = restored.client().await.expect("client");
    let put = client.put("snap/new", "x", None).await.expect("put");
    assert_eq!(
        put.header().map(|h| h.revision()),
        Some(original.revision + 1),
        "revisions go on from the snapshot's"
    );
}

#[tokio::test]
async fn defrag_keeps_the_data_and_hashkv_agrees_on_every_member() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    for round in 0..5 {
        for n in 0..20 {
            put(
                &cluster,
                &format!("defrag/{n:02}"),
                &format!("round {round}"),
            )
            .await;
        }
    }
    let output = cluster.etcdctl(&["del", "--prefix", "defrag/1"]).await;
    assert_eq!(output.expect_stdout(), "10\n");
    let mut client = cluster.client().await.expect("client");
    let before = read_prefix(&mut client, "defrag/").await.expect("read");
    assert_eq!(before.pairs.len(), 10);

    let hashes = hashkv(&cluster).await;
    assert_all_equal(&hashes);

    let compact_at = before.revision - 10;
    assert_eq!(
        cluster
            .etcdctl(&["compact", &compact_at.to_string(), "--physical"])
            .await
            .expect_stdout(),
        format!("compacted revision {compact_at}\n")
    );
    let compacted = hashkv(&cluster).await;
    assert_all_equal(&compacted);

    let output = cluster.etcdctl(&["defrag"]).await;
    let mut lines: Vec<&str> = output.expect_stdout().lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|endpoint| format!("Finished defragmenting etcd member[{endpoint}]"))
        .collect();
    expected.sort();
    assert_eq!(lines, expected);

    // Defragmenting changes the file, not the data or its history.
    let after = read_prefix(&mut client, "defrag/").await.expect("read");
    assert_eq!(after, before);
    assert_eq!(hashkv(&cluster).await, compacted, "defrag changed HashKV");

    // A write changes the hash on every member alike.
    put(&cluster, "defrag/new", "x").await;
    let written = hashkv(&cluster).await;
    assert_all_equal(&written);
    assert_ne!(written[0].1, compacted[0].1, "HashKV ignores a write");
}

/// Members' NOSPACE alarms as `etcdctl alarm list` (or `alarm disarm`) prints them:
/// "memberID:<decimal id> alarm:NOSPACE" per line (Go's protobuf text, with a trailing space).
fn nospace_members(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|line| {
            line.trim_end()
                .strip_prefix("memberID:")
                .and_then(|rest| rest.strip_suffix(" alarm:NOSPACE"))
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("unexpected alarm line {line:?}"))
        })
        .collect()
}

/// Small, but larger than an empty store of either server.
const QUOTA: u64 = 4 * 1024 * 1024;
/// The values that fill the quota.
const FILL_VALUE_BYTES: usize = 64 * 1024;

async fn cluster_with_small_quota() -> TestCluster {
    TestCluster::builder(3)
        .flag(format!("--quota-backend-bytes={QUOTA}"))
        .start()
        .await
        .expect("start a 3-member cluster")
}

/// Puts distinct 64 KiB values until one is refused (at most 1000); returns how many were
/// stored and the refusal.
async fn fill_until_refused(client: &mut etcd_client::Client) -> (usize, etcd_client::Error) {
    let value = "q".repeat(FILL_VALUE_BYTES);
    let mut stored = 0;
    loop {
        assert!(stored < 1000, "{stored} puts of 64 KiB and no NOSPACE");
        match client
            .put(format!("fill/{stored:04}"), value.clone(), None)
            .await
        {
            Ok(_) => stored += 1,
            Err(error) => return (stored, error),
        }
    }
}

#[tokio::test]
async fn quota_counts_stored_data_so_half_the_quota_fits_in_values() {
    let cluster = cluster_with_small_quota().await;
    let mut client = cluster.client().await.expect("client");
    let (stored, refusal) = fill_until_refused(&mut client).await;
    let stored_bytes = (stored * FILL_VALUE_BYTES) as u64;
    // etcd counts the pages its store uses; overhead per key and free pages left by its
    // copy-on-write B+tree are small next to 64 KiB values, so far more than half fits.
    assert!(
        stored_bytes >= QUOTA / 2,
        "only {stored} values of 64 KiB ({stored_bytes} bytes) fitted under \
         --quota-backend-bytes={QUOTA} before {refusal}"
    );
}

#[tokio::test]
async fn nospace_alarm_stops_writes_until_compact_defrag_and_disarm() {
    let cluster = cluster_with_small_quota().await;
    let mut ids = Vec::new();
    for i in 0..cluster.len() {
        ids.push(cluster.member_id(i).await.expect("member id"));
    }
    put(&cluster, "keep", "me").await;

    // Fill with 64 KiB values until the quota refuses one; bounded far above what fits.
    let value = "q".repeat(64 * 1024);
    let mut client = cluster.client().await.expect("client");
    let mut stored = 0;
    let refusal = loop {
        assert!(stored < 1000, "{stored} puts of 64 KiB and no NOSPACE");
        match client
            .put(format!("fill/{stored:04}"), value.clone(), None)
            .await
        {
            Ok(_) => stored += 1,
            Err(error) => break error,
        }
    };
    match &refusal {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: database space exceeded"
            );
        }
        other => panic!("expected NOSPACE, got {other:?}"),
    }
    assert!(stored > 0, "not even one put fitted into {QUOTA} bytes");

    let alarmed = nospace_members(cluster.etcdctl(&["alarm", "list"]).await.expect_stdout());
    assert!(!alarmed.is_empty(), "alarm list shows no NOSPACE");
    assert!(
        alarmed.iter().all(|id| ids.contains(id)),
        "{alarmed:?} vs {ids:?}"
    );

    // Under the alarm: writes fail with etcd's message, even small ones, on every member.
    for i in 0..cluster.len() {
        let output = cluster.member_etcdctl(i, &["put", "small", "x"]).await;
        assert!(
            output
                .expect_failure()
                .contains("etcdserver: mvcc: database space exceeded"),
            "{}",
            output.stderr
        );
    }
    // Reads and deletes still work.
    assert_eq!(
        cluster.etcdctl(&["get", "keep"]).await.expect_stdout(),
        "keep\nme\n"
    );
    let keys = cluster
        .etcdctl(&["get", "--prefix", "fill/", "--keys-only"])
        .await;
    // etcd applies the put that crosses the quota and only then answers NOSPACE, so the refused
    // put may be stored too.
    let filled = keys.expect_stdout().lines().count() / 2;
    assert!(
        filled == stored || filled == stored + 1,
        "{filled} keys after {stored} acknowledged puts"
    );
    assert_eq!(
        cluster
            .etcdctl(&["del", "--prefix", "fill/"])
            .await
            .expect_stdout(),
        format!("{filled}\n")
    );
    // Deleting alone does not lift the alarm.
    let output = cluster.etcdctl(&["put", "small", "x"]).await;
    assert!(
        output
            .expect_failure()
            .contains("etcdserver: mvcc: database space exceeded"),
        "{}",
        output.stderr
    );

    let current = revision(&cluster).await;
    assert_eq!(
        cluster
            .etcdctl(&["compact", &current.to_string(), "--physical"])
            .await
            .expect_stdout(),
        format!("compacted revision {current}\n")
    );
    let defrag = cluster.etcdctl(&["defrag"]).await;
    assert_eq!(defrag.expect_stdout().lines().count(), cluster.len());
    // The defragmented backends are back under the quota.
    for i in 0..cluster.len() {
        let status = cluster
            .member_etcdctl(i, &["endpoint", "status", "-w", "json"])
            .await;
        let json: serde_json::Value =
            serde_json::from_str(status.expect_stdout().trim()).expect("json");
        let size = json[0]["Status"]["dbSize"].as_u64().expect("dbSize");
        assert!(size < QUOTA, "{} still holds {size} bytes", cluster.name(i));
    }

    // Members that refused a put since may have raised their own alarms too (etcd does).
    let alarmed = nospace_members(cluster.etcdctl(&["alarm", "list"]).await.expect_stdout());
    let disarmed = nospace_members(cluster.etcdctl(&["alarm", "disarm"]).await.expect_stdout());
    let mut disarmed_sorted = disarmed.clone();
    disarmed_sorted.sort_unstable();
    let mut alarmed_sorted = alarmed.clone();
    alarmed_sorted.sort_unstable();
    assert_eq!(
        disarmed_sorted, alarmed_sorted,
        "disarm prints what it cleared"
    );
    assert_eq!(
        cluster.etcdctl(&["alarm", "list"]).await.expect_stdout(),
        ""
    );

    // Writable again, through every member.
    for i in 0..cluster.len() {
        let output = cluster
            .member_etcdctl(i, &["put", &format!("after/{i}"), "x"])
            .await;
        assert_eq!(output.expect_stdout(), "OK\n", "{}", cluster.name(i));
    }
    let mut client = cluster.client().await.expect("client");
    let view = read_prefix(&mut client, "after/").await.expect("read");
    assert_eq!(
        view.pairs,
        (0..cluster.len())
            .map(|i| (format!("after/{i}"), "x".to_string()))
            .collect::<BTreeMap<_, _>>()
    );
}
