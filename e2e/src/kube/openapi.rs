//! The OpenAPI v3 documents kubectl reads before `apply`: an index of group versions
//! (`/openapi/v3`) and, for each, the paths of its resources with the query parameters their
//! operations take. kubectl looks for `fieldValidation` on a kind's PATCH operation to learn that
//! the server validates fields itself; without it, kubectl refuses to apply.
//!
//! Custom resources' schemas are published under `components.schemas` (so `kubectl explain`
//! works for them); built-in kinds carry no schema here, and kubectl uses its compiled-in types
//! for them.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::kube::resources::ResourceType;

/// `apis/ferrokv.io/v1alpha1`, or `api/v1`: the key of a group version in the index.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`.
pub fn index(types: &[Arc<ResourceType>]) -> Value {
    let mut paths = Map::new();
    for t in types {
        let path = gv_path(&t.group, &t.version);
        let hash = document_hash(types, &t.group, &t.version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// A stable hash of a group version's document, so clients' caches notice a changed CRD.
fn document_hash(types: &[Arc<ResourceType>], group: &str, version: &str) -> String {
    let text = group_version(types, group, version)
        .map(|d| d.to_string())
        .unwrap_or_default();
    // FNV-1a: stable across runs, unlike the standard library's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

fn parameter(name: &str, type_: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": type_, "uniqueItems": true}})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`.
pub fn group_version(types: &[Arc<ResourceType>], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Arc<ResourceType>> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let prefix = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in served {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let schema_name = format!(
            "{}.{}.{}",
            if t.group.is_empty() { "core" } else { &t.group },
            t.version,
            t.kind
        );
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let response = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        let write_parameters = vec![
            parameter("dryRun", "string"),
            parameter("fieldManager", "string"),
            parameter("fieldValidation", "string"),
        ];
        let mut patch_parameters = write_parameters.clone();
        patch_parameters.push(parameter("force", "boolean"));
        let operation = |verb: &str, parameters: &[Value]| {
            json!({
                "operationId": format!("{verb}{}", t.kind),
                "parameters": parameters,
                "responses": response,
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        paths.insert(
            item.clone(),
            json!({
                "get": operation("get", &[]),
                "put": operation("put", &write_parameters),
                "patch": operation("patch", &patch_parameters),
                "delete": operation("delete", &[parameter("dryRun", "string")]),
            }),
        );
        let collection = item.trim_end_matches("/{name}").to_string();
        paths.insert(
            collection,
            json!({
                "get": operation("list", &[parameter("labelSelector", "string"), parameter("watch", "boolean")]),
                "post": operation("post", &write_parameters),
            }),
        );
        if t.status {
            paths.insert(
                format!("{item}/status"),
                json!({"patch": operation("patch", &patch_parameters), "put": operation("put", &write_parameters)}),
            );
        }
        let mut schema = t.schema_document.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::kube::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
