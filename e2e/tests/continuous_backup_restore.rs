//! Continuous backup's change log restores a new cluster to any revision after a snapshot:
//! `ferrokv snapshot restore FILE --segments DIR --to-revision N` replays the changes a watch
//! saw after the snapshot, at the revisions they had, so the restored member answers reads at
//! every revision up to N, and `endpoint hashkv` at N, exactly as the source did. A change log
//! with a gap or a damaged segment is refused and leaves no data dir.
//!
//! The segments are written here from an `etcd-client` watch, as the operator's streamer writes
//! them from a follower's.

use std::path::Path;
use std::process::{Command, Output};

use etcd_client::{EventType, WatchOptions};
use ferrokv_e2e::s3::{S3Server, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use ferrokv_e2e::TestCluster;
use ferrokv_storage::change_log::{
    encode_segment, segment_file_name, LoggedChange, RevisionSeen, Segment,
};
use ferrokv_storage::mvcc::{Lease, Version};
use serde_json::Value;

const LEASE_TTL: i64 = 600;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn etcdctl_ok(cluster: &TestCluster, args: &[&str]) -> String {
    cluster.etcdctl(args).await.expect_stdout().to_string()
}

async fn revision_after(cluster: &TestCluster, args: &[&str]) -> i64 {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    json(&etcdctl_ok(cluster, &args).await)["header"]["revision"]
        .as_i64()
        .expect("header revision")
}

async fn grant(cluster: &TestCluster) -> String {
    let granted = etcdctl_ok(cluster, &["lease", "grant", &LEASE_TTL.to_string()]).await;
    granted
        .split_whitespace()
        .nth(1)
        .expect("lease ID")
        .to_string()
}

/// Every key at `revision`, as `get -w json` shows them (values, revisions, versions, leases).
async fn keys_at(cluster: &TestCluster, member: usize, revision: i64) -> Value {
    let out = cluster
        .member_etcdctl(
            member,
            &[
                "get",
                "",
                "--prefix",
                "-w",
                "json",
                &format!("--rev={revision}"),
            ],
        )
        .await;
    json(out.expect_stdout())["kvs"].clone()
}

async fn hash_at(cluster: &TestCluster, member: usize, revision: i64) -> i64 {
    let out = cluster
        .member_etcdctl(
            member,
            &[
                "endpoint",
                "hashkv",
                "-w",
                "json",
                &format!("--rev={revision}"),
            ],
        )
        .await;
    json(out.expect_stdout())[0]["HashKV"]["hash"]
        .as_i64()
        .expect("hash")
}

/// The changes of revisions `from..=to` from a watch of the whole keyspace, with the granted
/// TTL of every lease they attach keys to.
async fn watched_changes(
    cluster: &TestCluster,
    from: i64,
    to: i64,
) -> (Vec<LoggedChange>, Vec<Lease>) {
    let mut client = cluster.member_client(1).await.expect("client");
    let mut stream = client
        .watch(
            vec![0],
            Some(
                WatchOptions::new()
                    .with_range(vec![0])
                    .with_start_revision(from),
            ),
        )
        .await
        .expect("watch");
    let mut changes: Vec<LoggedChange> = Vec::new();
    while changes.last().is_none_or(|c| c.revision < to) {
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("watch answers")
            .expect("watch")
            .expect("watch open");
        assert!(!response.canceled(), "{response:?}");
        for event in response.events() {
            let kv = event.kv().expect("event kv");
            changes.push(LoggedChange {
                key: kv.key().to_vec(),
                revision: kv.mod_revision(),
                put: (event.event_type() == EventType::Put).then(|| Version {
                    create_revision: kv.create_revision(),
                    version: kv.version(),
                    value: kv.value().to_vec(),
                    lease: kv.lease(),
                }),
            });
        }
    }
    let mut ids: Vec<i64> = changes
        .iter()
        .filter_map(|c| c.put.as_ref().map(|v| v.lease))
        .filter(|&l| l != 0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut leases = Vec::new();
    for id in ids {
        let ttl = client
            .lease_time_to_live(id, None)
            .await
            .expect("lease ttl");
        leases.push(Lease {
            id,
            ttl: ttl.granted_ttl(),
        });
    }
    (changes, leases)
}

fn segment(changes: &[LoggedChange], leases: &[Lease], first: i64, last: i64) -> Vec<u8> {
    encode_segment(&Segment {
        first_revision: first,
        last_revision: last,
        changes: changes
            .iter()
            .filter(|c| (first..=last).contains(&c.revision))
            .cloned()
            .collect(),
        leases: leases.to_vec(),
        seen: vec![RevisionSeen {
            revision: last,
            unix_millis: 0,
        }],
    })
    .expect("encode segment")
}

fn ferrokv_restore(restored: &TestCluster, file: &Path, segments: &Path, to: i64) -> Output {
    let source = [
        file.display().to_string(),
        format!("--segments={}", segments.display()),
    ];
    restore_with(restored, &source, to)
}

fn restore_with(restored: &TestCluster, source: &[String], to: i64) -> Output {
    Command::new(restored.server())
        .args(["snapshot", "restore"])
        .args(source)
        .arg(format!("--to-revision={to}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .args([
            format!("--name={}", restored.name(0)),
            format!("--data-dir={}", restored.data_dir(0).display()),
            format!("--initial-cluster={}", restored.initial_cluster()),
            format!("--initial-cluster-token={}", restored.token()),
            format!("--initial-advertise-peer-urls={}", restored.peer_url(0)),
        ])
        .output()
        .expect("run ferrokv snapshot restore")
}

fn stderr_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn restore_to_a_revision_after_a_backup_replays_the_change_log_at_its_revisions() {
    if ferrokv_e2e::binaries::server_is_etcd() {
        // The change log is ferrokv's; etcd has no restore that replays one.
        return;
    }
    let source = TestCluster::start(3).await.expect("start source");
    for (key, value) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
        etcdctl_ok(&source, &["put", key, value]).await;
    }
    let old_lease = grant(&source).await;
    etcdctl_ok(&source, &["put", "leased/old", "x", "--lease", &old_lease]).await;
    // A linearizable read on member 1 makes it apply everything written so far, so that its
    // snapshot holds exactly the revision read.
    let read = source.member_etcdctl(1, &["get", "a", "-w", "json"]).await;
    let snapshot_revision = json(read.expect_stdout())["header"]["revision"]
        .as_i64()
        .expect("revision");
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = dir.path().join("snapshot.db");
    let saved = source
        .member_etcdctl(1, &["snapshot", "save", snapshot.to_str().expect("utf-8")])
        .await;
    saved.expect_stdout();

    // After the snapshot: a transaction of several changes, a range deletion, a lease granted
    // and attached, recreated keys.
    etcdctl_ok(&source, &["del", "b"]).await;
    let txn = source
        .etcdctl_with_stdin(&["txn", "-i"], "\nput t/1 one\nput t/2 two\ndel a\n\n\n")
        .await;
    assert!(txn.expect_stdout().contains("SUCCESS"), "{txn:?}");
    let new_lease = grant(&source).await;
    etcdctl_ok(&source, &["put", "leased/new", "y", "--lease", &new_lease]).await;
    let target = revision_after(&source, &["put", "b", "b2"]).await;
    etcdctl_ok(&source, &["del", "t/", "--prefix"]).await;
    etcdctl_ok(&source, &["put", "a", "a3"]).await;
    let end = revision_after(&source, &["put", "c", "c1"]).await;

    let (changes, leases) = watched_changes(&source, snapshot_revision + 1, end).await;
    let segments = dir.path().join("segments");
    std::fs::create_dir(&segments).unwrap();
    let split = snapshot_revision + 2;
    let first = segments.join("first");
    std::fs::write(
        &first,
        segment(&changes, &leases, snapshot_revision + 1, split),
    )
    .unwrap();
    std::fs::write(
        segments.join("second"),
        segment(&changes, &leases, split + 1, end),
    )
    .unwrap();

    let mut restored = TestCluster::builder(1).create().expect("lay out restored");
    let output = ferrokv_restore(&restored, &snapshot, &segments, target);
    assert!(output.status.success(), "{}", stderr_of(&output));
    restored.restart(0).expect("start restored");
    restored.wait_healthy().await.expect("restored healthy");

    for revision in snapshot_revision..=target {
        assert_eq!(
            keys_at(&restored, 0, revision).await,
            keys_at(&source, 0, revision).await,
            "keys at revision {revision}"
        );
    }
    assert_eq!(
        revision_after(&restored, &["get", "a"]).await,
        target,
        "the restored cluster is at the target revision"
    );
    assert_eq!(
        hash_at(&restored, 0, target).await,
        hash_at(&source, 0, target).await,
        "HashKV at {target}"
    );
    let ttl = json(
        &etcdctl_ok(
            &restored,
            &["lease", "timetolive", &new_lease, "--keys", "-w", "json"],
        )
        .await,
    );
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(LEASE_TTL), "{ttl}");
    assert_eq!(ttl["keys"].as_array().map(Vec::len), Some(1), "{ttl}");
    assert_eq!(
        revision_after(&restored, &["put", "after", "z"]).await,
        target + 1,
        "writes go on from the target revision"
    );

    // The same from object storage, as the operator's init step runs it.
    let s3 = S3Server::start(dir.path()).expect("start moto");
    s3.create_bucket("pitr").await.unwrap();
    s3.put_file("pitr", "c/snapshot.db", &snapshot)
        .await
        .unwrap();
    for (name, first, last) in [
        ("first", snapshot_revision + 1, split),
        ("second", split + 1, end),
    ] {
        let key = format!("c/segments/{}", segment_file_name(first, last));
        s3.put_file("pitr", &key, &segments.join(name))
            .await
            .unwrap();
    }
    let mut from_s3 = TestCluster::builder(1).create().expect("lay out");
    let output = restore_with(
        &from_s3,
        &[
            "--s3-bucket=pitr".to_string(),
            "--s3-key=c/snapshot.db".to_string(),
            format!("--s3-endpoint={}", s3.endpoint()),
            "--s3-force-path-style".to_string(),
            "--segments-s3-prefix=c/segments".to_string(),
        ],
        target,
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    from_s3.restart(0).expect("start restored from S3");
    from_s3.wait_healthy().await.expect("healthy");
    assert_eq!(
        keys_at(&from_s3, 0, target).await,
        keys_at(&source, 0, target).await
    );

    // A gap: the first segment missing.
    let gap = dir.path().join("gap");
    std::fs::create_dir(&gap).unwrap();
    std::fs::copy(segments.join("second"), gap.join("second")).unwrap();
    let refused = TestCluster::builder(1).create().expect("lay out");
    let output = ferrokv_restore(&refused, &snapshot, &gap, target);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains(&format!(
            "no segment holds revisions {} to {split}",
            snapshot_revision + 1
        )),
        "{}",
        stderr_of(&output)
    );
    assert!(!refused.data_dir(0).join("member").exists());

    // A damaged segment.
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(gap.join("first"), bytes).unwrap();
    let output = ferrokv_restore(&refused, &snapshot, &gap, target);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("SHA-256"),
        "{}",
        stderr_of(&output)
    );
    assert!(!refused.data_dir(0).join("member").exists());
}
