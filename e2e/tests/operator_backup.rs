//! Backups end to end: the operator takes snapshots of a KVCluster of real `ferrokv` members on
//! the hermetic Kubernetes and uploads them to a real S3-compatible server the test starts
//! (moto, see `ferrokv_e2e::s3`): on a schedule with retention, on demand with a
//! `KVClusterBackup`, through an outage of the server, and against credentials it refuses.
//!
//! Every name here contains `backup`, so `cargo test -p ferrokv-e2e backup` runs them all.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferrokv_e2e::kube_env::{EnvOptions, KubeEnv, EVENTS, KVCLUSTERBACKUPS};
use ferrokv_e2e::s3::{credentials_secret, S3Server, StoredObject};

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);
/// A schedule of every minute names its next time within a minute; a backup of a small
/// keyspace then takes seconds.
const NEXT_SCHEDULED: Duration = Duration::from_secs(150);

const BUCKET: &str = "ferrokv-backups";
const PREFIX: &str = "e2e";
const SECRET: &str = "s3-credentials";
const SCHEDULED_DIR: &str = "e2e/default/example/scheduled/";
const ON_DEMAND_DIR: &str = "e2e/default/example/on-demand/";

async fn start(test: &str) -> KubeEnv {
    KubeEnv::start(test, EnvOptions::default())
        .await
        .expect("the test's cluster starts")
}

/// The Secret the destinations name, with the keys the operator documents.
async fn create_credentials(env: &KubeEnv) {
    env.apply(&credentials_secret(SECRET, &env.namespace))
        .await
        .unwrap();
}

fn destination(s3: &S3Server) -> Value {
    json!({"s3": {
        "bucket": BUCKET,
        "prefix": PREFIX,
        "endpoint": s3.endpoint(),
        "region": "us-east-1",
        "credentialsSecret": SECRET,
        "forcePathStyle": true,
    }})
}

/// Puts `count` keys; answers the keyspace's revision after them.
async fn write_keys(env: &KubeEnv, count: usize) -> i64 {
    for i in 0..count {
        let put = env
            .etcdctl(&["put", &format!("/backup/key-{i:03}"), &format!("value-{i}")])
            .await
            .unwrap();
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
    }
    let get = env
        .etcdctl(&["get", "/backup/", "--prefix", "-w", "json"])
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&get.stdout).unwrap();
    answer["header"]["revision"].as_i64().unwrap()
}

async fn backup_status(env: &KubeEnv) -> Value {
    env.kvcluster().await["status"]["backup"].clone()
}

/// The `time` of a status record, or the epoch when it has none.
fn time_of(record: &Value) -> jiff::Timestamp {
    timestamp(&record["time"])
}

fn timestamp(value: &Value) -> jiff::Timestamp {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Checks that `key` is a snapshot in the bucket with a manifest that describes it.
async fn assert_backup_in_bucket(
    s3: &S3Server,
    objects: &[StoredObject],
    key: &str,
    revision: i64,
) -> Value {
    let snapshot = objects
        .iter()
        .find(|o| o.key == key)
        .unwrap_or_else(|| panic!("{key} is not in the bucket: {objects:?}"));
    let manifest_key = key.replace(".db", ".json");
    assert!(
        objects.iter().any(|o| o.key == manifest_key),
        "no manifest {manifest_key}: {objects:?}"
    );
    let manifest = s3.get_json(BUCKET, &manifest_key).await.unwrap();
    assert_eq!(
        manifest["format"], "ferrokv.io/backup-manifest/v1",
        "{manifest}"
    );
    assert_eq!(manifest["cluster"], "default/example", "{manifest}");
    assert_eq!(manifest["snapshotKey"], key, "{manifest}");
    assert_eq!(manifest["revision"], revision, "{manifest}");
    assert_eq!(manifest["size"], snapshot.size, "{manifest}");
    assert_eq!(manifest["sha256"], snapshot.sha256.as_str(), "{manifest}");
    assert!(
        manifest["ferrokvVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{manifest}"
    );
    assert!(
        manifest["member"]
            .as_str()
            .is_some_and(|m| m.starts_with("example-")),
        "{manifest}"
    );
    manifest
}

async fn event_reasons(env: &KubeEnv) -> Vec<String> {
    env.list(EVENTS)
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_reach_s3_with_manifests_and_retention_and_recover_from_an_s3_outage() {
    let scratch = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(scratch.path()).unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let env = start("backup-scheduled").await;
    create_credentials(&env).await;
    let to = destination(&s3);
    env.apply_example(|kvc| {
        kvc["spec"]["backup"] = json!({
            "schedule": "* * * * *",
            "retention": {"count": 2},
            "destination": to,
        })
    })
    .await
    .unwrap();
    env.wait_available(3, FORMING).await;
    let written = write_keys(&env, 20).await;

    // A backup holding the keys, from a follower, with its manifest beside it.
    let first = env
        .eventually(
            "a scheduled backup holding the keys",
            NEXT_SCHEDULED,
            || async {
                let record = backup_status(&env).await["lastSuccessfulBackup"].clone();
                (record["revision"].as_i64()? >= written).then_some(record)
            },
        )
        .await;
    env.eventually(
        "the next scheduled backup's time",
        Duration::from_secs(30),
        || async {
            let status = backup_status(&env).await;
            (timestamp(&status["nextScheduledBackup"]) > time_of(&first)).then_some(())
        },
    )
    .await;
    let objects = s3.objects(BUCKET, SCHEDULED_DIR).await.unwrap();
    let first_key = first["key"].as_str().unwrap().to_string();
    let revision = first["revision"].as_i64().unwrap();
    let manifest = assert_backup_in_bucket(&s3, &objects, &first_key, revision).await;
    assert_eq!(manifest["size"], first["size"], "{first}");
    let leader = env.kvcluster().await["status"]["leader"].clone();
    assert_ne!(
        manifest["member"], leader,
        "the snapshot comes from a follower"
    );
    env.eventually(
        "a BackupSucceeded Event",
        Duration::from_secs(30),
        || async {
            event_reasons(&env)
                .await
                .contains(&"BackupSucceeded".to_string())
                .then_some(())
        },
    )
    .await;

    // Two more backups: retention keeps two, so the first one goes.
    let seen = Mutex::new(BTreeSet::from([first_key.clone()]));
    env.eventually("two more scheduled backups", NEXT_SCHEDULED * 2, || async {
        let record = backup_status(&env).await["lastSuccessfulBackup"].clone();
        let mut seen = seen.lock().unwrap();
        seen.insert(record["key"].as_str()?.to_string());
        (seen.len() >= 3).then_some(())
    })
    .await;
    let kept = env
        .eventually(
            "retention to leave two backups",
            Duration::from_secs(30),
            || async {
                let objects = s3.objects(BUCKET, SCHEDULED_DIR).await.ok()?;
                let snapshots: Vec<_> = objects
                    .iter()
                    .filter(|o| o.key.ends_with(".db"))
                    .cloned()
                    .collect();
                let manifests = objects.iter().filter(|o| o.key.ends_with(".json")).count();
                (snapshots.len() == 2 && manifests == 2).then_some(snapshots)
            },
        )
        .await;
    assert!(
        kept.iter().all(|o| o.key != first_key),
        "the oldest is deleted: {kept:?}"
    );

    // The server goes away: the next backup fails, and says why.
    let stopped = Instant::now();
    s3.stop();
    // Status times are in whole seconds.
    let stopped_at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let failure = env
        .eventually(
            "a failed backup while S3 is down",
            NEXT_SCHEDULED,
            || async {
                let failure = backup_status(&env).await["lastFailure"].clone();
                (time_of(&failure) >= stopped_at).then_some(failure)
            },
        )
        .await;
    assert_eq!(failure["reason"], "UploadFailed", "{failure}");
    assert!(
        failure["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{failure}"
    );
    // The Event follows the status write.
    env.eventually("a BackupFailed Event", Duration::from_secs(30), || async {
        event_reasons(&env)
            .await
            .contains(&"BackupFailed".to_string())
            .then_some(())
    })
    .await;
    println!(
        "backup failure reported {:.1}s after S3 stopped",
        stopped.elapsed().as_secs_f64()
    );

    // It comes back (empty, as moto keeps nothing): the next run succeeds.
    s3.restart().unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let failed_at = time_of(&failure);
    let recovered = env
        .eventually("a backup after S3 is back", NEXT_SCHEDULED, || async {
            let record = backup_status(&env).await["lastSuccessfulBackup"].clone();
            (time_of(&record) > failed_at).then_some(record)
        })
        .await;
    let objects = s3.objects(BUCKET, SCHEDULED_DIR).await.unwrap();
    assert_backup_in_bucket(
        &s3,
        &objects,
        recovered["key"].as_str().unwrap(),
        recovered["revision"].as_i64().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_backup_succeeds_and_refused_credentials_fail_it_with_the_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(scratch.path()).unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    // Knows no credentials at all once the bucket is made.
    let locked = S3Server::start_refusing_credentials(scratch.path(), 1).unwrap();
    locked.create_bucket(BUCKET).await.unwrap();

    let env = start("backup-on-demand").await;
    create_credentials(&env).await;
    env.apply_example(|_| {}).await.unwrap();
    env.wait_available(3, FORMING).await;
    let written = write_keys(&env, 20).await;

    let backup = |name: &str, destination: Option<Value>| {
        let mut object = json!({
            "apiVersion": "ferrokv.io/v1alpha1",
            "kind": "KVClusterBackup",
            "metadata": {"name": name, "namespace": env.namespace},
            "spec": {"clusterName": "example"},
        });
        if let Some(destination) = destination {
            object["spec"]["destination"] = destination;
        }
        object
    };
    let finished = |name: &'static str| {
        let env = &env;
        async move {
            env.eventually(
                &format!("KVClusterBackup {name} to finish"),
                Duration::from_secs(120),
                || async {
                    let status = env.get(KVCLUSTERBACKUPS, name).await?["status"].clone();
                    matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"))
                        .then_some(status)
                },
            )
            .await
        }
    };

    let started = Instant::now();
    env.apply(&backup("now", Some(destination(&s3))))
        .await
        .unwrap();
    let status = finished("now").await;
    println!(
        "on-demand backup of 20 keys: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let key = status["key"].as_str().unwrap();
    assert!(key.starts_with(ON_DEMAND_DIR), "{status}");
    let revision = status["revision"].as_i64().unwrap();
    assert!(revision >= written, "{status}");
    let objects = s3.objects(BUCKET, ON_DEMAND_DIR).await.unwrap();
    let manifest = assert_backup_in_bucket(&s3, &objects, key, revision).await;
    assert_eq!(manifest["sha256"], status["sha256"], "{status}");
    assert_eq!(manifest["size"], status["size"], "{status}");

    env.apply(&backup("refused", Some(destination(&locked))))
        .await
        .unwrap();
    let status = finished("refused").await;
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "CredentialsRejected", "{status}");
    assert!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{status}"
    );

    // The cluster declares no spec.backup, so a backup naming no destination has none.
    env.apply(&backup("nowhere", None)).await.unwrap();
    let status = finished("nowhere").await;
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["reason"], "NoDestination", "{status}");
    let reasons = event_reasons(&env).await;
    assert!(
        reasons.contains(&"BackupSucceeded".to_string()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"BackupFailed".to_string()), "{reasons:?}");
}
