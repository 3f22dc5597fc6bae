//! Structural schemas of custom resources: compiled from a CRD's `openAPIV3Schema`, then used on
//! every write to prune unknown fields, apply defaults, validate types and bounds, and evaluate
//! the `x-kubernetes-validations` rules (see [`crate::kube::cel`]).
//!
//! Error texts follow the API server's (`spec.replicas in body should be less than or equal to
//! 9`), so a test can assert what kubectl shows a user.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::kube::cel::Program;
use crate::kube::error::{FieldError, FieldErrorKind};

/// One node of a structural schema.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// `object`, `array`, `string`, `integer`, `number`, `boolean`; empty when unset.
    pub type_: String,
    pub nullable: bool,
    pub properties: BTreeMap<String, Schema>,
    pub additional_properties: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enum_: Option<Vec<Value>>,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub pattern: Option<String>,
    pub default: Option<Value>,
    pub int_or_string: bool,
    pub preserve_unknown_fields: bool,
    pub embedded_resource: bool,
    pub rules: Vec<Rule>,
}

/// One `x-kubernetes-validations` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: String,
    pub program: Program,
    pub message: Option<String>,
    /// `FieldValueInvalid` unless the rule says otherwise.
    pub reason: String,
    /// A relative path (`.spec.x`) the error is reported at instead of the rule's node.
    pub field_path: Option<String>,
}

/// JSON Schema keywords this server does not enforce; a CRD using them is refused rather than
/// served with a check silently missing.
const UNSUPPORTED_KEYWORDS: [&str; 5] = ["allOf", "anyOf", "oneOf", "not", "$ref"];

impl Schema {
    /// Compiles a schema; `path` names it in errors, e.g.
    /// `spec.versions[0].schema.openAPIV3Schema`.
    pub fn compile(value: &Value, path: &str) -> Result<Schema, Vec<FieldError>> {
        let mut errors = Vec::new();
        let schema = compile_node(value, path, &mut errors);
        if errors.is_empty() {
            Ok(schema)
        } else {
            Err(errors)
        }
    }

    /// Prunes fields the schema does not know (returning their paths, for `fieldValidation`)
    /// and fills in defaults, as the API server does before validating a custom resource.
    /// `apiVersion`, `kind` and `metadata` at the root are the server's, not the schema's.
    pub fn prune_and_default(&self, object: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        if let Value::Object(map) = object {
            for (key, value) in map.iter_mut() {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(schema) = self.properties.get(key) {
                    schema.prune_and_default_at(value, key, &mut pruned);
                }
            }
            if !self.preserve_unknown_fields {
                map.retain(|key, _| {
                    let known = matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                        || self.properties.contains_key(key);
                    if !known {
                        pruned.push(key.clone());
                    }
                    known
                });
            }
            self.apply_defaults(map);
        }
        pruned
    }

    fn prune_and_default_at(&self, value: &mut Value, path: &str, pruned: &mut Vec<String>) {
        match value {
            Value::Object(map) if !self.embedded_resource || !self.properties.is_empty() => {
                if !self.properties.is_empty() || self.additional_properties.is_none() {
                    for (key, child) in map.iter_mut() {
                        if let Some(schema) = self.properties.get(key) {
                            schema.prune_and_default_at(child, &format!("{path}.{key}"), pruned);
                        }
                    }
                    if !self.preserve_unknown_fields && self.additional_properties.is_none() {
                        map.retain(|key, _| {
                            let known = self.properties.contains_key(key);
                            if !known {
                                pruned.push(format!("{path}.{key}"));
                            }
                            known
                        });
                    }
                }
                if let Some(schema) = &self.additional_properties {
                    for (key, child) in map.iter_mut() {
                        schema.prune_and_default_at(child, &format!("{path}.{key}"), pruned);
                    }
                }
                self.apply_defaults(map);
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (index, item) in items.iter_mut().enumerate() {
                        schema.prune_and_default_at(item, &format!("{path}[{index}]"), pruned);
                    }
                }
            }
            _ => {}
        }
    }

    fn apply_defaults(&self, map: &mut Map<String, Value>) {
        for (key, schema) in &self.properties {
            let Some(default) = &schema.default else {
                continue;
            };
            let missing = match map.get(key) {
                None => true,
                // A null where null is not allowed takes the default, as in the API server.
                Some(Value::Null) => !schema.nullable,
                Some(_) => false,
            };
            if missing {
                let mut value = default.clone();
                let mut ignored = Vec::new();
                schema.prune_and_default_at(&mut value, key, &mut ignored);
                map.insert(key.clone(), value);
            }
        }
    }

    /// Checks the object (without `metadata`) against the schema and its rules; `old` is the
    /// stored object on updates, for transition rules.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Value::Object(map) = object {
            for (key, schema) in &self.properties {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match map.get(key) {
                    Some(value) => {
                        schema.validate_at(value, old.and_then(|o| o.get(key)), key, &mut errors)
                    }
                    None if self.required.contains(key) => {
                        errors.push(FieldError::required(key, ""));
                    }
                    None => {}
                }
            }
            // Rules on the root see the whole object.
            self.evaluate_rules(object, old, "", &mut errors);
        }
        errors
    }

    fn validate_at(
        &self,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        if value.is_null() {
            if !self.nullable && !self.type_.is_empty() {
                errors.push(type_error(path, value, &self.type_));
            }
            return;
        }
        if !self.type_matches(value) {
            let expected = if self.int_or_string {
                "int-or-string"
            } else {
                self.type_.as_str()
            };
            errors.push(type_error(path, value, expected));
            return;
        }
        if let Some(allowed) = &self.enum_ {
            if !allowed.contains(value) {
                errors.push(FieldError::not_supported(
                    path,
                    value.clone(),
                    allowed.clone(),
                ));
            }
        }
        if let Some(number) = value.as_f64() {
            self.check_bounds(number, value, path, errors);
        }
        if let Value::String(text) = value {
            let length = text.chars().count() as u64;
            if let Some(min) = self.min_length.filter(|min| length < *min) {
                errors.push(FieldError::invalid(
                    path,
                    value.clone(),
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = self.max_length.filter(|max| length > *max) {
                errors.push(FieldError {
                    kind: FieldErrorKind::TooLong(value.clone(), max as usize),
                    field: path.to_string(),
                    detail: String::new(),
                });
            }
            if let Some(pattern) = &self.pattern {
                if !pattern_matches(pattern, text) {
                    errors.push(FieldError::invalid(
                        path,
                        value.clone(),
                        format!("{path} in body should match '{pattern}'"),
                    ));
                }
            }
        }
        match value {
            Value::Object(map) => {
                if let Some(min) = self.min_properties.filter(|min| (map.len() as u64) < *min) {
                    errors.push(FieldError::invalid(
                        path,
                        Value::from(map.len()),
                        format!("{path} in body should have at least {min} properties"),
                    ));
                }
                if let Some(max) = self.max_properties.filter(|max| (map.len() as u64) > *max) {
                    errors.push(FieldError {
                        kind: FieldErrorKind::TooMany(map.len(), max as usize),
                        field: path.to_string(),
                        detail: String::new(),
                    });
                }
                for required in &self.required {
                    if !map.contains_key(required) {
                        errors.push(FieldError::required(&format!("{path}.{required}"), ""));
                    }
                }
                for (key, child) in map {
                    let child_path = format!("{path}.{key}");
                    let old_child = old.and_then(|o| o.get(key));
                    if let Some(schema) = self.properties.get(key) {
                        schema.validate_at(child, old_child, &child_path, errors);
                    } else if let Some(schema) = &self.additional_properties {
                        schema.validate_at(child, old_child, &child_path, errors);
                    }
                }
            }
            Value::Array(items) => {
                let count = items.len() as u64;
                if let Some(min) = self.min_items.filter(|min| count < *min) {
                    errors.push(FieldError::invalid(
                        path,
                        Value::from(count),
                        format!("{path} in body should have at least {min} items"),
                    ));
                }
                if let Some(max) = self.max_items.filter(|max| count > *max) {
                    errors.push(FieldError {
                        kind: FieldErrorKind::TooMany(items.len(), max as usize),
                        field: path.to_string(),
                        detail: String::new(),
                    });
                }
                if let Some(schema) = &self.items {
                    for (index, item) in items.iter().enumerate() {
                        // Items of atomic lists are not correlated with old ones, so transition
                        // rules below a list item do not run, as in the API server.
                        schema.validate_at(item, None, &format!("{path}[{index}]"), errors);
                    }
                }
            }
            _ => {}
        }
        self.evaluate_rules(value, old, path, errors);
    }

    fn check_bounds(&self, number: f64, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(min) = self.minimum {
            let (bad, relation) = if self.exclusive_minimum {
                (number <= min, "greater than")
            } else {
                (number < min, "greater than or equal to")
            };
            if bad {
                errors.push(FieldError::invalid(
                    path,
                    value.clone(),
                    format!("{path} in body should be {relation} {}", bound(min)),
                ));
            }
        }
        if let Some(max) = self.maximum {
            let (bad, relation) = if self.exclusive_maximum {
                (number >= max, "less than")
            } else {
                (number > max, "less than or equal to")
            };
            if bad {
                errors.push(FieldError::invalid(
                    path,
                    value.clone(),
                    format!("{path} in body should be {relation} {}", bound(max)),
                ));
            }
        }
    }

    fn evaluate_rules(
        &self,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) {
        for rule in &self.rules {
            if rule.program.transition && old.is_none() {
                continue;
            }
            let field = match &rule.field_path {
                Some(relative) => format!("{path}{relative}"),
                None => path.to_string(),
            };
            let field = field.trim_start_matches('.').to_string();
            let type_value = Value::String(self.type_.clone());
            match rule.program.evaluate(value, old) {
                Ok(true) => {}
                Ok(false) => {
                    let message = rule
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("failed rule: {}", rule.source));
                    errors.push(match rule.reason.as_str() {
                        "FieldValueForbidden" => FieldError::forbidden(&field, message),
                        "FieldValueRequired" => FieldError::required(&field, message),
                        "FieldValueDuplicate" => FieldError {
                            kind: FieldErrorKind::Duplicate(type_value),
                            field,
                            detail: message,
                        },
                        _ => FieldError::invalid(&field, type_value, message),
                    });
                }
                Err(error) => errors.push(FieldError::invalid(
                    &field,
                    type_value,
                    format!("{} evaluating rule: {}", error.0, rule.source),
                )),
            }
        }
    }

    fn type_matches(&self, value: &Value) -> bool {
        if self.int_or_string {
            return value.is_string() || value.is_i64() || value.is_u64();
        }
        match self.type_.as_str() {
            "" => true,
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => false,
        }
    }
}

/// The API server's type error: `Invalid value: "string": spec.replicas in body must be of type
/// integer: "string"`.
fn type_error(path: &str, value: &Value, expected: &str) -> FieldError {
    let actual = json_type(value);
    FieldError::invalid(
        path,
        Value::String(actual.to_string()),
        format!("{path} in body must be of type {expected}: {actual:?}"),
    )
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A bound as Go's `%v` prints a float64: `9`, `0.5`.
fn bound(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The few regular-expression forms CRD patterns use here, matched without a regex engine:
/// patterns are refused at compile time unless [`pattern_supported`] accepts them.
fn pattern_matches(pattern: &str, text: &str) -> bool {
    let anchored_start = pattern.starts_with('^');
    let anchored_end = pattern.ends_with('$');
    let literal = pattern.trim_start_matches('^').trim_end_matches('$');
    match (anchored_start, anchored_end) {
        (true, true) => text == literal,
        (true, false) => text.starts_with(literal),
        (false, true) => text.ends_with(literal),
        (false, false) => text.contains(literal),
    }
}

/// Patterns that are literal text between optional anchors.
fn pattern_supported(pattern: &str) -> bool {
    let literal = pattern.trim_start_matches('^').trim_end_matches('$');
    !literal.chars().any(|c| "\\.[]()*+?{}|^$".contains(c))
}

fn compile_node(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Schema {
    let Some(map) = value.as_object() else {
        errors.push(FieldError::invalid(
            path,
            value.clone(),
            "must be an object",
        ));
        return Schema::default();
    };
    for keyword in UNSUPPORTED_KEYWORDS {
        if map.contains_key(keyword) {
            errors.push(FieldError::forbidden(
                &format!("{path}.{keyword}"),
                "not supported by the hermetic API server",
            ));
        }
    }
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let number = |key: &str| map.get(key).and_then(Value::as_f64);
    let count = |key: &str| map.get(key).and_then(Value::as_u64);
    let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);

    let mut schema = Schema {
        type_: text("type").unwrap_or_default(),
        nullable: flag("nullable"),
        required: map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        enum_: map.get("enum").and_then(Value::as_array).cloned(),
        minimum: number("minimum"),
        exclusive_minimum: flag("exclusiveMinimum"),
        maximum: number("maximum"),
        exclusive_maximum: flag("exclusiveMaximum"),
        min_length: count("minLength"),
        max_length: count("maxLength"),
        min_items: count("minItems"),
        max_items: count("maxItems"),
        min_properties: count("minProperties"),
        max_properties: count("maxProperties"),
        pattern: text("pattern"),
        default: map.get("default").cloned(),
        int_or_string: flag("x-kubernetes-int-or-string"),
        preserve_unknown_fields: flag("x-kubernetes-preserve-unknown-fields"),
        embedded_resource: flag("x-kubernetes-embedded-resource"),
        ..Schema::default()
    };
    if let Some(pattern) = &schema.pattern {
        if !pattern_supported(pattern) {
            errors.push(FieldError::forbidden(
                &format!("{path}.pattern"),
                format!("pattern {pattern:?} is not supported by the hermetic API server"),
            ));
        }
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            let child_path = format!("{path}.properties[{name}]");
            schema
                .properties
                .insert(name.clone(), compile_node(child, &child_path, errors));
        }
    }
    match map.get("additionalProperties") {
        Some(Value::Object(child)) => {
            schema.additional_properties = Some(Box::new(compile_node(
                &Value::Object(child.clone()),
                &format!("{path}.additionalProperties"),
                errors,
            )));
        }
        Some(Value::Bool(true)) => schema.preserve_unknown_fields = true,
        _ => {}
    }
    if let Some(items) = map.get("items") {
        schema.items = Some(Box::new(compile_node(
            items,
            &format!("{path}.items"),
            errors,
        )));
    }
    if let Some(rules) = map
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for (index, rule) in rules.iter().enumerate() {
            let rule_path = format!("{path}.x-kubernetes-validations[{index}]");
            let source = rule["rule"].as_str().unwrap_or_default().to_string();
            if rule.get("messageExpression").is_some() {
                errors.push(FieldError::forbidden(
                    &format!("{rule_path}.messageExpression"),
                    "messageExpression is not supported by the hermetic API server",
                ));
            }
            match Program::compile(&source) {
                Ok(program) => schema.rules.push(Rule {
                    source,
                    program,
                    message: rule["message"].as_str().map(str::to_string),
                    reason: rule["reason"]
                        .as_str()
                        .unwrap_or("FieldValueInvalid")
                        .to_string(),
                    field_path: rule["fieldPath"].as_str().map(str::to_string),
                }),
                Err(error) => errors.push(FieldError::invalid(
                    &format!("{rule_path}.rule"),
                    Value::String(source),
                    error.to_string(),
                )),
            }
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replicas_schema() -> Schema {
        Schema::compile(
            &json!({
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "properties": {
                            "replicas": {
                                "type": "integer", "default": 3, "minimum": 1.0, "maximum": 9.0,
                                "x-kubernetes-validations": [{"rule": "self % 2 == 1", "message": "odd"}]
                            },
                            "phase": {"type": "string", "enum": ["A", "B"], "nullable": true},
                            "storage": {
                                "type": "object", "default": {"size": "1Gi"},
                                "properties": {"size": {"x-kubernetes-int-or-string": true}},
                                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "fixed"}]
                            }
                        }
                    }
                }
            }),
            "schema",
        )
        .unwrap()
    }

    #[test]
    fn defaults_fill_and_unknown_fields_are_pruned() {
        let schema = replicas_schema();
        let mut object = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"extra": 1}, "other": true});
        let pruned = schema.prune_and_default(&mut object);
        assert_eq!(pruned, vec!["spec.extra".to_string(), "other".to_string()]);
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["spec"]["storage"]["size"], "1Gi");
        assert_eq!(object["metadata"]["name"], "a");
    }

    #[test]
    fn bounds_types_enums_and_rules_are_enforced() {
        let schema = replicas_schema();
        let errors = schema.validate(&json!({"spec": {"replicas": 4}}), None);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "spec.replicas: Invalid value: \"integer\": odd"
        );
        let errors = schema.validate(&json!({"spec": {"replicas": 11}}), None);
        assert_eq!(
            errors[0].to_string(),
            "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 9"
        );
        let errors = schema.validate(&json!({"spec": {"replicas": "3"}}), None);
        assert_eq!(
            errors[0].to_string(),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
        let errors = schema.validate(&json!({"spec": {"phase": "C"}}), None);
        assert_eq!(
            errors[0].to_string(),
            "spec.phase: Unsupported value: \"C\": supported values: \"A\", \"B\""
        );
        assert!(schema
            .validate(&json!({"spec": {"phase": null}}), None)
            .is_empty());
        assert_eq!(
            schema.validate(&json!({}), None)[0].to_string(),
            "spec: Required value"
        );
    }

    #[test]
    fn transition_rules_run_only_on_update() {
        let schema = replicas_schema();
        let new = json!({"spec": {"storage": {"size": "2Gi"}}});
        let old = json!({"spec": {"storage": {"size": "1Gi"}}});
        assert!(schema.validate(&new, None).is_empty());
        let errors = schema.validate(&new, Some(&old));
        assert_eq!(
            errors[0].to_string(),
            "spec.storage: Invalid value: \"object\": fixed"
        );
    }

    #[test]
    fn unsupported_rules_and_keywords_refuse_the_schema() {
        let errors = Schema::compile(
            &json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.all(x, true)"}],
                    "properties": {"a": {"anyOf": [{"type": "string"}]}}}),
            "s",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2);
    }
}
