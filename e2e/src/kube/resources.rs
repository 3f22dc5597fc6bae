//! The resource types the server serves: the built-in kinds the operator, kubectl and the later
//! StatefulSet controller and kubelet use, and the kinds CustomResourceDefinitions add.
//!
//! A [`ResourceType`] is everything the REST layer, discovery and validation need to know about
//! one resource: where it lives (group, version, plural, scope), its kind, its subresources, and
//! for custom resources the compiled schema and printer columns. It holds no objects.

use std::sync::Arc;

use serde_json::Value;

use crate::kube::error::{ApiError, FieldError, GroupResource};
use crate::kube::schema::Schema;

/// Where the `scale` subresource finds its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// `.spec.replicas`
    pub spec_replicas: String,
    /// `.status.replicas`
    pub status_replicas: String,
    /// `.status.selector` for custom resources (a string there); `None` for built-in kinds,
    /// whose selector is the label selector at `.spec.selector`.
    pub label_selector: Option<String>,
}

/// A column of `kubectl get`, from a CRD's `additionalPrinterColumns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    /// Plural, lower case: `kvclusters`.
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource: the main resource ignores status changes and the
    /// subresource ignores everything else.
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// The structural schema of a custom resource; built-in kinds are not schema-checked.
    pub schema: Option<Arc<Schema>>,
    /// That schema as the CRD declares it, for the OpenAPI documents.
    pub schema_document: Option<Value>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether a PUT without `metadata.resourceVersion` is allowed (true for most built-in
    /// kinds, false for custom resources).
    pub unconditional_update: bool,
    /// Defined by a CustomResourceDefinition of this name.
    pub crd: Option<String>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status: false,
            scale: None,
            schema: None,
            schema_document: None,
            printer_columns: Vec::new(),
            unconditional_update: true,
            crd: None,
        }
    }

    fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn with_categories(mut self, names: &[&str]) -> Self {
        self.categories = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn with_builtin_scale(mut self) -> Self {
        self.scale = Some(ScalePaths {
            spec_replicas: ".spec.replicas".to_string(),
            status_replicas: ".status.replicas".to_string(),
            label_selector: None,
        });
        self
    }

    /// `ferrokv.io/v1alpha1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    /// The kind of this resource's lists: `KVClusterList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `name` names this resource on the command line: plural, singular, kind or a
    /// short name, case-insensitively for the kind.
    pub fn answers_to(&self, name: &str) -> bool {
        self.plural == name
            || self.singular == name
            || self.kind.eq_ignore_ascii_case(name)
            || self.short_names.iter().any(|s| s == name)
    }

    pub fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(self.group_resource(), name)
    }

    pub fn invalid(&self, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            kind: self.kind.clone(),
            group: self.group.clone(),
            name: name.to_string(),
            causes,
        }
    }
}

/// The kinds every server starts with.
pub fn builtin_types() -> Vec<ResourceType> {
    let core = |plural: &str, kind: &str, namespaced: bool| {
        ResourceType::builtin("", "v1", plural, kind, namespaced)
    };
    vec![
        core("namespaces", "Namespace", false)
            .with_status()
            .with_short_names(&["ns"]),
        core("nodes", "Node", false)
            .with_status()
            .with_short_names(&["no"]),
        core("pods", "Pod", true)
            .with_status()
            .with_short_names(&["po"])
            .with_categories(&["all"]),
        core("services", "Service", true)
            .with_status()
            .with_short_names(&["svc"])
            .with_categories(&["all"]),
        core("endpoints", "Endpoints", true).with_short_names(&["ep"]),
        core("configmaps", "ConfigMap", true).with_short_names(&["cm"]),
        core("secrets", "Secret", true),
        core("serviceaccounts", "ServiceAccount", true).with_short_names(&["sa"]),
        core("persistentvolumeclaims", "PersistentVolumeClaim", true)
            .with_status()
            .with_short_names(&["pvc"]),
        core("persistentvolumes", "PersistentVolume", false)
            .with_status()
            .with_short_names(&["pv"]),
        core("events", "Event", true).with_short_names(&["ev"]),
        ResourceType::builtin("apps", "v1", "statefulsets", "StatefulSet", true)
            .with_status()
            .with_builtin_scale()
            .with_short_names(&["sts"])
            .with_categories(&["all"]),
        ResourceType::builtin("apps", "v1", "deployments", "Deployment", true)
            .with_status()
            .with_builtin_scale()
            .with_short_names(&["deploy"])
            .with_categories(&["all"]),
        ResourceType::builtin(
            "apps",
            "v1",
            "controllerrevisions",
            "ControllerRevision",
            true,
        ),
        ResourceType::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
        )
        .with_status()
        .with_short_names(&["pdb"]),
        ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true)
            .with_short_names(&["ev"]),
        ResourceType::builtin(
            "storage.k8s.io",
            "v1",
            "storageclasses",
            "StorageClass",
            false,
        )
        .with_short_names(&["sc"]),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
        .with_status()
        .with_short_names(&["crd", "crds"]),
    ]
}

/// The resource types a CustomResourceDefinition serves, one per served version, with their
/// schemas compiled; or why the definition is invalid (`spec.…` field errors).
pub fn types_of_crd(crd: &Value) -> Result<Vec<ResourceType>, Vec<FieldError>> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &crd["spec"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = text(&spec["group"]);
    let names = &spec["names"];
    let plural = text(&names["plural"]);
    let kind = text(&names["kind"]);
    let mut errors = Vec::new();
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if !name.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            Value::String(name.to_string()),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            errors.push(FieldError::not_supported(
                "spec.scope",
                other.map_or(Value::Null, |s| Value::String(s.to_string())),
                vec!["Cluster".into(), "Namespaced".into()],
            ));
            true
        }
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let mut types = Vec::new();
    for (index, version) in versions.iter().enumerate() {
        if version["served"] != Value::Bool(true) {
            continue;
        }
        let path = format!("spec.versions[{index}]");
        let schema = match version["schema"].get("openAPIV3Schema") {
            Some(schema) => {
                match Schema::compile(schema, &format!("{path}.schema.openAPIV3Schema")) {
                    Ok(schema) => Some(Arc::new(schema)),
                    Err(mut schema_errors) => {
                        errors.append(&mut schema_errors);
                        None
                    }
                }
            }
            None => {
                errors.push(FieldError::required(
                    &format!("{path}.schema.openAPIV3Schema"),
                    "schemas are required",
                ));
                None
            }
        };
        let subresources = &version["subresources"];
        let scale = subresources.get("scale").map(|scale| ScalePaths {
            spec_replicas: text(&scale["specReplicasPath"]),
            status_replicas: text(&scale["statusReplicasPath"]),
            label_selector: scale
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
        let printer_columns = version["additionalPrinterColumns"]
            .as_array()
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| PrinterColumn {
                        name: text(&c["name"]),
                        type_: text(&c["type"]),
                        format: text(&c["format"]),
                        description: text(&c["description"]),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: text(&c["jsonPath"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        types.push(ResourceType {
            group: group.clone(),
            version: text(&version["name"]),
            plural: plural.clone(),
            singular: names["singular"]
                .as_str()
                .map_or_else(|| kind.to_lowercase(), str::to_string),
            kind: kind.clone(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status: subresources.get("status").is_some(),
            scale,
            schema,
            schema_document: version["schema"].get("openAPIV3Schema").map(|s| {
                let mut document = s.clone();
                document["properties"]["apiVersion"] = serde_json::json!({"type": "string"});
                document["properties"]["kind"] = serde_json::json!({"type": "string"});
                document["properties"]["metadata"] = serde_json::json!({"type": "object"});
                document
            }),
            printer_columns,
            unconditional_update: false,
            crd: Some(name.to_string()),
        });
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(errors)
    }
}
