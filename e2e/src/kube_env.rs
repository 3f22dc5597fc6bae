//! [`KubeEnv`]: where the operator scenarios run — the hermetic Kubernetes of [`crate::kube`]
//! with the operator binary of this workspace, or a real cluster when `E2E_KUBECONFIG` names
//! one.
//!
//! The scenarios only use what both offer: kubectl, reads of objects, etcdctl and etcd clients
//! reaching the cluster, and a few faults (a node that fails, a data volume that loses its
//! content, an operator killed). On the hermetic cluster the faults are made directly; on a real
//! one:
//! - the operator is the one `scripts/e2e-real-cluster` installed with the Helm chart, in
//!   `E2E_OPERATOR_NAMESPACE` (default `ferrokv-system`); killing it force-deletes its pod and
//!   its Deployment starts another;
//! - each test runs in a namespace of its own, deleted afterwards (kept when the test fails or
//!   with `E2E_KEEP=1`);
//! - clients reach the members through `kubectl port-forward`;
//! - a node fails by running `E2E_FAIL_NODE_COMMAND` with `{node}` replaced by its name (for
//!   kind: `docker stop {node}`), and comes back with `E2E_RESTORE_NODE_COMMAND`;
//! - a data volume loses its content through `kubectl exec`: the member's data dir is emptied
//!   and the member stopped, so that its container restarts on the empty volume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::binaries::{etcdctl_binary, operator_binary, server_binary};
use crate::kube::nodes::{NodePool, NodePoolConfig};
use crate::kube::resources::ResourceType;
use crate::kube::statefulset::StatefulSetController;
use crate::kube::{ApiServer, ServerConfig};
use crate::kubectl::Kubectl;
use crate::operator::RunningOperator;

/// The environment variable naming a real cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "E2E_KUBECONFIG";

/// Name of the KVCluster of `examples/kvcluster.yaml`, which every scenario applies.
pub const CLUSTER: &str = "example";

/// The members' data dir inside their containers (the operator's `DATA_DIR`).
const DATA_DIR: &str = "/var/lib/ferrokv/data";

/// How long a node of the hermetic cluster may miss heartbeats before it is NotReady.
const NODE_MONITOR_GRACE: Duration = Duration::from_secs(4);

/// A kind of object the scenarios read: its API group, version and plural name.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Kind {
    const fn namespaced(group: &'static str, version: &'static str, plural: &'static str) -> Self {
        Self {
            group,
            version,
            plural,
            namespaced: true,
        }
    }

    /// The resource as kubectl names it: `plural.group`.
    fn kubectl_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

pub const PODS: Kind = Kind::namespaced("", "v1", "pods");
pub const CLAIMS: Kind = Kind::namespaced("", "v1", "persistentvolumeclaims");
pub const SERVICES: Kind = Kind::namespaced("", "v1", "services");
pub const CONFIG_MAPS: Kind = Kind::namespaced("", "v1", "configmaps");
pub const SECRETS: Kind = Kind::namespaced("", "v1", "secrets");
pub const STATEFUL_SETS: Kind = Kind::namespaced("apps", "v1", "statefulsets");
pub const DISRUPTION_BUDGETS: Kind = Kind::namespaced("policy", "v1", "poddisruptionbudgets");
pub const KVCLUSTERS: Kind = Kind::namespaced("ferrokv.io", "v1alpha1", "kvclusters");
pub const KVCLUSTERBACKUPS: Kind = Kind::namespaced("ferrokv.io", "v1alpha1", "kvclusterbackups");
pub const EVENTS: Kind = Kind::namespaced("", "v1", "events");
pub const NODES: Kind = Kind {
    group: "",
    version: "v1",
    plural: "nodes",
    namespaced: false,
};

/// Settings of the hermetic cluster; a real cluster is what it is.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Nodes of the hermetic cluster.
    pub nodes: usize,
    /// Pods each hermetic node can run.
    pub pods_per_node: usize,
    /// Images the hermetic registry does not have (every other image runs the local build).
    pub unavailable_images: BTreeSet<String>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            pods_per_node: 3,
            unavailable_images: BTreeSet::new(),
        }
    }
}

/// A cluster the operator manages, for one test. See the module documentation.
pub struct KubeEnv {
    pub kubectl: Kubectl,
    /// Namespace of the test's KVCluster.
    pub namespace: String,
    backend: Backend,
    /// Scratch space: kubeconfig, kubectl's cache, logs. Dropped last.
    dir: tempfile::TempDir,
}

enum Backend {
    Hermetic(Box<Hermetic>),
    Real(Real),
}

/// Fields drop in order: operator first, API server last.
struct Hermetic {
    operator: Mutex<Option<RunningOperator>>,
    nodes: NodePool,
    _controller: StatefulSetController,
    server: ApiServer,
    kubeconfig: PathBuf,
}

struct Real {
    operator_namespace: String,
    /// Port-forwards by target (`svc/NAME`, `pod/NAME`), restarted when they die.
    forwards: tokio::sync::Mutex<BTreeMap<String, PortForward>>,
}

impl KubeEnv {
    /// A real cluster when `E2E_KUBECONFIG` is set, else a hermetic one with the operator
    /// running. `test` names the test, for the namespace on a real cluster.
    pub async fn start(test: &str, options: EnvOptions) -> anyhow::Result<KubeEnv> {
        let dir = tempfile::tempdir()?;
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(kubeconfig) => Self::start_real(test, Path::new(&kubeconfig), dir).await,
            None => Self::start_hermetic(options, dir).await,
        }
    }

    async fn start_hermetic(options: EnvOptions, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let server = ApiServer::start(ServerConfig::default()).await?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let kubectl = Kubectl::new(&kubeconfig, &dir.path().join("cache"));
        kubectl
            .run(&["apply", "-f", repo_root().join("crds").to_str().unwrap()])
            .await?
            .expect_stdout();
        let controller = StatefulSetController::start(server.store.clone());
        let nodes = NodePool::start(
            server.store.clone(),
            NodePoolConfig {
                nodes: (0..options.nodes).map(|i| format!("node-{i}")).collect(),
                capacity: options.pods_per_node,
                dir: dir.path().join("nodes"),
                programs: [("ferrokv".to_string(), server_binary())].into(),
                unavailable_images: options.unavailable_images,
                node_monitor_grace: NODE_MONITOR_GRACE,
            },
        )?;
        let hermetic = Hermetic {
            operator: Mutex::new(None),
            nodes,
            _controller: controller,
            server,
            kubeconfig,
        };
        let env = KubeEnv {
            kubectl,
            namespace: "default".to_string(),
            backend: Backend::Hermetic(Box::new(hermetic)),
            dir,
        };
        env.start_operator()?;
        Ok(env)
    }

    async fn start_real(
        test: &str,
        kubeconfig: &Path,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let kubectl = Kubectl::new(kubeconfig, &dir.path().join("cache"));
        let suffix: u32 = rand::random::<u32>() % 100_000;
        let namespace = format!("ferrokv-e2e-{}-{suffix}", test.replace('_', "-"));
        let namespace: String = namespace.chars().take(63).collect();
        let namespace = namespace.trim_end_matches('-').to_string();
        kubectl
            .run(&["create", "namespace", &namespace])
            .await?
            .expect_stdout();
        let operator_namespace = std::env::var("E2E_OPERATOR_NAMESPACE")
            .unwrap_or_else(|_| "ferrokv-system".to_string());
        Ok(KubeEnv {
            kubectl,
            namespace,
            backend: Backend::Real(Real {
                operator_namespace,
                forwards: Default::default(),
            }),
            dir,
        })
    }

    /// An address of the test process that pods reach (the pod network's root address), for a
    /// server the test starts for the pods; `None` on a real cluster, whose pods do not reach
    /// the test's machine.
    pub fn host_address_for_pods(&self) -> Option<std::net::Ipv4Addr> {
        match &self.backend {
            Backend::Hermetic(h) => Some(h.nodes.host_address()),
            Backend::Real(_) => None,
        }
    }

    /// The directory holding the data of the claim `claim` of the test's namespace, which the
    /// test reads as a pod mounting it would; `None` on a real cluster, whose volumes the test
    /// cannot reach.
    pub fn claim_dir(&self, claim: &str) -> Option<PathBuf> {
        match &self.backend {
            Backend::Hermetic(h) => h.nodes.claim_dir(&self.namespace, claim).ok(),
            Backend::Real(_) => None,
        }
    }

    /// Whether this runs against a real cluster.
    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real(_))
    }

    /// `examples/kvcluster.yaml`, put into the test's namespace, with `edit` applied to it,
    /// applied with kubectl.
    pub async fn apply_example(&self, edit: impl FnOnce(&mut Value)) -> anyhow::Result<()> {
        let path = repo_root().join("examples/kvcluster.yaml");
        let text = std::fs::read_to_string(&path)?;
        let mut object: Value = serde_yaml::from_str(&text)?;
        object["metadata"]["namespace"] = Value::String(self.namespace.clone());
        if let Ok(image) = std::env::var("E2E_MEMBER_IMAGE") {
            object["spec"]["image"] = Value::String(image);
        }
        edit(&mut object);
        self.apply(&object).await
    }

    /// `kubectl apply` of one object.
    pub async fn apply(&self, object: &Value) -> anyhow::Result<()> {
        let applied = self
            .kubectl
            .run_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()))
            .await?;
        if !applied.success() {
            bail!("kubectl apply: {}", applied.stderr);
        }
        Ok(())
    }

    /// kubectl with `-n NAMESPACE` in front of `args`.
    pub async fn kubectl_in_namespace(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.namespace.as_str()];
        full.extend_from_slice(args);
        let output = self.kubectl.run(&full).await?;
        if !output.success() {
            bail!("kubectl {args:?}: {}", output.stderr.trim());
        }
        Ok(output.stdout)
    }

    /// The object, or `None` when there is none.
    pub async fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        match &self.backend {
            Backend::Hermetic(h) => {
                let rt = h.resource_type(kind);
                let namespace = if kind.namespaced { &self.namespace } else { "" };
                h.server.store.get(&rt, namespace, name).ok()
            }
            Backend::Real(_) => self.kubectl_get(kind, Some(name)).await,
        }
    }

    /// Every object of the kind in the test's namespace (or cluster-wide, for nodes).
    pub async fn list(&self, kind: Kind) -> Vec<Value> {
        match &self.backend {
            Backend::Hermetic(h) => {
                let rt = h.resource_type(kind);
                let namespace = kind.namespaced.then_some(self.namespace.as_str());
                h.server
                    .store
                    .list(&rt, namespace, &Default::default())
                    .map(|listed| listed.items)
                    .unwrap_or_default()
            }
            Backend::Real(_) => self
                .kubectl_get(kind, None)
                .await
                .and_then(|list| list["items"].as_array().cloned())
                .unwrap_or_default(),
        }
    }

    /// `kubectl get KIND [NAME] -o json` in the test's namespace; `None` when kubectl fails
    /// (no such object).
    async fn kubectl_get(&self, kind: Kind, name: Option<&str>) -> Option<Value> {
        let resource = kind.kubectl_name();
        let mut args = vec!["get", resource.as_str()];
        args.extend(name);
        args.extend(["-o", "json"]);
        if kind.namespaced {
            args.extend(["-n", self.namespace.as_str()]);
        }
        let output = self.kubectl.run(&args).await.ok()?;
        if !output.success() {
            return None;
        }
        serde_json::from_str(&output.stdout).ok()
    }

    /// The names of the objects of a kind, sorted.
    pub async fn names(&self, kind: Kind) -> Vec<String> {
        let mut names: Vec<String> = self
            .list(kind)
            .await
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    pub async fn kvcluster(&self) -> Value {
        self.kvcluster_named(CLUSTER).await
    }

    /// The KVCluster `name` of the test's namespace, or null.
    pub async fn kvcluster_named(&self, name: &str) -> Value {
        self.get(KVCLUSTERS, name).await.unwrap_or(Value::Null)
    }

    /// Pod `example-ORDINAL`.
    pub async fn pod(&self, ordinal: u32) -> Option<Value> {
        self.get(PODS, &member_name(ordinal)).await
    }

    /// The member IDs of `status.members` by name.
    pub async fn member_ids(&self) -> BTreeMap<String, String> {
        let status = self.kvcluster().await["status"].clone();
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["id"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Whether the KVCluster says Available with exactly `members` members, all healthy
    /// voters, and their pods are ready.
    pub async fn available_with(&self, members: usize) -> bool {
        self.cluster_available_with(CLUSTER, members).await
    }

    /// [`KubeEnv::available_with`] for the KVCluster `cluster` of the test's namespace.
    pub async fn cluster_available_with(&self, cluster: &str, members: usize) -> bool {
        let status = self.kvcluster_named(cluster).await["status"].clone();
        let available = conditions_say(&status, "Available", "True");
        let listed = status["members"].as_array().cloned().unwrap_or_default();
        let all_voters = listed
            .iter()
            .all(|m| m["healthy"] == true && m["learner"] != true);
        if !(available && listed.len() == members && all_voters) {
            return false;
        }
        if status["readyReplicas"] != members as u64 {
            return false;
        }
        for ordinal in 0..members as u32 {
            let ready = self
                .get(PODS, &format!("{cluster}-{ordinal}"))
                .await
                .is_some_and(|pod| conditions_say(&pod["status"], "Ready", "True"));
            if !ready {
                return false;
            }
        }
        true
    }

    /// Waits for `members` available members; panics with every part's logs after `within`.
    /// Returns how long it took.
    pub async fn wait_available(&self, members: usize, within: Duration) -> Duration {
        self.wait_cluster_available(CLUSTER, members, within).await
    }

    /// [`KubeEnv::wait_available`] for the KVCluster `cluster` of the test's namespace.
    pub async fn wait_cluster_available(
        &self,
        cluster: &str,
        members: usize,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        while !self.cluster_available_with(cluster, members).await {
            if started.elapsed() > within {
                self.dump().await;
                panic!(
                    "no Available cluster {cluster} of {members} after {within:?}: status {}",
                    self.kvcluster_named(cluster).await["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        started.elapsed()
    }

    /// Polls `probe` until it gives a value; panics with every part's logs after `within`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, within: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if Instant::now() > deadline {
                self.dump().await;
                panic!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// etcdctl against the cluster's client Service.
    pub async fn etcdctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.etcdctl_on(CLUSTER, args).await
    }

    /// etcdctl against the client Service of the KVCluster `cluster` of the test's namespace.
    pub async fn etcdctl_on(&self, cluster: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.etcdctl_with(cluster, "http", &[], args).await
    }

    /// etcdctl against the client Service of the KVCluster `cluster` at `scheme://` (`https`
    /// on a cluster with client TLS), with `flags` (`--cacert=...`, `--user=...`) before `args`.
    pub async fn etcdctl_with(
        &self,
        cluster: &str,
        scheme: &str,
        flags: &[String],
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let endpoint = match &self.backend {
            Backend::Hermetic(_) => {
                format!("{scheme}://{cluster}-client.{}.svc:2379", self.namespace)
            }
            Backend::Real(real) => {
                let target = format!("svc/{cluster}-client");
                let forwarded = real
                    .forward(&self.kubectl, &self.namespace, &target)
                    .await?;
                // Certificates name 127.0.0.1, where port-forwards listen.
                match forwarded.strip_prefix("http://") {
                    Some(address) => format!("{scheme}://{address}"),
                    None => forwarded,
                }
            }
        };
        let mut command = match &self.backend {
            Backend::Hermetic(h) => {
                tokio::process::Command::from(h.nodes.command(etcdctl_binary()))
            }
            Backend::Real(_) => tokio::process::Command::new(etcdctl_binary()),
        };
        command
            .arg(format!("--endpoints={endpoint}"))
            .arg("--command-timeout=5s")
            .args(flags)
            .args(args)
            .env("ETCDCTL_API", "3")
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .context("etcdctl still running after 30s")?
            .context("running etcdctl")?;
        Ok(output)
    }

    /// An endpoint at which the test process reaches member `ordinal` with an etcd client.
    pub async fn member_endpoint(&self, ordinal: u32) -> anyhow::Result<String> {
        match &self.backend {
            Backend::Hermetic(_) => {
                let pod = self.pod(ordinal).await.context("no such pod")?;
                let ip = pod["status"]["podIP"].as_str().context("pod has no IP")?;
                Ok(format!("http://{ip}:2379"))
            }
            Backend::Real(real) => {
                let target = format!("pod/{}", member_name(ordinal));
                real.forward(&self.kubectl, &self.namespace, &target).await
            }
        }
    }

    /// The node pod `ORDINAL` is bound to.
    pub async fn node_of(&self, ordinal: u32) -> Option<String> {
        let pod = self.pod(ordinal).await?;
        pod["spec"]["nodeName"].as_str().map(str::to_string)
    }

    /// The node loses power: its processes die at once and it stops reporting.
    pub async fn fail_node(&self, node: &str) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Hermetic(h) => {
                h.nodes.fail_node(node);
                Ok(())
            }
            Backend::Real(_) => run_template("E2E_FAIL_NODE_COMMAND", node).await,
        }
    }

    /// Brings a failed node back, where that is possible (a real cluster); the hermetic
    /// cluster's failed nodes stay dead.
    pub async fn restore_node(&self, node: &str) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Hermetic(_) => Ok(()),
            Backend::Real(_) => run_template("E2E_RESTORE_NODE_COMMAND", node).await,
        }
    }

    /// Member `ordinal`'s data volume loses its content; its container stops and restarts on
    /// the empty volume. The WAL volume keeps its content.
    pub async fn lose_data_volume(&self, ordinal: u32) -> anyhow::Result<()> {
        let pod = member_name(ordinal);
        match &self.backend {
            Backend::Hermetic(h) => {
                let dir = h.nodes.claim_dir(&self.namespace, &format!("data-{pod}"))?;
                // The files go while the process runs (it keeps what it has open, unlinked),
                // then the process: it restarts on the empty volume.
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
                if !h.nodes.kill_container(&self.namespace, &pod) {
                    bail!("{pod} runs no container");
                }
                Ok(())
            }
            Backend::Real(_) => {
                // SIGKILL from inside is ignored by PID 1; SIGTERM makes ferrokv exit.
                let script = format!("rm -rf {DATA_DIR}/* && kill -TERM 1");
                self.kubectl_in_namespace(&["exec", &pod, "--", "sh", "-c", &script])
                    .await
                    .map(drop)
            }
        }
    }

    /// Kills the operator with SIGKILL; it comes back at once (a new process on the hermetic
    /// cluster, its Deployment's new pod on a real one).
    pub async fn kill_operator(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Hermetic(h) => {
                let old = h.operator.lock().unwrap().take();
                drop(old);
                self.start_operator()
            }
            Backend::Real(real) => {
                let output = self
                    .kubectl
                    .run(&[
                        "delete",
                        "pod",
                        "-n",
                        &real.operator_namespace,
                        "-l",
                        "app.kubernetes.io/name=ferrokv-operator",
                        "--grace-period=0",
                        "--force",
                    ])
                    .await?;
                if !output.success() {
                    bail!("deleting the operator's pod: {}", output.stderr);
                }
                Ok(())
            }
        }
    }

    /// Stops the operator until [`KubeEnv::start_operator`]; hermetic clusters only (a real
    /// cluster's Deployment brings it back at once).
    pub fn stop_operator(&self) -> anyhow::Result<()> {
        let Backend::Hermetic(h) = &self.backend else {
            bail!("stopping the operator of a real cluster is not supported");
        };
        let old = h.operator.lock().unwrap().take();
        drop(old);
        Ok(())
    }

    /// Starts the operator on the hermetic cluster (a real cluster runs its own).
    pub fn start_operator(&self) -> anyhow::Result<()> {
        let Backend::Hermetic(h) = &self.backend else {
            return Ok(());
        };
        // A new log per start: the killed one's stays for the dump.
        let starts = std::fs::read_dir(self.dir.path())?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("operator-"))
            })
            .count();
        let log_dir = self.dir.path().join(format!("operator-{starts}"));
        std::fs::create_dir_all(&log_dir)?;
        let operator = RunningOperator::start_with(
            h.nodes.command(operator_binary()),
            &h.kubeconfig,
            &self.namespace,
            &log_dir,
        )?;
        *h.operator.lock().unwrap() = Some(operator);
        Ok(())
    }

    /// The operator's log (the current process's, on the hermetic cluster).
    /// The log of pod `name`'s containers, init containers included: on the hermetic cluster
    /// every start of them, on a real one the current ones'.
    pub async fn pod_log(&self, name: &str) -> String {
        match &self.backend {
            Backend::Hermetic(h) => h.nodes.container_log(&self.namespace, name),
            Backend::Real(_) => self
                .kubectl_in_namespace(&["logs", name, "--all-containers", "--tail=200"])
                .await
                .unwrap_or_default(),
        }
    }

    pub async fn operator_log(&self) -> String {
        match &self.backend {
            Backend::Hermetic(h) => h
                .operator
                .lock()
                .unwrap()
                .as_ref()
                .map(RunningOperator::log_tail)
                .unwrap_or_default(),
            Backend::Real(real) => self
                .kubectl
                .run(&[
                    "logs",
                    "-n",
                    &real.operator_namespace,
                    "-l",
                    "app.kubernetes.io/name=ferrokv-operator",
                    "--tail=60",
                ])
                .await
                .map(|o| o.stdout)
                .unwrap_or_default(),
        }
    }

    /// Prints what a failing test needs: the operator's log, the KVCluster's status, the pods
    /// and the last lines each member logged.
    pub async fn dump(&self) {
        eprintln!("--- operator log ---\n{}", self.operator_log().await);
        for kvc in self.list(KVCLUSTERS).await {
            eprintln!(
                "--- kvcluster {} status ---\n{}",
                kvc["metadata"]["name"], kvc["status"]
            );
        }
        for pod in self.list(PODS).await {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "--- pod {name} on {} ---\n{}",
                pod["spec"]["nodeName"], pod["status"]
            );
            let log = self.pod_log(&name).await;
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
        if let (Backend::Hermetic(h), true) = (&self.backend, std::thread::panicking()) {
            eprintln!("{}", h.nodes.failure_report(40));
        }
        if let Backend::Real(_) = self.backend {
            if std::thread::panicking() {
                eprintln!("namespace {} kept for diagnostics", self.namespace);
            } else if std::env::var_os("E2E_KEEP").is_none() {
                // Best effort, without waiting: the namespace goes with everything in it.
                let _ = std::process::Command::new(crate::binaries::kubectl_binary())
                    .arg(format!(
                        "--kubeconfig={}",
                        std::env::var(KUBECONFIG_ENV).unwrap_or_default()
                    ))
                    .args(["delete", "namespace", &self.namespace, "--wait=false"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Hermetic {
    fn resource_type(&self, kind: Kind) -> std::sync::Arc<ResourceType> {
        self.server
            .store
            .resource_type(kind.group, kind.version, kind.plural)
            .unwrap_or_else(|| panic!("{} is served", kind.kubectl_name()))
    }
}

/// A running `kubectl port-forward` to one target.
struct PortForward {
    child: tokio::process::Child,
    endpoint: String,
}

impl Real {
    /// `http://127.0.0.1:PORT` forwarded to port 2379 of `target`, started (again) when needed.
    async fn forward(
        &self,
        kubectl: &Kubectl,
        namespace: &str,
        target: &str,
    ) -> anyhow::Result<String> {
        let mut forwards = self.forwards.lock().await;
        if let Some(forward) = forwards.get_mut(target) {
            if matches!(forward.child.try_wait(), Ok(None)) {
                return Ok(forward.endpoint.clone());
            }
        }
        let mut child = kubectl
            .command(&["port-forward", "-n", namespace, target, ":2379"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting kubectl port-forward")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:PORT -> 2379"
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("kubectl port-forward did not start")??
            .context("kubectl port-forward exited")?;
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("unexpected port-forward output {line:?}"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        // Keep draining its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        forwards.insert(
            target.to_string(),
            PortForward {
                child,
                endpoint: endpoint.clone(),
            },
        );
        Ok(endpoint)
    }
}

/// Runs the command template in the environment variable `var` with `{node}` replaced.
async fn run_template(var: &str, node: &str) -> anyhow::Result<()> {
    let template = std::env::var(var)
        .with_context(|| format!("{var} is not set: it says how to do this to a node, e.g. `docker stop {{node}}` for kind"))?;
    let command = template.replace("{node}", node);
    let status = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .status()
        .await?;
    if !status.success() {
        bail!("{var}: `{command}` failed: {status}");
    }
    Ok(())
}

/// Name of member `ordinal`'s pod.
pub fn member_name(ordinal: u32) -> String {
    format!("{CLUSTER}-{ordinal}")
}

/// Whether `status.conditions` has `type` with `status`.
pub fn conditions_say(status: &Value, type_: &str, value: &str) -> bool {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == value)
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is in the repository")
        .to_path_buf()
}
