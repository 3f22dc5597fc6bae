//! The bootstrap state a member starts from: which members `--initial-cluster` names and
//! whether `--initial-cluster-state` is `new` or `existing`.
//!
//! It lives in the cluster's ConfigMap and reaches the pods as environment variables, which the
//! kubelet resolves each time the container starts. A member whose data dir is initialised
//! ignores it (as etcd does), so changing it never disturbs a running member; it matters only to
//! the members of a cluster that is forming and to a member joining an existing cluster.

use std::collections::BTreeMap;

use crate::names::{ClusterNames, INITIAL_CLUSTER_KEY, INITIAL_CLUSTER_STATE_KEY};

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialClusterState {
    /// The members listed form a new cluster together.
    New,
    /// A starting member joins a cluster that already runs.
    Existing,
}

impl InitialClusterState {
    pub fn as_flag_value(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "new" => Some(Self::New),
            "existing" => Some(Self::Existing),
            _ => None,
        }
    }
}

/// The content of the bootstrap ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// Ordinals of the members `--initial-cluster` names, ascending.
    pub members: Vec<u32>,
    pub state: InitialClusterState,
}

impl BootstrapConfig {
    /// A new cluster of members `0..replicas`.
    pub fn new_cluster(replicas: u32) -> Self {
        Self {
            members: (0..replicas).collect(),
            state: InitialClusterState::New,
        }
    }

    /// A running cluster with these members; a member that starts from it joins.
    pub fn existing_cluster(members: impl IntoIterator<Item = u32>) -> Self {
        let mut members: Vec<u32> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        Self {
            members,
            state: InitialClusterState::Existing,
        }
    }

    pub fn to_data(&self, names: &ClusterNames) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                INITIAL_CLUSTER_KEY.to_string(),
                names.initial_cluster(self.members.iter().copied()),
            ),
            (
                INITIAL_CLUSTER_STATE_KEY.to_string(),
                self.state.as_flag_value().to_string(),
            ),
        ])
    }

    /// Reads the ConfigMap's data back; `None` when it was not written by this operator for
    /// this cluster (a member it does not name, a state it does not know).
    pub fn from_data(names: &ClusterNames, data: &BTreeMap<String, String>) -> Option<Self> {
        let state = InitialClusterState::parse(data.get(INITIAL_CLUSTER_STATE_KEY)?)?;
        let mut members = Vec::new();
        let initial_cluster = data.get(INITIAL_CLUSTER_KEY)?;
        for entry in initial_cluster.split(',').filter(|e| !e.is_empty()) {
            let (name, url) = entry.split_once('=')?;
            let ordinal = names.ordinal_of_member(name)?;
            if names.ordinal_of_peer_url(url)? != ordinal {
                return None;
            }
            members.push(ordinal);
        }
        members.sort_unstable();
        Some(Self { members, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_config_map_data() {
        let names = ClusterNames::new("kv", "ns");
        for config in [
            BootstrapConfig::new_cluster(3),
            BootstrapConfig::existing_cluster([2, 0, 1, 3]),
            BootstrapConfig::new_cluster(1),
        ] {
            let data = config.to_data(&names);
            assert_eq!(BootstrapConfig::from_data(&names, &data), Some(config));
        }
    }

    #[test]
    fn config_map_naming_foreign_members_is_not_ours() {
        let names = ClusterNames::new("kv", "ns");
        let data = BTreeMap::from([
            (
                INITIAL_CLUSTER_KEY.to_string(),
                "other-0=http://other-0.other-peer.ns.svc:2380".to_string(),
            ),
            (INITIAL_CLUSTER_STATE_KEY.to_string(), "new".to_string()),
        ]);
        assert_eq!(BootstrapConfig::from_data(&names, &data), None);
    }
}
