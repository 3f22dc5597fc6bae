//! Watches: a [`Watcher`] replays the retained history after a resourceVersion (or every
//! existing object), then follows the live changes the store publishes under its lock, filtered
//! by namespace and selectors and shown as the watched type's view.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::{resource_version_of, type_key, EventKind, Store, WatchEvent};
use crate::kube::error::ApiError;
use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::selector::{FieldSelector, LabelSelector};
use crate::kube::views;

#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub resource_version: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Start with ADDED events for every existing object, then a BOOKMARK marking their end.
    pub send_initial_events: bool,
}

impl Store {
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
