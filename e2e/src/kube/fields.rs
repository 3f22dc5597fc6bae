//! Field ownership: `metadata.managedFields` and server-side apply.
//!
//! Every write records which manager set which fields, as the API server does (FieldsV1 trees
//! such as `{"f:spec": {"f:replicas": {}}}`). An apply merges the applied configuration into the
//! object, removes the fields its manager applied before and no longer applies (unless another
//! manager also owns them), and refuses — or with `force`, takes — fields another manager owns
//! with a different value. Lists are atomic (owned and replaced whole), which is what the CRDs
//! here declare; keyed list merging (`x-kubernetes-list-type: map`) is not modelled.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::kube::error::{ApiError, ApplyConflict};

/// A path of object keys: `["spec", "replicas"]`.
pub type FieldPath = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    /// `status`, `scale`, or empty for the main resource.
    pub subresource: String,
    pub fields: BTreeSet<FieldPath>,
}

impl ManagedEntry {
    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(&self.fields),
        });
        if !self.subresource.is_empty() {
            entry["subresource"] = Value::String(self.subresource.clone());
        }
        entry
    }

    fn from_json(value: &Value) -> ManagedEntry {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
        let mut fields = BTreeSet::new();
        collect_fields_v1(&value["fieldsV1"], &mut Vec::new(), &mut fields);
        ManagedEntry {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            time: text("time"),
            subresource: text("subresource"),
            fields,
        }
    }
}

/// The managed-fields entries of an object.
pub fn entries_of(object: &Value) -> Vec<ManagedEntry> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| entries.iter().map(ManagedEntry::from_json).collect())
        .unwrap_or_default()
}

/// Writes entries back, dropping those that own nothing.
pub fn set_entries(object: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(ManagedEntry::to_json)
        .collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("field trees hold objects");
        }
    }
    Value::Object(root)
}

fn collect_fields_v1(node: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let children: Vec<(&String, &Value)> = node
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (key, child) in children {
        prefix.push(key[2..].to_string());
        collect_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

/// Metadata fields that are the server's, never a manager's.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Leaf paths set in `object`, restricted to `scope` (`Some("status")` for the status
/// subresource, `None` for the main resource, which then excludes `status` when `exclude`).
pub fn leaf_paths(object: &Value, scope: Scope) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        if !scope.includes(key) || key == "apiVersion" || key == "kind" {
            continue;
        }
        if key == "metadata" {
            if let Some(metadata) = value.as_object() {
                for (field, child) in metadata {
                    if !SERVER_METADATA.contains(&field.as_str()) {
                        collect_leaves(child, &mut vec![key.clone(), field.clone()], &mut out);
                    }
                }
            }
            continue;
        }
        collect_leaves(value, &mut vec![key.clone()], &mut out);
    }
    out
}

fn collect_leaves(value: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                prefix.push(key.clone());
                collect_leaves(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Null => {}
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Whole,
    /// Everything but `status` (the main resource of a kind with a status subresource).
    AllButStatus,
    /// `status` only (and metadata through the server).
    Status,
}

impl Scope {
    pub fn includes(self, top_level_key: &str) -> bool {
        match self {
            Scope::Whole => true,
            Scope::AllButStatus => top_level_key != "status",
            Scope::Status => top_level_key == "status",
        }
    }

    pub fn subresource(self) -> &'static str {
        if self == Scope::Status {
            "status"
        } else {
            ""
        }
    }
}

pub fn get_path<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |node, key| node.get(key))
}

/// Removes the value at `path`, then any parent maps left empty by it.
pub fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = &mut *object;
    for key in parents {
        match node.get_mut(key) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
    if !parents.is_empty()
        && get_path(object, parents).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove_path(object, parents);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Merges an applied configuration into an object: maps recursively, everything else
/// replaced; `null` removes.
pub fn merge_applied(object: &mut Value, applied: &Value) {
    match (object, applied) {
        (Value::Object(target), Value::Object(source)) => {
            for (key, value) in source {
                if value.is_null() {
                    target.remove(key);
                } else if let Some(existing) = target.get_mut(key) {
                    if existing.is_object() && value.is_object() {
                        merge_applied(existing, value);
                    } else {
                        *existing = value.clone();
                    }
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
        (object, applied) => *object = applied.clone(),
    }
}

/// A server-side apply of `applied` by `manager` onto `live` (the stored object, already
/// holding its managedFields), within `scope`. Returns the new object with managedFields
/// updated, or the conflicts when not forced.
pub fn apply(
    live: &Value,
    applied: &Value,
    manager: &str,
    scope: Scope,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let applied_paths = leaf_paths(applied, scope);
    let mut entries = entries_of(live);
    let subresource = scope.subresource();
    let api_version = applied["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let is_ours = |e: &ManagedEntry| {
        e.manager == manager && e.operation == "Apply" && e.subresource == subresource
    };

    let mut conflicts = Vec::new();
    for entry in entries.iter_mut().filter(|e| !is_ours(e)) {
        let mut lost = Vec::new();
        for owned in &entry.fields {
            for path in &applied_paths {
                if !overlaps(owned, path) {
                    continue;
                }
                let shorter = if owned.len() <= path.len() {
                    owned
                } else {
                    path
                };
                if get_path(live, shorter) != get_path(applied, shorter) {
                    if force {
                        lost.push(owned.clone());
                    } else {
                        conflicts.push(ApplyConflict {
                            manager: entry.manager.clone(),
                            api_version: entry.api_version.clone(),
                            field: format!(".{}", shorter.join(".")),
                        });
                    }
                }
            }
        }
        for path in lost {
            entry.fields.remove(&path);
        }
    }
    if !conflicts.is_empty() {
        conflicts.dedup();
        return Err(ApiError::ApplyConflict { conflicts });
    }

    let previously: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| is_ours(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut object = live.clone();
    for dropped in previously.difference(&applied_paths) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !is_ours(e))
            .any(|e| e.fields.iter().any(|f| overlaps(f, dropped)));
        if !owned_elsewhere {
            remove_path(&mut object, dropped);
        }
    }
    let mut scoped = Map::new();
    if let Some(map) = applied.as_object() {
        for (key, value) in map {
            if scope.includes(key) && key != "apiVersion" && key != "kind" {
                scoped.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(metadata) = scoped.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|k, _| !SERVER_METADATA.contains(&k.as_str()));
    }
    merge_applied(&mut object, &Value::Object(scoped));

    match entries.iter_mut().find(|e| is_ours(e)) {
        Some(entry) => {
            if entry.fields != applied_paths || entry.api_version != api_version {
                entry.fields = applied_paths;
                entry.api_version = api_version;
                entry.time = now.to_string();
            }
        }
        None => entries.push(ManagedEntry {
            manager: manager.to_string(),
            operation: "Apply".to_string(),
            api_version,
            time: now.to_string(),
            subresource: subresource.to_string(),
            fields: applied_paths,
        }),
    }
    set_entries(&mut object, &entries);
    Ok(object)
}

/// Records an update (PUT or a non-apply patch) by `manager`: it owns what it changed, others
/// lose what it changed or removed. `new` is the object about to be stored.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope, now: &str) {
    let mut entries = old.map(entries_of).unwrap_or_default();
    let old_paths = old.map(|o| leaf_paths(o, scope)).unwrap_or_default();
    let new_paths = leaf_paths(new, scope);
    let changed: Vec<FieldPath> = new_paths
        .iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .cloned()
        .collect();
    let removed: Vec<FieldPath> = old_paths.difference(&new_paths).cloned().collect();
    for entry in &mut entries {
        entry
            .fields
            .retain(|f| !removed.iter().any(|r| overlaps(f, r)));
        if entry.manager != manager || entry.operation != "Update" {
            entry
                .fields
                .retain(|f| !changed.iter().any(|c| overlaps(f, c)));
        }
    }
    if !changed.is_empty() {
        let subresource = scope.subresource();
        let api_version = new["apiVersion"].as_str().unwrap_or_default().to_string();
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".to_string(),
                api_version,
                time: now.to_string(),
                subresource: subresource.to_string(),
                fields: changed.into_iter().collect(),
            }),
        }
    }
    set_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "kv", "labels": {"a": "1"}},
               "spec": {"replicas": 3, "serviceName": "kv-peer"}})
    }

    #[test]
    fn first_apply_owns_every_applied_field() {
        let applied = object();
        let result = apply(
            &json!({"metadata": {}}),
            &applied,
            "op",
            Scope::AllButStatus,
            false,
            "t",
        )
        .unwrap();
        let entry = &result["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "op");
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:replicas": {}, "f:serviceName": {}}})
        );
        assert_eq!(result["spec"]["replicas"], 3);
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let first = apply(
            &json!({"metadata": {}}),
            &object(),
            "op",
            Scope::Whole,
            false,
            "t",
        )
        .unwrap();
        let mut second = object();
        second["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceName");
        let result = apply(&first, &second, "op", Scope::Whole, false, "t").unwrap();
        assert!(result["spec"].get("serviceName").is_none());
        assert_eq!(result["spec"]["replicas"], 3);
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let empty = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {}});
        let mut live = apply(&empty, &object(), "op", Scope::Whole, false, "t").unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&live), &mut scaled, "kubectl", Scope::Whole, "t");
        live = scaled;
        let error = apply(&live, &object(), "op", Scope::Whole, false, "t").unwrap_err();
        assert_eq!(
            error.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
        );
        let forced = apply(&live, &object(), "op", Scope::Whole, true, "t").unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["op"]);
    }

    #[test]
    fn removing_a_path_prunes_emptied_parents() {
        let mut value = json!({"a": {"b": {"c": 1}}, "d": 2});
        remove_path(&mut value, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(value, json!({"d": 2}));
    }
}
