//! The object store and the semantics of every verb: one global resourceVersion counter, objects
//! by resource type, namespace and name, and a bounded history of changes that watches resume
//! from.
//!
//! Each verb here is what the API server does for it — metadata the server assigns, status and
//! scale subresources, generation, managed fields and server-side apply, schema and CEL
//! validation of custom resources, finalizers and `deletionTimestamp`, graceful pod deletion,
//! owner-reference garbage collection, namespace and CRD cleanup — so in-process controllers
//! (the StatefulSet controller, the kubelet) can use the same calls as the HTTP layer, which
//! only translates requests and responses. Everything runs under one lock; every change is
//! published to watchers while that lock is held, so a watch never misses or reorders one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::kube::error::{ApiError, FieldError};
use crate::kube::fields::{self, Scope};
use crate::kube::meta;
use crate::kube::resources::{builtin_types, types_of_crd, ResourceType};
use crate::kube::selector::{FieldSelector, LabelSelector};
use crate::kube::views;

/// How many changes the store keeps for watches to resume from by default.
pub const DEFAULT_HISTORY: usize = 10_000;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One change, as watches deliver it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub revision: u64,
    pub kind: EventKind,
    pub group: String,
    pub plural: String,
    pub object: Value,
    /// The object before a modification, so a filtered watch can tell an object that left its
    /// selection (delivered as DELETED) from one that entered it (ADDED).
    pub previous: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// How a write treats fields the schema does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The field manager the write is recorded under.
    pub manager: String,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
}

/// A patch of one of the four kinds the API server takes.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 7386 (`application/merge-patch+json`).
    Merge(Value),
    /// RFC 6902 (`application/json-patch+json`).
    Json(Value),
    /// `application/strategic-merge-patch+json`, built-in kinds only.
    Strategic(Value),
    /// Server-side apply (`application/apply-patch+yaml`).
    Apply { config: Value, force: bool },
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    /// The object did not exist before (201 Created).
    pub created: bool,
    /// `Warning` headers: unknown fields under `fieldValidation=Warn`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub object: Value,
    /// Gone now (200), rather than marked for deletion and waiting on finalizers or a kubelet
    /// (202).
    pub finished: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct Listed {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub resource_version: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Start with ADDED events for every existing object, then a BOOKMARK marking their end.
    pub send_initial_events: bool,
}

type TypeKey = (String, String);
type ObjectKey = (String, String);

struct State {
    revision: u64,
    types: Vec<Arc<ResourceType>>,
    objects: BTreeMap<TypeKey, BTreeMap<ObjectKey, Value>>,
    history: VecDeque<Arc<WatchEvent>>,
    history_limit: usize,
    /// Highest revision no longer in `history`: watches from before it get 410 Gone.
    compacted: u64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<WatchEvent>>,
}

fn type_key(rt: &ResourceType) -> TypeKey {
    (rt.group.clone(), rt.plural.clone())
}

fn object_key(namespace: &str, name: &str) -> ObjectKey {
    (namespace.to_string(), name.to_string())
}

impl Store {
    /// A store with the built-in kinds, the `default`, `kube-system` and `kube-public`
    /// namespaces, keeping `history_limit` changes for watches.
    pub fn new(history_limit: usize) -> Arc<Store> {
        let (events, _) = broadcast::channel(4096);
        let store = Arc::new(Store {
            state: Mutex::new(State {
                revision: 0,
                types: builtin_types().into_iter().map(Arc::new).collect(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 0,
            }),
            events,
        });
        let namespaces = store
            .resource_type("", "v1", "namespaces")
            .expect("built-in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            store
                .create(&namespaces, "", namespace, &WriteOptions::default())
                .expect("creating a built-in namespace");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Every served resource type.
    pub fn types(&self) -> Vec<Arc<ResourceType>> {
        self.lock().types.clone()
    }

    pub fn resource_type(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Forgets all history up to the current revision, as an etcd compaction does: watches
    /// from an older resourceVersion then get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.revision;
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        let stored = st.storage(rt);
        st.get(&stored, namespace, name)
            .map(|o| views::to_view(rt, o.clone()))
            .ok_or_else(|| rt.not_found(name))
    }

    /// Lists objects of a type, in one namespace or (`None`) all of them. Pages (`limit`,
    /// `continue`) are cut from the current state, not from a snapshot at the first page's
    /// revision as etcd serves them: a client paging through a changing list may see an object
    /// twice or miss one created meanwhile.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<Listed, ApiError> {
        let st = self.lock();
        if let Some(requested) = options
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
        {
            let requested: u64 = requested.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid resource version {requested:?}"))
            })?;
            if requested > st.revision {
                return Err(ApiError::ResourceVersionTooLarge(format!(
                    "Too large resource version: {requested}, current: {}",
                    st.revision
                )));
            }
            if options.resource_version_match.as_deref() == Some("Exact")
                && requested != st.revision
            {
                return Err(ApiError::Expired(format!(
                    "too old resource version: {requested} ({})",
                    st.revision
                )));
            }
        }
        let after = match &options.continue_token {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let fields = options
            .fields
            .renamed(|field| views::field_in_storage(rt, field));
        let mut items = Vec::new();
        let mut continue_token = None;
        if let Some(objects) = st.objects.get(&type_key(&st.storage(rt))) {
            for ((ns, name), object) in objects {
                if namespace.is_some_and(|n| n != ns) {
                    continue;
                }
                if after
                    .as_ref()
                    .is_some_and(|(a_ns, a_name)| (ns, name) <= (a_ns, a_name))
                {
                    continue;
                }
                if !options.labels.matches(&object["metadata"]["labels"]) || !fields.matches(object)
                {
                    continue;
                }
                if options
                    .limit
                    .is_some_and(|limit| limit > 0 && items.len() == limit)
                {
                    let last = &items.last().map(|o: &Value| {
                        (
                            meta::namespace_of(o).to_string(),
                            meta::name_of(o).to_string(),
                        )
                    });
                    if let Some((ns, name)) = last {
                        continue_token = Some(encode_continue(ns, name));
                    }
                    break;
                }
                items.push(views::to_view(rt, object.clone()));
            }
        }
        Ok(Listed {
            items,
            revision: st.revision,
            continue_token,
        })
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        namespace: &str,
        body: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let stored = st.storage(rt);
        let body = views::from_view(rt, body);
        let written = self.create_locked(&mut st, &stored, namespace, body, options)?;
        self.settle(&mut st);
        Ok(written.into_view(rt))
    }

    /// Replaces an object (PUT), or its status with `Scope::Status`.
    pub fn update(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        status: bool,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let view = rt;
        let rt = &*st.storage(view);
        let body = views::from_view(view, body);
        let old = st
            .get(rt, namespace, name)
            .cloned()
            .ok_or_else(|| rt.not_found(name))?;
        check_body_identity(rt, namespace, name, &body)?;
        match body["metadata"]["resourceVersion"].as_str() {
            Some(version)
                if !version.is_empty()
                    && Some(version) != old["metadata"]["resourceVersion"].as_str() =>
            {
                return Err(ApiError::modified(rt.group_resource(), name));
            }
            Some(version) if !version.is_empty() => {}
            _ if !rt.unconditional_update => {
                return Err(rt.invalid(
                    name,
                    vec![FieldError::invalid(
                        "metadata.resourceVersion",
                        json!(0),
                        "must be specified for an update",
                    )],
                ))
            }
            _ => {}
        }
        let scope = scope_of(rt, status);
        let written = self.write(
            &mut st,
            rt,
            Change {
                old: Some(old),
                new: body,
                scope,
                manager: Some(&options.manager),
                by_server: false,
            },
            options,
        )?;
        self.settle(&mut st);
        Ok(written.into_view(view))
    }

    /// Patches an object, or its status; an apply patch creates it when it does not exist.
    pub fn patch(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        patch: Patch,
        status: bool,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut st = self.lock();
        let view = rt;
        let rt = &*st.storage(view);
        let scope = scope_of(rt, status);
        let existing = st.get(rt, namespace, name).cloned();
        // A patch applies to the object as the client sees it.
        let live_view = existing.clone().map(|o| views::to_view(view, o));
        let (patched, manager) =
            patched_object(view, name, live_view, patch, scope, status, options)?;
        let new = views::from_view(view, patched);
        check_body_identity(rt, namespace, name, &new)?;
        let written = match existing {
            None => {
                let options = WriteOptions {
                    manager: manager.unwrap_or_default().to_string(),
                    ..options.clone()
                };
                self.create_locked(&mut st, rt, namespace, new, &options)?
            }
            Some(live) => self.write(
                &mut st,
                rt,
                Change {
                    old: Some(live),
                    new,
                    scope,
                    manager,
                    by_server: false,
                },
                options,
            )?,
        };
        self.settle(&mut st);
        Ok(written.into_view(view))
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let mut st = self.lock();
        let stored = st.storage(rt);
        let mut deleted = self.delete_locked(&mut st, &stored, namespace, name, options)?;
        self.settle(&mut st);
        deleted.object = views::to_view(rt, deleted.object);
        Ok(deleted)
    }

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

    /// Starts a watch of one type (in one namespace, or all).
    pub fn watch(
        self: &Arc<Self>,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: WatchOptions,
    ) -> Result<Watcher, ApiError> {
        let st = self.lock();
        let view = Arc::new(rt.clone());
        let rt = &*st.storage(rt);
        let receiver = self.events.subscribe();
        let mut pending = VecDeque::new();
        let requested = options.resource_version.as_deref().unwrap_or("");
        let mut initial_end = None;
        if requested.is_empty() || requested == "0" || options.send_initial_events {
            if let Some(objects) = st.objects.get(&type_key(rt)) {
                for object in objects.values() {
                    pending.push_back(Arc::new(WatchEvent {
                        revision: resource_version_of(object),
                        kind: EventKind::Added,
                        group: rt.group.clone(),
                        plural: rt.plural.clone(),
                        object: object.clone(),
                        previous: None,
                    }));
                }
            }
            if options.send_initial_events {
                initial_end = Some(st.revision);
            }
        } else {
            let from: u64 = requested.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid resource version {requested:?}"))
            })?;
            if from < st.compacted {
                return Err(ApiError::Expired(format!(
                    "too old resource version: {from} ({})",
                    st.compacted + 1
                )));
            }
            pending.extend(st.history.iter().filter(|e| e.revision > from).cloned());
        }
        Ok(Watcher {
            store: self.clone(),
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: namespace.map(str::to_string),
            labels: options.labels,
            fields: options
                .fields
                .renamed(|field| views::field_in_storage(&view, field)),
            view,
            pending,
            initial_end,
            receiver,
        })
    }

    // ---- internals, all under the lock ----

    fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        namespace: &str,
        mut body: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        let body_namespace = meta::namespace_of(&body).to_string();
        if rt.namespaced {
            if !body_namespace.is_empty() && body_namespace != namespace {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            let namespaces: TypeKey = (String::new(), "namespaces".to_string());
            match st.objects.get(&namespaces).and_then(|n| n.get(&object_key("", namespace))) {
                None => {
                    return Err(ApiError::not_found(
                        crate::kube::error::GroupResource {
                            group: String::new(),
                            resource: "namespaces".into(),
                        },
                        namespace,
                    ))
                }
                Some(ns) if meta::is_terminating(ns) => {
                    return Err(ApiError::Forbidden(format!(
                        "{} {:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        rt.group_resource(),
                        meta::name_of(&body)
                    )))
                }
                Some(_) => {}
            }
            body["metadata"]["namespace"] = json!(namespace);
        } else if let Some(map) = body["metadata"].as_object_mut() {
            map.remove("namespace");
        }
        if meta::name_of(&body).is_empty() {
            if let Some(prefix) = body["metadata"]["generateName"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                body["metadata"]["name"] = json!(meta::generated_name(prefix));
            }
        }
        let name = meta::name_of(&body).to_string();
        if let Some(error) = meta::validate_name(&name) {
            return Err(rt.invalid(&name, vec![error]));
        }
        if st.get(rt, namespace, &name).is_some() {
            return Err(ApiError::AlreadyExists {
                resource: rt.group_resource(),
                name,
            });
        }
        let manager = (!options.manager.is_empty()).then_some(options.manager.as_str());
        self.write(
            st,
            rt,
            Change {
                old: None,
                new: body,
                scope: Scope::Whole,
                manager,
                by_server: false,
            },
            options,
        )
    }

    /// The one path every change takes: server-owned metadata, scope, generation, validation,
    /// managed fields, no-op detection, then commit and publish.
    fn write(
        &self,
        st: &mut State,
        rt: &ResourceType,
        change: Change<'_>,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let Change {
            old,
            mut new,
            scope,
            manager,
            by_server,
        } = change;
        let now = meta::now();
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        let name = meta::name_of(&new).to_string();
        let namespace = if rt.namespaced {
            meta::namespace_of(&new).to_string()
        } else {
            String::new()
        };
        match &old {
            None => {
                let metadata = new["metadata"].as_object_mut().expect("checked by create");
                for server_owned in [
                    "uid",
                    "resourceVersion",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "selfLink",
                ] {
                    metadata.remove(server_owned);
                }
                metadata.insert("uid".into(), json!(meta::uid()));
                metadata.insert("creationTimestamp".into(), json!(now));
                metadata.insert("generation".into(), json!(1));
                prepare_create(rt, &mut new);
            }
            Some(old) => {
                let previous = old.clone();
                match scope {
                    Scope::Status => {
                        let mut kept = previous.clone();
                        kept["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                        if kept["status"].is_null() {
                            kept.as_object_mut().expect("object").remove("status");
                        }
                        kept["metadata"]["managedFields"] =
                            new["metadata"]["managedFields"].clone();
                        new = kept;
                    }
                    Scope::AllButStatus => match previous.get("status") {
                        Some(status) => new["status"] = status.clone(),
                        None => {
                            if let Some(map) = new.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    },
                    Scope::Whole => {}
                }
                let metadata = new["metadata"]
                    .as_object_mut()
                    .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
                for immutable in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    if by_server && immutable.starts_with("deletion") {
                        continue;
                    }
                    match previous["metadata"].get(immutable) {
                        Some(value) => {
                            metadata.insert(immutable.into(), value.clone());
                        }
                        None => {
                            metadata.remove(immutable);
                        }
                    }
                }
                if metadata.get("managedFields").is_some_and(Value::is_null) {
                    metadata.remove("managedFields");
                }
                if meta::is_terminating(&previous) {
                    let before: BTreeSet<String> =
                        meta::finalizers_of(&previous).into_iter().collect();
                    if meta::finalizers_of(&new)
                        .iter()
                        .any(|f| !before.contains(f))
                    {
                        return Err(rt.invalid(
                            &name,
                            vec![FieldError::forbidden(
                                "metadata.finalizers",
                                "no new finalizers can be added if the object is being deleted",
                            )],
                        ));
                    }
                }
                if spec_of(&previous, rt) != spec_of(&new, rt) {
                    let generation = previous["metadata"]["generation"].as_i64().unwrap_or(0);
                    new["metadata"]["generation"] = json!(generation + 1);
                }
            }
        }

        let mut warnings = Vec::new();
        if let Some(schema) = &rt.schema {
            let pruned = schema.prune_and_default(&mut new);
            if !pruned.is_empty() {
                match options.field_validation {
                    FieldValidation::Strict => {
                        let list: Vec<String> = pruned
                            .iter()
                            .map(|p| format!("unknown field {p:?}"))
                            .collect();
                        return Err(ApiError::BadRequest(format!(
                            "strict decoding error: {}",
                            list.join(", ")
                        )));
                    }
                    FieldValidation::Warn => {
                        warnings.extend(pruned.iter().map(|p| format!("unknown field {p:?}")));
                    }
                    FieldValidation::Ignore => {}
                }
            }
            let errors = schema.validate(&new, old.as_ref());
            if !errors.is_empty() {
                return Err(rt.invalid(&name, errors));
            }
        }
        if rt.plural == "customresourcedefinitions" && rt.group == "apiextensions.k8s.io" {
            let types = types_of_crd(&new).map_err(|errors| rt.invalid(&name, errors))?;
            for candidate in &types {
                let taken = st.types.iter().any(|t| {
                    t.group == candidate.group
                        && t.plural == candidate.plural
                        && t.crd.as_deref() != Some(name.as_str())
                });
                if taken {
                    return Err(rt.invalid(
                        &name,
                        vec![FieldError::invalid(
                            "spec.names.plural",
                            json!(candidate.plural),
                            "is already in use",
                        )],
                    ));
                }
            }
            new["status"] = crd_status(&new, old.as_ref());
        }
        if let Some(manager) = manager.filter(|m| !m.is_empty()) {
            fields::record_update(old.as_ref(), &mut new, manager, scope, &now);
        }

        if let Some(old) = &old {
            let mut unchanged = new.clone();
            unchanged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if &unchanged == old {
                return Ok(Written {
                    object: old.clone(),
                    created: false,
                    warnings,
                });
            }
        }
        if options.dry_run {
            return Ok(Written {
                object: new,
                created: old.is_none(),
                warnings,
            });
        }

        let finished = deletion_complete(rt, &new);
        st.revision += 1;
        new["metadata"]["resourceVersion"] = json!(st.revision.to_string());
        let key = object_key(&namespace, &name);
        if finished {
            st.objects.entry(type_key(rt)).or_default().remove(&key);
            self.publish(st, rt, EventKind::Deleted, new.clone(), None);
            self.unregister_if_crd(st, rt, &new);
        } else {
            st.objects
                .entry(type_key(rt))
                .or_default()
                .insert(key, new.clone());
            let kind = if old.is_some() {
                EventKind::Modified
            } else {
                EventKind::Added
            };
            self.publish(st, rt, kind, new.clone(), old.clone());
            if rt.plural == "customresourcedefinitions" && rt.group == "apiextensions.k8s.io" {
                self.register_crd(st, &new);
            }
        }
        Ok(Written {
            object: new,
            created: old.is_none(),
            warnings,
        })
    }

    fn publish(
        &self,
        st: &mut State,
        rt: &ResourceType,
        kind: EventKind,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(WatchEvent {
            revision: st.revision,
            kind,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            object,
            previous,
        });
        st.history.push_back(event.clone());
        while st.history.len() > st.history_limit {
            if let Some(dropped) = st.history.pop_front() {
                st.compacted = dropped.revision;
            }
        }
        // No receivers is not an error: nobody is watching.
        let _ = self.events.send(event);
    }

    fn delete_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let ns = if rt.namespaced { namespace } else { "" };
        let old = st
            .get(rt, ns, name)
            .cloned()
            .ok_or_else(|| rt.not_found(name))?;
        if let Some(uid) = &options.precondition_uid {
            if uid != meta::uid_of(&old) {
                return Err(ApiError::Conflict {
                    resource: rt.group_resource(),
                    name: name.to_string(),
                    detail: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid_of(&old)
                    ),
                });
            }
        }
        if let Some(version) = &options.precondition_resource_version {
            if Some(version.as_str()) != old["metadata"]["resourceVersion"].as_str() {
                return Err(ApiError::Conflict {
                    resource: rt.group_resource(),
                    name: name.to_string(),
                    detail: format!(
                        "Precondition failed: ResourceVersion in precondition: {version}, ResourceVersion in object meta: {}",
                        old["metadata"]["resourceVersion"].as_str().unwrap_or_default()
                    ),
                });
            }
        }
        let write_options = WriteOptions {
            dry_run: options.dry_run,
            ..WriteOptions::default()
        };
        let mut new = old.clone();
        let mut finalizers = meta::finalizers_of(&old);
        match options.propagation.unwrap_or_default() {
            Propagation::Foreground if !finalizers.iter().any(|f| f == FOREGROUND) => {
                finalizers.push(FOREGROUND.into())
            }
            Propagation::Orphan if !finalizers.iter().any(|f| f == ORPHAN) => {
                finalizers.push(ORPHAN.into())
            }
            _ => {}
        }
        // A pod on a node is deleted by its kubelet once the containers stopped, unless the
        // grace period is zero (a forced deletion).
        let grace = if rt.group.is_empty()
            && rt.plural == "pods"
            && new["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        {
            options
                .grace_period_seconds
                .or_else(|| new["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0)
        } else {
            0
        };
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if meta::is_terminating(&old) {
            let current = old["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0);
            if grace < current || (grace == 0 && finalizers.is_empty()) {
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                new["metadata"]["deletionTimestamp"] = json!(meta::timestamp_after(grace));
            } else {
                return Ok(Deleted {
                    object: old,
                    finished: false,
                });
            }
        }
        if finalizers.is_empty() && grace == 0 && !is_namespace {
            if options.dry_run {
                return Ok(Deleted {
                    object: old,
                    finished: true,
                });
            }
            st.revision += 1;
            new["metadata"]["resourceVersion"] = json!(st.revision.to_string());
            st.objects
                .entry(type_key(rt))
                .or_default()
                .remove(&object_key(ns, name));
            self.publish(st, rt, EventKind::Deleted, new.clone(), None);
            self.unregister_if_crd(st, rt, &new);
            return Ok(Deleted {
                object: new,
                finished: true,
            });
        }
        meta::set_finalizers(&mut new, &finalizers);
        if !meta::is_terminating(&old) {
            new["metadata"]["deletionTimestamp"] = json!(meta::timestamp_after(grace));
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        if is_namespace {
            new["status"]["phase"] = json!("Terminating");
        }
        let written = self.write(
            st,
            rt,
            Change {
                old: Some(old),
                new,
                scope: Scope::Whole,
                manager: None,
                by_server: true,
            },
            &write_options,
        )?;
        Ok(Deleted {
            finished: st.get(rt, ns, name).is_none(),
            object: written.object,
        })
    }

    /// Brings dependent state in line after a change: garbage collection by owner references,
    /// foreground and orphan deletion, terminating namespaces and CRDs. Repeats until nothing
    /// changes.
    fn settle(&self, st: &mut State) {
        for _ in 0..100 {
            if !self.settle_once(st) {
                return;
            }
        }
    }

    fn settle_once(&self, st: &mut State) -> bool {
        let mut live: BTreeMap<String, (Arc<ResourceType>, Value)> = BTreeMap::new();
        for rt in st.types.clone() {
            if let Some(objects) = st.objects.get(&type_key(&rt)) {
                for object in objects.values() {
                    live.insert(
                        meta::uid_of(object).to_string(),
                        (rt.clone(), object.clone()),
                    );
                }
            }
        }
        let mut changed = false;
        let background = DeleteOptions::default();
        for (uid, (rt, snapshot)) in &live {
            let ns = meta::namespace_of(snapshot).to_string();
            let name = meta::name_of(snapshot).to_string();
            // Earlier steps of this pass may have changed or removed it.
            let Some(current) = st
                .get(rt, &ns, &name)
                .filter(|o| meta::uid_of(o) == uid)
                .cloned()
            else {
                continue;
            };
            let object = &current;
            let owners = meta::owner_uids(object);
            if !owners.is_empty() {
                let dead: Vec<&String> = owners.iter().filter(|u| !live.contains_key(*u)).collect();
                let foreground_owner = owners.iter().any(|u| {
                    live.get(u).is_some_and(|(_, o)| {
                        meta::is_terminating(o)
                            && meta::finalizers_of(o).iter().any(|f| f == FOREGROUND)
                    })
                });
                let orphaning: Vec<&String> = owners
                    .iter()
                    .filter(|u| {
                        live.get(*u).is_some_and(|(_, o)| {
                            meta::is_terminating(o)
                                && meta::finalizers_of(o).iter().any(|f| f == ORPHAN)
                        })
                    })
                    .collect();
                if (dead.len() == owners.len() || foreground_owner) && !meta::is_terminating(object)
                {
                    let options = DeleteOptions {
                        propagation: foreground_owner.then_some(Propagation::Foreground),
                        ..background.clone()
                    };
                    changed |= self.delete_locked(st, rt, &ns, &name, &options).is_ok();
                    continue;
                }
                if !dead.is_empty() || !orphaning.is_empty() {
                    let mut new = object.clone();
                    if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| {
                            let uid = r["uid"].as_str().unwrap_or_default().to_string();
                            !dead.contains(&&uid) && !orphaning.contains(&&uid)
                        });
                    }
                    changed |= self
                        .write(
                            st,
                            rt,
                            Change {
                                old: Some(object.clone()),
                                new,
                                scope: Scope::Whole,
                                manager: None,
                                by_server: false,
                            },
                            &WriteOptions::default(),
                        )
                        .is_ok();
                    continue;
                }
            }
            if !meta::is_terminating(object) {
                continue;
            }
            let finalizers = meta::finalizers_of(object);
            let has_dependents = live
                .values()
                .any(|(_, o)| meta::owner_uids(o).iter().any(|u| u == uid));
            let mut remove = Vec::new();
            if finalizers.iter().any(|f| f == FOREGROUND) && !has_dependents {
                remove.push(FOREGROUND);
            }
            if finalizers.iter().any(|f| f == ORPHAN) && !has_dependents {
                remove.push(ORPHAN);
            }
            if rt.group.is_empty() && rt.plural == "namespaces" {
                changed |= self.finish_namespace(st, &name);
                continue;
            }
            if rt.crd.is_none()
                && rt.plural == "customresourcedefinitions"
                && finalizers.iter().any(|f| f == CRD_CLEANUP)
            {
                let instances: Vec<(Arc<ResourceType>, Value)> = st
                    .types
                    .iter()
                    .filter(|t| t.crd.as_deref() == Some(name.as_str()))
                    .flat_map(|t| {
                        st.objects
                            .get(&type_key(t))
                            .map(|o| {
                                o.values()
                                    .map(|v| (t.clone(), v.clone()))
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                if instances.is_empty() {
                    remove.push(CRD_CLEANUP);
                } else {
                    for (instance_type, instance) in instances {
                        if !meta::is_terminating(&instance) {
                            let ns = meta::namespace_of(&instance).to_string();
                            let instance_name = meta::name_of(&instance).to_string();
                            changed |= self
                                .delete_locked(st, &instance_type, &ns, &instance_name, &background)
                                .is_ok();
                        }
                    }
                }
            }
            if !remove.is_empty() {
                let kept: Vec<String> = finalizers
                    .into_iter()
                    .filter(|f| !remove.contains(&f.as_str()))
                    .collect();
                let mut new = object.clone();
                meta::set_finalizers(&mut new, &kept);
                changed |= self
                    .write(
                        st,
                        rt,
                        Change {
                            old: Some(object.clone()),
                            new,
                            scope: Scope::Whole,
                            manager: None,
                            by_server: false,
                        },
                        &WriteOptions::default(),
                    )
                    .is_ok();
            }
        }
        changed
    }

    /// Deletes what is left in a terminating namespace; removes it once it is empty.
    fn finish_namespace(&self, st: &mut State, namespace: &str) -> bool {
        let mut changed = false;
        let mut remaining = 0;
        for rt in st.types.clone().iter().filter(|t| t.namespaced) {
            let names: Vec<(String, bool)> = st
                .objects
                .get(&type_key(rt))
                .map(|objects| {
                    objects
                        .iter()
                        .filter(|((ns, _), _)| ns == namespace)
                        .map(|((_, name), o)| (name.clone(), meta::is_terminating(o)))
                        .collect()
                })
                .unwrap_or_default();
            remaining += names.len();
            for (name, terminating) in names {
                if !terminating {
                    let force = DeleteOptions {
                        grace_period_seconds: Some(0),
                        ..DeleteOptions::default()
                    };
                    changed |= self.delete_locked(st, rt, namespace, &name, &force).is_ok();
                }
            }
        }
        if remaining == 0 {
            let namespaces = st
                .types
                .iter()
                .find(|t| t.group.is_empty() && t.plural == "namespaces")
                .cloned()
                .expect("built-in");
            if let Some(object) = st.get(&namespaces, "", namespace).cloned() {
                st.revision += 1;
                let mut gone = object;
                gone["metadata"]["resourceVersion"] = json!(st.revision.to_string());
                st.objects
                    .entry(type_key(&namespaces))
                    .or_default()
                    .remove(&object_key("", namespace));
                self.publish(st, &namespaces, EventKind::Deleted, gone, None);
                changed = true;
            }
        }
        changed
    }

    fn register_crd(&self, st: &mut State, crd: &Value) {
        let name = meta::name_of(crd).to_string();
        let Ok(types) = types_of_crd(crd) else {
            return;
        };
        st.types.retain(|t| t.crd.as_deref() != Some(name.as_str()));
        st.types.extend(types.into_iter().map(Arc::new));
    }

    fn unregister_if_crd(&self, st: &mut State, rt: &ResourceType, object: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            let name = meta::name_of(object);
            st.types.retain(|t| t.crd.as_deref() != Some(name));
        }
    }
}

/// One change for [`Store::write`]: the stored object (none on create), the new one, which
/// part of it the write may change, and who made it (`None`: the server, or an apply that
/// recorded its own managed fields).
struct Change<'a> {
    old: Option<Value>,
    new: Value,
    scope: Scope,
    manager: Option<&'a str>,
    /// The server itself may set `deletionTimestamp` and `deletionGracePeriodSeconds`.
    by_server: bool,
}

/// The object a patch makes of `live` (as the client sees it; `None` when it does not exist),
/// and the manager the write is to be recorded under: `None` for an apply, which records its
/// own managed fields.
fn patched_object<'a>(
    rt: &ResourceType,
    name: &str,
    live: Option<Value>,
    patch: Patch,
    scope: Scope,
    status: bool,
    options: &'a WriteOptions,
) -> Result<(Value, Option<&'a str>), ApiError> {
    match (patch, live) {
        (Patch::Apply { config, force }, live) => {
            if options.manager.is_empty() {
                return Err(ApiError::Invalid {
                    kind: "PatchOptions".into(),
                    group: "meta.k8s.io".into(),
                    name: String::new(),
                    causes: vec![FieldError::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                });
            }
            if config["apiVersion"].as_str() != Some(&rt.api_version())
                || config["kind"].as_str() != Some(&rt.kind)
            {
                return Err(ApiError::BadRequest(format!(
                    "the apply configuration must have apiVersion {} and kind {}",
                    rt.api_version(),
                    rt.kind
                )));
            }
            // The name may be left out of an apply configuration: the URL names the object.
            let mut config = config;
            match meta::name_of(&config) {
                "" => config["metadata"]["name"] = json!(name),
                given if given != name => {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({given}) does not match the name on the URL \
                         ({name})"
                    )))
                }
                _ => {}
            }
            let now = meta::now();
            match live {
                None if status => Err(rt.not_found(name)),
                None => {
                    let empty = json!({"apiVersion": rt.api_version(), "metadata": {}});
                    let applied =
                        fields::apply(&empty, &config, &options.manager, scope, true, &now)?;
                    let mut body = config;
                    body["metadata"]["managedFields"] =
                        applied["metadata"]["managedFields"].clone();
                    Ok((body, None))
                }
                Some(live) => Ok((
                    fields::apply(&live, &config, &options.manager, scope, force, &now)?,
                    None,
                )),
            }
        }
        (_, None) => Err(rt.not_found(name)),
        (patch, Some(live)) => {
            let mut patched = live.clone();
            match patch {
                Patch::Merge(body) => json_patch::merge(&mut patched, &body),
                Patch::Strategic(body) => {
                    if rt.crd.is_some() {
                        return Err(ApiError::UnsupportedMediaType(
                            "the body of the request was in an unknown format - accepted \
                             media types include: application/json-patch+json, \
                             application/merge-patch+json, application/apply-patch+yaml"
                                .into(),
                        ));
                    }
                    crate::kube::patch::strategic_merge(&mut patched, &body);
                }
                Patch::Json(body) => crate::kube::patch::json_patch(&mut patched, body)?,
                Patch::Apply { .. } => unreachable!("matched above"),
            }
            if let Some(version) = patched["metadata"]["resourceVersion"].as_str() {
                if Some(version) != live["metadata"]["resourceVersion"].as_str() {
                    return Err(ApiError::modified(rt.group_resource(), name));
                }
            }
            Ok((patched, Some(options.manager.as_str())))
        }
    }
}

impl Written {
    fn into_view(mut self, rt: &ResourceType) -> Written {
        self.object = views::to_view(rt, self.object);
        self
    }
}

/// A change to a Scale: a whole new one (PUT) or a patch.
#[derive(Debug, Clone)]
pub enum ScaleChange {
    Replace(Value),
    Patch(Patch),
}

impl State {
    /// The type whose objects `rt` serves: itself, or the one it is a view of.
    fn storage(&self, rt: &ResourceType) -> Arc<ResourceType> {
        let (group, version, plural) = views::storage_of(rt).unwrap_or((
            rt.group.as_str(),
            rt.version.as_str(),
            rt.plural.as_str(),
        ));
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
            .unwrap_or_else(|| Arc::new(rt.clone()))
    }

    fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        let ns = if rt.namespaced { namespace } else { "" };
        self.objects.get(&type_key(rt))?.get(&object_key(ns, name))
    }
}

/// The receiving end of a watch.
pub struct Watcher {
    store: Arc<Store>,
    /// The storage the watched type's objects are in, and the type as the client sees it.
    group: String,
    plural: String,
    view: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    pending: VecDeque<Arc<WatchEvent>>,
    initial_end: Option<u64>,
    receiver: broadcast::Receiver<Arc<WatchEvent>>,
}

/// What a watch delivers next.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Event(EventKind, Value),
    /// The end of the initial events of a `sendInitialEvents` watch, at this revision.
    InitialEventsEnd(u64),
    /// The watcher fell too far behind the store; the client must watch again.
    Lagged,
}

impl Watcher {
    /// The next event for this watch; `None` only if the store is gone.
    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if let Some(item) = self.filter(&event) {
                    return Some(item);
                }
                continue;
            }
            if let Some(revision) = self.initial_end.take() {
                return Some(WatchItem::InitialEventsEnd(revision));
            }
            match self.receiver.recv().await {
                Ok(event) => {
                    if let Some(item) = self.filter(&event) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(WatchItem::Lagged),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The store's revision, if this watcher has received every change up to it — the
    /// resourceVersion a BOOKMARK may carry.
    pub fn bookmark_revision(&self) -> Option<u64> {
        let st = self.store.lock();
        (self.pending.is_empty() && self.initial_end.is_none() && self.receiver.is_empty())
            .then_some(st.revision)
    }

    fn filter(&self, event: &WatchEvent) -> Option<WatchItem> {
        if event.group != self.group || event.plural != self.plural {
            return None;
        }
        if let Some(ns) = &self.namespace {
            if meta::namespace_of(&event.object) != ns {
                return None;
            }
        }
        let selected = |object: &Value| {
            self.labels.matches(&object["metadata"]["labels"]) && self.fields.matches(object)
        };
        let now = selected(&event.object);
        let kind = match (event.kind, event.previous.as_ref().map(selected)) {
            (EventKind::Modified, Some(false)) if now => EventKind::Added,
            (EventKind::Modified, Some(true)) if !now => EventKind::Deleted,
            (kind, _) if now => kind,
            _ => return None,
        };
        Some(WatchItem::Event(
            kind,
            views::to_view(&self.view, event.object.clone()),
        ))
    }
}

/// Whether a terminating object has nothing left to wait for: no finalizers, no grace period
/// (a pod's kubelet ends it with a zero one), and not a namespace (emptied first).
fn deletion_complete(rt: &ResourceType, object: &Value) -> bool {
    meta::is_terminating(object)
        && meta::finalizers_of(object).is_empty()
        && object["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && !(rt.group.is_empty() && rt.plural == "namespaces")
}

fn resource_version_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn scope_of(rt: &ResourceType, status: bool) -> Scope {
    match (rt.status, status) {
        (_, true) => Scope::Status,
        (true, false) => Scope::AllButStatus,
        (false, false) => Scope::Whole,
    }
}

/// What `metadata.generation` tracks: everything but metadata, and status where the type
/// has a status subresource.
fn spec_of(object: &Value, rt: &ResourceType) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        if rt.status {
            map.remove("status");
        }
    }
    copy
}

/// The body of a PUT or apply must name the object of the path.
fn check_body_identity(
    rt: &ResourceType,
    namespace: &str,
    name: &str,
    body: &Value,
) -> Result<(), ApiError> {
    let body_name = meta::name_of(body);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_namespace = meta::namespace_of(body);
    if rt.namespaced && !body_namespace.is_empty() && body_namespace != namespace {
        return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    Ok(())
}

/// What the API server fills in on create: status reset where the status is the system's,
/// and the fields particular kinds get.
fn prepare_create(rt: &ResourceType, object: &mut Value) {
    let map = object.as_object_mut().expect("objects are maps");
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        ("", "namespaces") => {
            let name = object["metadata"]["name"].clone();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        ("", "persistentvolumeclaims") => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "nodes") => {}
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            map.remove("status");
            let mut finalizers = meta::finalizers_of(object);
            if !finalizers.iter().any(|f| f == CRD_CLEANUP) {
                finalizers.push(CRD_CLEANUP.into());
            }
            meta::set_finalizers(object, &finalizers);
        }
        _ if rt.status => {
            map.remove("status");
        }
        _ => {}
    }
}

/// A CRD's status as the API server keeps it: names accepted, established, stored versions.
fn crd_status(crd: &Value, old: Option<&Value>) -> Value {
    let since = old
        .and_then(|o| {
            o["status"]["conditions"][0]["lastTransitionTime"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(meta::now);
    let condition = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message});
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|versions| {
            versions
                .iter()
                .filter(|v| v["storage"] == json!(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let terminating = meta::is_terminating(crd);
    let mut conditions = vec![
        condition("NamesAccepted", "NoConflicts", "no conflicts found"),
        condition(
            "Established",
            "InitialNamesAccepted",
            "the initial names have been accepted",
        ),
    ];
    if terminating {
        conditions.push(condition(
            "Terminating",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "conditions": conditions,
        "storedVersions": stored,
    })
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

fn encode_continue(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect();
    let text = String::from_utf8(bytes?).map_err(|_| bad())?;
    let (namespace, name) = text.split_once('/').ok_or_else(bad)?;
    Ok((namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(store: &Store, plural: &str) -> Arc<ResourceType> {
        store.resource_type("", "v1", plural).unwrap()
    }

    fn options() -> WriteOptions {
        WriteOptions {
            manager: "test".into(),
            ..WriteOptions::default()
        }
    }

    fn config_map(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
    }

    #[test]
    fn create_assigns_metadata_and_refuses_duplicates() {
        let store = Store::new(100);
        let maps = core(&store, "configmaps");
        let created = store
            .create(&maps, "default", config_map("a"), &options())
            .unwrap()
            .object;
        assert_eq!(meta::uid_of(&created).len(), 36);
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(
            created["metadata"]["resourceVersion"],
            store.revision().to_string()
        );
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "test");
        let again = store.create(&maps, "default", config_map("a"), &options());
        assert_eq!(again.unwrap_err().code(), 409);
        let missing = store.create(&maps, "nowhere", config_map("a"), &options());
        assert_eq!(
            missing.unwrap_err().message(),
            "namespaces \"nowhere\" not found"
        );
    }

    #[test]
    fn status_and_spec_are_written_through_their_own_paths() {
        let store = Store::new(100);
        let sets = store.resource_type("apps", "v1", "statefulsets").unwrap();
        let body =
            json!({"metadata": {"name": "kv"}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
        let created = store
            .create(&sets, "default", body, &options())
            .unwrap()
            .object;
        assert!(
            created.get("status").is_none(),
            "status is the system's on create"
        );

        let mut stale = created.clone();
        stale["spec"]["replicas"] = json!(2);
        store
            .update(&sets, "default", "kv", stale.clone(), false, &options())
            .unwrap();
        let conflict = store.update(&sets, "default", "kv", stale, false, &options());
        assert_eq!(conflict.unwrap_err().code(), 409);

        let mut status = store.get(&sets, "default", "kv").unwrap();
        status["status"] = json!({"replicas": 2});
        status["spec"]["replicas"] = json!(7);
        let written = store
            .update(&sets, "default", "kv", status, true, &options())
            .unwrap()
            .object;
        assert_eq!(written["status"]["replicas"], 2);
        assert_eq!(
            written["spec"]["replicas"], 2,
            "the status path ignores spec"
        );
        assert_eq!(written["metadata"]["generation"], 2);

        let patch = Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 0}}));
        let patched = store
            .patch(&sets, "default", "kv", patch, false, &options())
            .unwrap()
            .object;
        assert_eq!(patched["spec"]["replicas"], 3);
        assert_eq!(
            patched["status"]["replicas"], 2,
            "the main path ignores status"
        );
        assert_eq!(patched["metadata"]["generation"], 3);

        let scale = store
            .update_scale(
                &sets,
                "default",
                "kv",
                ScaleChange::Patch(Patch::Merge(json!({"spec": {"replicas": 5}}))),
                &options(),
            )
            .unwrap();
        assert_eq!(scale["spec"]["replicas"], 5);
        assert_eq!(scale["status"]["replicas"], 2);
        assert_eq!(
            store.get(&sets, "default", "kv").unwrap()["spec"]["replicas"],
            5
        );
    }

    #[test]
    fn namespace_deletion_waits_for_its_contents() {
        let store = Store::new(100);
        let (namespaces, maps) = (core(&store, "namespaces"), core(&store, "configmaps"));
        store
            .create(
                &namespaces,
                "",
                json!({"metadata": {"name": "scratch"}}),
                &options(),
            )
            .unwrap();
        let mut held = config_map("held");
        held["metadata"]["finalizers"] = json!(["example.com/hold"]);
        store.create(&maps, "scratch", held, &options()).unwrap();
        store
            .create(&maps, "scratch", config_map("plain"), &options())
            .unwrap();

        let deleted = store
            .delete(&namespaces, "", "scratch", &DeleteOptions::default())
            .unwrap();
        assert!(!deleted.finished);
        let namespace = store.get(&namespaces, "", "scratch").unwrap();
        assert_eq!(namespace["status"]["phase"], "Terminating");
        assert!(store.get(&maps, "scratch", "plain").is_err());
        assert_eq!(
            store
                .create(&maps, "scratch", config_map("new"), &options())
                .unwrap_err()
                .code(),
            403
        );

        let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
        store
            .patch(&maps, "scratch", "held", release, false, &options())
            .unwrap();
        assert!(store.get(&namespaces, "", "scratch").is_err());
    }

    fn owned_by(name: &str, owner: &Value) -> Value {
        let mut object = config_map(name);
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "ConfigMap", "name": meta::name_of(owner),
            "uid": meta::uid_of(owner),
        }]);
        object
    }

    #[test]
    fn orphan_deletion_keeps_dependents_and_background_collects_them() {
        let store = Store::new(100);
        let maps = core(&store, "configmaps");
        let owner = store
            .create(&maps, "default", config_map("owner"), &options())
            .unwrap()
            .object;
        store
            .create(&maps, "default", owned_by("kept", &owner), &options())
            .unwrap();
        let orphan = DeleteOptions {
            propagation: Some(Propagation::Orphan),
            ..DeleteOptions::default()
        };
        store.delete(&maps, "default", "owner", &orphan).unwrap();
        assert!(store.get(&maps, "default", "owner").is_err());
        let kept = store.get(&maps, "default", "kept").unwrap();
        assert_eq!(kept["metadata"]["ownerReferences"], json!([]));

        let owner = store
            .create(&maps, "default", config_map("owner2"), &options())
            .unwrap()
            .object;
        store
            .create(&maps, "default", owned_by("child", &owner), &options())
            .unwrap();
        store
            .create(
                &maps,
                "default",
                owned_by("grandchild", &store.get(&maps, "default", "child").unwrap()),
                &options(),
            )
            .unwrap();
        store
            .delete(&maps, "default", "owner2", &DeleteOptions::default())
            .unwrap();
        assert!(store.get(&maps, "default", "child").is_err());
        assert!(store.get(&maps, "default", "grandchild").is_err());
    }

    #[test]
    fn a_pod_on_a_node_is_deleted_gracefully_until_its_kubelet_forces_it() {
        let store = Store::new(100);
        let pods = core(&store, "pods");
        let pod =
            json!({"metadata": {"name": "kv-0"}, "spec": {"nodeName": "node-a", "containers": []}});
        let created = store
            .create(&pods, "default", pod, &options())
            .unwrap()
            .object;
        assert_eq!(created["status"]["phase"], "Pending");
        let graceful = store
            .delete(&pods, "default", "kv-0", &DeleteOptions::default())
            .unwrap();
        assert!(!graceful.finished);
        assert_eq!(
            graceful.object["metadata"]["deletionGracePeriodSeconds"],
            30
        );
        let force = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        assert!(
            store
                .delete(&pods, "default", "kv-0", &force)
                .unwrap()
                .finished
        );
        assert!(store.get(&pods, "default", "kv-0").is_err());
    }

    fn kvcluster_crd() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crds/kvclusters.ferrokv.io.yaml");
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_crd_serves_its_kind_until_deleted_with_its_instances() {
        let store = Store::new(100);
        let crds = store
            .resource_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let created = store
            .create(&crds, "", kvcluster_crd(), &options())
            .unwrap()
            .object;
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let clusters = store
            .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
            .unwrap();
        let kvc = json!({"apiVersion": "ferrokv.io/v1alpha1", "kind": "KVCluster",
                         "metadata": {"name": "kv"}, "spec": {}});
        let kvc = store
            .create(&clusters, "default", kvc, &options())
            .unwrap()
            .object;
        assert_eq!(kvc["spec"]["replicas"], 3, "defaulted from the schema");
        assert_eq!(kvc["spec"]["storage"]["wal"]["size"], "2Gi");

        store
            .delete(
                &crds,
                "",
                "kvclusters.ferrokv.io",
                &DeleteOptions::default(),
            )
            .unwrap();
        assert!(store.get(&crds, "", "kvclusters.ferrokv.io").is_err());
        assert!(store
            .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
            .is_none());
    }

    #[test]
    fn a_crd_with_a_rule_outside_the_cel_subset_is_refused() {
        let store = Store::new(100);
        let crds = store
            .resource_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let mut crd = kvcluster_crd();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
            json!([{"rule": "self.metadata.name.matches('^kv')"}]);
        let error = store.create(&crds, "", crd, &options()).unwrap_err();
        assert_eq!(error.code(), 422);
        assert!(
            error
                .message()
                .contains("function 'matches' is not supported"),
            "{}",
            error.message()
        );
        assert!(store
            .resource_type("ferrokv.io", "v1alpha1", "kvclusters")
            .is_none());
    }

    #[test]
    fn lists_filter_by_label_and_page_with_continue() {
        let store = Store::new(100);
        let maps = core(&store, "configmaps");
        for (name, team) in [("a", "kv"), ("b", "web"), ("c", "kv"), ("d", "kv")] {
            let mut object = config_map(name);
            object["metadata"]["labels"] = json!({"team": team});
            store.create(&maps, "default", object, &options()).unwrap();
        }
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .list(
                    &maps,
                    Some("default"),
                    &ListOptions {
                        labels: LabelSelector::parse("team=kv").unwrap(),
                        limit: Some(2),
                        continue_token: token,
                        ..ListOptions::default()
                    },
                )
                .unwrap();
            names.extend(page.items.iter().map(|o| meta::name_of(o).to_string()));
            token = page.continue_token;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(names, ["a", "c", "d"]);
    }

    #[test]
    fn an_apply_creates_the_object_and_may_leave_the_name_to_the_url() {
        let store = Store::new(100);
        let maps = core(&store, "configmaps");
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}});
        let apply = |config: Value| Patch::Apply {
            config,
            force: false,
        };
        let created = store
            .patch(
                &maps,
                "default",
                "applied",
                apply(config.clone()),
                false,
                &options(),
            )
            .unwrap();
        assert!(created.created);
        assert_eq!(created.object["metadata"]["name"], "applied");
        assert_eq!(
            created.object["metadata"]["managedFields"][0]["operation"],
            "Apply"
        );
        let again = store
            .patch(
                &maps,
                "default",
                "applied",
                apply(config),
                false,
                &options(),
            )
            .unwrap();
        assert_eq!(
            again.object["metadata"]["resourceVersion"],
            created.object["metadata"]["resourceVersion"]
        );
        let renamed =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
        let error = store.patch(
            &maps,
            "default",
            "applied",
            apply(renamed),
            false,
            &options(),
        );
        assert_eq!(error.unwrap_err().code(), 400);
    }

    #[test]
    fn events_written_through_events_k8s_io_are_core_events() {
        let store = Store::new(100);
        let events_v1 = store
            .resource_type("events.k8s.io", "v1", "events")
            .unwrap();
        let core_events = core(&store, "events");
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "kv.1"}, "reason": "StatefulSetScaled", "note": "to 3",
            "regarding": {"kind": "KVCluster", "name": "kv", "namespace": "default"}});
        store
            .create(&events_v1, "default", event, &options())
            .unwrap();
        let core_event = store.get(&core_events, "default", "kv.1").unwrap();
        assert_eq!(core_event["message"], "to 3");
        assert_eq!(core_event["involvedObject"]["name"], "kv");
        let by_regarding = ListOptions {
            fields: FieldSelector::parse("regarding.name=kv", "Event").unwrap(),
            ..ListOptions::default()
        };
        let listed = store.list(&events_v1, None, &by_regarding).unwrap();
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0]["note"], "to 3");
        let patched = store
            .patch(
                &events_v1,
                "default",
                "kv.1",
                Patch::Merge(json!({"deprecatedCount": 2})),
                false,
                &options(),
            )
            .unwrap()
            .object;
        assert_eq!(patched["deprecatedCount"], 2);
        assert_eq!(
            store.get(&core_events, "default", "kv.1").unwrap()["count"],
            2
        );
    }

    #[tokio::test]
    async fn a_watch_from_zero_replays_existing_objects_then_follows_changes() {
        let store = Store::new(100);
        let maps = core(&store, "configmaps");
        store
            .create(&maps, "default", config_map("old"), &options())
            .unwrap();
        let mut watcher = store
            .watch(
                &maps,
                Some("default"),
                WatchOptions {
                    resource_version: Some("0".into()),
                    ..WatchOptions::default()
                },
            )
            .unwrap();
        store
            .create(&maps, "default", config_map("new"), &options())
            .unwrap();
        store
            .delete(&maps, "default", "old", &DeleteOptions::default())
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            match watcher.next().await.unwrap() {
                WatchItem::Event(kind, object) => {
                    seen.push(format!("{} {}", kind.as_str(), meta::name_of(&object)))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["ADDED old", "ADDED new", "DELETED old"]);
        assert_eq!(watcher.bookmark_revision(), Some(store.revision()));
    }
}
