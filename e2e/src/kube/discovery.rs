//! Discovery documents: `/version`, `/api`, `/apis`, the resource list of each group version,
//! and the aggregated discovery (`apidiscovery.k8s.io/v2`) kubectl asks for first. All are
//! built from the store's current resource types, so a CRD shows up as soon as it is
//! established.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::kube::resources::ResourceType;

/// The Kubernetes version the server claims; kubectl 1.32 is within the supported skew.
pub const GIT_VERSION: &str = "v1.32.0-ferrokv-hermetic";

/// `Content-Type` of aggregated discovery responses.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    })
}

/// Group → versions, core group excluded, in a stable order.
fn groups(types: &[Arc<ResourceType>]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let versions = groups.entry(t.group.clone()).or_default();
        if !versions.contains(&t.version) {
            versions.push(t.version.clone());
        }
    }
    groups
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    })
}

/// `/apis`.
pub fn group_list(types: &[Arc<ResourceType>]) -> Value {
    let groups: Vec<Value> = groups(types)
        .iter()
        .map(|(group, versions)| group_json(group, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`, or `None` when no type is in the group.
pub fn group(types: &[Arc<ResourceType>], group: &str) -> Option<Value> {
    let groups = groups(types);
    let versions = groups.get(group)?;
    let mut document = group_json(group, versions);
    document["kind"] = json!("APIGroup");
    document["apiVersion"] = json!("v1");
    Some(document)
}

/// `/api/v1` or `/apis/GROUP/VERSION`, or `None` when nothing is served there.
pub fn resource_list(types: &[Arc<ResourceType>], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Arc<ResourceType>> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in served {
        let mut entry = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            entry["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            entry["categories"] = json!(t.categories);
        }
        resources.push(entry);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The aggregated discovery document of `/api` (`core`) or `/apis`.
pub fn aggregated(types: &[Arc<ResourceType>], core: bool) -> Value {
    let mut by_group: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for t in types.iter().filter(|t| t.group.is_empty() == core) {
        let kind = |kind: &str, group: &str, version: &str| json!({"group": group, "version": version, "kind": kind});
        let mut subresources = Vec::new();
        if t.status {
            subresources.push(json!({
                "subresource": "status",
                "responseKind": kind(&t.kind, &t.group, &t.version),
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale.is_some() {
            subresources.push(json!({
                "subresource": "scale",
                "responseKind": kind("Scale", "autoscaling", "v1"),
                "verbs": ["get", "patch", "update"],
            }));
        }
        let mut resource = json!({
            "resource": t.plural,
            "responseKind": kind(&t.kind, &t.group, &t.version),
            "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": t.singular,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            resource["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            resource["categories"] = json!(t.categories);
        }
        if !subresources.is_empty() {
            resource["subresources"] = json!(subresources);
        }
        by_group
            .entry(t.group.clone())
            .or_default()
            .entry(t.version.clone())
            .or_default()
            .push(resource);
    }
    let items: Vec<Value> = by_group
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|(version, resources)| {
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resources::builtin_types;

    fn types() -> Vec<Arc<ResourceType>> {
        builtin_types().into_iter().map(Arc::new).collect()
    }

    #[test]
    fn apps_v1_lists_statefulsets_with_status_and_scale() {
        let list = resource_list(&types(), "apps", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for name in ["statefulsets", "statefulsets/status", "statefulsets/scale"] {
            assert!(names.contains(&name), "{names:?}");
        }
    }

    #[test]
    fn aggregated_core_holds_only_the_core_group() {
        let document = aggregated(&types(), true);
        let items = document["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "");
        assert!(group_list(&types())["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["name"] != ""));
    }
}
