//! The hermetic cluster's StatefulSet controller and kubelet on their own, without the operator:
//! a StatefulSet's pods and claims, a container that refuses to start and says why in its
//! termination message, and a deleted pod that is stopped and made again.

use std::time::{Duration, Instant};

use serde_json::Value;

use ferrokv_e2e::binaries::server_binary;
use ferrokv_e2e::kube::kubelet::{Kubelet, KubeletConfig};
use ferrokv_e2e::kube::statefulset::StatefulSetController;
use ferrokv_e2e::kube::store::DeleteOptions;
use ferrokv_e2e::kube::{ApiServer, ServerConfig};

const WAIT: Duration = Duration::from_secs(60);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_start_is_reported_as_the_termination_message_and_retried() {
    let server = ApiServer::start(ServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _controller = StatefulSetController::start(server.store.clone());
    let kubelet = Kubelet::start(
        server.store.clone(),
        KubeletConfig {
            node_name: "node-0".into(),
            capacity: 2,
            dir: dir.path().to_path_buf(),
            programs: [("ferrokv".to_string(), server_binary())].into(),
        },
    )
    .unwrap();
    server.create_from_yaml(REFUSING_SET).unwrap();
    let store = &server.store;
    let pods = store.resource_type("", "v1", "pods").unwrap();
    let claims = store
        .resource_type("", "v1", "persistentvolumeclaims")
        .unwrap();
    let sets = store.resource_type("apps", "v1", "statefulsets").unwrap();

    let pod = eventually("a second start after the refusal", || {
        let pod = store.get(&pods, "default", "bad-0").ok()?;
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
        kubelet.container_log("default", "bad-0")
    );
    assert_eq!(terminated["exitCode"], 1);
    assert_eq!(container["ready"], false);
    assert_eq!(pod["spec"]["hostname"], "bad-0");
    assert_eq!(pod["spec"]["subdomain"], "bad-peer");
    let claim = store.get(&claims, "default", "data-bad-0").unwrap();
    assert_eq!(claim["status"]["phase"], "Bound");
    let set = store.get(&sets, "default", "bad").unwrap();
    assert_eq!(set["status"]["replicas"], 1);
    assert_eq!(set["status"]["readyReplicas"], 0);

    // Deleting the pod ends it; the controller makes a new one under the same name.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    store
        .delete(&pods, "default", "bad-0", &DeleteOptions::default())
        .unwrap();
    let again: Value = eventually("the pod made again", || {
        let pod = store.get(&pods, "default", "bad-0").ok()?;
        (pod["metadata"]["uid"] != uid.as_str()).then_some(pod)
    })
    .await;
    assert_eq!(again["metadata"]["ownerReferences"][0]["name"], "bad");
}
