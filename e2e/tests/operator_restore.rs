//! Restores end to end: a KVCluster of real `ferrokv` members is backed up to a real
//! S3-compatible server the test starts (moto, see `ferrokv_e2e::s3`), then new KVClusters are
//! declared with `spec.bootstrap.restore`: one from a damaged object, which the operator refuses
//! before making anything, and one from the backup, whose members each restore it in their init
//! step and serve the same keys with the same revisions; and one from a snapshot Debian's etcd
//! saved, the way an etcd cluster moves into a KVCluster.
//!
//! The S3 server listens on the pod network's host address, which the operator and every pod
//! reach. Every name here contains `restore`, so `cargo test -p ferrokv-e2e restore` runs them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferrokv_e2e::backup_fixture::{
    etcdctl_ok, keyspace, refused_restore, restored_cluster, write_history, S3Backups,
};
use ferrokv_e2e::kube_env::{KubeEnv, EVENTS, KVCLUSTERBACKUPS, PODS, STATEFUL_SETS};

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);

const BUCKET: &str = "ferrokv-restores";
const CORRUPT_KEY: &str = "uploaded/corrupt.db";

async fn events_of(env: &KubeEnv, cluster: &str) -> Vec<Value> {
    env.list(EVENTS)
        .await
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == cluster)
        .collect()
}

fn has_event(events: &[Value], reason: &str) -> Option<Value> {
    events.iter().find(|e| e["reason"] == reason).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_backup_keeps_keys_and_revisions_and_a_corrupt_object_makes_nothing() {
    let whole = Instant::now();
    let Some(backups) = S3Backups::start("restore", BUCKET).await else {
        return;
    };
    let (env, s3) = (&backups.env, &backups.s3);
    let destination = backups.destination();

    // The source: one member is enough to back up from.
    env.apply_example(|kvc| kvc["spec"]["replicas"] = json!(1))
        .await
        .unwrap();
    env.wait_available(1, FORMING).await;
    write_history(env, "/restore/").await;
    let (source_keys, source_revision) = keyspace(env, "example").await;

    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVClusterBackup",
        "metadata": {"name": "before-restore", "namespace": env.namespace},
        "spec": {"clusterName": "example", "destination": destination},
    }))
    .await
    .unwrap();
    let backup = env
        .eventually("the backup to finish", Duration::from_secs(120), || async {
            let status = env.get(KVCLUSTERBACKUPS, "before-restore").await?["status"].clone();
            matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
        })
        .await;
    assert_eq!(backup["phase"], "Succeeded", "{backup}");
    assert_eq!(backup["revision"], source_revision, "{backup}");
    let key = backup["key"].as_str().unwrap().to_string();

    // A damaged copy of it, uploaded by hand: refused before anything is made.
    let file = backups.scratch().join("snapshot.db");
    s3.get_file(BUCKET, &key, &file).await.unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    s3.put_file(BUCKET, CORRUPT_KEY, &file).await.unwrap();
    let corrupt = backups.object_source(CORRUPT_KEY);
    let applied_broken = Instant::now();
    env.apply(&restored_cluster(env, "broken", 3, corrupt))
        .await
        .unwrap();

    // The good one: from the KVClusterBackup, by name.
    let started = Instant::now();
    let from_backup = json!({"backup": {"name": "before-restore"}});
    env.apply(&restored_cluster(env, "restored", 3, from_backup))
        .await
        .unwrap();

    let (refused, degraded) = refused_restore(env, "broken").await;
    println!(
        "corrupt object refused {:.1}s after kubectl apply",
        applied_broken.elapsed().as_secs_f64()
    );
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains(CORRUPT_KEY) && message.contains("SHA-256"),
        "the condition names the object and the problem: {message}"
    );
    assert_eq!(refused["phase"], "Degraded", "{refused}");
    assert!(refused["restore"].is_null(), "{refused}");
    let warning = env
        .eventually(
            "a RestoreSourceInvalid Event",
            Duration::from_secs(30),
            || async { has_event(&events_of(env, "broken").await, "RestoreSourceInvalid") },
        )
        .await;
    assert_eq!(warning["type"], "Warning", "{warning}");

    let took = env
        .wait_cluster_available("restored", 3, FORMING)
        .await
        .max(started.elapsed());
    println!(
        "restored 3 members from a backup of revision {source_revision}: Available {:.1}s after kubectl apply",
        took.as_secs_f64()
    );
    let (restored_keys, restored_revision) = keyspace(env, "restored").await;
    assert_eq!(restored_revision, source_revision);
    assert_eq!(
        restored_keys, source_keys,
        "the same keys, values, create and mod revisions and versions"
    );
    let status = env.kvcluster_named("restored").await["status"].clone();
    let restore = &status["restore"];
    assert!(
        restore["source"]
            .as_str()
            .is_some_and(|s| s.contains("KVClusterBackup") && s.contains(&key)),
        "{restore}"
    );
    assert_eq!(restore["revision"], source_revision, "{restore}");
    assert_eq!(restore["sha256"], backup["sha256"], "{restore}");
    assert!(restore["restoredTime"].is_string(), "{restore}");
    let events = env
        .eventually("a Restored Event", Duration::from_secs(30), || async {
            let events = events_of(env, "restored").await;
            has_event(&events, "Restored").map(|_| events)
        })
        .await;
    assert!(
        has_event(&events, "RestoreSourceVerified").is_some(),
        "{events:?}"
    );

    // Writes go on from the restored revision, and a restarted member keeps its data and ID:
    // its init step finds the data dir initialised and leaves it.
    etcdctl_ok(
        &env.etcdctl_on("restored", &["put", "/restore/after", "1"])
            .await
            .unwrap(),
    );
    let ids = |status: &Value| -> Vec<(String, String)> {
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["name"].to_string(), m["id"].to_string()))
            .collect()
    };
    let before = ids(&status);
    let old_uid = env.get(PODS, "restored-1").await.unwrap()["metadata"]["uid"].clone();
    let deleted = env
        .kubectl_in_namespace(&["delete", "pod", "restored-1", "--wait=false"])
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");
    env.eventually("restored-1 made again", Duration::from_secs(60), || async {
        let pod = env.get(PODS, "restored-1").await?;
        (pod["metadata"]["uid"] != old_uid
            && pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0)
            .then_some(())
    })
    .await;
    env.wait_cluster_available("restored", 3, FORMING).await;
    let log = env.pod_log("restored-1").await;
    assert!(
        log.contains("nothing restored"),
        "the second init step leaves the data dir: {log}"
    );
    let after = env.kvcluster_named("restored").await["status"].clone();
    assert_eq!(ids(&after), before, "every member keeps its ID");
    let (keys, _) = keyspace(env, "restored").await;
    assert_eq!(
        keys.as_array().unwrap().len(),
        source_keys.as_array().unwrap().len() + 1
    );

    // Nothing was made for the refused one.
    assert!(env.get(STATEFUL_SETS, "broken").await.is_none());
    assert!(
        !env.names(PODS)
            .await
            .iter()
            .any(|p| p.starts_with("broken-")),
        "no pod of the refused cluster"
    );
    println!("whole restore test: {:.1}s", whole.elapsed().as_secs_f64());
}

/// Debian's etcd 3.4, for a snapshot of its own to restore from.
const ETCD: &str = "/usr/bin/etcd";
const ETCD_SNAPSHOT_KEY: &str = "from-etcd/snapshot.db";

/// `etcdctl get "" --prefix -w json` on `cluster`: its keys as a client sees them, and the
/// revision.
async fn etcd_keyspace(cluster: &ferrokv_e2e::TestCluster) -> (Value, i64) {
    let get = cluster
        .etcdctl(&["get", "", "--prefix", "-w", "json"])
        .await;
    let answer: Value = serde_json::from_str(get.expect_stdout()).unwrap();
    (
        answer["kvs"].clone(),
        answer["header"]["revision"].as_i64().unwrap(),
    )
}

/// How a team moves an etcd cluster into a KVCluster: `etcdctl snapshot save` on etcd, the file
/// uploaded to the bucket, a KVCluster restored from the object. Its members serve etcd's keys
/// with etcd's revisions and versions, and writes go on from etcd's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_snapshot_etcd_saved_keeps_its_keys_and_revisions() {
    if ferrokv_e2e::binaries::server_is_etcd() {
        eprintln!("skipped against etcd: the KVCluster's members are ferrokv's");
        return;
    }
    let Some(backups) = S3Backups::start("restore-etcd", BUCKET).await else {
        return;
    };
    let (env, s3) = (&backups.env, &backups.s3);

    let etcd = ferrokv_e2e::TestCluster::builder(1)
        .server(ETCD)
        .start()
        .await
        .expect("start etcd");
    let history: &[&[&str]] = &[
        &["put", "/etcd/a", "a1"],
        &["put", "/etcd/b", "b1"],
        &["put", "/etcd/a", "a2"],
        &["del", "/etcd/b"],
        &["put", "/etcd/b", "b2"],
        &["put", "/etcd/c", "c1"],
        &["put", "/etcd/a", "a3"],
    ];
    for args in history {
        etcd.etcdctl(args).await.expect_stdout();
    }
    let (etcd_keys, etcd_revision) = etcd_keyspace(&etcd).await;
    let file = backups.scratch().join("etcd.db");
    let path = file.to_str().unwrap();
    let saved = etcd.etcdctl(&["snapshot", "save", path]).await;
    assert_eq!(saved.expect_stdout(), format!("Snapshot saved at {path}\n"));
    s3.put_file(BUCKET, ETCD_SNAPSHOT_KEY, &file).await.unwrap();

    let started = Instant::now();
    let source = backups.object_source(ETCD_SNAPSHOT_KEY);
    env.apply(&restored_cluster(env, "from-etcd", 3, source))
        .await
        .unwrap();
    let took = env
        .wait_cluster_available("from-etcd", 3, FORMING)
        .await
        .max(started.elapsed());
    println!(
        "3 members restored from etcd's snapshot of revision {etcd_revision}: Available {:.1}s after kubectl apply",
        took.as_secs_f64()
    );
    let status = env.kvcluster_named("from-etcd").await["status"].clone();
    // Checked like any object: etcd's SHA-256 trailer; no manifest, so no revision recorded.
    assert_eq!(
        status["restore"]["source"],
        format!("s3://{BUCKET}/{ETCD_SNAPSHOT_KEY}"),
        "{status}"
    );
    assert!(status["restore"]["sha256"].is_string(), "{status}");
    let (keys, revision) = keyspace(env, "from-etcd").await;
    assert_eq!(revision, etcd_revision);
    assert_eq!(
        keys, etcd_keys,
        "etcd's keys, values, create and mod revisions and versions"
    );
    let put = env
        .etcdctl_on("from-etcd", &["put", "/etcd/after", "z", "-w", "json"])
        .await
        .unwrap();
    let put: Value = serde_json::from_slice(etcdctl_ok(&put)).unwrap();
    assert_eq!(
        put["header"]["revision"],
        etcd_revision + 1,
        "writes go on from etcd's revision"
    );
}
