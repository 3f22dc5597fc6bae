//! The operator binary against the hermetic API server: a KVCluster applied with kubectl gets
//! its finalizer, its children (Services, ConfigMap, PodDisruptionBudget, StatefulSet, each owned
//! by it and applied under the operator's field manager) and a status; deleting it runs the
//! finalizer and garbage collection takes the children.
//!
//! No pods run yet (there is no StatefulSet controller or kubelet here), so the cluster stays
//! `Bootstrapping`: this pins down what the operator creates, not what the members do.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use ferrokv_e2e::kube::{ApiServer, ServerConfig};
use ferrokv_e2e::kubectl::Kubectl;
use ferrokv_e2e::operator::RunningOperator;

const WAIT: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Some`, or panics after [`WAIT`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, operator: &RunningOperator, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- operator log ---\n{}",
            operator.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_creates_a_clusters_children_and_status_and_cleans_up_on_delete() {
    let server = ApiServer::start(ServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let kubectl = Kubectl::new(&kubeconfig, &dir.path().join("cache"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    kubectl
        .run(&["apply", "-f", root.join("crds").to_str().unwrap()])
        .await
        .unwrap()
        .expect_stdout();

    let mut operator = RunningOperator::start(&kubeconfig, "default", dir.path()).unwrap();
    kubectl
        .run(&[
            "apply",
            "-f",
            root.join("examples/kvcluster.yaml").to_str().unwrap(),
        ])
        .await
        .unwrap()
        .expect_stdout();

    let client = {
        let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    };
    let gvk = GroupVersionKind::gvk("ferrokv.io", "v1alpha1", "KVCluster");
    let clusters: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));

    // Status, once the operator has observed the cluster: forming, no member answers yet.
    let cluster = eventually("the KVCluster's status", &operator, || async {
        let kvc = clusters.get("example").await.ok()?;
        (kvc.data["status"]["observedGeneration"] == 1).then_some(kvc)
    })
    .await;
    let status = &cluster.data["status"];
    assert_eq!(status["phase"], "Bootstrapping", "{status}");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=example,app.kubernetes.io/name=ferrokv,ferrokv.io/cluster=example"
    );
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
    };
    assert_eq!(condition("Available")["status"], "False");
    assert_eq!(condition("Progressing")["status"], "True");
    assert_eq!(
        cluster.metadata.finalizers.as_deref(),
        Some(&["ferrokv.io/volumes".to_string()][..])
    );
    let uid = cluster.metadata.uid.clone().unwrap();
    let owned_by_cluster = |meta: &kube::api::ObjectMeta| {
        let owners = meta.owner_references.clone().unwrap_or_default();
        owners.len() == 1 && owners[0].uid == uid && owners[0].controller == Some(true)
    };
    let applied_by_operator = |meta: &kube::api::ObjectMeta| {
        meta.managed_fields.iter().flatten().any(|e| {
            e.manager.as_deref() == Some("ferrokv-operator")
                && e.operation.as_deref() == Some("Apply")
        })
    };

    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let sts = eventually("the StatefulSet", &operator, || async {
        stateful_sets.get_opt("example").await.ok().flatten()
    })
    .await;
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("example-peer"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(claims, ["data", "wal"]);
    assert!(owned_by_cluster(&sts.metadata));
    assert!(applied_by_operator(&sts.metadata));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for name in ["example-peer", "example-client"] {
        let service = services.get(name).await.unwrap();
        assert!(owned_by_cluster(&service.metadata), "{name}");
        assert!(applied_by_operator(&service.metadata), "{name}");
    }
    let peer = services.get("example-peer").await.unwrap().spec.unwrap();
    assert_eq!(peer.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peer.publish_not_ready_addresses, Some(true));

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let bootstrap = config_maps.get("example-bootstrap").await.unwrap();
    assert!(owned_by_cluster(&bootstrap.metadata));
    let data = bootstrap.data.unwrap();
    assert_eq!(data["initial-cluster-state"], "new");
    assert_eq!(
        data["initial-cluster"],
        "example-0=http://example-0.example-peer.default.svc:2380,\
         example-1=http://example-1.example-peer.default.svc:2380,\
         example-2=http://example-2.example-peer.default.svc:2380"
    );

    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let pdb = budgets.get("example").await.unwrap();
    assert!(owned_by_cluster(&pdb.metadata));

    // Events of the steps it took, through the events.k8s.io API the recorder uses.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut reasons: Vec<String> = eventually("the operator's events", &operator, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str()))
            .filter_map(|e| e.reason)
            .collect();
        (reasons.len() >= 2).then_some(reasons)
    })
    .await;
    reasons.sort();
    assert_eq!(reasons, ["BootstrapConfigWritten", "StatefulSetScaled"]);

    // A quiet cluster is not rewritten: re-applying unchanged children is a no-op, so the
    // operator does not wake itself up forever.
    let before = server.store.revision();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sts_again = stateful_sets.get("example").await.unwrap();
    assert_eq!(
        sts_again.metadata.resource_version,
        sts.metadata.resource_version
    );
    assert!(
        server.store.revision() - before < 10,
        "the operator keeps writing"
    );

    // Deleting the cluster runs the finalizer, then garbage collection takes the children.
    kubectl
        .run(&["delete", "kvc", "example", "--timeout=60s"])
        .await
        .unwrap()
        .expect_stdout();
    assert!(clusters.get_opt("example").await.unwrap().is_none());
    eventually("the children to be collected", &operator, || async {
        let sts = stateful_sets.get_opt("example").await.ok()?;
        let cm = config_maps.get_opt("example-bootstrap").await.ok()?;
        let svc = services.get_opt("example-peer").await.ok()?;
        (sts.is_none() && cm.is_none() && svc.is_none()).then_some(())
    })
    .await;
    assert!(operator.is_running(), "{}", operator.log_tail());
}
