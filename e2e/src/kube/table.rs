//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with a CRD's
//! `additionalPrinterColumns` (or Name and Age for kinds without them).

use serde_json::{json, Value};

use crate::kube::meta;
use crate::kube::resources::{PrinterColumn, ResourceType};

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(text: Option<&str>) -> IncludeObject {
        match text {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn columns(rt: &ResourceType) -> Vec<PrinterColumn> {
    let name = PrinterColumn {
        name: "Name".into(),
        type_: "string".into(),
        format: "name".into(),
        description: "Name must be unique within a namespace.".into(),
        priority: 0,
        json_path: ".metadata.name".into(),
    };
    let age = PrinterColumn {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this \
                      object was created."
            .into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    };
    let mut columns = vec![name];
    if rt.printer_columns.is_empty() {
        columns.push(age);
    } else {
        columns.extend(rt.printer_columns.iter().cloned());
    }
    columns
}

/// A Table of `objects`; `revision` is the list's resourceVersion.
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    revision: Option<u64>,
    include: IncludeObject,
) -> Value {
    let columns = columns(rt);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = columns.iter().map(|c| cell(c, object)).collect();
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object["metadata"],
                    });
                }
                IncludeObject::Object => row["object"] = object.clone(),
            }
            row
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    });
    if let Some(revision) = revision {
        table["metadata"]["resourceVersion"] = json!(revision.to_string());
    }
    table
}

fn cell(column: &PrinterColumn, object: &Value) -> Value {
    let value = column
        .json_path
        .trim_start_matches('.')
        .split('.')
        .try_fold(object, |node, key| node.get(key))
        .cloned()
        .unwrap_or(Value::Null);
    if column.type_ == "date" {
        if let Some(seconds) = value.as_str().and_then(meta::seconds_since) {
            return json!(human_duration(seconds));
        }
    }
    value
}

/// A duration as kubectl shows ages: `45s`, `3m2s`, `2h5m`, `3d4h`, `2y10d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    let days = (hours / 24) % 365;
    if hours < 24 * 365 * 8 && days != 0 {
        return format!("{years}y{days}d");
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 300), "3h5m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
    }
}
