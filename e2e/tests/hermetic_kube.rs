//! The hermetic Kubernetes API server against real clients: Debian's kubectl (apply, get, scale,
//! delete, the CRD's validation messages) and kube-rs, the operator's own client (watches that
//! resume or get 410 Gone, server-side apply, finalizers and garbage collection).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use tempfile::TempDir;

use ferrokv_e2e::kube::{ApiServer, ServerConfig};
use ferrokv_e2e::kubectl::Kubectl;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is in the repository")
        .to_path_buf()
}

struct Fixture {
    server: ApiServer,
    kubectl: Kubectl,
    _dir: TempDir,
}

async fn start(config: ServerConfig) -> Fixture {
    let server = ApiServer::start(config)
        .await
        .expect("start the API server");
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubectl = Kubectl::new(&kubeconfig, &dir.path().join("cache"));
    Fixture {
        server,
        kubectl,
        _dir: dir,
    }
}

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// The repository's CRDs, applied with kubectl as a user installs them.
async fn install_crds(fixture: &Fixture) {
    let crds = repo_root().join("crds");
    let output = fixture
        .kubectl
        .run(&["apply", "-f", crds.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        output.expect_stdout().contains(
            "customresourcedefinition.apiextensions.k8s.io/kvclusters.ferrokv.io created"
        ),
        "{}",
        output.stdout
    );
}

fn example_manifest() -> String {
    std::fs::read_to_string(repo_root().join("examples/kvcluster.yaml")).expect("example")
}

#[tokio::test]
async fn kubectl_applies_gets_scales_and_deletes_a_kvcluster() {
    let fixture = start(ServerConfig::default()).await;
    install_crds(&fixture).await;
    let kubectl = &fixture.kubectl;

    let applied = kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&example_manifest()))
        .await
        .unwrap();
    assert_eq!(
        applied.expect_stdout().trim(),
        "kvcluster.ferrokv.io/example created"
    );
    // Applying the same manifest again changes nothing.
    let again = kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&example_manifest()))
        .await
        .unwrap();
    assert_eq!(
        again.expect_stdout().trim(),
        "kvcluster.ferrokv.io/example unchanged"
    );

    // The CRD's printer columns, through its short name.
    let table = kubectl.run(&["get", "kvc"]).await.unwrap();
    let lines: Vec<&str> = table.expect_stdout().lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "LEADER", "VERSION", "PHASE", "AGE"]
    );
    assert!(lines[1].starts_with("example"), "{lines:?}");
    assert_eq!(lines[1].split_whitespace().nth(1), Some("3"), "{lines:?}");

    let scaled = kubectl
        .run(&["scale", "kvc/example", "--replicas=5"])
        .await
        .unwrap();
    assert_eq!(
        scaled.expect_stdout().trim(),
        "kvcluster.ferrokv.io/example scaled"
    );
    let replicas = kubectl
        .run(&[
            "get",
            "kvc",
            "example",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await
        .unwrap();
    assert_eq!(replicas.expect_stdout(), "5 2");

    // The scale subresource goes through the same validation as the object.
    let even = kubectl
        .run(&["scale", "kvc/example", "--replicas=4"])
        .await
        .unwrap();
    assert!(
        even.expect_failure().contains(
            "The KVCluster \"example\" is invalid: spec.replicas: Invalid value: \"integer\": \
             replicas must be odd (1, 3, 5, 7 or 9)"
        ),
        "{}",
        even.stderr
    );

    let deleted = kubectl.run(&["delete", "kvc", "example"]).await.unwrap();
    assert_eq!(
        deleted.expect_stdout().trim(),
        "kvcluster.ferrokv.io \"example\" deleted"
    );
    let gone = kubectl.run(&["get", "kvc", "example"]).await.unwrap();
    assert!(
        gone.expect_failure()
            .contains("kvclusters.ferrokv.io \"example\" not found"),
        "{}",
        gone.stderr
    );
}

#[tokio::test]
async fn even_replica_kvcluster_is_refused_with_the_crds_message() {
    let fixture = start(ServerConfig::default()).await;
    install_crds(&fixture).await;
    let even = example_manifest().replace("replicas: 3", "replicas: 4");
    let refused = fixture
        .kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&even))
        .await
        .unwrap();
    assert!(
        refused.expect_failure().contains(
            "The KVCluster \"example\" is invalid: spec.replicas: Invalid value: \"integer\": \
             replicas must be odd (1, 3, 5, 7 or 9): a cluster of 2N members needs N+1 for \
             quorum"
        ),
        "{}",
        refused.stderr
    );
    let too_many = example_manifest().replace("replicas: 3", "replicas: 11");
    let refused = fixture
        .kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&too_many))
        .await
        .unwrap();
    assert!(
        refused.expect_failure().contains(
            "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 9"
        ),
        "{}",
        refused.stderr
    );

    // A transition rule: storage is fixed once the cluster exists.
    fixture
        .kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&example_manifest()))
        .await
        .unwrap()
        .expect_stdout();
    let resized = fixture
        .kubectl
        .run(&[
            "patch",
            "kvc",
            "example",
            "--type=merge",
            "-p",
            r#"{"spec":{"storage":{"data":{"size":"16Gi"}}}}"#,
        ])
        .await
        .unwrap();
    assert!(
        resized
            .expect_failure()
            .contains("spec.storage: Invalid value: \"object\": storage cannot change after the cluster is created"),
        "{}",
        resized.stderr
    );
    // And a rule relating two fields.
    let tuned = fixture
        .kubectl
        .run(&[
            "patch",
            "kvc",
            "example",
            "--type=merge",
            "-p",
            r#"{"spec":{"tuning":{"electionTimeoutMillis":300}}}"#,
        ])
        .await
        .unwrap();
    assert!(
        tuned
            .expect_failure()
            .contains("electionTimeoutMillis must be at least 5 times heartbeatIntervalMillis"),
        "{}",
        tuned.stderr
    );
    // Unknown fields are refused under kubectl's default strict validation.
    let unknown = example_manifest().replace("replicas: 3", "replicas: 3\n  colour: blue");
    let refused = fixture
        .kubectl
        .run_with_stdin(&["apply", "-f", "-"], Some(&unknown))
        .await
        .unwrap();
    assert!(
        refused
            .expect_failure()
            .contains("unknown field \"spec.colour\""),
        "{}",
        refused.stderr
    );
}

fn config_map(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": data,
    }))
    .unwrap()
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_answers_gone_when_too_old() {
    let fixture = start(ServerConfig {
        history_limit: 8,
        bookmark_interval: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let client = client(&fixture.server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");

    let created = maps
        .create(
            &PostParams::default(),
            &config_map("watched", json!({"n": "0"})),
        )
        .await
        .unwrap();
    let start_version = created.metadata.resource_version.clone().unwrap();
    for n in 1..=3 {
        let patch = json!({"data": {"n": n.to_string()}});
        maps.patch("watched", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    // Resuming from the create: the three modifications, in order, then a bookmark.
    let params = WatchParams::default().timeout(5);
    let mut stream = maps.watch(&params, &start_version).await.unwrap().boxed();
    let mut seen = Vec::new();
    while let Some(event) = stream.try_next().await.unwrap() {
        match event {
            WatchEvent::Modified(cm) => seen.push(cm.data.unwrap()["n"].clone()),
            WatchEvent::Bookmark(bookmark) => {
                let version: u64 = bookmark.metadata.resource_version.parse().unwrap();
                assert!(version >= fixture.server.store.revision() - 1);
                break;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, ["1", "2", "3"]);
    drop(stream);

    // Enough changes to push the create out of the retained history: 410 Gone.
    for n in 4..=20 {
        let patch = json!({"data": {"n": n.to_string()}});
        maps.patch("watched", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let mut stream = maps
        .watch(
            &WatchParams::default().timeout(5).disable_bookmarks(),
            &start_version,
        )
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // timeoutSeconds ends a quiet watch by itself.
    let current = maps
        .get("watched")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let started = std::time::Instant::now();
    let quiet = maps
        .watch(
            &WatchParams::default().timeout(1).disable_bookmarks(),
            &current,
        )
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert!(quiet.is_empty(), "{quiet:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn watch_with_a_label_selector_sees_objects_enter_and_leave_it() {
    let fixture = start(ServerConfig::default()).await;
    let client = client(&fixture.server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = maps
        .create(&PostParams::default(), &config_map("labelled", json!({})))
        .await
        .unwrap();
    let version = created.metadata.resource_version.unwrap();
    let params = WatchParams::default().labels("team=kv").timeout(5);
    let mut stream = maps.watch(&params, &version).await.unwrap().boxed();
    let label = |value: Option<&str>| json!({"metadata": {"labels": {"team": value}}});
    maps.patch(
        "labelled",
        &PatchParams::default(),
        &Patch::Merge(label(Some("kv"))),
    )
    .await
    .unwrap();
    maps.patch(
        "labelled",
        &PatchParams::default(),
        &Patch::Merge(label(Some("web"))),
    )
    .await
    .unwrap();
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Deleted(_))
    ));
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_conflicts_with_another_manager() {
    let fixture = start(ServerConfig::default()).await;
    let client = client(&fixture.server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |manager: &str, force: bool| {
        let params = PatchParams::apply(manager);
        if force {
            params.force()
        } else {
            params
        }
    };

    let first = config_map("applied", json!({"a": "1", "b": "2"}));
    let created = maps
        .patch("applied", &apply("first", false), &Patch::Apply(&first))
        .await
        .unwrap();
    let entry = &created.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(entry.manager.as_deref(), Some("first"));
    assert_eq!(entry.operation.as_deref(), Some("Apply"));

    // Re-applying the same configuration is a no-op: same resourceVersion.
    let same = maps
        .patch("applied", &apply("first", false), &Patch::Apply(&first))
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );

    // A field the manager stops applying is removed.
    let without_b = config_map("applied", json!({"a": "1"}));
    let applied = maps
        .patch("applied", &apply("first", false), &Patch::Apply(&without_b))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap().keys().collect::<Vec<_>>(), ["a"]);

    // Another manager setting the same field to another value conflicts...
    let other = config_map("applied", json!({"a": "9"}));
    let conflict = maps
        .patch("applied", &apply("second", false), &Patch::Apply(&other))
        .await
        .unwrap_err();
    match conflict {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(
                status.message,
                "Apply failed with 1 conflict: conflict with \"first\" using v1: .data.a"
            );
        }
        other => panic!("expected a conflict, got {other}"),
    }
    // ...unless it forces, and then it owns the field.
    let forced = maps
        .patch("applied", &apply("second", true), &Patch::Apply(&other))
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "9");
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|e| e.manager)
        .collect();
    assert_eq!(managers, ["second"]);

    // A stale resourceVersion on update is a 409 Conflict.
    let mut stale = created.clone();
    stale.data = Some([("c".to_string(), "3".to_string())].into());
    match maps
        .replace("applied", &PostParams::default(), &stale)
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert!(
                status.message.contains("the object has been modified"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owner_references_collect_dependents() {
    let fixture = start(ServerConfig::default()).await;
    let client = client(&fixture.server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");

    let mut owner = config_map("owner", json!({}));
    owner.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let owner = maps.create(&PostParams::default(), &owner).await.unwrap();
    let mut dependent = config_map("dependent", json!({}));
    dependent.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true,
    }))
    .unwrap()]);
    maps.create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    // The finalizer holds the owner, marked for deletion; its dependent stays meanwhile.
    maps.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let held = maps.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(maps.get_opt("dependent").await.unwrap().is_some());
    // New finalizers cannot be added to an object being deleted.
    let more = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}});
    let refused = maps
        .patch("owner", &PatchParams::default(), &Patch::Merge(&more))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 422),
        "{refused}"
    );

    // Removing the finalizer completes the deletion, and garbage collection takes the dependent.
    let release = json!({"metadata": {"finalizers": null}});
    maps.patch("owner", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert!(maps.get_opt("owner").await.unwrap().is_none());
    assert!(maps.get_opt("dependent").await.unwrap().is_none());
}
