//! [`StatefulSetController`]: the part of kube-controller-manager that turns StatefulSets into
//! pods and PersistentVolumeClaims, in-process, reading and writing the [`Store`] directly.
//!
//! What it does, per StatefulSet: pods `NAME-0` .. `NAME-(replicas-1)` from the template (with
//! the template's labels plus `controller-revision-hash`, a controller owner reference, and
//! `hostname` / `subdomain` for their stable DNS names), one claim `TEMPLATE-NAME-N` per
//! volumeClaimTemplate and ordinal, created before the pod and never deleted here (retention is
//! the operator's business), and `status` (replicas, readyReplicas, revisions). Pods above the
//! replica count are deleted, all at once; a missing pod is created again. Every StatefulSet is
//! treated as `Parallel` and `OnDelete`: pods are never restarted for a template change.
//!
//! Not here: ordered pod management, rolling updates, ControllerRevision objects, minReadySeconds.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::background::Background;
use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::store::{DeleteOptions, ListOptions, Patch, Store, WatchOptions, WriteOptions};

/// Field manager of every write the controller makes.
const MANAGER: &str = "statefulset-controller";

/// How often the controller looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(1);

/// Label with the revision of the template a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// A running controller; stops when dropped.
pub struct StatefulSetController {
    _task: Background,
}

impl StatefulSetController {
    /// Starts the controller in the current tokio runtime.
    pub fn start(store: Arc<Store>) -> StatefulSetController {
        StatefulSetController {
            _task: Background::spawn(run(store)),
        }
    }
}

struct Types {
    stateful_sets: Arc<ResourceType>,
    pods: Arc<ResourceType>,
    claims: Arc<ResourceType>,
}

async fn run(store: Arc<Store>) {
    let types = Types {
        stateful_sets: store
            .resource_type("apps", "v1", "statefulsets")
            .expect("built-in"),
        pods: store.resource_type("", "v1", "pods").expect("built-in"),
        claims: store
            .resource_type("", "v1", "persistentvolumeclaims")
            .expect("built-in"),
    };
    loop {
        let from = WatchOptions {
            resource_version: Some(store.revision().to_string()),
            ..WatchOptions::default()
        };
        let sets = store.watch(&types.stateful_sets, None, from.clone());
        let pods = store.watch(&types.pods, None, from);
        sync_all(&store, &types);
        let (Ok(mut sets), Ok(mut pods)) = (sets, pods) else {
            tokio::time::sleep(RESYNC).await;
            continue;
        };
        tokio::select! {
            _ = sets.next() => {}
            _ = pods.next() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn sync_all(store: &Store, types: &Types) {
    let Ok(sets) = store.list(&types.stateful_sets, None, &ListOptions::default()) else {
        return;
    };
    for set in sets.items {
        if meta::is_terminating(&set) {
            continue;
        }
        if let Err(error) = sync(store, types, &set) {
            eprintln!(
                "statefulset-controller: {}/{}: {error}",
                meta::namespace_of(&set),
                meta::name_of(&set)
            );
        }
    }
}

/// One pass over one StatefulSet: claims, then pods, then status.
fn sync(store: &Store, types: &Types, set: &Value) -> Result<(), crate::kube::error::ApiError> {
    let namespace = meta::namespace_of(set);
    let name = meta::name_of(set);
    let replicas = set["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
    let revision = template_revision(set);
    let options = WriteOptions {
        manager: MANAGER.into(),
        ..WriteOptions::default()
    };

    let owned: BTreeMap<u32, Value> = store
        .list(&types.pods, Some(namespace), &ListOptions::default())?
        .items
        .into_iter()
        .filter(|pod| meta::owner_uids(pod).iter().any(|u| u == meta::uid_of(set)))
        .filter_map(|pod| Some((ordinal_of(name, meta::name_of(&pod))?, pod)))
        .collect();

    for ordinal in 0..replicas {
        for claim in claims(set, ordinal) {
            let claim_name = meta::name_of(&claim).to_string();
            if store.get(&types.claims, namespace, &claim_name).is_err() {
                store.create(&types.claims, namespace, claim, &options)?;
            }
        }
        if !owned.contains_key(&ordinal) {
            store.create(
                &types.pods,
                namespace,
                pod(set, ordinal, &revision),
                &options,
            )?;
        }
    }
    for (ordinal, pod) in &owned {
        if *ordinal >= replicas && !meta::is_terminating(pod) {
            store.delete(
                &types.pods,
                namespace,
                meta::name_of(pod),
                &DeleteOptions::default(),
            )?;
        }
    }

    let live: Vec<&Value> = owned.values().collect();
    let ready = live.iter().filter(|pod| pod_ready(pod)).count();
    let updated = live
        .iter()
        .filter(|pod| pod["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
        .count();
    let mut status = json!({
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": updated,
        "updatedReplicas": updated,
        "currentRevision": revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    if let Some(generation) = set["metadata"]["generation"].as_i64() {
        status["observedGeneration"] = json!(generation);
    }
    if set["status"] != status {
        store.patch(
            &types.stateful_sets,
            namespace,
            name,
            Patch::Merge(json!({ "status": status })),
            true,
            &options,
        )?;
    }
    Ok(())
}

/// `NAME-HASH` of the pod template: pods made from another template carry another one.
pub fn template_revision(set: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    set["spec"]["template"].to_string().hash(&mut hasher);
    format!(
        "{}-{:x}",
        meta::name_of(set),
        hasher.finish() & 0xff_ffff_ffff
    )
}

/// Ordinal of pod `NAME-N` of StatefulSet `NAME`.
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<u32> {
    let suffix = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if suffix.len() > 1 && suffix.starts_with('0') {
        return None;
    }
    suffix.parse().ok()
}

/// The claims of one ordinal: `TEMPLATE-NAME-N` for each volumeClaimTemplate.
pub fn claims(set: &Value, ordinal: u32) -> Vec<Value> {
    let pod_name = format!("{}-{ordinal}", meta::name_of(set));
    let templates = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    templates
        .into_iter()
        .map(|template| {
            let mut metadata = template["metadata"].clone();
            let name = format!("{}-{pod_name}", meta::name_of(&template));
            metadata["name"] = json!(name);
            metadata["namespace"] = json!(meta::namespace_of(set));
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata,
                "spec": template["spec"],
            })
        })
        .collect()
}

/// Pod `NAME-N`: the template, owned by the StatefulSet, with its stable hostname and its
/// claims as volumes.
pub fn pod(set: &Value, ordinal: u32, revision: &str) -> Value {
    let set_name = meta::name_of(set);
    let name = format!("{set_name}-{ordinal}");
    let template = &set["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[REVISION_LABEL] = json!(revision);
    labels["statefulset.kubernetes.io/pod-name"] = json!(name);
    labels["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(service) = set["spec"]["serviceName"].as_str() {
        spec["subdomain"] = json!(service);
    }
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for claim in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let volume = meta::name_of(claim);
        volumes.retain(|v| v["name"] != volume);
        volumes.push(json!({
            "name": volume,
            "persistentVolumeClaim": { "claimName": format!("{volume}-{name}") },
        }));
    }
    spec["volumes"] = json!(volumes);
    let mut metadata = json!({
        "name": name,
        "namespace": meta::namespace_of(set),
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": set_name,
            "uid": meta::uid_of(set),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if template["metadata"]["annotations"].is_object() {
        metadata["annotations"] = template["metadata"]["annotations"].clone();
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec })
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Value {
        json!({
            "metadata": {"name": "kv", "namespace": "prod", "uid": "u-1"},
            "spec": {
                "replicas": 3,
                "serviceName": "kv-peer",
                "template": {
                    "metadata": {"labels": {"app": "kv"}},
                    "spec": {"containers": [{"name": "ferrokv"}]},
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data", "labels": {"app": "kv"}},
                        "spec": {"accessModes": ["ReadWriteOnce"]},
                    },
                    {"metadata": {"name": "wal"}, "spec": {}},
                ],
            },
        })
    }

    #[test]
    fn pod_has_its_stable_hostname_owner_and_claims() {
        let pod = pod(&set(), 2, "kv-abc");
        assert_eq!(pod["metadata"]["name"], "kv-2");
        assert_eq!(pod["metadata"]["labels"]["app"], "kv");
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "kv-abc");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(pod["spec"]["hostname"], "kv-2");
        assert_eq!(pod["spec"]["subdomain"], "kv-peer");
        assert_eq!(
            pod["spec"]["volumes"],
            json!([
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-kv-2"}},
                {"name": "wal", "persistentVolumeClaim": {"claimName": "wal-kv-2"}},
            ])
        );
    }

    #[test]
    fn claims_are_named_template_set_ordinal() {
        let claims = claims(&set(), 1);
        let names: Vec<&str> = claims.iter().map(meta::name_of).collect();
        assert_eq!(names, ["data-kv-1", "wal-kv-1"]);
        assert_eq!(claims[0]["metadata"]["labels"]["app"], "kv");
        assert_eq!(claims[0]["spec"]["accessModes"][0], "ReadWriteOnce");
    }

    #[test]
    fn ordinals_are_read_from_pod_names_of_the_set_only() {
        assert_eq!(ordinal_of("kv", "kv-0"), Some(0));
        assert_eq!(ordinal_of("kv", "kv-12"), Some(12));
        assert_eq!(ordinal_of("kv", "kv-01"), None);
        assert_eq!(ordinal_of("kv", "kvx-1"), None);
        assert_eq!(ordinal_of("kv", "kv-peer"), None);
    }

    #[test]
    fn revision_follows_the_template() {
        let mut other = set();
        assert_eq!(template_revision(&set()), template_revision(&other));
        other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x");
        assert_ne!(template_revision(&set()), template_revision(&other));
        assert!(template_revision(&set()).starts_with("kv-"));
    }
}
