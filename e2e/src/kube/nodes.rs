//! [`NodePool`]: the nodes of the hermetic cluster and what keeps pods on them — a kubelet per
//! Node, the scheduler, the node lifecycle controller and the cluster DNS — driven from the
//! [`Store`] in-process.
//!
//! Like a cloud cluster:
//! - One pod network: a [`HostNetwork`] of `nodes × capacity` hosts, node `i` owning hosts
//!   `i·capacity ..`; every pod has its own address and reaches every other pod, whatever its
//!   node. The test process reaches every pod too, from the network's root address (also every
//!   node's `InternalIP` and `hostIP`: nodes have no network of their own).
//! - Network-attached, dynamically provisioned volumes: a claim is bound to volume `pvc-UID`, a
//!   directory under `volumes/` of the pool's directory ([`NodePool::claim_dir`]), the same
//!   whichever node mounts it (a claim made again under a deleted one's name gets a new, empty
//!   volume), so a pod recreated on another node finds its data. (Nothing stops two nodes from mounting one claim at once:
//!   there is no attach/detach controller.)
//! - Nodes fail: [`NodePool::fail_node`] cuts a node's power — its pods' processes are killed at
//!   once and its kubelet never writes again. After the grace period the lifecycle controller
//!   marks the node `Unknown` and unreachable and its pods not Ready; the pods stay bound to it
//!   (no taint-based eviction) until force-deleted, and their controller then makes them again on
//!   a live node. A failed node does not come back.
//! - A cluster logging system: a pod's container log holds every start, on any node
//!   ([`NodePool::container_log`]).
//!
//! The parts: [`kubelet`] (one per Node), `scheduler`, `node_lifecycle`,
//! `cluster_dns`. Not here: deleting Node objects (and the pod garbage collection that follows),
//! adding nodes to a running pool, a failed node's recovery, network partitions between nodes
//! (the pool's [`HostNetwork`] could make them, but nothing exposes it yet).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::kube::cluster_dns::ClusterDns;
use crate::kube::kubelet::{self, Kubelet, KubeletConfig, Slot};
use crate::kube::node_lifecycle::NodeLifecycleController;
use crate::kube::scheduler::Scheduler;
use crate::kube::store::Store;
use crate::netns::HostNetwork;

/// kube-controller-manager's default `--node-monitor-grace-period`.
pub const DEFAULT_NODE_MONITOR_GRACE: Duration = Duration::from_secs(40);

/// Settings of a pool.
#[derive(Debug, Clone)]
pub struct NodePoolConfig {
    /// Node names, e.g. `node-0`, `node-1`, `node-2`.
    pub nodes: Vec<String>,
    /// How many pods each node runs at once (its `allocatable.pods`).
    pub capacity: usize,
    /// Where claims' directories, container logs, nodes' own files and the test's hosts file go.
    pub dir: PathBuf,
    /// Programs containers may run, by the name in `command[0]`; the same on every node.
    pub programs: BTreeMap<String, PathBuf>,
    /// Images the registry does not have: pods naming one wait in `ImagePullBackOff`.
    pub unavailable_images: BTreeSet<String>,
    /// How long a node may go without a heartbeat before it is marked `Unknown`
    /// ([`DEFAULT_NODE_MONITOR_GRACE`] in Kubernetes; a few seconds in tests). Kubelets renew
    /// their heartbeat four times per grace period, at least every second and at most every 10 s.
    pub node_monitor_grace: Duration,
}

/// Running nodes; see the module documentation. Dropping the pool kills every process before the
/// network goes.
pub struct NodePool {
    // Fields drop in this order: controllers, then the kubelets and their processes, then the
    // network the processes ran in.
    _scheduler: Scheduler,
    _lifecycle: NodeLifecycleController,
    _dns: ClusterDns,
    kubelets: Vec<Kubelet>,
    store: Arc<Store>,
    hosts_file: PathBuf,
    dir: PathBuf,
    _network: HostNetwork,
}

impl NodePool {
    /// Creates the network and the Nodes, and starts every part in the current tokio runtime.
    pub fn start(store: Arc<Store>, config: NodePoolConfig) -> anyhow::Result<NodePool> {
        if config.nodes.is_empty() || config.capacity == 0 {
            bail!("a pool needs at least one node with room for a pod");
        }
        let hosts = config.nodes.len() * config.capacity;
        if hosts > 253 {
            bail!("{hosts} pods do not fit one network of 253 hosts");
        }
        let network = HostNetwork::create(hosts)?;
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let hosts_file = config.dir.join("hosts");
        let mut hosts_files: Vec<PathBuf> = (0..hosts).map(|i| network.hosts_path(i)).collect();
        hosts_files.push(hosts_file.clone());
        let dns = ClusterDns::start(store.clone(), hosts_files)?;

        let heartbeat =
            (config.node_monitor_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut kubelets = Vec::new();
        for (n, node_name) in config.nodes.iter().enumerate() {
            let slots: Vec<Slot> = (n * config.capacity..(n + 1) * config.capacity)
                .map(|i| Slot {
                    namespace: network.namespace(i),
                    address: network.address(i),
                })
                .collect();
            kubelets.push(Kubelet::start(
                store.clone(),
                KubeletConfig {
                    node_name: node_name.clone(),
                    slots,
                    host_ip: network.root_address(),
                    dir: config.dir.clone(),
                    programs: config.programs.clone(),
                    unavailable_images: config.unavailable_images.clone(),
                    heartbeat,
                },
            )?);
        }
        Ok(NodePool {
            _scheduler: Scheduler::start(store.clone()),
            store: store.clone(),
            _lifecycle: NodeLifecycleController::start(store, config.node_monitor_grace),
            _dns: dns,
            kubelets,
            hosts_file,
            dir: config.dir,
            _network: network,
        })
    }

    /// The test process's address on the pod network: a server the test runs on it (and not on
    /// loopback, which every pod has its own of) is reachable from every pod, and from the
    /// test process and the operator too.
    pub fn host_address(&self) -> std::net::Ipv4Addr {
        self._network.root_address()
    }

    /// A command that runs `program` in the test's own network namespace but resolving the
    /// cluster's names (pods, Services) as the pods do: a private mount namespace with the
    /// cluster's hosts file over `/etc/hosts`. The child's pid is the program's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&self.hosts_file)
            .arg(program);
        command
    }

    /// A command that runs `program` on pod `namespace/pod`'s network, as `kubectl exec` would
    /// (but with the test's file system): `None` unless the pod's container runs on a live node.
    pub fn exec(
        &self,
        namespace: &str,
        pod: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Option<Command> {
        let network_namespace = self
            .kubelets
            .iter()
            .find_map(|kubelet| kubelet.network_namespace_of(namespace, pod))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &network_namespace])
            .arg(program);
        Some(command)
    }

    /// The log of a pod's container, every start of it on whichever node, for a failing test to
    /// print.
    pub fn container_log(&self, namespace: &str, pod: &str) -> String {
        std::fs::read_to_string(kubelet::log_path(&self.dir, namespace, pod)).unwrap_or_default()
    }

    /// What a failing test prints of the pool: the names the pods resolve, and the last lines
    /// of every container's log (every start of it, on whichever node).
    pub fn failure_report(&self, lines: usize) -> String {
        let mut report = format!(
            "--- cluster names ({}) ---\n{}",
            self.hosts_file.display(),
            std::fs::read_to_string(&self.hosts_file).unwrap_or_else(|e| format!("({e})"))
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            report.push_str(&format!(
                "\n--- last {lines} lines of {} ---\n{}",
                log.display(),
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        report
    }

    /// The directory that holds the data of the claim `namespace/claim` as it is now, on every
    /// node (a claim deleted and made again under the same name has another volume).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> anyhow::Result<PathBuf> {
        let claims = self
            .store
            .resource_type("", "v1", "persistentvolumeclaims")
            .expect("built in");
        let live = self
            .store
            .get(&claims, namespace, claim)
            .map_err(|e| anyhow::anyhow!("claim {claim:?}: {e}"))?;
        Ok(kubelet::volume_dir(&self.dir, &kubelet::volume_name(&live)))
    }

    /// Names of the nodes, in the configured order.
    pub fn node_names(&self) -> Vec<String> {
        self.kubelets
            .iter()
            .map(|k| k.node_name().to_string())
            .collect()
    }

    /// Node `node` loses power: SIGKILL to every process of its pods at once (they are gone when
    /// this returns), and its kubelet stops for good. Panics on an unknown node.
    pub fn fail_node(&self, node: &str) {
        self.kubelets
            .iter()
            .find(|k| k.node_name() == node)
            .unwrap_or_else(|| panic!("no node {node:?} in the pool"))
            .power_off();
    }

    /// SIGKILL to the container of pod `namespace/pod`; its kubelet restarts it after the
    /// back-off, as a crashed container. False when no live node runs it.
    pub fn kill_container(&self, namespace: &str, pod: &str) -> bool {
        self.kubelets
            .iter()
            .any(|k| k.kill_container(namespace, pod))
    }
}
