//! ferrokv-operator: runs ferrokv clusters declared as `KVCluster` resources.
//!
//! One reconcile observes the cluster ([`observe`], [`membership`]), asks the pure
//! [`planner`] for the next single step, carries it out ([`controller`]) and writes
//! [`status`]. The objects the operator owns are built in [`children`], from names fixed in
//! [`names`]; the bootstrap state members start from is [`bootstrap`]. Backups to object
//! storage, scheduled and on demand, are [`backup`]'s; checking the snapshot a new cluster is
//! restored from is [`restore`]'s. Certificates of `spec.tls` are [`tls`]'s; every etcd client
//! is made from an [`etcd_access::EtcdAccess`] (TLS identity, root credentials). The kubectl
//! plugin `kubectl kvc` is [`plugin`].

pub mod backup;
pub mod bootstrap;
pub mod children;
pub mod controller;
pub mod crd;
pub mod error;
pub mod etcd_access;
pub mod leader_election;
pub mod membership;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod planner;
pub mod plugin;
pub mod restore;
pub mod status;
pub mod tls;
pub mod upgrade;
