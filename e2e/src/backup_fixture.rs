//! What the backup and restore tests of the operator share: the set-up of a cluster backing up
//! to moto ([`S3Backups`]), a source cluster's keyspace read whole with its revisions, full
//! backups taken with `KVClusterBackup`s, and a new KVCluster restored from a source, so that
//! each test compares a restore with its source the same way.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube_env::{conditions_say, EnvOptions, KubeEnv, KVCLUSTERBACKUPS};
use crate::s3::{credentials_secret, S3Server};

/// The output of a command that must have succeeded; its stderr otherwise.
pub fn etcdctl_ok(output: &std::process::Output) -> &[u8] {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    &output.stdout
}

/// Every key of `cluster` with its value and revisions (`etcdctl get "" --prefix -w json`),
/// and the revision of the keyspace.
pub async fn keyspace(env: &KubeEnv, cluster: &str) -> (Value, i64) {
    let get = env
        .etcdctl_on(cluster, &["get", "", "--prefix", "-w", "json"])
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(etcdctl_ok(&get)).unwrap();
    let revision = answer["header"]["revision"].as_i64().unwrap();
    (answer["kvs"].clone(), revision)
}

/// A KVCluster `name` of `replicas` members restored from `source` (a `spec.bootstrap.restore`).
pub fn restored_cluster(env: &KubeEnv, name: &str, replicas: u32, source: Value) -> Value {
    json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name, "namespace": env.namespace},
        "spec": {
            "replicas": replicas,
            "bootstrap": {"restore": source},
        },
    })
}

/// Keys with history under `prefix`: puts, overwrites, a delete and a put after it, so that
/// create and mod revisions and versions differ from key to key.
pub async fn write_history(env: &KubeEnv, prefix: &str) {
    let mut steps: Vec<Vec<String>> = Vec::new();
    for i in 0..12 {
        steps.push(vec![
            "put".into(),
            format!("{prefix}key-{i:02}"),
            format!("v1-{i}"),
        ]);
    }
    for i in (0..12).step_by(3) {
        steps.push(vec![
            "put".into(),
            format!("{prefix}key-{i:02}"),
            format!("v2-{i}"),
        ]);
    }
    steps.push(vec!["put".into(), format!("{prefix}key-00"), "v3-0".into()]);
    steps.push(vec!["del".into(), format!("{prefix}key-05")]);
    steps.push(vec![
        "put".into(),
        format!("{prefix}key-05"),
        "again".into(),
    ]);
    steps.push(vec!["put".into(), "/other/outside".into(), "x".into()]);
    for step in steps {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        etcdctl_ok(&env.etcdctl(&args).await.unwrap());
    }
}

/// The Secret of moto's credentials every S3 destination of these tests names.
pub const CREDENTIALS_SECRET: &str = "s3-credentials";

/// A test's cluster with a moto server its pods reach (on the pod network's host address: the
/// hermetic pods run in network namespaces of their own, out of reach of loopback), a bucket,
/// and the credentials Secret. Dropped in that order: the operator stops before the server.
pub struct S3Backups {
    pub env: KubeEnv,
    pub s3: S3Server,
    pub bucket: String,
    scratch: tempfile::TempDir,
}

impl S3Backups {
    /// Starts them for `test`; `None` (after saying so) on a real cluster, whose pods cannot
    /// reach the test's S3 server.
    pub async fn start(test: &str, bucket: &str) -> Option<Self> {
        let scratch = tempfile::tempdir().unwrap();
        let env = KubeEnv::start(test, EnvOptions::default())
            .await
            .expect("the test's cluster starts");
        let Some(host) = env.host_address_for_pods() else {
            println!("skipped: the pods of a real cluster cannot reach the test's S3 server");
            return None;
        };
        let s3 = S3Server::start_on(scratch.path(), host.into()).unwrap();
        s3.create_bucket(bucket).await.unwrap();
        env.apply(&credentials_secret(CREDENTIALS_SECRET, &env.namespace))
            .await
            .unwrap();
        Some(Self {
            env,
            s3,
            bucket: bucket.to_string(),
            scratch,
        })
    }

    /// A `destination` of the bucket, under the prefix `e2e`.
    pub fn destination(&self) -> Value {
        json!({"s3": {
            "bucket": self.bucket,
            "prefix": "e2e",
            "endpoint": self.s3.endpoint(),
            "credentialsSecret": CREDENTIALS_SECRET,
            "forcePathStyle": true,
        }})
    }

    /// A `spec.bootstrap.restore` source naming the object at `key` of the bucket.
    pub fn object_source(&self, key: &str) -> Value {
        json!({"s3": {
            "bucket": self.bucket,
            "key": key,
            "endpoint": self.s3.endpoint(),
            "credentialsSecret": CREDENTIALS_SECRET,
            "forcePathStyle": true,
        }})
    }

    /// Makes `example` a 3-member KVCluster with continuous backup to the bucket (segments every
    /// `segment_seconds`, no schedule) and waits for it to be Available.
    pub async fn start_continuous_source(&self, segment_seconds: u64, forming: Duration) {
        let destination = self.destination();
        self.env
            .apply_example(|kvc| {
                kvc["spec"]["replicas"] = json!(3);
                kvc["spec"]["backup"] = json!({
                    "destination": destination,
                    "continuous": {"segmentSeconds": segment_seconds},
                });
            })
            .await
            .unwrap();
        self.env.wait_available(3, forming).await;
    }

    /// A directory of the test's own.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

/// `etcdctl ARGS -w json` on `cluster`, which must succeed.
pub async fn etcdctl_json(env: &KubeEnv, cluster: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    let output = env.etcdctl_on(cluster, &args).await.unwrap();
    serde_json::from_slice(etcdctl_ok(&output)).expect("JSON")
}

/// Every key of `cluster` at `revision`, as `get -w json` shows them.
pub async fn keys_at(env: &KubeEnv, cluster: &str, revision: i64) -> Value {
    let rev = format!("--rev={revision}");
    etcdctl_json(env, cluster, &["get", "", "--prefix", &rev]).await["kvs"].clone()
}

/// Puts `key` into the KVCluster `example`; answers the revision it made.
pub async fn put(env: &KubeEnv, key: &str, value: &str) -> i64 {
    etcdctl_json(env, "example", &["put", key, value]).await["header"]["revision"]
        .as_i64()
        .unwrap()
}

/// Takes a full backup of `example` to `destination` with a `KVClusterBackup` named `name`;
/// answers its revision.
pub async fn full_backup(env: &KubeEnv, name: &str, destination: &Value) -> i64 {
    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVClusterBackup",
        "metadata": {"name": name, "namespace": env.namespace},
        "spec": {"clusterName": "example", "destination": destination},
    }))
    .await
    .unwrap();
    let status = env
        .eventually("the backup to finish", Duration::from_secs(120), || async {
            let status = env.get(KVCLUSTERBACKUPS, name).await?["status"].clone();
            matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
        })
        .await;
    assert_eq!(status["phase"], "Succeeded", "{status}");
    status["revision"].as_i64().unwrap()
}

/// `status.backup.recoveryPoint` of `example`.
pub async fn recovery_point(env: &KubeEnv) -> Value {
    env.kvcluster_named("example").await["status"]["backup"]["recoveryPoint"].clone()
}

/// Waits for the restore of the KVCluster `cluster` to be refused; answers its status and its
/// `Degraded` condition, whose reason must be `RestoreSourceInvalid`.
pub async fn refused_restore(env: &KubeEnv, cluster: &str) -> (Value, Value) {
    let refused = env
        .eventually(
            &format!("the restore of {cluster} to be refused"),
            Duration::from_secs(60),
            || async {
                let status = env.kvcluster_named(cluster).await["status"].clone();
                conditions_say(&status, "Degraded", "True").then_some(status)
            },
        )
        .await;
    let degraded = refused["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["reason"], "RestoreSourceInvalid", "{refused}");
    (refused, degraded)
}
