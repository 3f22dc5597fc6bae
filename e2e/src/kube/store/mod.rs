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

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::kube::error::{ApiError, FieldError};
use crate::kube::fields::{self, Scope};
use crate::kube::meta;
use crate::kube::resources::{builtin_types, types_of_crd, ResourceType};
use crate::kube::selector::{FieldSelector, LabelSelector};
use crate::kube::views;
use deletion::deletion_complete;

mod deletion;
mod scale;
mod watch;

pub use scale::{selector_string, ScaleChange};
pub use watch::{WatchItem, WatchOptions, Watcher};

/// How many changes the store keeps for watches to resume from by default.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Finalizers the server itself puts on and takes off.
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
mod tests;
