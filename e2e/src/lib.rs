//! End-to-end harness for ferrokv: starts real member processes on loopback and drives them with
//! real clients — Debian's `etcdctl` and the `etcd-client` crate.
//!
//! The harness speaks only etcd's flags and etcd's v3 API, so every test runs unchanged against
//! etcd: `FERROKV_E2E_SERVER=/usr/bin/etcd cargo test -p ferrokv-e2e`. Without that variable the
//! tests run the `ferrokv` binary of this workspace (`cargo build -p ferrokv-node` first).
//!
//! Tests that need separate hosts or network partitions run members in network namespaces:
//! [`netns`] builds the network, [`host_cluster`] runs a cluster on it.
//! [`kube`] is a hermetic Kubernetes API server; the operator tests run the operator binary
//! ([`operator`]) and Debian's `kubectl` ([`kubectl`]) against it. With its StatefulSet
//! controller ([`kube::statefulset`]) and a pool of nodes that can fail ([`kube::nodes`]: a
//! kubelet per node, a scheduler, a node lifecycle controller, one pod network), pods are real
//! member processes and the operator runs whole clusters. `src/bin/hermetic-kube.rs` serves one
//! on its own.
//!
//! [`robustness`] is the randomized fault-injection suite (`scripts/robustness`,
//! `src/bin/robustness.rs`): traffic, nemeses, recorded histories and their checkers.
//!
//! The `ferrokv-bench` load generator lives in this package too (`src/bin/ferrokv-bench/`); its
//! latency statistics are in [`latency`].

pub mod backup_fixture;
pub mod binaries;
pub mod cluster;
pub mod etcdctl;
pub mod host_cluster;
pub mod keyspace;
pub mod kube;
pub mod kube_env;
pub mod kubectl;
pub mod latency;
pub mod netns;
pub mod operator;
pub mod ports;
pub mod robustness;
pub mod s3;

pub use cluster::{ClientCredentials, ClusterBuilder, TestCluster};
pub use etcdctl::{EtcdctlOutput, EtcdctlProcess};
pub use host_cluster::{HostCluster, HostClusterBuilder};
