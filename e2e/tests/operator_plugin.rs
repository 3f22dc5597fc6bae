//! `kubectl kvc`, the kubectl plugin, end to end: Debian's kubectl finds `kubectl-kvc` (built
//! from this workspace) on the PATH and runs it against a KVCluster of real `ferrokv` members on
//! the hermetic Kubernetes, whose members it reaches through the API server's port-forward.
//! What `status` prints is checked against what the cluster and etcdctl say; `defrag`,
//! `move-leader` and `backup` (to moto's S3 server) are checked by their effects.
//!
//! Every name here contains `plugin`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use ferrokv_e2e::binaries::kubectl_binary;
use ferrokv_e2e::kube_env::{EnvOptions, KubeEnv, KVCLUSTERBACKUPS};
use ferrokv_e2e::s3::{credentials_secret, S3Server};

const FORMING: Duration = Duration::from_secs(120);
const BUCKET: &str = "ferrokv-backups";
const SECRET: &str = "s3-credentials";

/// The directory `kubectl-kvc` was built into: the test executable's profile directory.
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    assert!(
        dir.join("kubectl-kvc").is_file(),
        "{} has no kubectl-kvc: run `cargo build -p ferrokv-operator --bins` first",
        dir.display()
    );
    dir.to_path_buf()
}

/// `kubectl kvc ARGS` as a user runs it: the plugin found on the PATH, the kubeconfig from
/// `KUBECONFIG`.
async fn kubectl_kvc(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(kubectl_binary())
            .arg("kvc")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl kvc ends within 2 minutes")
    .expect("kubectl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The row of `screen` that starts with `first`, split on whitespace.
fn row<'a>(screen: &'a str, first: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{screen}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_status_matches_the_cluster_and_defrag_move_leader_and_backup_act_on_it() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(scratch.path()).unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let env = KubeEnv::start("plugin", EnvOptions::default())
        .await
        .expect("the test's cluster starts");
    env.apply(&credentials_secret(SECRET, &env.namespace))
        .await
        .unwrap();
    let destination = json!({"s3": {
        "bucket": BUCKET, "prefix": "e2e", "endpoint": s3.endpoint(), "region": "us-east-1",
        "credentialsSecret": SECRET, "forcePathStyle": true,
    }});
    env.apply_example(|kvc| kvc["spec"]["backup"] = json!({"destination": destination}))
        .await
        .unwrap();
    env.wait_available(3, FORMING).await;
    for i in 0..5 {
        let put = env
            .etcdctl(&["put", &format!("/plugin/{i}"), "v"])
            .await
            .unwrap();
        assert!(put.status.success(), "{put:?}");
    }
    let get = env
        .etcdctl(&["get", "/plugin/", "--prefix", "-w", "json"])
        .await
        .unwrap();
    let revision = serde_json::from_slice::<Value>(&get.stdout).unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();

    // The kubeconfig a user would have, as kubectl itself shows it.
    let kubeconfig = scratch.path().join("kubeconfig");
    let config = env
        .kubectl_in_namespace(&["config", "view", "--raw", "--minify"])
        .await
        .unwrap();
    std::fs::write(&kubeconfig, config).unwrap();

    let (ok, screen, stderr) =
        kubectl_kvc(&kubeconfig, &["status", "example", "-n", &env.namespace]).await;
    assert!(ok, "{stderr}");
    println!("{screen}");
    let status = env.kvcluster().await["status"].clone();
    let leader = status["leader"].as_str().unwrap().to_string();
    let ids = env.member_ids().await;
    assert_eq!(ids.len(), 3);
    assert!(screen.contains("Phase:        Running"), "{screen}");
    assert!(
        screen.contains(&format!("Leader:       {leader} ({})", ids[&leader])),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("Revision:     {revision}")),
        "{screen}"
    );
    assert!(
        screen.contains("Members:      3 listed, 3 answering"),
        "{screen}"
    );
    assert!(screen.contains("Alarms:       none"), "{screen}");
    assert!(screen.contains("Last backup:  none"), "{screen}");
    assert!(
        screen.contains(&format!(
            "Cluster ID:   {}",
            status["clusterId"].as_str().unwrap()
        )),
        "{screen}"
    );
    for (name, id) in &ids {
        let cells = row(&screen, name);
        assert_eq!(cells[1], id, "{screen}");
        let role = if *name == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(
            cells[2..5],
            [role, "healthy", &revision.to_string()],
            "{screen}"
        );
        // The ferrokv release the member's pod runs, not the etcd API version of Status.
        assert_eq!(
            cells.last().copied(),
            status["version"].as_str(),
            "{screen}"
        );
    }
    let available = row(&screen, "Available");
    assert_eq!(available[1..3], ["True", "QuorumHealthy"], "{screen}");

    // defrag of one follower, then move-leader to it.
    let follower = ids.keys().find(|n| **n != leader).unwrap().clone();
    let (ok, out, stderr) = kubectl_kvc(
        &kubeconfig,
        &["defrag", "example", &follower, "-n", &env.namespace],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        out.starts_with(&format!("defragmented {follower}: database ")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    let (ok, out, stderr) = kubectl_kvc(
        &kubeconfig,
        &["move-leader", "example", &follower, "-n", &env.namespace],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        out.contains(&format!("to {follower} ({})", ids[&follower])),
        "{out}"
    );
    env.eventually(
        "the KVCluster to report the new leader",
        Duration::from_secs(60),
        || async { (env.kvcluster().await["status"]["leader"] == follower.as_str()).then_some(()) },
    )
    .await;
    let (ok, _, stderr) = kubectl_kvc(
        &kubeconfig,
        &["move-leader", "example", "example-9", "-n", &env.namespace],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("no member pod example-9"), "{stderr}");

    // backup --wait: a KVClusterBackup the operator takes; status then shows it.
    let (ok, out, stderr) = kubectl_kvc(
        &kubeconfig,
        &["backup", "example", "--wait", "-n", &env.namespace],
    )
    .await;
    assert!(ok, "{stderr}");
    let name = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("kvclusterbackup/"))
        .and_then(|l| l.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let backup = env.get(KVCLUSTERBACKUPS, &name).await.unwrap();
    assert_eq!(backup["status"]["phase"], "Succeeded", "{backup}");
    let backed_up = backup["status"]["revision"].as_i64().unwrap();
    assert!(backed_up >= revision, "{backup}");

    let (ok, screen, stderr) =
        kubectl_kvc(&kubeconfig, &["status", "example", "-n", &env.namespace]).await;
    assert!(ok, "{stderr}");
    assert!(
        screen.contains(&format!("Leader:       {follower} (")),
        "{screen}"
    );
    assert!(
        screen.contains(&format!(", revision {backed_up}, "))
            && screen.contains(&format!("KVClusterBackup {name}")),
        "{screen}"
    );

    let (ok, _, stderr) =
        kubectl_kvc(&kubeconfig, &["status", "missing", "-n", &env.namespace]).await;
    assert!(!ok);
    assert!(
        stderr.contains("KVCluster default/missing not found"),
        "{stderr}"
    );
}
