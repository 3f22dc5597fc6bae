//! Data moves between etcd and ferrokv by snapshot, both ways, with etcd's own tools: a snapshot
//! saved from Debian's etcd 3.4 restores into ferrokv with `ferrokv snapshot restore`, and one
//! saved from ferrokv passes `etcdctl snapshot status` and restores into etcd with
//! `etcdctl snapshot restore`. Either way the new cluster serves the same keys with the same
//! revisions and versions, the same history back to the same compaction point, the leases with
//! their keys, and goes on from the snapshot's revision. Damaged snapshots are refused without
//! leaving a data dir behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferrokv_e2e::TestCluster;
use serde_json::Value;

const ETCD: &str = "/usr/bin/etcd";
const LEASE_TTL: &str = "600";

/// What a client sees of the data a snapshot carries.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    /// `get --prefix -w json` now: key, value, create/mod revision, version, lease.
    kvs: Value,
    /// The same at an older revision, above the compaction point.
    kvs_in_history: Value,
    /// The error of a read below the compaction point.
    below_compaction: String,
    /// Each lease's granted TTL and keys.
    leases: Vec<(i64, Vec<String>)>,
}

/// Revisions of the workload, known once it ran.
struct Workload {
    compacted: i64,
    in_history: i64,
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn etcdctl_ok(cluster: &TestCluster, args: &[&str]) -> String {
    cluster.etcdctl(args).await.expect_stdout().to_string()
}

async fn revision_of(cluster: &TestCluster, args: &[&str]) -> i64 {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    json(&etcdctl_ok(cluster, &args).await)["header"]["revision"]
        .as_i64()
        .expect("header revision")
}

/// History with overwrites, deletions, a transaction of several changes (sub revisions), a
/// compaction, and a lease with keys.
async fn run_workload(cluster: &TestCluster) -> Workload {
    for (key, value) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1")] {
        etcdctl_ok(cluster, &["put", &format!("snap/{key}"), value]).await;
    }
    etcdctl_ok(cluster, &["del", "snap/b"]).await;
    let txn = cluster
        .etcdctl_with_stdin(
            &["txn", "-i"],
            "\nput snap/t1 one\nput snap/t2 two\ndel snap/c\n\n\n",
        )
        .await;
    assert!(txn.expect_stdout().contains("SUCCESS"), "{txn:?}");
    let compacted = revision_of(cluster, &["put", "snap/a", "a3"]).await;
    etcdctl_ok(cluster, &["put", "snap/d", "d1"]).await;
    etcdctl_ok(cluster, &["compact", &compacted.to_string()]).await;
    let granted = etcdctl_ok(cluster, &["lease", "grant", LEASE_TTL]).await;
    // "lease 694d77aa9e4e0d09 granted with TTL(600s)"
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease ID")
        .to_string();
    etcdctl_ok(cluster, &["put", "snap/leased/1", "x", "--lease", &lease]).await;
    etcdctl_ok(cluster, &["put", "snap/leased/2", "y", "--lease", &lease]).await;
    let in_history = revision_of(cluster, &["put", "snap/d", "d2"]).await;
    etcdctl_ok(cluster, &["del", "snap/t1"]).await;
    etcdctl_ok(cluster, &["put", "snap/a", "a4"]).await;
    Workload {
        compacted,
        in_history,
    }
}

async fn observe(cluster: &TestCluster, workload: &Workload) -> Observed {
    let now = json(&etcdctl_ok(cluster, &["get", "--prefix", "snap/", "-w", "json"]).await);
    let then = json(
        &etcdctl_ok(
            cluster,
            &[
                "get",
                "--prefix",
                "snap/",
                "-w",
                "json",
                &format!("--rev={}", workload.in_history),
            ],
        )
        .await,
    );
    let below = cluster
        .etcdctl(&[
            "get",
            "snap/a",
            &format!("--rev={}", workload.compacted - 1),
        ])
        .await;
    let below_compaction = below
        .expect_failure()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let mut leases = Vec::new();
    let list = etcdctl_ok(cluster, &["lease", "list"]).await;
    for id in list.lines().skip(1) {
        let ttl = json(
            &etcdctl_ok(
                cluster,
                &["lease", "timetolive", id, "--keys", "-w", "json"],
            )
            .await,
        );
        // etcd lists a lease's keys in the order of a Go map: any order.
        let mut keys: Vec<String> = ttl["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| k.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        leases.push((ttl["granted-ttl"].as_i64().expect("granted-ttl"), keys));
    }
    Observed {
        revision: now["header"]["revision"].as_i64().expect("revision"),
        kvs: now["kvs"].clone(),
        kvs_in_history: then["kvs"].clone(),
        below_compaction,
        leases,
    }
}

fn snapshot_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferrokv-e2e-etcd-snapshot-")
        .tempdir()
        .expect("temp dir")
}

async fn save_snapshot(cluster: &TestCluster, path: &Path) {
    let path = path.to_str().expect("utf-8 path");
    let output = cluster.member_etcdctl(0, &["snapshot", "save", path]).await;
    assert_eq!(
        output.expect_stdout(),
        format!("Snapshot saved at {path}\n")
    );
}

/// The flags a snapshot restore (ferrokv's or etcdctl's) takes to lay out member 0 of `cluster`.
fn restore_flags(cluster: &TestCluster) -> [String; 5] {
    [
        format!("--name={}", cluster.name(0)),
        format!("--data-dir={}", cluster.data_dir(0).display()),
        format!("--initial-cluster={}", cluster.initial_cluster()),
        format!("--initial-cluster-token={}", cluster.token()),
        format!("--initial-advertise-peer-urls={}", cluster.peer_url(0)),
    ]
}

fn ferrokv_restore(restored: &TestCluster, file: &Path, extra: &[&str]) -> Output {
    Command::new(restored.server())
        .args(["snapshot", "restore"])
        .arg(file)
        .args(extra)
        .args(restore_flags(restored))
        .output()
        .expect("run ferrokv snapshot restore")
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn skip_against_etcd() -> bool {
    // These tests move data between the two servers; run against etcd alone they have no
    // ferrokv to move it to.
    ferrokv_e2e::binaries::server_is_etcd()
}

#[tokio::test]
async fn snapshot_saved_from_etcd_restores_into_ferrokv_with_history_and_leases() {
    if skip_against_etcd() {
        return;
    }
    let etcd = TestCluster::builder(1)
        .server(ETCD)
        .start()
        .await
        .expect("start etcd");
    let workload = run_workload(&etcd).await;
    let expected = observe(&etcd, &workload).await;
    assert_eq!(expected.leases.len(), 1);
    assert_eq!(expected.leases[0].1.len(), 2, "{expected:?}");
    let dir = snapshot_dir();
    let file = dir.path().join("etcd.db");
    save_snapshot(&etcd, &file).await;

    let mut restored = TestCluster::builder(1).create().expect("lay out ferrokv");
    assert_success(
        "ferrokv snapshot restore",
        &ferrokv_restore(&restored, &file, &[]),
    );
    restored.restart(0).expect("start ferrokv");
    restored.wait_healthy().await.expect("ferrokv healthy");

    let seen = observe(&restored, &workload).await;
    assert_eq!(seen, expected);
    let next = revision_of(&restored, &["put", "snap/after", "z"]).await;
    assert_eq!(
        next,
        expected.revision + 1,
        "writes go on from the snapshot's revision"
    );
}

#[tokio::test]
async fn snapshot_saved_from_ferrokv_passes_etcdctl_and_restores_into_etcd() {
    if skip_against_etcd() {
        return;
    }
    let ferrokv = TestCluster::start(1).await.expect("start ferrokv");
    let workload = run_workload(&ferrokv).await;
    let expected = observe(&ferrokv, &workload).await;
    let dir = snapshot_dir();
    let file = dir.path().join("ferrokv.db");
    save_snapshot(&ferrokv, &file).await;

    let status = Command::new(ferrokv.etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .expect("run etcdctl snapshot status");
    assert_success("etcdctl snapshot status", &status);
    let status = json(&String::from_utf8_lossy(&status.stdout));
    assert_eq!(
        status["revision"].as_i64(),
        Some(expected.revision),
        "{status}"
    );
    assert!(status["totalKey"].as_i64().unwrap_or(0) > 10, "{status}");
    assert!(status["hash"].as_u64().is_some(), "{status}");
    let file_size = std::fs::metadata(&file).expect("snapshot file").len();
    assert_eq!(
        status["totalSize"].as_u64(),
        Some(file_size - 32),
        "{status}"
    );

    let mut etcd = TestCluster::builder(1)
        .server(ETCD)
        .create()
        .expect("lay out etcd");
    let restore = Command::new(ferrokv.etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(restore_flags(&etcd))
        .output()
        .expect("run etcdctl snapshot restore");
    assert_success("etcdctl snapshot restore", &restore);
    etcd.restart(0).expect("start etcd");
    etcd.wait_healthy().await.expect("etcd healthy");

    let seen = observe(&etcd, &workload).await;
    assert_eq!(seen, expected);
    let next = revision_of(&etcd, &["put", "snap/after", "z"]).await;
    assert_eq!(next, expected.revision + 1);
}

/// Runs a restore that must fail, and checks it said why in one line and wrote nothing.
fn assert_refused(restored: &TestCluster, file: &Path, extra: &[&str], reason: &str) {
    let output = ferrokv_restore(restored, file, extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "restore of {} succeeded",
        file.display()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(reason), "{stderr}");
    assert!(
        !restored.data_dir(0).exists(),
        "a refused restore left {}",
        restored.data_dir(0).display()
    );
}

#[tokio::test]
async fn damaged_snapshots_are_refused_and_a_copied_db_needs_skip_hash_check() {
    if skip_against_etcd() {
        return;
    }
    let mut etcd = TestCluster::builder(1)
        .server(ETCD)
        .start()
        .await
        .expect("start etcd");
    let workload = run_workload(&etcd).await;
    let expected = observe(&etcd, &workload).await;
    let dir = snapshot_dir();
    let file = dir.path().join("etcd.db");
    save_snapshot(&etcd, &file).await;
    let bytes = std::fs::read(&file).expect("read snapshot");

    let restored = TestCluster::builder(1).create().expect("lay out ferrokv");
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    assert_refused(
        &restored,
        &write("flipped.db", &flipped),
        &[],
        "sha256 checksum mismatch",
    );
    let truncated = write("truncated.db", &bytes[..bytes.len() - 1000]);
    assert_refused(&restored, &truncated, &[], "no sha256 trailer");
    assert_refused(&restored, &truncated, &["--skip-hash-check"], "truncated");
    // Cut by whole pages, the size still looks like a database and its trailer: the hash tells.
    let cut_by_a_page = write("cut.db", &bytes[..bytes.len() - 4096]);
    assert_refused(&restored, &cut_by_a_page, &[], "sha256 checksum mismatch");
    assert_refused(
        &restored,
        &write("garbage.db", &vec![0x5a; 8192]),
        &["--skip-hash-check"],
        "invalid database",
    );

    // etcd's live database file, copied out of its data dir: no trailer, free pages and all.
    etcd.stop(0).await.expect("stop etcd");
    let db = etcd.data_dir(0).join("member/snap/db");
    let copied = write("copied.db", &std::fs::read(&db).expect("read etcd's db"));
    assert_refused(&restored, &copied, &[], "no sha256 trailer");
    let mut restored = restored;
    assert_success(
        "ferrokv snapshot restore --skip-hash-check",
        &ferrokv_restore(&restored, &copied, &["--skip-hash-check"]),
    );
    restored.restart(0).expect("start ferrokv");
    restored.wait_healthy().await.expect("ferrokv healthy");
    assert_eq!(observe(&restored, &workload).await, expected);
}
