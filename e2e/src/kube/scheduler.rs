//! [`Scheduler`]: kube-scheduler's default profile, cut down to what pods of a StatefulSet on a
//! few nodes meet, in-process, reading and writing the [`Store`] directly.
//!
//! Each pod with no `spec.nodeName` (and `schedulerName` unset or `default-scheduler`) goes to
//! one node that passes every filter, in kube-scheduler's order:
//! - the node is not cordoned (`spec.unschedulable`), unless the pod tolerates
//!   `node.kubernetes.io/unschedulable`;
//! - the pod tolerates every NoSchedule and NoExecute taint of the node (so a node the lifecycle
//!   controller marked unreachable or not ready gets nothing), and the node is Ready;
//! - the node's labels match the pod's `nodeSelector`;
//! - the node runs fewer pods than its `allocatable.pods`;
//! - no pod in the node's topology domain matches a required pod anti-affinity term of the pod,
//!   and the pod matches no required anti-affinity term of a pod there.
//!
//! Among the nodes left, the lowest score wins, compared in this order: the summed weights of
//! the pod's preferred anti-affinity terms times the pods in the domain they match; the pods of
//! the same controller (or, with none, with the same labels) already on the node, as the default
//! topology spreading would; the pods on the node; the node's name. Binding writes
//! `PodScheduled=True` and then `spec.nodeName`. A pod that fits nowhere stays Pending with
//! `PodScheduled=False`, reason `Unschedulable`, and kube-scheduler's message
//! (`0/3 nodes are available: 1 Too many pods, 2 node(s) had untolerated taint {...}.`), and is
//! tried again whenever a pod or node changes.
//!
//! Not here: node affinity, pod affinity, topology spread constraints of the pod's own,
//! namespace selectors of affinity terms, resource requests, preemption, volume topology.
//! Scores are compared in order, not weighted and summed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::background::Background;
use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::selector::LabelSelector;
use crate::kube::store::{selector_string, ListOptions, Patch, Store, WatchOptions, WriteOptions};

/// Field manager of every write the scheduler makes.
const MANAGER: &str = "default-scheduler";

/// How often the scheduler looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(1);

/// The node label every node carries, naming it.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A running scheduler; stops when dropped.
pub(crate) struct Scheduler {
    _task: Background,
}

impl Scheduler {
    /// Starts the scheduler in the current tokio runtime.
    pub fn start(store: Arc<Store>) -> Scheduler {
        Scheduler {
            _task: Background::spawn(run(store)),
        }
    }
}

struct Types {
    nodes: Arc<ResourceType>,
    pods: Arc<ResourceType>,
}

async fn run(store: Arc<Store>) {
    let types = Types {
        nodes: store.resource_type("", "v1", "nodes").expect("built-in"),
        pods: store.resource_type("", "v1", "pods").expect("built-in"),
    };
    loop {
        let from = WatchOptions {
            resource_version: Some(store.revision().to_string()),
            ..WatchOptions::default()
        };
        let node_changes = store.watch(&types.nodes, None, from.clone());
        let pod_changes = store.watch(&types.pods, None, from);
        schedule_pending(&store, &types);
        let (Ok(mut node_changes), Ok(mut pod_changes)) = (node_changes, pod_changes) else {
            tokio::time::sleep(RESYNC).await;
            continue;
        };
        tokio::select! {
            _ = node_changes.next() => {}
            _ = pod_changes.next() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn options() -> WriteOptions {
    WriteOptions {
        manager: MANAGER.into(),
        ..WriteOptions::default()
    }
}

/// One pass: every pending pod, in list order, each seeing the bindings before it.
fn schedule_pending(store: &Store, types: &Types) {
    let (Ok(nodes), Ok(pods)) = (
        store.list(&types.nodes, None, &ListOptions::default()),
        store.list(&types.pods, None, &ListOptions::default()),
    ) else {
        return;
    };
    let nodes = nodes.items;
    let mut pods = pods.items;
    for i in 0..pods.len() {
        let pod = &pods[i];
        if !node_name_of(pod).is_empty()
            || meta::is_terminating(pod)
            || !matches!(
                pod["spec"]["schedulerName"].as_str(),
                None | Some("default-scheduler")
            )
        {
            continue;
        }
        let namespace = meta::namespace_of(pod).to_string();
        let name = meta::name_of(pod).to_string();
        match choose_node(pod, &nodes, &pods) {
            Ok(node) => {
                if let Err(error) = bind(store, types, pod, &node) {
                    eprintln!("scheduler: binding {namespace}/{name} to {node}: {error}");
                    continue;
                }
                pods[i]["spec"]["nodeName"] = json!(node);
            }
            Err(message) => {
                let condition = json!({
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                });
                if let Err(error) = set_scheduled_condition(store, types, pod, condition) {
                    eprintln!("scheduler: {namespace}/{name}: {error}");
                }
            }
        }
    }
}

/// What the Binding subresource does: the condition, then the node.
fn bind(
    store: &Store,
    types: &Types,
    pod: &Value,
    node: &str,
) -> Result<(), crate::kube::error::ApiError> {
    let condition = json!({"type": "PodScheduled", "status": "True"});
    set_scheduled_condition(store, types, pod, condition)?;
    store.patch(
        &types.pods,
        meta::namespace_of(pod),
        meta::name_of(pod),
        Patch::Merge(json!({"spec": {"nodeName": node}})),
        false,
        &options(),
    )?;
    Ok(())
}

/// Writes the PodScheduled condition unless it already says the same.
fn set_scheduled_condition(
    store: &Store,
    types: &Types,
    pod: &Value,
    mut condition: Value,
) -> Result<(), crate::kube::error::ApiError> {
    let mut conditions: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let same = |c: &Value| {
        c["type"] == "PodScheduled"
            && c["status"] == condition["status"]
            && c["reason"] == condition["reason"]
            && c["message"] == condition["message"]
    };
    if conditions.iter().any(same) {
        return Ok(());
    }
    condition["lastProbeTime"] = Value::Null;
    condition["lastTransitionTime"] = json!(meta::now());
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(condition);
    store.patch(
        &types.pods,
        meta::namespace_of(pod),
        meta::name_of(pod),
        Patch::Merge(json!({"status": {"conditions": conditions}})),
        true,
        &options(),
    )?;
    Ok(())
}

fn node_name_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or("")
}

/// The node pod `pod` goes to, or kube-scheduler's message saying why none fits. `pods` are
/// all pods (those bound count); see the module documentation for the rules.
pub(crate) fn choose_node(pod: &Value, nodes: &[Value], pods: &[Value]) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".to_string());
    }
    let cluster = Cluster::new(nodes, pods);
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(Score, &str)> = None;
    for node in nodes {
        match cluster.fits(pod, node) {
            Err(reason) => *rejected.entry(reason).or_default() += 1,
            Ok(()) => {
                let candidate = (cluster.score(pod, node), meta::name_of(node));
                if best.as_ref().is_none_or(|b| candidate < *b) {
                    best = Some(candidate);
                }
            }
        }
    }
    if let Some((_, node)) = best {
        return Ok(node.to_string());
    }
    let mut reasons: Vec<String> = rejected
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    reasons.sort();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        reasons.join(", ")
    ))
}

/// Lower is better; see the module documentation.
type Score = (i64, usize, usize);

/// The nodes and the pods bound to them, as one pass sees them.
struct Cluster<'a> {
    nodes: &'a [Value],
    /// Bound pods that are not finished, by node name.
    on_node: BTreeMap<&'a str, Vec<&'a Value>>,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &'a [Value], pods: &'a [Value]) -> Cluster<'a> {
        let mut on_node: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for pod in pods {
            let finished = matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            if !node_name_of(pod).is_empty() && !finished {
                on_node.entry(node_name_of(pod)).or_default().push(pod);
            }
        }
        Cluster { nodes, on_node }
    }

    fn pods_on(&self, node: &str) -> &[&'a Value] {
        self.on_node.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Label `key` of the node named `name`.
    fn label_of(&self, name: &str, key: &str) -> Option<&'a str> {
        self.nodes.iter().find(|n| meta::name_of(n) == name)?["metadata"]["labels"][key].as_str()
    }

    /// Pods on nodes with the same value of label `key` as `node`; none when `node` lacks it.
    fn pods_in_domain(&self, node: &Value, key: &str) -> Vec<&'a Value> {
        let Some(value) = node["metadata"]["labels"][key].as_str() else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter(|n| n["metadata"]["labels"][key].as_str() == Some(value))
            .flat_map(|n| self.pods_on(meta::name_of(n)).iter().copied())
            .collect()
    }

    /// `Ok` or the reason the node is filtered out, as kube-scheduler words it.
    fn fits(&self, pod: &Value, node: &Value) -> Result<(), String> {
        let unschedulable =
            json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if node["spec"]["unschedulable"] == true && !tolerated(pod, &unschedulable) {
            return Err("node(s) were unschedulable".to_string());
        }
        for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
            let effect = taint["effect"].as_str().unwrap_or_default();
            if matches!(effect, "NoSchedule" | "NoExecute") && !tolerated(pod, taint) {
                return Err(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint["key"].as_str().unwrap_or_default(),
                    taint["value"].as_str().unwrap_or_default()
                ));
            }
        }
        if !is_ready(node) {
            return Err("node(s) were not ready".to_string());
        }
        let labels = &node["metadata"]["labels"];
        if let Some(selector) = pod["spec"]["nodeSelector"].as_object() {
            if !selector.iter().all(|(k, v)| &labels[k] == v) {
                return Err("node(s) didn't match Pod's node affinity/selector".to_string());
            }
        }
        let allocatable = node["status"]["allocatable"]["pods"]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(110);
        if self.pods_on(meta::name_of(node)).len() >= allocatable {
            return Err("Too many pods".to_string());
        }
        for term in required_anti_affinity(pod) {
            let key = term["topologyKey"].as_str().unwrap_or_default();
            let domain = self.pods_in_domain(node, key);
            if domain.iter().any(|other| term_selects(term, pod, other)) {
                return Err("node(s) didn't match pod anti-affinity rules".to_string());
            }
        }
        for (other_node, others) in &self.on_node {
            for other in others {
                for term in required_anti_affinity(other) {
                    let key = term["topologyKey"].as_str().unwrap_or_default();
                    let domain = node["metadata"]["labels"][key].as_str();
                    if domain.is_some()
                        && self.label_of(other_node, key) == domain
                        && term_selects(term, other, pod)
                    {
                        return Err(
                            "node(s) didn't satisfy existing pods anti-affinity rules".to_string()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn score(&self, pod: &Value, node: &Value) -> Score {
        let mut anti_affinity = 0;
        let preferred = pod["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten();
        for weighted in preferred {
            let term = &weighted["podAffinityTerm"];
            let key = term["topologyKey"].as_str().unwrap_or_default();
            let matching = self
                .pods_in_domain(node, key)
                .iter()
                .filter(|other| term_selects(term, pod, other))
                .count() as i64;
            anti_affinity += weighted["weight"].as_i64().unwrap_or(1) * matching;
        }
        let here = self.pods_on(meta::name_of(node));
        let siblings = here.iter().filter(|other| siblings(pod, other)).count();
        (anti_affinity, siblings, here.len())
    }
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether one of the pod's tolerations tolerates `taint`, as `Toleration.ToleratesTaint`.
fn tolerated(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|toleration| {
            let effect = toleration["effect"].as_str().unwrap_or_default();
            if !effect.is_empty() && taint["effect"].as_str() != Some(effect) {
                return false;
            }
            let key = toleration["key"].as_str().unwrap_or_default();
            let exists = toleration["operator"] == "Exists";
            if key.is_empty() {
                return exists;
            }
            if taint["key"].as_str() != Some(key) {
                return false;
            }
            exists
                || toleration["value"].as_str().unwrap_or_default()
                    == taint["value"].as_str().unwrap_or_default()
        })
}

fn required_anti_affinity(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
}

/// Whether a pod affinity term of `owner` selects `other`: in the term's namespaces (the
/// owner's by default) and matching its label selector (none selects nothing).
fn term_selects(term: &Value, owner: &Value, other: &Value) -> bool {
    let selector = &term["labelSelector"];
    if !selector.is_object() {
        return false;
    }
    let namespace = meta::namespace_of(other);
    let in_namespace = match term["namespaces"].as_array().filter(|n| !n.is_empty()) {
        Some(namespaces) => namespaces.iter().any(|n| n == namespace),
        None => namespace == meta::namespace_of(owner),
    };
    in_namespace
        && LabelSelector::parse(&selector_string(selector))
            .is_ok_and(|s| s.matches(&other["metadata"]["labels"]))
}

/// Pods the default spreading keeps apart: the same controller, or with none the same labels.
fn siblings(pod: &Value, other: &Value) -> bool {
    if meta::namespace_of(pod) != meta::namespace_of(other) {
        return false;
    }
    match (controller_uid(pod), controller_uid(other)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => {
            let labels = &pod["metadata"]["labels"];
            labels.as_object().is_some_and(|l| !l.is_empty())
                && *labels == other["metadata"]["labels"]
        }
        _ => false,
    }
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["uid"]
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pods: usize) -> Value {
        json!({
            "metadata": {"name": name, "labels": {HOSTNAME_LABEL: name}},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"pods": pods.to_string()},
            },
        })
    }

    fn member(name: &str, node: &str) -> Value {
        json!({
            "metadata": {
                "name": name,
                "namespace": "prod",
                "labels": {"app.kubernetes.io/instance": "kv"},
                "ownerReferences": [{"uid": "set-1", "controller": true}],
            },
            "spec": {
                "nodeName": node,
                "affinity": {"podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": HOSTNAME_LABEL,
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "kv"}},
                        },
                    }],
                }},
            },
        })
    }

    fn other(name: &str, node: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "prod", "labels": {"app": "x"}},
               "spec": {"nodeName": node}})
    }

    #[test]
    fn members_spread_to_the_node_with_fewest_of_them_then_least_load_then_name() {
        let nodes = [node("a", 3), node("b", 3), node("c", 3)];
        let pods = [member("kv-0", "a"), other("x", "b")];
        // b and c have no member; c runs nothing.
        assert_eq!(
            choose_node(&member("kv-1", ""), &nodes, &pods).unwrap(),
            "c"
        );
        let pods = [member("kv-0", "a"), member("kv-1", "c"), other("x", "b")];
        assert_eq!(
            choose_node(&member("kv-2", ""), &nodes, &pods).unwrap(),
            "b"
        );
        // With no pods at all, the first name wins.
        assert_eq!(choose_node(&member("kv-0", ""), &nodes, &[]).unwrap(), "a");
    }

    #[test]
    fn a_preferred_anti_affinity_gives_way_when_every_node_has_a_member() {
        let nodes = [node("a", 2), node("b", 1)];
        let pods = [member("kv-0", "a"), member("kv-1", "b")];
        assert_eq!(
            choose_node(&member("kv-2", ""), &nodes, &pods).unwrap(),
            "a"
        );
    }

    #[test]
    fn tainted_full_and_unselected_nodes_are_filtered_with_the_schedulers_message() {
        let mut unreachable = node("a", 3);
        unreachable["spec"]["taints"] = json!([
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        ]);
        unreachable["status"]["conditions"][0]["status"] = json!("Unknown");
        let mut full = node("b", 1);
        full["metadata"]["labels"]["disk"] = json!("nvme");
        let mut elsewhere = node("c", 3);
        elsewhere["metadata"]["labels"]["disk"] = json!("hdd");
        let mut pod = member("kv-1", "");
        pod["spec"]["nodeSelector"] = json!({"disk": "nvme"});
        let message =
            choose_node(&pod, &[unreachable, full, elsewhere], &[other("x", "b")]).unwrap_err();
        assert_eq!(
            message,
            "0/3 nodes are available: 1 Too many pods, \
             1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }."
        );
    }

    #[test]
    fn a_toleration_lets_a_pod_onto_a_tainted_node() {
        let mut dedicated = node("a", 3);
        dedicated["spec"]["taints"] =
            json!([{"key": "dedicated", "value": "kv", "effect": "NoSchedule"}]);
        let mut pod = member("kv-0", "");
        assert!(choose_node(&pod, std::slice::from_ref(&dedicated), &[]).is_err());
        pod["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "kv", "effect": "NoSchedule"}]);
        assert_eq!(choose_node(&pod, &[dedicated], &[]).unwrap(), "a");
    }

    #[test]
    fn a_required_anti_affinity_keeps_members_on_distinct_nodes() {
        let required = |name: &str, node: &str| {
            let mut pod = member(name, node);
            pod["spec"]["affinity"]["podAntiAffinity"] = json!({
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "topologyKey": HOSTNAME_LABEL,
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "kv"}},
                }],
            });
            pod
        };
        let nodes = [node("a", 3), node("b", 3)];
        let pods = [required("kv-0", "a"), required("kv-1", "b")];
        assert_eq!(
            choose_node(&required("kv-2", ""), &nodes, &pods).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
        );
        // A pod without the rule is kept off by the rule of the pods already there.
        let plain = json!({"metadata": {"name": "y", "namespace": "prod",
                                        "labels": {"app.kubernetes.io/instance": "kv"}},
                           "spec": {}});
        assert_eq!(
            choose_node(&plain, &nodes, &pods).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
        );
    }
}
