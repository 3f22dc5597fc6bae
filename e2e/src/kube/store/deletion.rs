//! Deletion and what follows it: finalizers and `deletionTimestamp`, graceful pod deletion,
//! foreground, background and orphan propagation through owner references (the garbage
//! collector), and the cleanup of terminating namespaces and CRDs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{
    object_key, type_key, Change, DeleteOptions, Deleted, EventKind, Propagation, State, Store,
    WriteOptions, CRD_CLEANUP, FOREGROUND, ORPHAN,
};
use crate::kube::error::ApiError;
use crate::kube::fields::Scope;
use crate::kube::meta;
use crate::kube::resources::ResourceType;

impl Store {
    pub(super) fn delete_locked(
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
    pub(super) fn settle(&self, st: &mut State) {
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
}

/// Whether a terminating object has nothing left to wait for: no finalizers, no grace period
/// (a pod's kubelet ends it with a zero one), and not a namespace (emptied first).
pub(super) fn deletion_complete(rt: &ResourceType, object: &Value) -> bool {
    meta::is_terminating(object)
        && meta::finalizers_of(object).is_empty()
        && object["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && !(rt.group.is_empty() && rt.plural == "namespaces")
}
