//! ferrokv-operator: runs ferrokv clusters declared as `KVCluster` resources.
//!
//! One reconcile observes the cluster ([`observe`]), asks the pure [`planner`] for the next
//! single step, carries it out ([`controller`]) and writes status ([`status`]). The objects the
//! operator owns are built in [`children`], from names fixed in [`names`].

pub mod bootstrap;
pub mod children;
pub mod crd;
pub mod names;
pub mod planner;
