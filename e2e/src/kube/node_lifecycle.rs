//! [`NodeLifecycleController`]: the part of kube-controller-manager that notices nodes whose
//! kubelet stopped reporting, in-process, reading and writing the [`Store`] directly.
//!
//! Like the real one, it remembers when it last saw each Node's Ready heartbeat
//! (`lastHeartbeatTime`) change, by its own clock. When that is longer ago than the grace period
//! (kube-controller-manager's `--node-monitor-grace-period`, 40 s by default), every condition
//! of the Node becomes `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting node
//! status."). The taints follow the Ready condition on every pass: `Unknown` gets
//! `node.kubernetes.io/unreachable`, `False` gets `node.kubernetes.io/not-ready`, each with the
//! effects NoSchedule and NoExecute, and `True` neither; the taints are written before the
//! condition, so the scheduler never sees an unready node without them. While a node is not
//! Ready, the Ready condition of every pod on it is set to False, as `MarkPodsNotReady` does
//! (ContainersReady and the container statuses stay as the kubelet last wrote them).
//!
//! Not here: taint-based eviction — nothing deletes the pods of an unreachable node, whatever
//! their tolerations; they stay bound to it until someone force-deletes them (a graceful delete
//! leaves them Terminating, since no kubelet finishes it). No Leases (the heartbeat is the Ready
//! condition's), no zones or eviction rate limits, no startup grace period for nodes that never
//! reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube::background::Background;
use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::store::{ListOptions, Patch, Store, WriteOptions};

/// Field manager of every write the controller makes.
const MANAGER: &str = "node-controller";

/// Taint of a node whose kubelet stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Taint of a node whose kubelet reports it not ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// A running controller; stops when dropped.
pub(crate) struct NodeLifecycleController {
    _task: Background,
}

impl NodeLifecycleController {
    /// Starts the controller in the current tokio runtime; `grace` is how long a node may go
    /// without a heartbeat before it is marked `Unknown`.
    pub fn start(store: Arc<Store>, grace: Duration) -> NodeLifecycleController {
        NodeLifecycleController {
            _task: Background::spawn(run(store, grace)),
        }
    }
}

struct Types {
    nodes: Arc<ResourceType>,
    pods: Arc<ResourceType>,
}

/// The last heartbeat seen of a node, and when it was first seen.
struct Observed {
    heartbeat: Value,
    at: Instant,
}

async fn run(store: Arc<Store>, grace: Duration) {
    let types = Types {
        nodes: store.resource_type("", "v1", "nodes").expect("built-in"),
        pods: store.resource_type("", "v1", "pods").expect("built-in"),
    };
    // The real ratio of node-monitor-period (5 s) to the grace period (40 s).
    let period = (grace / 8).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut observed = BTreeMap::new();
    loop {
        monitor(&store, &types, grace, &mut observed);
        tokio::time::sleep(period).await;
    }
}

fn options() -> WriteOptions {
    WriteOptions {
        manager: MANAGER.into(),
        ..WriteOptions::default()
    }
}

/// One pass over every node: heartbeats, then taints, then the pods of nodes not Ready.
fn monitor(
    store: &Store,
    types: &Types,
    grace: Duration,
    observed: &mut BTreeMap<String, Observed>,
) {
    let Ok(nodes) = store.list(&types.nodes, None, &ListOptions::default()) else {
        return;
    };
    observed.retain(|name, _| nodes.items.iter().any(|n| meta::name_of(n) == name));
    for node in &nodes.items {
        let name = meta::name_of(node);
        let heartbeat = ready_condition(node)
            .map(|c| c["lastHeartbeatTime"].clone())
            .unwrap_or(Value::Null);
        let seen = observed.entry(name.to_string()).or_insert(Observed {
            heartbeat: heartbeat.clone(),
            at: Instant::now(),
        });
        if seen.heartbeat != heartbeat {
            *seen = Observed {
                heartbeat,
                at: Instant::now(),
            };
        }
        let mut ready = ready_condition(node)
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
            .to_string();
        let silent = seen.at.elapsed() > grace;
        if silent && ready != "Unknown" {
            ready = "Unknown".to_string();
            if let Err(error) = write_taints(store, types, node, &ready) {
                eprintln!("node-controller: tainting {name}: {error}");
                continue;
            }
            let conditions = unknown_conditions(node, &meta::now());
            let written = store.patch(
                &types.nodes,
                "",
                name,
                Patch::Merge(json!({"status": {"conditions": conditions}})),
                true,
                &options(),
            );
            if let Err(error) = written {
                eprintln!("node-controller: marking {name} unknown: {error}");
                continue;
            }
        } else if let Err(error) = write_taints(store, types, node, &ready) {
            eprintln!("node-controller: tainting {name}: {error}");
        }
        if ready != "True" {
            mark_pods_not_ready(store, types, name);
        }
    }
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The node's conditions once its kubelet is presumed gone: all `Unknown`, heartbeats kept.
fn unknown_conditions(node: &Value, now: &str) -> Vec<Value> {
    let mut conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for condition in &mut conditions {
        if condition["status"] != "Unknown" {
            condition["status"] = json!("Unknown");
            condition["reason"] = json!("NodeStatusUnknown");
            condition["message"] = json!("Kubelet stopped posting node status.");
            condition["lastTransitionTime"] = json!(now);
        }
    }
    if !conditions.iter().any(|c| c["type"] == "Ready") {
        conditions.push(json!({
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusNeverUpdated",
            "message": "Kubelet never posted node status.",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }));
    }
    conditions
}

/// The node's taints for a Ready condition of status `ready`: the unreachable or not-ready
/// taints it calls for (kept with their `timeAdded` when already there), the others untouched.
fn taints_for(current: &[Value], ready: &str, now: &str) -> Vec<Value> {
    let wanted = match ready {
        "Unknown" => Some(UNREACHABLE_TAINT),
        "False" => Some(NOT_READY_TAINT),
        _ => None,
    };
    let mut taints: Vec<Value> = current
        .iter()
        .filter(|t| {
            let key = t["key"].as_str().unwrap_or_default();
            !matches!(key, UNREACHABLE_TAINT | NOT_READY_TAINT) || Some(key) == wanted
        })
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints
                .iter()
                .any(|t| t["key"] == key && t["effect"] == effect)
            {
                taints.push(json!({"key": key, "effect": effect, "timeAdded": now}));
            }
        }
    }
    taints
}

fn write_taints(
    store: &Store,
    types: &Types,
    node: &Value,
    ready: &str,
) -> Result<(), crate::kube::error::ApiError> {
    let current: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let taints = taints_for(&current, ready, &meta::now());
    if taints == current {
        return Ok(());
    }
    store.patch(
        &types.nodes,
        "",
        meta::name_of(node),
        Patch::Merge(json!({"spec": {"taints": taints}})),
        false,
        &options(),
    )?;
    Ok(())
}

/// `MarkPodsNotReady`: the Ready condition of every pod on the node becomes False.
fn mark_pods_not_ready(store: &Store, types: &Types, node: &str) {
    let Ok(pods) = store.list(&types.pods, None, &ListOptions::default()) else {
        return;
    };
    for mut pod in pods.items {
        if pod["spec"]["nodeName"] != node {
            continue;
        }
        let Some(conditions) = pod["status"]["conditions"].as_array_mut() else {
            continue;
        };
        let Some(ready) = conditions
            .iter_mut()
            .find(|c| c["type"] == "Ready" && c["status"] != "False")
        else {
            continue;
        };
        ready["status"] = json!("False");
        ready["lastTransitionTime"] = json!(meta::now());
        let namespace = meta::namespace_of(&pod).to_string();
        let name = meta::name_of(&pod).to_string();
        if let Err(error) = store.update(&types.pods, &namespace, &name, pod, true, &options()) {
            eprintln!("node-controller: marking {namespace}/{name} not ready: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_has_every_condition_unknown_with_its_last_heartbeat() {
        let node = json!({"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": "2025-01-01T00:00:00Z",
            "lastTransitionTime": "2024-12-31T00:00:00Z",
        }]}});
        let conditions = unknown_conditions(&node, "2025-01-01T00:01:00Z");
        assert_eq!(
            conditions,
            [json!({
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": "2025-01-01T00:00:00Z",
                "lastTransitionTime": "2025-01-01T00:01:00Z",
            })]
        );
    }

    #[test]
    fn taints_follow_the_ready_condition_and_leave_others_alone() {
        let dedicated = json!({"key": "dedicated", "value": "kv", "effect": "NoSchedule"});
        let unreachable = taints_for(std::slice::from_ref(&dedicated), "Unknown", "T1");
        assert_eq!(
            unreachable,
            [
                dedicated.clone(),
                json!({"key": UNREACHABLE_TAINT, "effect": "NoSchedule", "timeAdded": "T1"}),
                json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": "T1"}),
            ]
        );
        // Kept as they were while the node stays unreachable.
        assert_eq!(taints_for(&unreachable, "Unknown", "T2"), unreachable);
        let not_ready = taints_for(&unreachable, "False", "T3");
        assert_eq!(not_ready[1]["key"], NOT_READY_TAINT);
        assert_eq!(not_ready.len(), 3);
        assert_eq!(taints_for(&not_ready, "True", "T4"), [dedicated]);
    }
}
