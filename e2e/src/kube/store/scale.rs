//! The `scale` subresource: the `autoscaling/v1` Scale view of an object's replicas, and
//! writes of it that go back through the object's own validation.

use serde_json::{json, Map, Value};

use super::{Change, Patch, Store, WriteOptions};
use crate::kube::error::{ApiError, FieldError};
use crate::kube::fields::Scope;
use crate::kube::meta;
use crate::kube::resources::ResourceType;

impl Store {
    /// The `autoscaling/v1` Scale of an object whose type has the scale subresource.
    pub fn get_scale(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let object = self.get(rt, namespace, name)?;
        scale_of(rt, &object)
    }

    /// Writes a Scale (PUT), or a patch of it, back into its object's replicas.
    pub fn update_scale(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        change: ScaleChange,
        options: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let paths = rt
            .scale
            .clone()
            .ok_or_else(|| ApiError::not_found(rt.group_resource(), name))?;
        let mut st = self.lock();
        let live = st
            .get(rt, namespace, name)
            .cloned()
            .ok_or_else(|| rt.not_found(name))?;
        let mut scale = scale_of(rt, &live)?;
        match change {
            ScaleChange::Replace(body) => {
                if let Some(version) = body["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|v| !v.is_empty())
                {
                    if Some(version) != live["metadata"]["resourceVersion"].as_str() {
                        return Err(ApiError::modified(rt.group_resource(), name));
                    }
                }
                scale = body;
            }
            ScaleChange::Patch(Patch::Merge(body)) => json_patch::merge(&mut scale, &body),
            ScaleChange::Patch(Patch::Strategic(body)) => {
                crate::kube::patch::strategic_merge(&mut scale, &body)
            }
            ScaleChange::Patch(Patch::Json(body)) => {
                crate::kube::patch::json_patch(&mut scale, body)?
            }
            ScaleChange::Patch(Patch::Apply { .. }) => {
                return Err(ApiError::UnsupportedMediaType(
                    "apply patches of the scale subresource are not supported".into(),
                ))
            }
        }
        let replicas = scale["spec"]["replicas"].clone();
        match replicas.as_i64() {
            Some(r) if r >= 0 => {}
            _ => {
                return Err(ApiError::Invalid {
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    name: name.to_string(),
                    causes: vec![FieldError::invalid(
                        "spec.replicas",
                        replicas,
                        "must be greater than or equal to 0",
                    )],
                })
            }
        }
        let mut object = live.clone();
        set_dotted(&mut object, &paths.spec_replicas, replicas);
        let written = self.write(
            &mut st,
            rt,
            Change {
                old: Some(live),
                new: object,
                scope: Scope::AllButStatus,
                manager: Some(&options.manager),
                by_server: false,
            },
            options,
        )?;
        self.settle(&mut st);
        scale_of(rt, &written.object)
    }
}

/// A change to a Scale: a whole new one (PUT) or a patch.
#[derive(Debug, Clone)]
pub enum ScaleChange {
    Replace(Value),
    Patch(Patch),
}

/// The `autoscaling/v1` Scale view of an object.
fn scale_of(rt: &ResourceType, object: &Value) -> Result<Value, ApiError> {
    let paths = rt
        .scale
        .as_ref()
        .ok_or_else(|| ApiError::not_found(rt.group_resource(), meta::name_of(object)))?;
    let spec_replicas = get_dotted(object, &paths.spec_replicas)
        .cloned()
        .unwrap_or(json!(0));
    let status_replicas = get_dotted(object, &paths.status_replicas)
        .cloned()
        .unwrap_or(json!(0));
    let selector = match &paths.label_selector {
        Some(path) => get_dotted(object, path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => selector_string(&object["spec"]["selector"]),
    };
    let metadata = &object["metadata"];
    let mut scale = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": spec_replicas},
        "status": {"replicas": status_replicas},
    });
    if rt.namespaced {
        scale["metadata"]["namespace"] = metadata["namespace"].clone();
    }
    if !selector.is_empty() {
        scale["status"]["selector"] = json!(selector);
    }
    Ok(scale)
}

/// A `LabelSelector` object as the string form (`a=b,c in (d)`).
pub fn selector_string(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(expressions) = selector["matchExpressions"].as_array() {
        for e in expressions {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            });
        }
    }
    parts.join(",")
}

fn get_dotted<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(object, |node, key| node.get(key))
}

fn set_dotted(object: &mut Value, path: &str, value: Value) {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut node = object;
    for key in &keys[..keys.len() - 1] {
        if !node[*key].is_object() {
            node[*key] = Value::Object(Map::new());
        }
        node = &mut node[*key];
    }
    node[keys[keys.len() - 1]] = value;
}
