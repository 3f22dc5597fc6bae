//! Strategic merge patch (`application/strategic-merge-patch+json`), which kubectl sends for
//! built-in kinds: a JSON merge patch in which lists of the built-in types that carry a
//! `patchMergeKey` (containers by `name`, conditions by `type`, …) merge element by element,
//! and the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/…` and `$setElementOrder/…`
//! directives apply. Custom resources do not take it (the store answers 415, as the API server
//! does). RFC 7386 merge and RFC 6902 JSON patches come from the `json-patch` crate.

use serde_json::{Map, Value};

use crate::kube::error::ApiError;

/// Applies an RFC 6902 JSON patch as the API server does: all or nothing, and a `test` of
/// `null` passes on a path that does not exist (apimachinery's JSON patch library treats a
/// missing value as null; kube-rs's finalizer helper relies on it).
pub fn json_patch(target: &mut Value, body: Value) -> Result<(), ApiError> {
    let operations: json_patch::Patch = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
    let mut patched = target.clone();
    for operation in operations.0 {
        if let json_patch::PatchOperation::Test(test) = &operation {
            if test.value.is_null() && test.path.resolve(&patched).is_err() {
                continue;
            }
        }
        json_patch::patch(&mut patched, &[operation]).map_err(|e| {
            ApiError::InvalidPatch(format!(
                "the server rejected our request due to an error in our request: {e}"
            ))
        })?;
    }
    *target = patched;
    Ok(())
}

/// The merge key of a list field of the built-in types, by field name and item shape; `None`
/// for lists that are replaced whole.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |key: &str| items.iter().any(|i| i.get(key).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "volumeClaimTemplates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" if has("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "taints" => Some("key"),
        _ => None,
    }
}

/// Primitive lists whose patch strategy is `merge` (a union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if key == "$patch" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if key == "$retainKeys" {
            if let Some(keep) = value.as_array() {
                map.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)));
            }
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (map.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(child)
                if child.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                map.remove(key);
            }
            Value::Object(_) => {
                strategic_merge(map.entry(key.clone()).or_insert(Value::Null), value)
            }
            Value::Array(items) => {
                let merged = match map.get(key) {
                    Some(Value::Array(existing)) => merge_list(key, existing, items),
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect(),
                };
                map.insert(key.clone(), Value::Array(merged));
            }
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_list(field: &str, existing: &[Value], patch: &[Value]) -> Vec<Value> {
    if patch.iter().all(|i| !i.is_object()) {
        if merges_primitives(field) {
            let mut merged = existing.to_vec();
            for item in patch {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            return merged;
        }
        return patch.to_vec();
    }
    let Some(key) = merge_key(field, patch) else {
        return patch.to_vec();
    };
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
    }
    let mut merged = existing.to_vec();
    for item in patch {
        let id = item.get(key);
        let position = merged.iter().position(|e| e.get(key) == id && id.is_some());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(index), true) => {
                merged.remove(index);
            }
            (None, true) => {}
            (Some(index), false) => strategic_merge(&mut merged[index], item),
            (None, false) => merged.push(item.clone()),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_of_null_passes_on_a_missing_path() {
        let mut object = json!({"metadata": {"name": "a"}});
        json_patch(
            &mut object,
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .unwrap();
        assert_eq!(object["metadata"]["finalizers"], json!(["f"]));
        let failed = json_patch(
            &mut object,
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "remove", "path": "/metadata/finalizers"}]),
        );
        assert_eq!(failed.unwrap_err().code(), 422);
        assert_eq!(object["metadata"]["finalizers"], json!(["f"]));
    }

    #[test]
    fn containers_merge_by_name_and_scalars_replace() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}}),
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}])
        );
    }

    #[test]
    fn directives_delete_and_replace() {
        let mut object = json!({"metadata": {"finalizers": ["x"], "labels": {"a": "1", "b": "2"}},
                                "spec": {"containers": [{"name": "a"}, {"name": "b"}], "args": ["1"]}});
        strategic_merge(
            &mut object,
            &json!({"metadata": {"finalizers": ["y"], "labels": {"a": null}},
                    "spec": {"containers": [{"name": "a", "$patch": "delete"}], "args": ["2"],
                             "$setElementOrder/containers": [{"name": "b"}]}}),
        );
        assert_eq!(object["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(object["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(object["spec"]["containers"], json!([{"name": "b"}]));
        assert_eq!(object["spec"]["args"], json!(["2"]));
    }
}
