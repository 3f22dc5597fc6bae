//! The API server's errors, each the `Status` object a real Kubernetes API server answers with:
//! the same HTTP code, `reason`, `details` and message text, so kubectl prints what it prints
//! against a real cluster and kube-rs matches on the same codes.
//!
//! Field errors ([`FieldError`]) render like apimachinery's `field.Error`:
//! `spec.replicas: Invalid value: 4: <detail>`.

use serde_json::{json, Value};

/// What a request did wrong, or why the server could not do it.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 404: `kvclusters.ferrokv.io "example" not found`.
    NotFound {
        resource: GroupResource,
        name: String,
    },
    /// 409: `kvclusters.ferrokv.io "example" already exists`.
    AlreadyExists {
        resource: GroupResource,
        name: String,
    },
    /// 409: an update carried a resourceVersion (or UID precondition) that is no longer current.
    Conflict {
        resource: GroupResource,
        name: String,
        detail: String,
    },
    /// 409: a server-side apply without `force` would take fields another manager owns.
    ApplyConflict { conflicts: Vec<ApplyConflict> },
    /// 422: the object breaks its schema, a validation rule or an API invariant.
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<FieldError>,
    },
    /// 400.
    BadRequest(String),
    /// 403: e.g. creating in a namespace that is being deleted.
    Forbidden(String),
    /// 422: a JSON patch that cannot be applied (a failed `test`, a missing path).
    InvalidPatch(String),
    /// 405: the resource does not support the verb.
    MethodNotSupported {
        resource: GroupResource,
        verb: String,
    },
    /// 410: a resourceVersion older than the retained history.
    Expired(String),
    /// 415: a patch type or body encoding the server does not take for this resource.
    UnsupportedMediaType(String),
    /// 504: a resourceVersion newer than any the server has issued.
    ResourceVersionTooLarge(String),
    /// 500.
    Internal(String),
}

/// A resource type as errors name it: `kvclusters.ferrokv.io`, or `pods` in the core group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One field another manager owns, found by a server-side apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    pub manager: String,
    pub api_version: String,
    /// The field as apimachinery prints it: `.spec.replicas`.
    pub field: String,
}

/// What is wrong with one field, as apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    /// Dotted path, `spec.replicas`, `metadata.name`.
    pub field: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    /// `Invalid value: <value>` — the value as Go's `%v`/`%q` would print it.
    Invalid(Value),
    Required,
    /// `Unsupported value: <value>: supported values: "a", "b"`.
    NotSupported(Value, Vec<Value>),
    Forbidden,
    Duplicate(Value),
    TooLong(Value, usize),
    TooMany(usize, usize),
}

impl FieldError {
    pub fn invalid(field: &str, value: Value, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Invalid(value),
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    pub fn required(field: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Required,
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: FieldErrorKind::Forbidden,
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    pub fn not_supported(field: &str, value: Value, supported: Vec<Value>) -> Self {
        Self {
            kind: FieldErrorKind::NotSupported(value, supported),
            field: field.to_string(),
            detail: String::new(),
        }
    }

    /// apimachinery's `CauseType` for this error.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::TooLong(..) => "FieldValueTooLong",
            FieldErrorKind::TooMany(..) => "FieldValueTooMany",
        }
    }

    /// The error without its field: `Invalid value: 4: replicas must be odd`.
    pub fn body(&self) -> String {
        let with_detail = |head: String| {
            if self.detail.is_empty() {
                head
            } else {
                format!("{head}: {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Invalid(value) => {
                with_detail(format!("Invalid value: {}", go_value(value)))
            }
            FieldErrorKind::Required => with_detail("Required value".to_string()),
            FieldErrorKind::Forbidden => with_detail("Forbidden".to_string()),
            FieldErrorKind::Duplicate(value) => {
                with_detail(format!("Duplicate value: {}", go_value(value)))
            }
            FieldErrorKind::NotSupported(value, supported) => {
                let mut text = format!("Unsupported value: {}", go_value(value));
                if !supported.is_empty() {
                    let list: Vec<String> = supported.iter().map(go_value).collect();
                    text.push_str(&format!(": supported values: {}", list.join(", ")));
                }
                text
            }
            FieldErrorKind::TooLong(_, max) => {
                with_detail(format!("Too long: may not be more than {max} bytes"))
            }
            FieldErrorKind::TooMany(actual, max) => {
                with_detail(format!("Too many: {actual}: must have at most {max} items"))
            }
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A value as apimachinery prints an invalid one: strings quoted, numbers and booleans bare.
fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

impl ApiError {
    pub fn not_found(resource: GroupResource, name: &str) -> Self {
        Self::NotFound {
            resource,
            name: name.to_string(),
        }
    }

    /// The optimistic-concurrency conflict of an update with a stale resourceVersion.
    pub fn modified(resource: GroupResource, name: &str) -> Self {
        Self::Conflict {
            resource,
            name: name.to_string(),
            detail: "the object has been modified; please apply your changes to the latest \
                     version and try again"
                .to_string(),
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } | Self::ApplyConflict { .. } => 409,
            Self::Invalid { .. } | Self::InvalidPatch(_) => 422,
            Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::MethodNotSupported { .. } => 405,
            Self::Expired(_) => 410,
            Self::UnsupportedMediaType(_) => 415,
            Self::ResourceVersionTooLarge(_) => 504,
            Self::Internal(_) => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } | Self::ApplyConflict { .. } => "Conflict",
            Self::Invalid { .. } | Self::InvalidPatch(_) => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::Forbidden(_) => "Forbidden",
            Self::MethodNotSupported { .. } => "MethodNotAllowed",
            Self::Expired(_) => "Expired",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::ResourceVersionTooLarge(_) => "Timeout",
            Self::Internal(_) => "InternalError",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NotFound { resource, name } => format!("{resource} {name:?} not found"),
            Self::AlreadyExists { resource, name } => {
                format!("{resource} {name:?} already exists")
            }
            Self::Conflict {
                resource,
                name,
                detail,
            } => format!("Operation cannot be fulfilled on {resource} {name:?}: {detail}"),
            Self::ApplyConflict { conflicts } => {
                let lines: Vec<String> = conflicts
                    .iter()
                    .map(|c| {
                        format!(
                            "conflict with {:?} using {}: {}",
                            c.manager, c.api_version, c.field
                        )
                    })
                    .collect();
                if let [one] = lines.as_slice() {
                    format!("Apply failed with 1 conflict: {one}")
                } else {
                    format!(
                        "Apply failed with {} conflicts: {}",
                        lines.len(),
                        lines.join("\n")
                    )
                }
            }
            Self::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let qualified = if group.is_empty() {
                    kind.clone()
                } else {
                    format!("{kind}.{group}")
                };
                let errors: Vec<String> = causes.iter().map(ToString::to_string).collect();
                let errors = if let [one] = errors.as_slice() {
                    one.clone()
                } else {
                    format!("[{}]", errors.join(", "))
                };
                format!("{qualified} {name:?} is invalid: {errors}")
            }
            Self::MethodNotSupported { resource, verb } => {
                format!("{verb} is not supported on resources of kind {resource:?}")
            }
            Self::BadRequest(message)
            | Self::Forbidden(message)
            | Self::InvalidPatch(message)
            | Self::Expired(message)
            | Self::UnsupportedMediaType(message)
            | Self::ResourceVersionTooLarge(message)
            | Self::Internal(message) => message.clone(),
        }
    }

    /// The `metav1.Status` object.
    pub fn status(&self) -> Value {
        let details = match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Conflict { resource, name, .. } => Some(json!({
                "name": name, "group": resource.group, "kind": resource.resource,
            })),
            Self::MethodNotSupported { resource, .. } => Some(json!({
                "group": resource.group, "kind": resource.resource,
            })),
            Self::ApplyConflict { conflicts } => Some(json!({
                "causes": conflicts.iter().map(|c| json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {:?} using {}", c.manager, c.api_version),
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            Self::Invalid {
                kind,
                group,
                name,
                causes,
            } => Some(json!({
                "name": name, "group": group, "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason(), "message": c.body(), "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            Self::ResourceVersionTooLarge(_) => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_renders_like_apimachinery() {
        let error = ApiError::Invalid {
            kind: "KVCluster".into(),
            group: "ferrokv.io".into(),
            name: "example".into(),
            causes: vec![FieldError::invalid(
                "spec.replicas",
                json!("integer"),
                "replicas must be odd",
            )],
        };
        assert_eq!(
            error.message(),
            "KVCluster.ferrokv.io \"example\" is invalid: spec.replicas: Invalid value: \
             \"integer\": replicas must be odd"
        );
        let status = error.status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "Invalid value: \"integer\": replicas must be odd"
        );
    }

    #[test]
    fn not_found_names_the_group_resource() {
        let pods = GroupResource {
            group: String::new(),
            resource: "pods".into(),
        };
        let status = ApiError::not_found(pods, "kv-0").status();
        assert_eq!(status["message"], "pods \"kv-0\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["details"]["kind"], "pods");
    }

    #[test]
    fn several_field_errors_are_bracketed() {
        let error = ApiError::Invalid {
            kind: "Pod".into(),
            group: String::new(),
            name: "p".into(),
            causes: vec![
                FieldError::required("spec.containers", ""),
                FieldError::not_supported("spec.restartPolicy", json!("x"), vec![json!("Always")]),
            ],
        };
        assert_eq!(
            error.message(),
            "Pod \"p\" is invalid: [spec.containers: Required value, spec.restartPolicy: \
             Unsupported value: \"x\": supported values: \"Always\"]"
        );
    }
}
