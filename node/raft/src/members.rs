//! Who the members are and where they listen: the registry the apply stage keeps from the
//! configuration changes it applies, read by the peer transport (where to send) and the server
//! (MemberList). Which members vote is Raft's business (`RaftStatus`); this holds names, peer
//! URLs and the IDs removed for good.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use super::types::MemberNode;

#[derive(Clone, Default)]
pub struct Members {
    inner: Arc<RwLock<Registry>>,
}

#[derive(Default)]
struct Registry {
    nodes: BTreeMap<u64, MemberNode>,
    removed: BTreeSet<u64>,
    /// Peer URLs senders announced on the wire, for members this one has not applied yet
    /// (a joining member answers the leader before it learns the membership).
    announced: HashMap<u64, String>,
}

impl Members {
    /// Replaces what the registry knows with the applied state.
    pub fn reset(&self, nodes: BTreeMap<u64, MemberNode>, removed: BTreeSet<u64>) {
        let mut registry = self.inner.write().unwrap_or_else(|p| p.into_inner());
        registry.nodes = nodes;
        registry.removed = removed;
    }

    pub fn nodes(&self) -> BTreeMap<u64, MemberNode> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .clone()
    }

    pub fn node(&self, id: u64) -> Option<MemberNode> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&id)
            .cloned()
    }

    /// Where to reach member `id`: its first peer URL.
    pub fn peer_url(&self, id: u64) -> Option<String> {
        let registry = self.inner.read().unwrap_or_else(|p| p.into_inner());
        registry
            .nodes
            .get(&id)
            .and_then(|n| n.peer_urls.first().cloned())
            .or_else(|| registry.announced.get(&id).cloned())
    }

    /// Whether `id` was removed from the cluster (it may never come back under that ID).
    pub fn is_removed(&self, id: u64) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .removed
            .contains(&id)
    }

    /// Remembers the peer URL a sender announced, unless the membership already names one.
    pub fn announce(&self, id: u64, url: &str) {
        if url.is_empty() {
            return;
        }
        let known = {
            let registry = self.inner.read().unwrap_or_else(|p| p.into_inner());
            registry.nodes.contains_key(&id)
                || registry.announced.get(&id).map(String::as_str) == Some(url)
        };
        if !known {
            self.inner
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .announced
                .insert(id, url.to_string());
        }
    }
}
