//! Tests of the store's verbs, lifecycles and watches.

use super::*;

fn core(store: &Store, plural: &str) -> Arc<ResourceType> {
    store.resource_type("", "v1", plural).unwrap()
}

fn options() -> WriteOptions {
    WriteOptions {
        manager: "test".into(),
        ..WriteOptions::default()
    }
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

#[test]
fn create_assigns_metadata_and_refuses_duplicates() {
    let store = Store::new(100);
    let maps = core(&store, "configmaps");
    let created = store
        .create(&maps, "default", config_map("a"), &options())
        .unwrap()
        .object;
    assert_eq!(meta::uid_of(&created).len(), 36);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(
        created["metadata"]["resourceVersion"],
        store.revision().to_string()
    );
    assert_eq!(created["metadata"]["managedFields"][0]["manager"], "test");
    let again = store.create(&maps, "default", config_map("a"), &options());
    assert_eq!(again.unwrap_err().code(), 409);
    let missing = store.create(&maps, "nowhere", config_map("a"), &options());
    assert_eq!(
        missing.unwrap_err().message(),
        "namespaces \"nowhere\" not found"
    );
}

#[test]
fn status_and_spec_are_written_through_their_own_paths() {
    let store = Store::new(100);
    let sets = store.resource_type("apps", "v1", "statefulsets").unwrap();
    let body =
        json!({"metadata": {"name": "kv"}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
    let created = store
        .create(&sets, "default", body, &options())
        .unwrap()
        .object;
    assert!(
        created.get("status").is_none(),
        "status is the system's on create"
    );

    let mut stale = created.clone();
    stale["spec"]["replicas"] = json!(2);
    store
        .update(&sets, "default", "kv", stale.clone(), false, &options())
        .unwrap();
    let conflict = store.update(&sets, "default", "kv", stale, false, &options());
    assert_eq!(conflict.unwrap_err().code(), 409);

    let mut status = store.get(&sets, "default", "kv").unwrap();
    status["status"] = json!({"replicas": 2});
    status["spec"]["replicas"] = json!(7);
    let written = store
        .update(&sets, "default", "kv", status, true, &options())
        .unwrap()
        .object;
    assert_eq!(written["status"]["replicas"], 2);
    assert_eq!(
        written["spec"]["replicas"], 2,
        "the status path ignores spec"
    );
    assert_eq!(written["metadata"]["generation"], 2);

    let patch = Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 0}}));
    let patched = store
        .patch(&sets, "default", "kv", patch, false, &options())
        .unwrap()
        .object;
    assert_eq!(patched["spec"]["replicas"], 3);
    assert_eq!(
        patched["status"]["replicas"], 2,
        "the main path ignores status"
    );
    assert_eq!(patched["metadata"]["generation"], 3);

    let scale = store
        .update_scale(
            &sets,
            "default",
            "kv",
            ScaleChange::Patch(Patch::Merge(json!({"spec": {"replicas": 5}}))),
            &options(),
        )
        .unwrap();
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["replicas"], 2);
    assert_eq!(
        store.get(&sets, "default", "kv").unwrap()["spec"]["replicas"],
        5
    );
}

#[test]
fn namespace_deletion_waits_for_its_contents() {
    let store = Store::new(100);
    let (namespaces, maps) = (core(&store, "namespaces"), core(&store, "configmaps"));
    store
        .create(
            &namespaces,
            "",
            json!({"metadata": {"name": "scratch"}}),
            &options(),
        )
        .unwrap();
    let mut held = config_map("held");
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    store.create(&maps, "scratch", held, &options()).unwrap();
    store
        .create(&maps, "scratch", config_map("plain"), &options())
        .unwrap();

    let deleted = store
        .delete(&namespaces, "", "scratch", &DeleteOptions::default())
        .unwrap();
    assert!(!deleted.finished);
    let namespace = store.get(&namespaces, "", "scratch").unwrap();
    assert_eq!(namespace["status"]["phase"], "Terminating");
    assert!(store.get(&maps, "scratch", "plain").is_err());
    assert_eq!(
        store
            .create(&maps, "scratch", config_map("new"), &options())
            .unwrap_err()
            .code(),
        403
    );

    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    store
        .patch(&maps, "scratch", "held", release, false, &options())
        .unwrap();
    assert!(store.get(&namespaces, "", "scratch").is_err());
}

fn owned_by(name: &str, owner: &Value) -> Value {
    let mut object = config_map(name);
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "name": meta::name_of(owner),
        "uid": meta::uid_of(owner),
    }]);
    object
}

#[test]
fn orphan_deletion_keeps_dependents_and_background_collects_them() {
    let store = Store::new(100);
    let maps = core(&store, "configmaps");
    let owner = store
        .create(&maps, "default", config_map("owner"), &options())
        .unwrap()
        .object;
    store
        .create(&maps, "default", owned_by("kept", &owner), &options())
        .unwrap();
    let orphan = DeleteOptions {
        propagation: Some(Propagation::Orphan),
        ..DeleteOptions::default()
    };
    store.delete(&maps, "default", "owner", &orphan).unwrap();
    assert!(store.get(&maps, "default", "owner").is_err());
    let kept = store.get(&maps, "default", "kept").unwrap();
    assert_eq!(kept["metadata"]["ownerReferences"], json!([]));

    let owner = store
        .create(&maps, "default", config_map("owner2"), &options())
        .unwrap()
        .object;
    store
        .create(&maps, "default", owned_by("child", &owner), &options())
        .unwrap();
    store
        .create(
            &maps,
            "default",
            owned_by("grandchild", &store.get(&maps, "default", "child").unwrap()),
            &options(),
        )
        .unwrap();
    store
        .delete(&maps, "default", "owner2", &DeleteOptions::default())
        .unwrap();
    assert!(store.get(&maps, "default", "child").is_err());
    assert!(store.get(&maps, "default", "grandchild").is_err());
}

#[test]
fn a_pod_on_a_node_is_deleted_gracefully_until_its_kubelet_forces_it() {
    let store = Store::new(100);
    let pods = core(&store, "pods");
    let pod =
        json!({"metadata": {"name": "kv-0"}, "spec": {"nodeName": "node-a", "containers": []}});
    let created = store
        .create(&pods, "default", pod, &options())
        .unwrap()
        .object;
    assert_eq!(created["status"]["phase"], "Pending");
    let graceful = store
        .delete(&pods, "default", "kv-0", &DeleteOptions::default())
        .unwrap();
    assert!(!graceful.finished);
    assert_eq!(
        graceful.object["metadata"]["deletionGracePeriodSeconds"],
        30
    );
    let force = DeleteOptions {
        grace_period_seconds: Some(0),
        ..DeleteOptions::default()
    };
    assert!(
        store
            .delete(&pods, "default", "kv-0", &force)
            .unwrap()
            .finished
    );
    assert!(store.get(&pods, "default", "kv-0").is_err());
}

fn kvcluster_crd() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/kvclusters.ferrokv.io.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_crd_serves_its_kind_until_deleted_with_its_instances() {
    let store = Store::new(100);
    let crds = store
        .resource_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .unwrap();
    let created = store
        .create(&crds, "", kvcluster_crd(), &options())
        .unwrap()
        .object;
    assert_eq!(created["status"]["conditions"][1]["type"], "Established");
    let clusters = store
        .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
        .unwrap();
    let kvc = json!({"apiVersion": "ferrokv.io/v1alpha1", "kind": "KVCluster",
                     "metadata": {"name": "kv"}, "spec": {}});
    let kvc = store
        .create(&clusters, "default", kvc, &options())
        .unwrap()
        .object;
    assert_eq!(kvc["spec"]["replicas"], 3, "defaulted from the schema");
    assert_eq!(kvc["spec"]["storage"]["wal"]["size"], "2Gi");

    store
        .delete(
            &crds,
            "",
            "kvclusters.ferrokv.io",
            &DeleteOptions::default(),
        )
        .unwrap();
    assert!(store.get(&crds, "", "kvclusters.ferrokv.io").is_err());
    assert!(store
        .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
        .is_none());
}

#[test]
fn a_crd_with_a_rule_outside_the_cel_subset_is_refused() {
    let store = Store::new(100);
    let crds = store
        .resource_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .unwrap();
    let mut crd = kvcluster_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
        json!([{"rule": "self.metadata.name.matches('^kv')"}]);
    let error = store.create(&crds, "", crd, &options()).unwrap_err();
    assert_eq!(error.code(), 422);
    assert!(
        error
            .message()
            .contains("function 'matches' is not supported"),
        "{}",
        error.message()
    );
    assert!(store
        .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
        .is_none());
}

#[test]
fn lists_filter_by_label_and_page_with_continue() {
    let store = Store::new(100);
    let maps = core(&store, "configmaps");
    for (name, team) in [("a", "kv"), ("b", "web"), ("c", "kv"), ("d", "kv")] {
        let mut object = config_map(name);
        object["metadata"]["labels"] = json!({"team": team});
        store.create(&maps, "default", object, &options()).unwrap();
    }
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list(
                &maps,
                Some("default"),
                &ListOptions {
                    labels: LabelSelector::parse("team=kv").unwrap(),
                    limit: Some(2),
                    continue_token: token,
                    ..ListOptions::default()
                },
            )
            .unwrap();
        names.extend(page.items.iter().map(|o| meta::name_of(o).to_string()));
        token = page.continue_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, ["a", "c", "d"]);
}

#[test]
fn an_apply_creates_the_object_and_may_leave_the_name_to_the_url() {
    let store = Store::new(100);
    let maps = core(&store, "configmaps");
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}});
    let apply = |config: Value| Patch::Apply {
        config,
        force: false,
    };
    let created = store
        .patch(
            &maps,
            "default",
            "applied",
            apply(config.clone()),
            false,
            &options(),
        )
        .unwrap();
    assert!(created.created);
    assert_eq!(created.object["metadata"]["name"], "applied");
    assert_eq!(
        created.object["metadata"]["managedFields"][0]["operation"],
        "Apply"
    );
    let again = store
        .patch(
            &maps,
            "default",
            "applied",
            apply(config),
            false,
            &options(),
        )
        .unwrap();
    assert_eq!(
        again.object["metadata"]["resourceVersion"],
        created.object["metadata"]["resourceVersion"]
    );
    let renamed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
    let error = store.patch(
        &maps,
        "default",
        "applied",
        apply(renamed),
        false,
        &options(),
    );
    assert_eq!(error.unwrap_err().code(), 400);
}

#[test]
fn events_written_through_events_k8s_io_are_core_events() {
    let store = Store::new(100);
    let events_v1 = store
        .resource_type("events.k8s.io", "v1", "events")
        .unwrap();
    let core_events = core(&store, "events");
    let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "kv.1"}, "reason": "StatefulSetScaled", "note": "to 3",
        "regarding": {"kind": "KVCluster", "name": "kv", "namespace": "default"}});
    store
        .create(&events_v1, "default", event, &options())
        .unwrap();
    let core_event = store.get(&core_events, "default", "kv.1").unwrap();
    assert_eq!(core_event["message"], "to 3");
    assert_eq!(core_event["involvedObject"]["name"], "kv");
    let by_regarding = ListOptions {
        fields: FieldSelector::parse("regarding.name=kv", "Event").unwrap(),
        ..ListOptions::default()
    };
    let listed = store.list(&events_v1, None, &by_regarding).unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0]["note"], "to 3");
    let patched = store
        .patch(
            &events_v1,
            "default",
            "kv.1",
            Patch::Merge(json!({"deprecatedCount": 2})),
            false,
            &options(),
        )
        .unwrap()
        .object;
    assert_eq!(patched["deprecatedCount"], 2);
    assert_eq!(
        store.get(&core_events, "default", "kv.1").unwrap()["count"],
        2
    );
}

#[tokio::test]
async fn a_watch_from_zero_replays_existing_objects_then_follows_changes() {
    let store = Store::new(100);
    let maps = core(&store, "configmaps");
    store
        .create(&maps, "default", config_map("old"), &options())
        .unwrap();
    let mut watcher = store
        .watch(
            &maps,
            Some("default"),
            WatchOptions {
                resource_version: Some("0".into()),
                ..WatchOptions::default()
            },
        )
        .unwrap();
    store
        .create(&maps, "default", config_map("new"), &options())
        .unwrap();
    store
        .delete(&maps, "default", "old", &DeleteOptions::default())
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match watcher.next().await.unwrap() {
            WatchItem::Event(kind, object) => {
                seen.push(format!("{} {}", kind.as_str(), meta::name_of(&object)))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED old", "ADDED new", "DELETED old"]);
    assert_eq!(watcher.bookmark_revision(), Some(store.revision()));
}
