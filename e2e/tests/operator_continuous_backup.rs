//! Continuous backup end to end: a KVCluster of real `ferrokv` members with
//! `spec.backup.continuous` streams every change to a real S3-compatible server the test starts
//! (moto), between two full backups taken with `KVClusterBackup`s, while a writer runs; a new
//! KVCluster declared with `spec.bootstrap.restore.pointInTime` at a revision between the two
//! backups comes up with exactly the keys, values, revisions and versions the source had at that
//! revision (and the same `HashKV`); a point the change log does not reach is refused before
//! anything is made. The recovery point is reported in status under a steady writer.
//!
//! Every name here contains `backup` and `restore`, so either filter runs it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferrokv_e2e::backup_fixture::{
    etcdctl_json, etcdctl_ok, full_backup, keys_at, put, recovery_point, refused_restore, S3Backups,
};
use ferrokv_e2e::kube_env::{KubeEnv, STATEFUL_SETS};

const FORMING: Duration = Duration::from_secs(120);
const BUCKET: &str = "ferrokv-continuous";
/// Seconds between segments, as the spec asks.
const SEGMENT_SECONDS: u64 = 2;

/// A history with every kind of change: overwrites, deletions, a transaction of several
/// changes, a lease with keys.
async fn write_history(env: &KubeEnv, round: &str) {
    for i in 0..6 {
        put(env, &format!("/pitr/{round}/{i}"), &format!("v1-{i}")).await;
    }
    put(env, &format!("/pitr/{round}/0"), "v2").await;
    etcdctl_ok(
        &env.etcdctl_on("example", &["del", &format!("/pitr/{round}/1")])
            .await
            .unwrap(),
    );
    // A transaction of several changes in one revision (sub revisions 0, 1, 2).
    let mut client = etcd_client::Client::connect([env.member_endpoint(0).await.unwrap()], None)
        .await
        .unwrap();
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(format!("/pitr/{round}/t1"), "one", None),
        etcd_client::TxnOp::put(format!("/pitr/{round}/t2"), "two", None),
        etcd_client::TxnOp::delete(format!("/pitr/{round}/2"), None),
    ]);
    assert!(client.txn(txn).await.unwrap().succeeded());
    let lease = etcdctl_json(env, "example", &["lease", "grant", "600"]).await["ID"]
        .as_i64()
        .unwrap();
    let id = format!("{lease:x}");
    etcdctl_ok(
        &env.etcdctl_on(
            "example",
            &["put", &format!("/pitr/{round}/leased"), "l", "--lease", &id],
        )
        .await
        .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backup_restores_a_revision_between_two_backups_exactly() {
    let whole = Instant::now();
    let Some(backups) = S3Backups::start("continuous", BUCKET).await else {
        return;
    };
    let (env, s3) = (&backups.env, &backups.s3);
    let destination = backups.destination();
    backups
        .start_continuous_source(SEGMENT_SECONDS, FORMING)
        .await;
    write_history(env, "before").await;
    let waiting = env
        .eventually(
            "continuous backup to wait for a full backup",
            Duration::from_secs(60),
            || async {
                let status = env.kvcluster_named("example").await["status"]["backup"].clone();
                (status["continuousFailure"]["reason"] == "WaitingForFullBackup").then_some(status)
            },
        )
        .await;
    println!("before any full backup: {waiting}");

    let first = full_backup(env, "first", &destination).await;
    write_history(env, "between").await;
    let target = put(env, "/pitr/target", "here").await;
    let source_at_target = keys_at(env, "example", target).await;
    write_history(env, "later").await;
    let second = full_backup(env, "second", &destination).await;
    assert!(
        first < target && target < second,
        "{first} < {target} < {second}"
    );
    let end = put(env, "/pitr/end", "x").await;

    let point = env
        .eventually(
            "the change log to reach the last write",
            Duration::from_secs(60),
            || async {
                let point = recovery_point(env).await;
                (point["revision"].as_i64()? >= end).then_some(point)
            },
        )
        .await;
    println!("recovery point after the writes: {point}");
    let segments = s3.objects(BUCKET, "e2e/").await.unwrap();
    assert!(
        segments.iter().any(|o| o.key.contains("/segments/")),
        "segments next to the snapshots: {segments:?}"
    );
    let source_hash = etcdctl_json(
        env,
        "example",
        &["endpoint", "hashkv", &format!("--rev={target}")],
    )
    .await[0]["HashKV"]["hash"]
        .clone();

    // A point the change log does not reach: refused, nothing made.
    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": "too-far", "namespace": env.namespace},
        "spec": {"replicas": 1, "bootstrap": {"restore": {"pointInTime": {
            "cluster": "example",
            "destination": destination["s3"],
            "revision": end + 1000,
        }}}},
    }))
    .await
    .unwrap();

    let started = Instant::now();
    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": "restored", "namespace": env.namespace},
        "spec": {"replicas": 3, "bootstrap": {"restore": {"pointInTime": {
            "cluster": "example",
            "destination": destination["s3"],
            "revision": target,
        }}}},
    }))
    .await
    .unwrap();
    let (_, degraded) = refused_restore(env, "too-far").await;
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("the change log ends at revision")),
        "{degraded}"
    );

    let took = env
        .wait_cluster_available("restored", 3, FORMING)
        .await
        .max(started.elapsed());
    println!(
        "restored 3 members to revision {target} (backup of {first}, change log after it): Available {:.1}s after kubectl apply",
        took.as_secs_f64()
    );
    let restore = env.kvcluster_named("restored").await["status"]["restore"].clone();
    assert_eq!(
        restore["revision"], first,
        "the newest backup before the target: {restore}"
    );
    assert_eq!(restore["toRevision"], target, "{restore}");
    let now = etcdctl_json(env, "restored", &["get", "", "--prefix"]).await;
    assert_eq!(
        now["header"]["revision"], target,
        "the restored cluster is at the target"
    );
    assert_eq!(
        now["kvs"], source_at_target,
        "keys, values, revisions and versions at {target}"
    );
    for revision in [first, (first + target) / 2, target] {
        assert_eq!(
            keys_at(env, "restored", revision).await,
            keys_at(env, "example", revision).await,
            "reads at revision {revision}"
        );
    }
    let restored_hash = etcdctl_json(
        env,
        "restored",
        &["endpoint", "hashkv", &format!("--rev={target}")],
    )
    .await[0]["HashKV"]["hash"]
        .clone();
    assert_eq!(restored_hash, source_hash, "HashKV at {target}");
    assert!(env.get(STATEFUL_SETS, "too-far").await.is_none());

    // The recovery point under a steady writer, as fast as this machine lets it write.
    let endpoint = env.member_endpoint(0).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (stop, written, endpoint) = (stop.clone(), written.clone(), endpoint.clone());
        writers.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .put(format!("/load/{w}/{}", i % 100), vec![b'x'; 100], None)
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let load_started = Instant::now();
    let mut lags = Vec::new();
    let mut lag_revisions = Vec::new();
    let mut last_seen = None;
    while load_started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let point = recovery_point(env).await;
        if point["segment"] != Value::Null && last_seen.as_ref() != Some(&point["segment"]) {
            last_seen = Some(point["segment"].clone());
            if load_started.elapsed() > Duration::from_secs(5) {
                lags.push(point["lagSeconds"].as_f64().unwrap());
                lag_revisions.push(point["lagRevisions"].as_i64().unwrap());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let rate = written.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64();
    let max_lag = lags.iter().copied().fold(0.0, f64::max);
    let mean_lag = lags.iter().sum::<f64>() / lags.len().max(1) as f64;
    println!(
        "steady writer: {rate:.0} puts/s for 30 s; {} segments; recovery point lag {mean_lag:.1} s mean, {max_lag:.1} s max; {} revisions behind the leader at most",
        lags.len(),
        lag_revisions.iter().max().copied().unwrap_or(0)
    );
    assert!(lags.len() >= 3, "segments kept coming under load: {lags:?}");
    assert!(
        max_lag < 10.0,
        "the recovery point stays under 10 s behind: {lags:?}"
    );
    println!(
        "whole continuous backup test: {:.1}s",
        whole.elapsed().as_secs_f64()
    );
}
