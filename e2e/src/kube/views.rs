//! Kinds served under two APIs from one storage, as the API server does: `events.k8s.io/v1`
//! Events are `core/v1` Events seen through renamed fields. The operator's event recorder
//! writes the first; `kubectl get events` and `kubectl describe` read the second.
//!
//! Managed fields are kept as written, in the form of whichever API wrote them.

use serde_json::{Map, Value};

use crate::kube::resources::ResourceType;

/// `(core/v1 name, events.k8s.io/v1 name)` of the renamed Event fields.
const EVENT_FIELDS: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn is_events_v1(rt: &ResourceType) -> bool {
    rt.group == "events.k8s.io" && rt.plural == "events"
}

/// `(group, version, plural)` of the type whose storage `rt` is a view of, if it is one.
pub fn storage_of(rt: &ResourceType) -> Option<(&'static str, &'static str, &'static str)> {
    is_events_v1(rt).then_some(("", "v1", "events"))
}

fn rename(object: &Value, api_version: &str, from_core: bool) -> Value {
    let Some(map) = object.as_object() else {
        return object.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = EVENT_FIELDS.iter().find_map(|(core, v1)| {
            if from_core {
                (key == core).then_some(*v1)
            } else {
                (key == v1).then_some(*core)
            }
        });
        out.insert(renamed.unwrap_or(key).to_string(), value.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// A stored object as a client of `rt` sees it.
pub fn to_view(rt: &ResourceType, stored: Value) -> Value {
    if is_events_v1(rt) {
        rename(&stored, "events.k8s.io/v1", true)
    } else {
        stored
    }
}

/// An object a client of `rt` sent, in the form it is stored in.
pub fn from_view(rt: &ResourceType, view: Value) -> Value {
    if is_events_v1(rt) {
        rename(&view, "v1", false)
    } else {
        view
    }
}

/// A field-selector path of `rt` as a path of the stored object.
pub fn field_in_storage(rt: &ResourceType, field: &str) -> String {
    if !is_events_v1(rt) {
        return field.to_string();
    }
    let (head, rest) = field.split_once('.').unwrap_or((field, ""));
    match EVENT_FIELDS.iter().find(|(_, v1)| *v1 == head) {
        Some((core, _)) if rest.is_empty() => core.to_string(),
        Some((core, _)) => format!("{core}.{rest}"),
        None => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resources::builtin_types;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_the_two_apis() {
        let events_v1 = builtin_types()
            .into_iter()
            .find(|t| t.group == "events.k8s.io")
            .unwrap();
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                        "regarding": {"kind": "KVCluster", "name": "kv"}, "note": "scaled",
                        "reason": "Scaled", "reportingController": "ferrokv-operator"});
        let core = from_view(&events_v1, v1.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "kv");
        assert_eq!(core["message"], "scaled");
        assert_eq!(core["reportingComponent"], "ferrokv-operator");
        assert_eq!(to_view(&events_v1, core), v1);
        assert_eq!(
            field_in_storage(&events_v1, "regarding.name"),
            "involvedObject.name"
        );
    }
}
