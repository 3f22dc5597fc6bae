//! Continuous backup through what interrupts it, end to end on the hermetic Kubernetes with a
//! real S3-compatible server (moto): the operator restarted while it streams (the change log
//! goes on with no gap and no revision twice), a restore to a point given as a time, history
//! compacted away while the operator was down (`ChangeLogGap`, a full backup, and restores
//! after it), and retention of the change log (segments that end at or before the oldest kept
//! scheduled backup are deleted with the backups before it).
//!
//! Every name here contains `backup` or `restore`, so either filter runs it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use ferrokv_e2e::backup_fixture::{
    etcdctl_json, etcdctl_ok, full_backup, keys_at, put, recovery_point, refused_restore, S3Backups,
};
use ferrokv_e2e::kube_env::{KubeEnv, EVENTS};
use ferrokv_e2e::s3::S3Server;
use ferrokv_storage::change_log::{decode_segment, segment_file_revisions};

const FORMING: Duration = Duration::from_secs(120);
/// A schedule of every minute names its next time within a minute; a backup of a small
/// keyspace then takes seconds.
const NEXT_SCHEDULED: Duration = Duration::from_secs(150);
const BUCKET: &str = "ferrokv-continuous";
const SEGMENTS: &str = "e2e/default/example/segments/";
const SCHEDULED: &str = "e2e/default/example/scheduled/";
/// Seconds between segments, as the spec asks.
const SEGMENT_SECONDS: u64 = 2;

/// The change log's segments in the bucket: `(first, last, key)` by revision.
async fn segments(s3: &S3Server) -> Vec<(i64, i64, String)> {
    let mut found: Vec<_> = s3
        .objects(BUCKET, SEGMENTS)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| {
            let (first, last) = segment_file_revisions(&o.key)?;
            Some((first, last, o.key))
        })
        .collect();
    found.sort();
    found
}

/// Waits for the recovery point to reach `revision`.
async fn logged_up_to(env: &KubeEnv, revision: i64) -> Value {
    env.eventually(
        &format!("the change log to reach revision {revision}"),
        Duration::from_secs(90),
        || async {
            let point = recovery_point(env).await;
            (point["revision"].as_i64()? >= revision).then_some(point)
        },
    )
    .await
}

/// A KVCluster `name` of one member restored from `example`'s backups at `point` (`revision`
/// or `time`).
fn point_in_time(env: &KubeEnv, name: &str, destination: &Value, point: Value) -> Value {
    let mut source = json!({"cluster": "example", "destination": destination["s3"]});
    for (key, value) in point.as_object().unwrap() {
        source[key] = value.clone();
    }
    json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name, "namespace": env.namespace},
        "spec": {"replicas": 1, "bootstrap": {"restore": {"pointInTime": source}}},
    })
}

/// Restores `name` at `point` and checks it holds exactly what `example` held at `revision`.
async fn assert_restores(
    env: &KubeEnv,
    name: &str,
    destination: &Value,
    point: Value,
    revision: i64,
) -> Value {
    env.apply(&point_in_time(env, name, destination, point))
        .await
        .unwrap();
    env.wait_cluster_available(name, 1, FORMING).await;
    let restore = env.kvcluster_named(name).await["status"]["restore"].clone();
    assert_eq!(restore["toRevision"], revision, "{restore}");
    let now = etcdctl_json(env, name, &["get", "", "--prefix"]).await;
    assert_eq!(
        now["header"]["revision"], revision,
        "{name} is at {revision}"
    );
    assert_eq!(
        now["kvs"],
        keys_at(env, "example", revision).await,
        "{name}: keys, values, revisions and versions at {revision}"
    );
    restore
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backup_resumes_after_an_operator_restart_without_gap_or_duplicate_and_restores_to_a_time(
) {
    let Some(backups) = S3Backups::start("continuous-restart", BUCKET).await else {
        return;
    };
    let (env, s3) = (&backups.env, &backups.s3);
    let destination = backups.destination();
    backups
        .start_continuous_source(SEGMENT_SECONDS, FORMING)
        .await;
    let first = full_backup(env, "first", &destination).await;

    // A point in time: the change log has seen it a while before that time, and nothing after
    // it until a while later (the spec's times are whole seconds).
    for i in 0..5 {
        put(env, &format!("/time/before/{i}"), "v").await;
    }
    let at_time = put(env, "/time/point", "here").await;
    logged_up_to(env, at_time).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let time = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A writer across a restart of the operator.
    let stop = Arc::new(AtomicBool::new(false));
    let last_written = Arc::new(AtomicI64::new(0));
    let endpoint = env.member_endpoint(0).await.unwrap();
    let writer = {
        let (stop, last_written) = (stop.clone(), last_written.clone());
        tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let put = client
                    .put(format!("/time/after/{}", i % 50), format!("v{i}"), None)
                    .await
                    .unwrap();
                last_written.store(put.header().unwrap().revision(), Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.kill_operator().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let last = last_written.load(Ordering::Relaxed);
    logged_up_to(env, last).await;

    // The log holds every revision from the backup on, each once: the segments' ranges follow
    // one another, and each segment holds every revision of its range and no other.
    let log = segments(s3).await;
    assert_eq!(log.first().map(|s| s.0), Some(first + 1), "{log:?}");
    for pair in log.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "consecutive segments: {pair:?}");
    }
    assert!(log.last().unwrap().1 >= last, "{log:?}");
    let file = backups.scratch().join("segment");
    for (first, last, key) in &log {
        s3.get_file(BUCKET, key, &file).await.unwrap();
        let segment =
            decode_segment(&std::fs::read(&file).unwrap()).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            (segment.first_revision, segment.last_revision),
            (*first, *last),
            "{key}"
        );
        assert!(
            segment
                .changes
                .iter()
                .all(|c| (*first..=*last).contains(&c.revision)),
            "{key}: a change outside its range"
        );
    }
    println!(
        "operator restarted while writing: {} segments from revision {} to {}, none missing or repeated",
        log.len(),
        first + 1,
        log.last().unwrap().1
    );

    // A restore to the time: the last revision the change log saw made by then.
    assert_restores(
        env,
        "at-time",
        &destination,
        json!({"time": time.to_string()}),
        at_time,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_gap_takes_a_full_backup_to_restore_from_and_retention_deletes_older_segments() {
    let Some(backups) = S3Backups::start("continuous-gap", BUCKET).await else {
        return;
    };
    let (env, s3) = (&backups.env, &backups.s3);
    let destination = backups.destination();
    let spec = |schedule: &str| {
        json!({
            "schedule": schedule,
            "retention": {"count": 1},
            "destination": destination,
            "continuous": {"segmentSeconds": SEGMENT_SECONDS},
        })
    };
    env.apply_example(|kvc| kvc["spec"]["backup"] = spec("* * * * *"))
        .await
        .unwrap();
    env.wait_available(3, FORMING).await;
    let last_backup =
        || async { env.kvcluster().await["status"]["backup"]["lastSuccessfulBackup"].clone() };

    // Segments after a first scheduled backup; a second one keeps only itself, and the
    // segments that end at or before it go with the first.
    let b1 = env
        .eventually("a first scheduled backup", NEXT_SCHEDULED, || async {
            let record = last_backup().await;
            record["key"].is_string().then_some(record)
        })
        .await;
    let mut written = 0;
    for i in 0..4 {
        written = put(env, &format!("/retention/{i}"), "v").await;
    }
    logged_up_to(env, written).await;
    let before = segments(s3).await;
    let b2 = env
        .eventually("a second scheduled backup", NEXT_SCHEDULED, || async {
            let record = last_backup().await;
            (record["key"].is_string() && record["key"] != b1["key"]).then_some(record)
        })
        .await;
    let kept = b2["revision"].as_i64().unwrap();
    assert!(
        before.iter().any(|(_, last, _)| *last <= kept),
        "segments before the second backup: {before:?}"
    );
    env.eventually(
        "retention to delete the first backup and the segments up to the second",
        Duration::from_secs(30),
        || async {
            let snapshots: Vec<String> = s3
                .objects(BUCKET, SCHEDULED)
                .await
                .ok()?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(".db"))
                .collect();
            let log = segments(s3).await;
            (snapshots == [b2["key"].as_str().unwrap()]
                && log.iter().all(|(_, last, _)| *last > kept))
            .then_some(())
        },
    )
    .await;
    println!(
        "retention: {} segments ending at or before revision {kept} deleted with the first backup",
        before.iter().filter(|(_, last, _)| *last <= kept).count()
    );
    // No more scheduled backups: the rest must not race one.
    env.apply_example(|kvc| kvc["spec"]["backup"] = spec("0 0 1 1 *"))
        .await
        .unwrap();

    // History written and compacted away while the operator is down.
    env.stop_operator().unwrap();
    let mut compacted = 0;
    for i in 0..4 {
        compacted = put(env, &format!("/gap/{i}"), "lost").await;
    }
    etcdctl_ok(
        &env.etcdctl(&["compact", &compacted.to_string()])
            .await
            .unwrap(),
    );
    env.start_operator().unwrap();
    let gap = env
        .eventually(
            "a ChangeLogGap reported",
            Duration::from_secs(90),
            || async {
                env.list(EVENTS).await.into_iter().find(|e| {
                    e["reason"] == "ContinuousBackupFailed"
                        && e["note"]
                            .as_str()
                            .or(e["message"].as_str())
                            .is_some_and(|n| n.starts_with("ChangeLogGap"))
                })
            },
        )
        .await;
    println!(
        "gap: {}",
        gap["note"].as_str().or(gap["message"].as_str()).unwrap()
    );
    let after_gap = env
        .eventually(
            "a full backup after the gap",
            Duration::from_secs(60),
            || async {
                let record = last_backup().await;
                (record["revision"].as_i64()? >= compacted).then_some(record)
            },
        )
        .await;
    let after = put(env, "/gap/after", "kept").await;
    logged_up_to(env, after).await;

    // From the backup after the gap and the change log after it; a point in the gap is refused.
    let restore = assert_restores(
        env,
        "after-gap",
        &destination,
        json!({"revision": after}),
        after,
    )
    .await;
    assert_eq!(restore["revision"], after_gap["revision"], "{restore}");
    env.apply(&point_in_time(
        env,
        "in-gap",
        &destination,
        json!({"revision": compacted - 1}),
    ))
    .await
    .unwrap();
    let (_, degraded) = refused_restore(env, "in-gap").await;
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("no segment holds revisions")),
        "{degraded}"
    );
}
