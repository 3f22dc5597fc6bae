//! The operator runs a real cluster: the hermetic API server, its StatefulSet controller and a
//! kubelet whose pods are `ferrokv` processes in network namespaces. A KVCluster applied with
//! kubectl becomes Available with its members, and etcdctl reaches it through the client
//! Service's name; it scales, a deleted pod comes back as the same member, and a member whose
//! data volume was lost (its WAL volume intact) is replaced under its name on fresh volumes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

use serde_json::Value;

use ferrokv_e2e::binaries::{etcdctl_binary, operator_binary, server_binary};
use ferrokv_e2e::kube::kubelet::{claim_dir, Kubelet, KubeletConfig};
use ferrokv_e2e::kube::statefulset::StatefulSetController;
use ferrokv_e2e::kube::store::ListOptions;
use ferrokv_e2e::kube::{ApiServer, ServerConfig};
use ferrokv_e2e::kubectl::Kubectl;
use ferrokv_e2e::operator::RunningOperator;

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);

/// One scaling step of the operator (learner added and promoted, or member removed) each.
const SCALING: Duration = Duration::from_secs(180);

const CLIENT_ENDPOINT: &str = "http://example-client.default.svc:2379";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is in the repository")
        .to_path_buf()
}

/// Everything a test of a running cluster needs, dropped operator first, API server last.
struct Cluster {
    operator: RunningOperator,
    kubelet: Kubelet,
    _controller: StatefulSetController,
    kubectl: Kubectl,
    server: ApiServer,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let server = ApiServer::start(ServerConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        let kubectl = Kubectl::new(&kubeconfig, &dir.path().join("cache"));
        kubectl
            .run(&["apply", "-f", repo_root().join("crds").to_str().unwrap()])
            .await
            .unwrap()
            .expect_stdout();
        let controller = StatefulSetController::start(server.store.clone());
        let kubelet = Kubelet::start(
            server.store.clone(),
            KubeletConfig {
                node_name: "node-0".into(),
                capacity: 7,
                dir: dir.path().join("node-0"),
                programs: [("ferrokv".to_string(), server_binary())].into(),
            },
        )
        .unwrap();
        let operator = RunningOperator::start_with(
            kubelet.command(operator_binary()),
            &kubeconfig,
            "default",
            dir.path(),
        )
        .unwrap();
        Cluster {
            operator,
            kubelet,
            _controller: controller,
            kubectl,
            server,
            dir,
        }
    }

    fn kvcluster(&self) -> Value {
        let kvclusters = self
            .server
            .store
            .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
            .expect("the CRD is installed");
        self.server
            .store
            .get(&kvclusters, "default", "example")
            .unwrap_or(Value::Null)
    }

    /// Whether the cluster says Available with exactly `members` voters, all healthy, and
    /// their pods are ready.
    fn available_with(&self, members: usize) -> bool {
        let status = &self.kvcluster()["status"];
        let available = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Available" && c["status"] == "True");
        // The client Service resolves to ready pods only, as its endpoints would.
        let pods_ready = (0..members as u32).all(|ordinal| {
            self.pod_opt(ordinal).is_some_and(|pod| {
                pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        available
            && status["members"].as_array().map(Vec::len) == Some(members)
            && status["readyReplicas"] == members as u64
            && pods_ready
    }

    /// Waits for `members` available members, or panics with what every part logged.
    async fn wait_available(&self, members: usize, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.available_with(members) {
            if started.elapsed() > within {
                self.dump();
                panic!(
                    "no Available cluster of {members} after {within:?}: status {}",
                    self.kvcluster()["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    }

    fn dump(&self) {
        eprintln!("--- operator log ---\n{}", self.operator.log_tail());
        for ordinal in 0..5 {
            let pod = format!("example-{ordinal}");
            let log = self.kubelet.container_log("default", &pod);
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- {pod} ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }

    /// Pod `example-ORDINAL`, which must exist.
    fn pod(&self, ordinal: u32) -> Value {
        self.pod_opt(ordinal).expect("the pod exists")
    }

    fn pod_opt(&self, ordinal: u32) -> Option<Value> {
        let pods = self
            .server
            .store
            .resource_type("", "v1", "pods")
            .expect("built-in");
        self.server
            .store
            .get(&pods, "default", &format!("example-{ordinal}"))
            .ok()
    }

    /// The member ID `status.members` shows for `name`, if it lists it.
    fn member_id(&self, name: &str) -> Option<Value> {
        self.kvcluster()["status"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
            .map(|m| m["id"].clone())
    }

    /// `(reason, note)` of every Event recorded about the KVCluster.
    fn events(&self) -> Vec<(String, String)> {
        let events = self
            .server
            .store
            .resource_type("events.k8s.io", "v1", "events")
            .expect("built-in");
        let listed = self
            .server
            .store
            .list(&events, Some("default"), &ListOptions::default())
            .expect("list events");
        listed
            .items
            .iter()
            .map(|e| {
                let text = |field: &str| e[field].as_str().unwrap_or_default().to_string();
                (text("reason"), text("note"))
            })
            .collect()
    }

    /// `http://POD_IP:2379` of member `ordinal`.
    fn member_endpoint(&self, ordinal: u32) -> String {
        let pod = self.pod(ordinal);
        format!("http://{}:2379", pod["status"]["podIP"].as_str().unwrap())
    }

    /// etcdctl against the client Service, resolving it as a pod would.
    async fn etcdctl(&self, args: &[&str]) -> Output {
        let mut command = self.kubelet.command(etcdctl_binary());
        command
            .arg(format!("--endpoints={CLIENT_ENDPOINT}"))
            .arg("--command-timeout=5s")
            .args(args)
            .env("ETCDCTL_API", "3");
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("etcdctl finishes")
            .expect("etcdctl runs")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_kvcluster_becomes_available_and_serves_etcdctl_through_its_client_service() {
    let cluster = Cluster::start().await;
    let applied = Instant::now();
    cluster
        .kubectl
        .run(&[
            "apply",
            "-f",
            repo_root()
                .join("examples/kvcluster.yaml")
                .to_str()
                .unwrap(),
        ])
        .await
        .unwrap()
        .expect_stdout();
    cluster.wait_available(3, FORMING).await;
    println!(
        "kubectl apply to Available with 3 members: {:.1}s",
        applied.elapsed().as_secs_f64()
    );

    let put = cluster.etcdctl(&["put", "greeting", "hello"]).await;
    assert!(
        put.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = cluster
        .etcdctl(&["get", "greeting", "--print-value-only"])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "hello",
        "etcdctl get: {}",
        String::from_utf8_lossy(&get.stderr)
    );

    // Every pod is running and ready; its claims are directories the member uses.
    for ordinal in 0..3 {
        let pod = cluster.pod(ordinal);
        let status = &pod["status"];
        assert_eq!(status["phase"], "Running", "{status}");
        assert_eq!(status["containerStatuses"][0]["ready"], true, "{status}");
        assert!(status["containerStatuses"][0]["state"]["running"].is_object());
        assert_eq!(pod["spec"]["nodeName"], "node-0");
        for claim in ["data", "wal"] {
            let dir = claim_dir(
                &cluster.dir.path().join("node-0"),
                "default",
                &format!("{claim}-example-{ordinal}"),
            );
            let entries = std::fs::read_dir(&dir).unwrap().count();
            assert!(entries > 0, "{} is empty", dir.display());
        }
    }
}

/// Puts `key-N` for N = 0, 1, ... through `endpoints` until `stop`; returns the keys the
/// cluster acknowledged and how many puts failed.
async fn write_until(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut client = Client::connect(&endpoints, Some(options)).await.unwrap();
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("key-{n:06}");
        match client.put(key.as_str(), "v", None).await {
            Ok(_) => acknowledged.push(key),
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (acknowledged, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_adds_and_removes_members_while_writes_continue() {
    let cluster = Cluster::start().await;
    cluster
        .kubectl
        .run(&[
            "apply",
            "-f",
            repo_root()
                .join("examples/kvcluster.yaml")
                .to_str()
                .unwrap(),
        ])
        .await
        .unwrap()
        .expect_stdout();
    cluster.wait_available(3, FORMING).await;

    // Members 0 to 2 stay throughout: the writer talks to them by address.
    let endpoints = (0..3).map(|o| cluster.member_endpoint(o)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(endpoints, stop.clone()));

    for replicas in [5, 3] {
        let scaled = cluster
            .kubectl
            .run(&["scale", "kvc/example", &format!("--replicas={replicas}")])
            .await
            .unwrap();
        assert_eq!(
            scaled.expect_stdout().trim(),
            "kvcluster.ferrokv.io/example scaled"
        );
        let took = cluster.wait_available(replicas, SCALING).await;
        println!("scaled to {replicas}: {:.1}s", took.as_secs_f64());
        let mut names: Vec<String> = cluster.kvcluster()["status"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let expected: Vec<String> = (0..replicas).map(|o| format!("example-{o}")).collect();
        assert_eq!(names, expected);
    }

    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failed) = writer.await.unwrap();
    println!(
        "{} writes acknowledged, {failed} failed",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());
    let mut client = Client::connect([cluster.member_endpoint(0)], None)
        .await
        .unwrap();
    let stored: BTreeSet<String> = client
        .get(
            "key-",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The removed members' pods go once their processes have stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = cluster
            .kubectl
            .run(&["get", "pods", "-o", "name"])
            .await
            .unwrap();
        let names: Vec<String> = pods.expect_stdout().lines().map(str::to_string).collect();
        if names == ["pod/example-0", "pod/example-1", "pod/example-2"] {
            break;
        }
        assert!(Instant::now() < deadline, "pods left: {names:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_member_pod_comes_back_with_its_claims_as_the_same_member() {
    let cluster = Cluster::start().await;
    cluster
        .kubectl
        .run(&[
            "apply",
            "-f",
            repo_root()
                .join("examples/kvcluster.yaml")
                .to_str()
                .unwrap(),
        ])
        .await
        .unwrap()
        .expect_stdout();
    cluster.wait_available(3, FORMING).await;
    let put = cluster.etcdctl(&["put", "kept", "yes"]).await;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let id = cluster
        .member_id("example-1")
        .expect("example-1 is a member");
    let uid = cluster.pod(1)["metadata"]["uid"].clone();

    // kubectl waits until the kubelet has stopped the process and removed the pod.
    cluster
        .kubectl
        .run(&["delete", "pod", "example-1"])
        .await
        .unwrap()
        .expect_stdout();
    let deadline = Instant::now() + FORMING;
    while cluster
        .pod_opt(1)
        .is_none_or(|pod| pod["metadata"]["uid"] == uid)
        || !cluster.available_with(3)
    {
        assert!(Instant::now() < deadline, "example-1 did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.member_id("example-1"),
        Some(id),
        "the same member, from its own data"
    );
    let get = cluster
        .etcdctl(&["get", "kept", "--print-value-only"])
        .await;
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_data_volume_was_lost_is_replaced_on_fresh_volumes_under_its_name() {
    let cluster = Cluster::start().await;
    cluster
        .kubectl
        .run(&[
            "apply",
            "-f",
            repo_root()
                .join("examples/kvcluster.yaml")
                .to_str()
                .unwrap(),
        ])
        .await
        .unwrap()
        .expect_stdout();
    cluster.wait_available(3, FORMING).await;
    let put = cluster.etcdctl(&["put", "kept", "yes"]).await;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let old_id = cluster
        .member_id("example-1")
        .expect("example-1 is a member");

    // example-1's data volume loses everything; its WAL volume keeps the member's log. The pod
    // then starts again on them.
    let data = claim_dir(
        &cluster.dir.path().join("node-0"),
        "default",
        "data-example-1",
    );
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    cluster
        .kubectl
        .run(&["delete", "pod", "example-1"])
        .await
        .unwrap()
        .expect_stdout();

    // The node refuses, naming the old member's log; the operator replaces the member.
    let replaced = Instant::now();
    loop {
        let id = cluster.member_id("example-1");
        if id.is_some() && id != Some(old_id.clone()) && cluster.available_with(3) {
            break;
        }
        if replaced.elapsed() > SCALING {
            cluster.dump();
            panic!(
                "example-1 was not replaced: status {}, events {:?}",
                cluster.kvcluster()["status"],
                cluster.events()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "data volume lost to replaced member: {:.1}s",
        replaced.elapsed().as_secs_f64()
    );

    // Removed, added again, its volumes discarded once it was added, promoted.
    let events = cluster.events();
    for reason in [
        "MemberRemoved",
        "MemberAdded",
        "MemberDataDiscarded",
        "MemberPromoted",
    ] {
        assert!(
            events
                .iter()
                .any(|(r, note)| r == reason && note.contains("example-1")),
            "no {reason} event for example-1: {events:?}"
        );
    }
    let refusal = format!(
        "holds the log of member example-1 (ID {})",
        old_id.as_str().unwrap()
    );
    let log = cluster.kubelet.container_log("default", "example-1");
    assert!(log.contains(&refusal), "{refusal:?} not in the log:\n{log}");
    let get = cluster
        .etcdctl(&["get", "kept", "--print-value-only"])
        .await;
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "yes");
}
