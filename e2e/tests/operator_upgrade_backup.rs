//! The backup a roll-out waits for, end to end: a KVCluster with `spec.backup` on the hermetic
//! Kubernetes, its members real `ferrokv` processes, backed up to a real S3-compatible server
//! (moto, see `ferrokv_e2e::s3`) by the operator before it restarts any member onto a new
//! version — and held back, with a condition saying why, while that server is down.
//!
//! Names contain `upgrade` and `backup`, so both `cargo test -p ferrokv-e2e upgrade` and
//! `... backup` run them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferrokv_e2e::kube_env::{EnvOptions, KubeEnv, EVENTS, KVCLUSTERBACKUPS, PODS};
use ferrokv_e2e::s3::{credentials_secret, S3Server};

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);
/// A roll-out of three members, after its backup.
const ROLL_OUT: Duration = Duration::from_secs(240);
/// A backup against a server that is down fails within the client's retry timeout (20 s).
const BACKUP_FAILS: Duration = Duration::from_secs(90);

const BUCKET: &str = "ferrokv-backups";
const SECRET: &str = "s3-credentials";
const ON_DEMAND_DIR: &str = "e2e/default/example/on-demand/";

fn member_image(version: &str) -> String {
    format!("ghcr.io/ferrokv/ferrokv:v{version}")
}

/// Every member pod's image and creation time, by name.
async fn member_pods(env: &KubeEnv) -> BTreeMap<String, (String, jiff::Timestamp)> {
    env.list(PODS)
        .await
        .iter()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                (
                    p["spec"]["containers"][0]["image"].as_str()?.to_string(),
                    p["metadata"]["creationTimestamp"].as_str()?.parse().ok()?,
                ),
            ))
        })
        .collect()
}

/// The KVCluster's condition of `type_`.
async fn condition(env: &KubeEnv, type_: &str) -> Value {
    let status = env.kvcluster().await["status"].clone();
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn event_reasons(env: &KubeEnv) -> Vec<String> {
    env.list(EVENTS)
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// The KVClusterBackups the operator made before a roll-out.
async fn pre_upgrade_backups(env: &KubeEnv) -> Vec<Value> {
    env.list(KVCLUSTERBACKUPS)
        .await
        .into_iter()
        .filter(|b| b["metadata"]["labels"]["ferrokv.io/backup-purpose"] == "pre-upgrade")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_backups_configured_waits_for_its_backup_and_an_s3_outage_holds_it_back() {
    let scratch = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(scratch.path()).unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let env = KubeEnv::start("upgrade-backup", EnvOptions::default())
        .await
        .expect("the test's cluster starts");
    if env.is_real() {
        println!("skipped: the versions it rolls between exist only in the hermetic registry");
        return;
    }
    env.apply(&credentials_secret(SECRET, &env.namespace))
        .await
        .unwrap();
    let destination = json!({"s3": {
        "bucket": BUCKET,
        "prefix": "e2e",
        "endpoint": s3.endpoint(),
        "region": "us-east-1",
        "credentialsSecret": SECRET,
        "forcePathStyle": true,
    }});
    // Backups configured, none scheduled: the only backup is the one before the roll-out.
    let with_version = |version: &'static str| {
        let destination = destination.clone();
        move |kvc: &mut Value| {
            kvc["spec"]["version"] = json!(version);
            kvc["spec"]["backup"] = json!({"destination": destination});
        }
    };
    env.apply_example(with_version("0.1.0")).await.unwrap();
    env.wait_available(3, FORMING).await;
    for i in 0..10 {
        let put = env
            .etcdctl(&["put", &format!("/before-upgrade/{i}"), "v"])
            .await
            .unwrap();
        assert!(put.status.success(), "{put:?}");
    }
    let get = env
        .etcdctl(&["get", "/before-upgrade/", "--prefix", "-w", "json"])
        .await
        .unwrap();
    let written: Value = serde_json::from_slice(&get.stdout).unwrap();
    let written = written["header"]["revision"].as_i64().unwrap();
    let before = member_pods(&env).await;
    assert_eq!(before.len(), 3, "{before:?}");

    // With the S3 server down, the new version waits: no member is touched, and the
    // condition says which backup failed and why.
    s3.stop();
    let asked = Instant::now();
    env.apply_example(with_version("0.2.0")).await.unwrap();
    let failed = env
        .eventually(
            "Progressing PreUpgradeBackupFailed",
            BACKUP_FAILS,
            || async {
                let c = condition(&env, "Progressing").await;
                (c["reason"] == "PreUpgradeBackupFailed").then_some(c)
            },
        )
        .await;
    println!(
        "S3 down: roll-out held back with PreUpgradeBackupFailed after {:.1}s",
        asked.elapsed().as_secs_f64()
    );
    let message = failed["message"].as_str().unwrap();
    assert_eq!(failed["status"], "False", "{failed}");
    assert!(message.contains("UploadFailed"), "{message}");
    assert!(message.contains("example-pre-upgrade-"), "{message}");
    assert!(message.contains(&member_image("0.2.0")), "{message}");
    let status = env.kvcluster().await["status"].clone();
    assert_eq!(status["phase"], "Running", "the cluster itself is whole");
    assert_eq!(status["version"], "0.1.0");
    assert_eq!(member_pods(&env).await, before, "no member restarted");
    let reasons = event_reasons(&env).await;
    for reason in ["PreUpgradeBackup", "PreUpgradeBackupFailed"] {
        assert!(reasons.contains(&reason.to_string()), "{reasons:?}");
    }

    // The server comes back: the backup is tried again, succeeds, and then the members roll.
    s3.restart().unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let back = Instant::now();
    env.eventually("every member on 0.2.0", ROLL_OUT, || async {
        let status = env.kvcluster().await["status"].clone();
        (status["version"] == "0.2.0" && status["updatedReplicas"] == 3).then_some(())
    })
    .await;
    env.wait_available(3, FORMING).await;
    println!(
        "S3 back: backup retried and 3 members rolled to 0.2.0 in {:.1}s",
        back.elapsed().as_secs_f64()
    );

    // One backup object is left, the failed attempt replaced by the one that succeeded; it
    // holds every write made before the version changed, and was done before any member
    // restarted.
    let backups = pre_upgrade_backups(&env).await;
    assert_eq!(backups.len(), 1, "{backups:#?}");
    let backup = &backups[0];
    let status = &backup["status"];
    assert_eq!(status["phase"], "Succeeded", "{backup}");
    assert_eq!(
        backup["metadata"]["annotations"]["ferrokv.io/roll-out-image"],
        member_image("0.2.0")
    );
    let attempt: u32 = backup["metadata"]["annotations"]["ferrokv.io/backup-attempt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(attempt >= 2, "the first attempt failed: {backup}");
    let revision = status["revision"].as_i64().unwrap();
    // Nothing was written after the version changed, so the backup holds exactly that state.
    assert_eq!(revision, written, "{backup}");
    let done: jiff::Timestamp = status["completionTime"].as_str().unwrap().parse().unwrap();
    let after = member_pods(&env).await;
    for (name, (image, created)) in &after {
        assert_eq!(*image, member_image("0.2.0"), "{name}");
        assert!(
            *created >= done,
            "{name} was recreated at {created}, before the backup was done at {done}"
        );
    }
    let key = status["key"].as_str().unwrap();
    assert!(key.starts_with(ON_DEMAND_DIR), "{backup}");
    let objects = s3.objects(BUCKET, ON_DEMAND_DIR).await.unwrap();
    assert!(objects.iter().any(|o| o.key == key), "{objects:?}");
    let manifest = s3
        .get_json(BUCKET, &key.replace(".db", ".json"))
        .await
        .unwrap();
    assert_eq!(manifest["revision"], revision, "{manifest}");
    let got = env
        .etcdctl(&["get", "/before-upgrade/", "--prefix", "--keys-only"])
        .await
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    let keys = String::from_utf8_lossy(&got.stdout);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 10, "{keys}");
    assert!(event_reasons(&env).await.contains(&"RolledOut".to_string()));
}
