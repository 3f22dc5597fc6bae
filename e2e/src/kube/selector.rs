//! Label selectors (`app=kv,tier in (a,b),!legacy`) and field selectors
//! (`metadata.name=kv-0,spec.nodeName!=n1`) of list and watch requests.

use serde_json::Value;

use crate::kube::error::ApiError;

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        let bad = |why: &str| {
            ApiError::BadRequest(format!("unable to parse requirement: {why}: {text:?}"))
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((key, rest)) = split_set_operator(part, " notin ") {
                Requirement::NotIn(key, parse_set(&rest).ok_or_else(|| bad("bad set"))?)
            } else if let Some((key, rest)) = split_set_operator(part, " in ") {
                Requirement::In(key, parse_set(&rest).ok_or_else(|| bad("bad set"))?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else {
                Requirement::Exists(part.to_string())
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these labels (`metadata.labels`) is selected.
    pub fn matches(&self, labels: &Value) -> bool {
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, set) => label(k).is_some_and(|l| set.iter().any(|s| s == l)),
            Requirement::NotIn(k, set) => !label(k).is_some_and(|l| set.iter().any(|s| s == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

fn split_set_operator(part: &str, operator: &str) -> Option<(String, String)> {
    let (key, rest) = part.split_once(operator)?;
    Some((key.trim().to_string(), rest.trim().to_string()))
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// A parsed `fieldSelector`: equality and inequality on the fields the API server indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses a selector for a resource of `kind`, refusing fields a real API server would
    /// refuse for it (every kind has `metadata.name` and `metadata.namespace`).
    pub fn parse(text: &str, kind: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !field_supported(kind, field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// The same selector with each field path renamed, e.g. from a view to its storage.
    pub fn renamed(&self, rename: impl Fn(&str) -> String) -> FieldSelector {
        FieldSelector {
            terms: self
                .terms
                .iter()
                .map(|(field, equal, value)| (rename(field), *equal, value.clone()))
                .collect(),
        }
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let mut current = object;
            for segment in field.split('.') {
                current = &current[segment];
            }
            let actual = match current {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

fn field_supported(kind: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match kind {
        "Pod" => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        "Event" => {
            field.starts_with("involvedObject.")
                || field.starts_with("regarding.")
                || matches!(field, "reason" | "type" | "source" | "reportingComponent")
        }
        "Node" => field == "spec.unschedulable",
        "Namespace" => field == "status.phase",
        "Secret" => field == "type",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let labels = json!({"app": "kv", "tier": "db"});
        let selects = |s: &str| LabelSelector::parse(s).unwrap().matches(&labels);
        assert!(selects("app=kv"));
        assert!(selects("app==kv,tier"));
        assert!(selects("tier in (db, cache),!legacy"));
        assert!(!selects("tier notin (db)"));
        assert!(!selects("app!=kv"));
        assert!(selects(""));
        assert!(!selects("missing"));
    }

    #[test]
    fn field_selector_on_name_and_node() {
        let pod = json!({"metadata": {"name": "kv-0"}, "spec": {"nodeName": "n1"}});
        let selects = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&pod);
        assert!(selects("metadata.name=kv-0"));
        assert!(selects("spec.nodeName!=n2"));
        assert!(!selects("metadata.name=kv-1"));
        assert!(FieldSelector::parse("spec.replicas=1", "StatefulSet").is_err());
    }
}
