//! The hermetic cluster's nodes on their own, without the operator: a StatefulSet's pods and
//! claims, spread over several nodes that share one pod network; a container that refuses to
//! start and says why; a killed container restarted; and a node that fails — its processes gone
//! at once, the node marked unreachable after the grace period, and its pod made again on
//! another node, with its claim, once force-deleted; init containers run in order before the
//! main container, a failing one retried until it succeeds; one-off pods (`restartPolicy:
//! Never`) end `Succeeded` or `Failed` with their termination message.
//!
//! Most containers are `sh` writing to their claim and sleeping; `ferrokv` serves where a pod
//! must answer on the network.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferrokv_e2e::binaries::server_binary;
use ferrokv_e2e::kube::nodes::{NodePool, NodePoolConfig};
use ferrokv_e2e::kube::resources::ResourceType;
use ferrokv_e2e::kube::statefulset::StatefulSetController;
use ferrokv_e2e::kube::store::{DeleteOptions, Patch, Store, WriteOptions};
use ferrokv_e2e::kube::{ApiServer, ServerConfig};

const WAIT: Duration = Duration::from_secs(60);

/// The grace period of the tests that fail a node.
const GRACE: Duration = Duration::from_secs(3);

/// A member that cannot start: `--snapshot-count=0` is refused before anything else runs.
const REFUSING_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: bad
  namespace: default
spec:
  replicas: 1
  serviceName: bad-peer
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: ferrokv
        image: ferrokv
        command: [ferrokv]
        args: ["--name=$(POD_NAME)", "--data-dir=/var/lib/ferrokv/data", "--snapshot-count=0"]
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef: {fieldPath: metadata.name}
        volumeMounts:
        - {name: data, mountPath: /var/lib/ferrokv/data}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

/// `init`: two init containers then the main one, each appending its name to `order` in the
/// claim; the second fails until the file `go` is in the claim, and reads a Secret's key.
const INIT_SET: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: words
  namespace: default
data:
  word: c2VjcmV0
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: init
  namespace: default
spec:
  replicas: 1
  serviceName: init
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: init}
  template:
    metadata:
      labels: {app: init}
    spec:
      terminationGracePeriodSeconds: 1
      initContainers:
      - name: first
        image: busybox
        command: [sh, -c, 'echo first >> "$DATA/order"']
        env:
        - {name: DATA, value: /data}
        volumeMounts:
        - {name: data, mountPath: /data}
      - name: second
        image: busybox
        command: [sh, -c, 'echo "second $WORD" >> "$DATA/order" && test -e "$DATA/go"']
        env:
        - {name: DATA, value: /data}
        - name: WORD
          valueFrom:
            secretKeyRef: {name: words, key: word}
        volumeMounts:
        - {name: data, mountPath: /data}
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'echo main >> "$DATA/order" && exec sleep 3600']
        env:
        - {name: DATA, value: /data}
        volumeMounts:
        - {name: data, mountPath: /data}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

/// An image the hermetic registry does not have.
const MISSING_IMAGE: &str = "registry.example/busybox:no-such-tag";

/// `web`: pods that append their node's name to `starts` in their claim and sleep, preferring
/// distinct nodes as the operator's members do.
fn sleeping_set(replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  serviceName: web
  podManagementPolicy: Parallel
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {{app: web}}
      containers:
      - name: sleeper
        image: busybox
        command: [sh, -c, 'echo "$NODE_NAME" >> "$DATA/starts" && exec sleep 3600']
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef: {{fieldPath: spec.nodeName}}
        - {{name: DATA, value: /data}}
        volumeMounts:
        - {{name: data, mountPath: /data}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {{storage: 1Gi}}
"#
    )
}

/// `web`: single-member `ferrokv` servers behind the headless Service `web`, preferring
/// distinct nodes.
const SERVING_SET: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: web}
  ports:
  - {name: client, port: 2379}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  serviceName: web
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {app: web}
      containers:
      - name: ferrokv
        image: ferrokv
        command: [ferrokv]
        args:
        - --data-dir=/var/lib/ferrokv/data
        - --listen-client-urls=http://0.0.0.0:2379
        - --advertise-client-urls=http://$(POD_NAME).web.default.svc:2379
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef: {fieldPath: metadata.name}
        ports:
        - {name: client, containerPort: 2379}
        readinessProbe:
          httpGet: {path: /readyz, port: client}
        volumeMounts:
        - {name: data, mountPath: /var/lib/ferrokv/data}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

/// An API server, its StatefulSet controller and a pool of nodes, in a directory of their own.
struct Cluster {
    pool: NodePool,
    _controller: StatefulSetController,
    server: ApiServer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(nodes: usize, capacity: usize) -> Cluster {
        let server = ApiServer::start(ServerConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let controller = StatefulSetController::start(server.store.clone());
        let pool = NodePool::start(
            server.store.clone(),
            NodePoolConfig {
                nodes: (0..nodes).map(|n| format!("node-{n}")).collect(),
                capacity,
                dir: dir.path().to_path_buf(),
                programs: [
                    ("ferrokv".to_string(), server_binary()),
                    ("sh".to_string(), PathBuf::from("/bin/sh")),
                ]
                .into(),
                unavailable_images: [MISSING_IMAGE.to_string()].into(),
                node_monitor_grace: GRACE,
            },
        )
        .unwrap();
        Cluster {
            pool,
            _controller: controller,
            server,
            _dir: dir,
        }
    }

    fn store(&self) -> &Arc<Store> {
        &self.server.store
    }

    fn core(&self, plural: &str) -> Arc<ResourceType> {
        self.store().resource_type("", "v1", plural).unwrap()
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.store().get(&self.core("pods"), "default", name).ok()
    }

    fn node(&self, name: &str) -> Value {
        self.store().get(&self.core("nodes"), "", name).unwrap()
    }

    /// Waits until pods `web-0` .. `web-(n-1)` are all Ready, and returns them.
    async fn ready_pods(&self, n: usize) -> Vec<Value> {
        self.ready_pods_named("web", n).await
    }

    /// Waits until pods `SET-0` .. `SET-(n-1)` are all Ready, and returns them.
    async fn ready_pods_named(&self, set: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} ready pods of {set}"), || {
            (0..n)
                .map(|i| self.pod(&format!("{set}-{i}")).filter(is_ready))
                .collect()
        })
        .await
    }

    fn scale(&self, replicas: u32) {
        let sets = self
            .store()
            .resource_type("apps", "v1", "statefulsets")
            .unwrap();
        self.store()
            .patch(
                &sets,
                "default",
                "web",
                Patch::Merge(json!({"spec": {"replicas": replicas}})),
                false,
                &WriteOptions {
                    manager: "test".into(),
                    ..WriteOptions::default()
                },
            )
            .unwrap();
    }

    /// The lines of `starts` in pod `web-ORDINAL`'s claim: the node of every start.
    fn starts(&self, ordinal: u32) -> Vec<String> {
        let dir = self
            .pool
            .claim_dir("default", &format!("data-web-{ordinal}"));
        let Ok(dir) = dir else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .unwrap_or(&Value::Null)
}

fn is_ready(object: &Value) -> bool {
    condition(object, "Ready")["status"] == "True"
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The pid of a pod's running container, from its `process://PID` container ID.
fn pid_of(pod: &Value) -> u32 {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("process://"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no running container: {}", pod["status"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_start_is_reported_as_the_termination_message_and_retried() {
    let cluster = Cluster::start(1, 2).await;
    cluster.server.create_from_yaml(REFUSING_SET).unwrap();
    let store = cluster.store();
    let pods = cluster.core("pods");

    let pod = eventually("a second start after the refusal", || {
        let pod = cluster.pod("bad-0")?;
        let restarts = pod["status"]["containerStatuses"][0]["restartCount"].as_u64()?;
        (restarts >= 2).then_some(pod)
    })
    .await;
    let container = &pod["status"]["containerStatuses"][0];
    let terminated = &container["lastState"]["terminated"];
    assert_eq!(
        terminated["message"],
        "--snapshot-count must be greater than 0",
        "{}\n{}",
        container,
        cluster.pool.container_log("default", "bad-0")
    );
    assert_eq!(terminated["exitCode"], 1);
    assert_eq!(container["ready"], false);
    assert_eq!(pod["spec"]["hostname"], "bad-0");
    assert_eq!(pod["spec"]["subdomain"], "bad-peer");
    assert_eq!(pod["spec"]["nodeName"], "node-0");
    assert_eq!(condition(&pod, "PodScheduled")["status"], "True");
    let claim = store
        .get(
            &cluster.core("persistentvolumeclaims"),
            "default",
            "data-bad-0",
        )
        .unwrap();
    assert_eq!(claim["status"]["phase"], "Bound");
    let sets = store.resource_type("apps", "v1", "statefulsets").unwrap();
    let set = store.get(&sets, "default", "bad").unwrap();
    assert_eq!(set["status"]["replicas"], 1);
    assert_eq!(set["status"]["readyReplicas"], 0);

    // Deleting the pod ends it; the controller makes a new one under the same name.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    store
        .delete(&pods, "default", "bad-0", &DeleteOptions::default())
        .unwrap();
    let again: Value = eventually("the pod made again", || {
        let pod = cluster.pod("bad-0")?;
        (pod["metadata"]["uid"] != uid.as_str()).then_some(pod)
    })
    .await;
    assert_eq!(again["metadata"]["ownerReferences"][0]["name"], "bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_spread_over_nodes_and_reach_each_other_by_name() {
    let cluster = Cluster::start(3, 2).await;
    cluster.server.create_from_yaml(SERVING_SET).unwrap();
    let pods = cluster.ready_pods(3).await;

    let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {nodes:?}");
    let addresses: BTreeSet<&str> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap())
        .collect();
    assert_eq!(addresses.len(), 3, "distinct pod IPs: {addresses:?}");
    for node in &nodes {
        let node = cluster.node(node);
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            node["metadata"]["name"]
        );
        assert!(is_ready(&node), "{}", node["status"]);
    }

    // From web-0's network, the other pods answer by name, on their own nodes.
    for peer in ["web-1", "web-2"] {
        let connect = format!("exec 3<>/dev/tcp/{peer}.web.default.svc/2379");
        let output = cluster
            .pool
            .exec("default", "web-0", "timeout")
            .expect("web-0 runs")
            .args(["5", "bash", "-c", &connect])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "web-0 reaches {peer}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_image_the_registry_lacks_waits_in_image_pull_back_off_and_never_runs() {
    let cluster = Cluster::start(1, 1).await;
    let set = sleeping_set(1).replace("image: busybox", &format!("image: {MISSING_IMAGE}"));
    cluster.server.create_from_yaml(&set).unwrap();
    let pod = eventually("the pull to fail twice", || {
        let pod = cluster.pod("web-0")?;
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        (waiting["reason"] == "ImagePullBackOff").then_some(pod)
    })
    .await;
    let container = &pod["status"]["containerStatuses"][0];
    assert!(
        container["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(MISSING_IMAGE)),
        "{container}"
    );
    assert!(!is_ready(&pod), "{}", pod["status"]);
    assert!(cluster.starts(0).is_empty(), "the container never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_to_completion_and_a_failing_one_is_retried() {
    let cluster = Cluster::start(1, 1).await;
    cluster.server.create_from_yaml(INIT_SET).unwrap();
    let order = || {
        let dir = cluster.pool.claim_dir("default", "data-init-0").ok()?;
        let text = std::fs::read_to_string(dir.join("order")).ok()?;
        Some(text.lines().map(str::to_string).collect::<Vec<_>>())
    };

    // The second init container fails: the pod waits, not initialised, its main container
    // never started, and the failure is retried.
    let pod = eventually("the second init container to fail twice", || {
        let pod = cluster.pod("init-0")?;
        let second = &pod["status"]["initContainerStatuses"][1];
        (second["restartCount"].as_u64()? >= 2).then_some(pod)
    })
    .await;
    let status = &pod["status"];
    assert_eq!(status["phase"], "Pending", "{status}");
    assert_eq!(
        condition(&pod, "Initialized")["status"],
        "False",
        "{status}"
    );
    assert!(!is_ready(&pod), "{status}");
    let first = &status["initContainerStatuses"][0];
    assert_eq!(first["name"], "first");
    assert_eq!(first["state"]["terminated"]["exitCode"], 0, "{status}");
    assert_eq!(first["ready"], true, "{status}");
    let second = &status["initContainerStatuses"][1];
    assert_eq!(second["lastState"]["terminated"]["exitCode"], 1, "{status}");
    assert_eq!(
        second["lastState"]["terminated"]["reason"], "Error",
        "{status}"
    );
    assert_eq!(second["ready"], false, "{status}");
    assert_eq!(status["containerStatuses"][0]["started"], false, "{status}");
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );
    let before = order().unwrap_or_default();
    assert_eq!(before[0], "first", "{before:?}");
    assert!(
        before[1..].iter().all(|line| line == "second secret"),
        "the first ran once, the second with the Secret's key: {before:?}"
    );

    // Once it can succeed, the main container starts after it.
    let dir = cluster.pool.claim_dir("default", "data-init-0").unwrap();
    std::fs::write(dir.join("go"), b"").unwrap();
    let pod = cluster.ready_pods_named("init", 1).await.remove(0);
    assert_eq!(condition(&pod, "Initialized")["status"], "True");
    assert_eq!(pod["status"]["phase"], "Running");
    let lines = eventually("the main container's line", || {
        order().filter(|lines| lines.last().map(String::as_str) == Some("main"))
    })
    .await;
    assert_eq!(
        lines.iter().filter(|l| *l == "first").count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "main").count(),
        1,
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_restarted_with_its_restart_count_raised() {
    let cluster = Cluster::start(1, 1).await;
    cluster.server.create_from_yaml(&sleeping_set(1)).unwrap();
    let pod = cluster.ready_pods(1).await.remove(0);
    let pid = pid_of(&pod);

    assert!(cluster.pool.kill_container("default", "web-0"));
    assert!(!cluster.pool.kill_container("default", "web-9"));
    let pod = eventually("the container started again", || {
        let pod = cluster.pod("web-0").filter(is_ready)?;
        (pod["status"]["containerStatuses"][0]["restartCount"] == 1).then_some(pod)
    })
    .await;
    let container = &pod["status"]["containerStatuses"][0];
    assert_eq!(container["lastState"]["terminated"]["exitCode"], 137);
    assert_eq!(
        container["lastState"]["terminated"]["containerID"],
        format!("process://{pid}")
    );
    assert_ne!(pid_of(&pod), pid);
    // The container records its start itself, possibly after the kubelet reports it ready.
    eventually("both starts recorded", || {
        (cluster.starts(0) == ["node-0", "node-0"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_is_marked_unreachable_and_gets_no_new_pods() {
    let cluster = Cluster::start(3, 2).await;
    cluster.server.create_from_yaml(&sleeping_set(3)).unwrap();
    let pods = cluster.ready_pods(3).await;
    let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {nodes:?}");
    let failed = node_of(&pods[1]);
    let pid = pid_of(&pods[1]);

    let power_cut = Instant::now();
    cluster.pool.fail_node(&failed);
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "web-1's process is gone at once"
    );

    let node = eventually("the node marked unknown", || {
        let node = cluster.node(&failed);
        (condition(&node, "Ready")["status"] == "Unknown").then_some(node)
    })
    .await;
    let silence = power_cut.elapsed();
    // The last heartbeat may have come up to a heartbeat period (1 s) and a kubelet tick
    // (0.5 s) before the power cut.
    assert!(silence >= GRACE / 2, "{silence:?}");
    let ready = condition(&node, "Ready");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let taints = node["spec"]["taints"].as_array().unwrap();
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            taints
                .iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable"
                    && t["effect"] == effect
                    && t["timeAdded"].is_string()),
            "{effect}: {taints:?}"
        );
    }
    let web_1 = eventually("web-1 not ready", || {
        cluster.pod("web-1").filter(|p| !is_ready(p))
    })
    .await;
    assert_eq!(node_of(&web_1), failed, "still bound to its node");
    assert_eq!(web_1["status"]["phase"], "Running", "as last reported");
    for live in nodes.iter().filter(|n| **n != failed) {
        assert!(is_ready(&cluster.node(live)), "{live} is fine");
    }

    // Two more pods fit on the live nodes; the sixth fits nowhere.
    cluster.scale(6);
    for name in ["web-3", "web-4"] {
        let pod = eventually(name, || cluster.pod(name).filter(is_ready)).await;
        assert_ne!(node_of(&pod), failed, "{name} on the failed node");
    }
    let pending = eventually("web-5 unschedulable", || {
        let pod = cluster.pod("web-5")?;
        (condition(&pod, "PodScheduled")["reason"] == "Unschedulable").then_some(pod)
    })
    .await;
    assert_eq!(node_of(&pending), "");
    assert_eq!(pending["status"]["phase"], "Pending");
    assert_eq!(
        condition(&pending, "PodScheduled")["message"],
        "0/3 nodes are available: 1 node(s) had untolerated taint \
         {node.kubernetes.io/unreachable: }, 2 Too many pods."
    );

    // No kubelet finishes a graceful deletion on the failed node.
    cluster
        .store()
        .delete(
            &cluster.core("pods"),
            "default",
            "web-1",
            &DeleteOptions::default(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let terminating = cluster.pod("web-1").expect("web-1 is still there");
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_force_deleted_from_a_failed_node_comes_back_elsewhere_with_its_claim() {
    let cluster = Cluster::start(3, 1).await;
    cluster.server.create_from_yaml(&sleeping_set(2)).unwrap();
    let pods = cluster.ready_pods(2).await;
    let failed = node_of(&pods[1]);
    let free: Vec<String> = cluster
        .pool
        .node_names()
        .into_iter()
        .filter(|n| pods.iter().all(|p| node_of(p) != *n))
        .collect();
    assert_eq!(free.len(), 1, "web-0 and web-1 on distinct nodes");
    eventually("web-1's start recorded", || {
        (cluster.starts(1) == std::slice::from_ref(&failed)).then_some(())
    })
    .await;

    cluster.pool.fail_node(&failed);
    eventually("the failed node tainted", || {
        let node = cluster.node(&failed);
        node["spec"]["taints"].is_array().then_some(())
    })
    .await;
    let uid = pods[1]["metadata"]["uid"].clone();
    let force = DeleteOptions {
        grace_period_seconds: Some(0),
        ..DeleteOptions::default()
    };
    let deleted = cluster
        .store()
        .delete(&cluster.core("pods"), "default", "web-1", &force)
        .unwrap();
    assert!(deleted.finished, "gone at once");

    let again = eventually("web-1 ready again", || {
        let pod = cluster.pod("web-1").filter(is_ready)?;
        (pod["metadata"]["uid"] != uid).then_some(pod)
    })
    .await;
    assert_eq!(node_of(&again), free[0]);
    // The same claim: both starts are in its record.
    let expected = [failed, free[0].clone()];
    eventually("both starts recorded on the same claim", || {
        (cluster.starts(1) == expected).then_some(())
    })
    .await;
    let log = cluster.pool.container_log("default", "web-1");
    assert_eq!(log.matches("--- start 0 on ").count(), 2, "{log}");
}

/// Two one-off pods (`restartPolicy: Never`): one ends well, the other fails; each leaves a
/// termination message.
const ONE_OFF_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: done
  namespace: default
spec:
  restartPolicy: Never
  containers:
  - name: job
    image: sh
    command: [sh, -c, 'echo "{\"wrote\": 1}" > "$FERROKV_TERMINATION_LOG"']
---
apiVersion: v1
kind: Pod
metadata:
  name: broken
  namespace: default
spec:
  restartPolicy: Never
  containers:
  - name: job
    image: sh
    command: [sh, -c, 'echo "disk full" > "$FERROKV_TERMINATION_LOG"; exit 3']
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_pod_ends_succeeded_or_failed_with_its_message_and_is_not_restarted() {
    let cluster = Cluster::start(1, 3).await;
    cluster.server.create_from_yaml(ONE_OFF_PODS).unwrap();
    for (name, phase, code, message) in [
        ("done", "Succeeded", 0, "{\"wrote\": 1}"),
        ("broken", "Failed", 3, "disk full"),
    ] {
        let pod = eventually(&format!("{name} to end"), || {
            let pod = cluster.pod(name)?;
            matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            )
            .then_some(pod)
        })
        .await;
        let container = &pod["status"]["containerStatuses"][0];
        assert_eq!(pod["status"]["phase"], phase, "{pod}");
        assert_eq!(
            container["state"]["terminated"]["exitCode"], code,
            "{container}"
        );
        assert_eq!(
            container["state"]["terminated"]["message"], message,
            "{container}"
        );
        assert_eq!(container["ready"], false, "{container}");
    }
    // Longer than the first restart back-off: neither ran again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["done", "broken"] {
        let pod = cluster.pod(name).unwrap();
        let container = &pod["status"]["containerStatuses"][0];
        assert_eq!(container["restartCount"], 0, "{container}");
        assert!(container["state"]["terminated"].is_object(), "{container}");
    }
}
