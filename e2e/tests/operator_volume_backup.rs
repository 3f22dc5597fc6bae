//! Backups to a PersistentVolumeClaim end to end: the operator backs up a KVCluster of real
//! `ferrokv` members on the hermetic Kubernetes into a claim of its namespace
//! (`spec.backup.destination.volume`), each backup a pod that mounts the claim and runs
//! `ferrokv snapshot save`; retention keeps the newest; new KVClusters restore from the claim
//! (the `volume` source naming a scheduled backup's file, and a `KVClusterBackup` that went to
//! the claim) with the same keys and revisions.
//!
//! On the hermetic cluster a claim is a directory the test reads as a pod would. Every name
//! here contains `backup`, so `cargo test -p ferrokv-e2e backup` runs them.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use ferrokv_e2e::backup_fixture::{keyspace, restored_cluster, write_history};
use ferrokv_e2e::kube_env::{EnvOptions, KubeEnv, KVCLUSTERBACKUPS, PODS};
use ferrokv_storage::backup_file::SnapshotDigest;

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);
/// A schedule of every minute names its next time within a minute; a backup of a small
/// keyspace then takes seconds.
const NEXT_SCHEDULED: Duration = Duration::from_secs(150);

const CLAIM: &str = "backups";
const SCHEDULED_DIR: &str = "default/example/scheduled";

fn claim() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    })
}

/// The names of the files in `dir`, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that `key` is a snapshot on the claim with a manifest that describes it.
fn assert_backup_on_claim(root: &Path, key: &str, record: &Value) -> Value {
    let snapshot = std::fs::read(root.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
    let manifest_path = root.join(key.replace(".db", ".json"));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(&manifest_path).unwrap_or_else(|e| panic!("{manifest_path:?}: {e}")),
    )
    .unwrap();
    assert_eq!(
        manifest["format"], "ferrokv.io/backup-manifest/v1",
        "{manifest}"
    );
    assert_eq!(manifest["cluster"], "default/example", "{manifest}");
    assert_eq!(manifest["snapshotKey"], key, "{manifest}");
    assert_eq!(manifest["revision"], record["revision"], "{manifest}");
    assert_eq!(manifest["size"], snapshot.len(), "{manifest}");
    assert_eq!(record["size"], snapshot.len(), "{record}");
    let mut digest = SnapshotDigest::new();
    digest.update(&snapshot);
    let checked = digest
        .finish()
        .expect("the snapshot's SHA-256 trailer matches");
    assert_eq!(manifest["sha256"], checked.sha256.as_str(), "{manifest}");
    manifest
}

async fn last_backup(env: &KubeEnv) -> Value {
    env.kvcluster().await["status"]["backup"]["lastSuccessfulBackup"].clone()
}

/// Waits for a scheduled backup newer than `after` (a `lastSuccessfulBackup`).
async fn next_backup(env: &KubeEnv, after: &Value) -> Value {
    env.eventually("the next scheduled backup", NEXT_SCHEDULED, || async {
        let record = last_backup(env).await;
        (record["key"].is_string() && record["key"] != after["key"]).then_some(record)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_to_a_volume_keep_the_newest_and_restore_with_the_same_keys_and_revisions(
) {
    let env = KubeEnv::start("volume-backup", EnvOptions::default())
        .await
        .expect("the test's cluster starts");
    env.apply(&claim()).await.unwrap();
    env.apply_example(|kvc| {
        kvc["spec"]["backup"] = json!({
            "schedule": "* * * * *",
            "retention": {"count": 2},
            "destination": {"volume": {"claimName": CLAIM}},
        })
    })
    .await
    .unwrap();
    env.wait_available(3, FORMING).await;
    write_history(&env, "/volume/").await;
    let (source_keys, source_revision) = keyspace(&env, "example").await;

    // A backup holding the keys, from a follower, with its manifest beside it on the claim.
    let first = env
        .eventually(
            "a scheduled backup holding the keys",
            NEXT_SCHEDULED,
            || async {
                let record = last_backup(&env).await;
                (record["revision"].as_i64()? >= source_revision).then_some(record)
            },
        )
        .await;
    assert_eq!(first["revision"], source_revision, "{first}");
    let first_key = first["key"].as_str().unwrap().to_string();
    assert!(
        first_key.starts_with(&format!("{SCHEDULED_DIR}/")),
        "{first_key}"
    );
    let root = env.claim_dir(CLAIM);
    if let Some(root) = &root {
        let manifest = assert_backup_on_claim(root, &first_key, &first);
        let leader = env.kvcluster().await["status"]["leader"].clone();
        assert_ne!(
            manifest["member"], leader,
            "the snapshot comes from a follower"
        );
    }

    // Two more: retention keeps the two newest, each with its manifest, and nothing else.
    let second = next_backup(&env, &first).await;
    let third = next_backup(&env, &second).await;
    let kept: BTreeSet<String> = [&second, &third]
        .iter()
        .flat_map(|record| {
            let key = record["key"].as_str().unwrap();
            let name = key.rsplit('/').next().unwrap().to_string();
            [name.clone(), name.replace(".db", ".json")]
        })
        .collect();
    if let Some(root) = &root {
        let dir = root.join(SCHEDULED_DIR);
        env.eventually(
            "retention to leave the two newest backups",
            Duration::from_secs(30),
            || async { (files(&dir) == kept).then_some(()) },
        )
        .await;
        assert_backup_on_claim(root, third["key"].as_str().unwrap(), &third);
    }
    // The backup pods that succeeded are gone.
    env.eventually("no backup pod left", Duration::from_secs(30), || async {
        let pods = env.list(PODS).await;
        (!pods.iter().any(|p| {
            p["metadata"]["labels"]["ferrokv.io/backup-of"] == "example"
                && p["status"]["phase"] == "Succeeded"
        }))
        .then_some(())
    })
    .await;

    // An on-demand backup to the same claim.
    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVClusterBackup",
        "metadata": {"name": "to-volume", "namespace": env.namespace},
        "spec": {"clusterName": "example"},
    }))
    .await
    .unwrap();
    let on_demand = env
        .eventually(
            "the on-demand backup to finish",
            Duration::from_secs(120),
            || async {
                let status = env.get(KVCLUSTERBACKUPS, "to-volume").await?["status"].clone();
                matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
            },
        )
        .await;
    assert_eq!(on_demand["phase"], "Succeeded", "{on_demand}");
    assert_eq!(
        on_demand["destination"]["volume"]["claimName"], CLAIM,
        "{on_demand}"
    );
    let on_demand_key = on_demand["key"].as_str().unwrap();
    assert!(
        on_demand_key.starts_with("default/example/on-demand/"),
        "{on_demand}"
    );
    if let Some(root) = &root {
        let manifest = assert_backup_on_claim(root, on_demand_key, &on_demand);
        assert_eq!(manifest["sha256"], on_demand["sha256"], "{on_demand}");
    }

    // Restores: three members from the newest scheduled backup's file on the claim, and one
    // from the KVClusterBackup.
    let from_file = json!({"volume": {"claimName": CLAIM, "path": third["key"]}});
    env.apply(&restored_cluster(&env, "from-file", 3, from_file))
        .await
        .unwrap();
    let from_backup = json!({"backup": {"name": "to-volume"}});
    env.apply(&restored_cluster(&env, "from-backup", 1, from_backup))
        .await
        .unwrap();
    let applied = std::time::Instant::now();
    let from_file_took = env.wait_cluster_available("from-file", 3, FORMING).await;
    env.wait_cluster_available("from-backup", 1, FORMING).await;
    println!(
        "scheduled backups to a volume: {} bytes at revision {}; on-demand {} bytes; 3 members restored from the claim: Available {:.1}s after kubectl apply, both restores {:.1}s",
        third["size"],
        third["revision"],
        on_demand["size"],
        from_file_took.as_secs_f64(),
        applied.elapsed().as_secs_f64()
    );
    for (cluster, revision) in [
        ("from-file", third["revision"].as_i64().unwrap()),
        ("from-backup", on_demand["revision"].as_i64().unwrap()),
    ] {
        let (keys, restored_revision) = keyspace(&env, cluster).await;
        assert_eq!(
            keys, source_keys,
            "{cluster}: the keys, values and revisions"
        );
        assert_eq!(
            restored_revision, revision,
            "{cluster}: the keyspace's revision"
        );
        let restore = env.kvcluster_named(cluster).await["status"]["restore"].clone();
        assert!(
            restore["source"]
                .as_str()
                .is_some_and(|s| s.contains(CLAIM)),
            "{restore}"
        );
    }
    let status = env.kvcluster_named("from-backup").await["status"]["restore"].clone();
    assert_eq!(status["sha256"], on_demand["sha256"], "{status}");
}
