//! [`Kubelet`]: one Node whose pods are real processes, each in a network namespace of its own,
//! driven from the [`Store`] in-process.
//!
//! What it does:
//! - keeps its Node object Ready, and binds pods that name no node to itself;
//! - runs each pod's first container as a local program (`command[0]` looked up in
//!   [`KubeletConfig::programs`]) inside a host of a [`HostNetwork`], which gives the pod its IP;
//! - expands the container's env (values, `fieldRef`, `configMapKeyRef` — read again at every
//!   start) and the `$(VAR)` references in its args;
//! - binds each PersistentVolumeClaim to a directory that outlives the pod (a claim made again
//!   under an old name gets an empty one, as a newly provisioned volume), and rewrites the
//!   container's mount paths in args and env to it;
//! - publishes DNS names in every host's `/etc/hosts`, and in a file the test's own programs
//!   resolve through ([`Kubelet::command`]): `HOSTNAME.SUBDOMAIN.NS.svc` for each pod, and each
//!   Service's `NAME.NS.svc` for the pods it selects (ready ones, unless
//!   `publishNotReadyAddresses`);
//! - runs the readiness probe (`httpGet`) and writes the Ready condition and container status;
//! - restarts exited containers after a short back-off (`restartPolicy: Always`), keeping the last
//!   termination with its exit code and message, read from the file `FERROKV_TERMINATION_LOG`
//!   names;
//! - ends a deleted pod's process with SIGTERM, SIGKILL after the grace period, then removes the
//!   pod.
//!
//! Not here: other containers than the first, init containers, startup and liveness probes,
//! resource limits, images (the program runs from the local build), Services' virtual IPs (a
//! Service name resolves to its pods' own addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::store::{DeleteOptions, ListOptions, Patch, Store, WatchOptions, WriteOptions};
use crate::netns::HostNetwork;

/// Field manager of every write the kubelet makes.
const MANAGER: &str = "kubelet";

/// How often the kubelet looks at its pods when nothing wakes it; also the probe period floor.
const TICK: Duration = Duration::from_millis(500);

/// How often the Node's Ready condition is renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Longest wait before restarting an exited container.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Environment variable through which the container learns where to write its termination
/// message (the node's `fail` honours it).
pub const TERMINATION_LOG_ENV: &str = "FERROKV_TERMINATION_LOG";

/// Settings of one kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Name of its Node object.
    pub node_name: String,
    /// How many pods it can run at once: one network host each.
    pub capacity: usize,
    /// Where claims' directories, termination messages and container logs go.
    pub dir: PathBuf,
    /// Programs containers may run, by the name in `command[0]`.
    pub programs: BTreeMap<String, PathBuf>,
}

/// A running kubelet; kills its pods' processes and deletes its network when dropped.
pub struct Kubelet {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    hosts_file: PathBuf,
    dir: PathBuf,
    // Dropped last: the processes must be gone before their namespaces are.
    _network: HostNetwork,
}

/// What the loop and `Drop` share.
struct Shared {
    pods: Mutex<Pods>,
}

#[derive(Default)]
struct Pods {
    by_uid: BTreeMap<String, PodRuntime>,
    /// Set when the kubelet is dropped: nothing starts any more.
    stopping: bool,
}

/// A network host: where a pod runs and the address it gets.
#[derive(Debug, Clone)]
struct Slot {
    namespace: String,
    address: Ipv4Addr,
    hosts_path: PathBuf,
}

/// What the kubelet knows about one pod it runs.
struct PodRuntime {
    namespace: String,
    name: String,
    slot: usize,
    start_time: String,
    container: Option<Running>,
    restart_count: u32,
    /// `lastState.terminated` of the container status.
    last_terminated: Option<Value>,
    /// `state.waiting`, while no process runs.
    waiting: Value,
    next_start: Instant,
    ready: bool,
    ready_since: String,
    probe_failures: u32,
    next_probe: Instant,
    /// When SIGKILL follows the SIGTERM already sent.
    kill_at: Option<Instant>,
    /// The status last written, to write only changes.
    written: Option<Value>,
}

struct Running {
    child: Child,
    started_at: String,
    termination_log: PathBuf,
}

impl Kubelet {
    /// Creates the Node, a network of `capacity` hosts, and starts the loop in the current
    /// tokio runtime.
    pub fn start(store: Arc<Store>, config: KubeletConfig) -> anyhow::Result<Kubelet> {
        let network = HostNetwork::create(config.capacity)?;
        fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let slots: Vec<Slot> = (0..network.len())
            .map(|i| Slot {
                namespace: network.namespace(i),
                address: network.address(i),
                hosts_path: network.hosts_path(i),
            })
            .collect();
        let hosts_file = config.dir.join("hosts");
        write_in_place(&hosts_file, &hosts_text(&[]))?;
        let shared = Arc::new(Shared {
            pods: Mutex::new(Pods::default()),
        });
        let node = NodeLoop {
            store: store.clone(),
            types: Types::of(&store),
            config: config.clone(),
            slots,
            shared: shared.clone(),
            host_ip: network.root_address(),
            hosts_file: hosts_file.clone(),
            published_hosts: String::new(),
        };
        node.register()?;
        Ok(Kubelet {
            shared,
            task: tokio::spawn(node.run()),
            hosts_file,
            dir: config.dir,
            _network: network,
        })
    }

    /// A command that runs `program` in the test's own network namespace but resolving the
    /// cluster's names (pods, Services) as the pods do: a private mount namespace with the
    /// kubelet's hosts file over `/etc/hosts`. The child's pid is the program's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&self.hosts_file)
            .arg(program);
        command
    }

    /// The log of a pod's container, every start of it, for a failing test to print.
    pub fn container_log(&self, namespace: &str, pod: &str) -> String {
        fs::read_to_string(log_path(&self.dir, namespace, pod)).unwrap_or_default()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        let mut pods = lock(&self.shared);
        pods.stopping = true;
        for runtime in pods.by_uid.values_mut() {
            if let Some(mut running) = runtime.container.take() {
                let _ = running.child.kill();
                let _ = running.child.wait();
            }
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Pods> {
    shared
        .pods
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Types {
    nodes: Arc<ResourceType>,
    pods: Arc<ResourceType>,
    services: Arc<ResourceType>,
    config_maps: Arc<ResourceType>,
    claims: Arc<ResourceType>,
}

impl Types {
    fn of(store: &Store) -> Types {
        let core = |plural| store.resource_type("", "v1", plural).expect("built-in");
        Types {
            nodes: core("nodes"),
            pods: core("pods"),
            services: core("services"),
            config_maps: core("configmaps"),
            claims: core("persistentvolumeclaims"),
        }
    }
}

/// The kubelet's loop and everything it reads.
struct NodeLoop {
    store: Arc<Store>,
    types: Types,
    config: KubeletConfig,
    slots: Vec<Slot>,
    shared: Arc<Shared>,
    host_ip: Ipv4Addr,
    hosts_file: PathBuf,
    published_hosts: String,
}

fn options() -> WriteOptions {
    WriteOptions {
        manager: MANAGER.into(),
        ..WriteOptions::default()
    }
}

impl NodeLoop {
    fn register(&self) -> anyhow::Result<()> {
        let name = &self.config.node_name;
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            },
        });
        self.store
            .create(&self.types.nodes, "", node, &options())
            .map_err(|e| anyhow!("creating Node {name}: {e}"))?;
        self.heartbeat()
    }

    fn heartbeat(&self) -> anyhow::Result<()> {
        let now = meta::now();
        let previous = self
            .store
            .get(&self.types.nodes, "", &self.config.node_name)
            .map_err(|e| anyhow!("{e}"))?;
        let since = previous["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string();
        let status = json!({
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip.to_string()},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "capacity": {"pods": self.slots.len().to_string()},
            "allocatable": {"pods": self.slots.len().to_string()},
        });
        self.store
            .patch(
                &self.types.nodes,
                "",
                &self.config.node_name,
                Patch::Merge(json!({ "status": status })),
                true,
                &options(),
            )
            .map_err(|e| anyhow!("renewing Node {}: {e}", self.config.node_name))?;
        Ok(())
    }

    async fn run(mut self) {
        let mut last_heartbeat = Instant::now();
        loop {
            let watch = self.store.watch(
                &self.types.pods,
                None,
                WatchOptions {
                    resource_version: Some(self.store.revision().to_string()),
                    ..WatchOptions::default()
                },
            );
            if last_heartbeat.elapsed() >= HEARTBEAT {
                if let Err(error) = self.heartbeat() {
                    eprintln!("kubelet: {error:#}");
                }
                last_heartbeat = Instant::now();
            }
            if let Err(error) = self.sync().await {
                eprintln!("kubelet: {error:#}");
            }
            match watch {
                Ok(mut watch) => {
                    tokio::select! {
                        _ = watch.next() => {}
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                Err(_) => tokio::time::sleep(TICK).await,
            }
        }
    }

    /// One pass: bind, adopt, stop, start, publish names, probe, report.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let pods = self
            .store
            .list(&self.types.pods, None, &ListOptions::default())
            .map_err(|e| anyhow!("listing pods: {e}"))?
            .items;
        for pod in &pods {
            let unbound = pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
            if unbound && !meta::is_terminating(pod) {
                self.bind(pod);
            }
        }
        let ours: BTreeMap<String, &Value> = pods
            .iter()
            .filter(|p| p["spec"]["nodeName"] == self.config.node_name.as_str())
            .map(|p| (meta::uid_of(p).to_string(), p))
            .collect();

        self.stop_vanished(&ours);
        self.adopt(&ours);
        self.finish_terminating(&ours);
        self.reap_and_start(&ours);
        self.publish_names()?;
        self.probe().await;
        self.report(&ours);
        Ok(())
    }

    fn bind(&self, pod: &Value) {
        let patch = json!({"spec": {"nodeName": self.config.node_name}});
        if let Err(error) = self.store.patch(
            &self.types.pods,
            meta::namespace_of(pod),
            meta::name_of(pod),
            Patch::Merge(patch),
            false,
            &options(),
        ) {
            eprintln!("kubelet: binding {}: {error}", meta::name_of(pod));
        }
    }

    /// Pods that are gone from the API (forced deletion) lose their process at once.
    fn stop_vanished(&self, ours: &BTreeMap<String, &Value>) {
        let mut pods = lock(&self.shared);
        pods.by_uid.retain(|uid, runtime| {
            if ours.contains_key(uid) {
                return true;
            }
            if let Some(mut running) = runtime.container.take() {
                let _ = running.child.kill();
                let _ = running.child.wait();
            }
            false
        });
    }

    /// Gives each new pod of ours a free host.
    fn adopt(&self, ours: &BTreeMap<String, &Value>) {
        let mut pods = lock(&self.shared);
        for (uid, pod) in ours {
            if pods.by_uid.contains_key(uid) || meta::is_terminating(pod) {
                continue;
            }
            let used: BTreeSet<usize> = pods.by_uid.values().map(|r| r.slot).collect();
            let Some(slot) = (0..self.slots.len()).find(|s| !used.contains(s)) else {
                continue;
            };
            let now = meta::now();
            pods.by_uid.insert(
                uid.clone(),
                PodRuntime {
                    namespace: meta::namespace_of(pod).to_string(),
                    name: meta::name_of(pod).to_string(),
                    slot,
                    start_time: now.clone(),
                    container: None,
                    restart_count: 0,
                    last_terminated: None,
                    waiting: json!({"reason": "ContainerCreating"}),
                    next_start: Instant::now(),
                    ready: false,
                    ready_since: now,
                    probe_failures: 0,
                    next_probe: Instant::now(),
                    kill_at: None,
                    written: None,
                },
            );
        }
    }

    /// Deleted pods: SIGTERM, SIGKILL after the grace period, then the pod object goes.
    fn finish_terminating(&self, ours: &BTreeMap<String, &Value>) {
        let mut finished = Vec::new();
        {
            let mut pods = lock(&self.shared);
            for (uid, runtime) in pods.by_uid.iter_mut() {
                let Some(pod) = ours.get(uid).filter(|p| meta::is_terminating(p)) else {
                    continue;
                };
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(0);
                let exited = match runtime.container.as_mut() {
                    None => true,
                    Some(running) => {
                        if matches!(running.child.try_wait(), Ok(Some(_))) {
                            true
                        } else if runtime.kill_at.is_none() {
                            signal(&running.child, libc::SIGTERM);
                            runtime.kill_at = Some(Instant::now() + Duration::from_secs(grace));
                            false
                        } else if runtime.kill_at.is_some_and(|at| Instant::now() >= at) {
                            let _ = running.child.kill();
                            let _ = running.child.wait();
                            true
                        } else {
                            false
                        }
                    }
                };
                if exited {
                    runtime.container = None;
                    finished.push(uid.clone());
                }
            }
        }
        // Pods that never got a host have nothing to stop.
        let known: BTreeSet<String> = lock(&self.shared).by_uid.keys().cloned().collect();
        finished.extend(
            ours.iter()
                .filter(|(uid, pod)| meta::is_terminating(pod) && !known.contains(*uid))
                .map(|(uid, _)| uid.clone()),
        );
        for uid in finished {
            let pod = ours[&uid];
            let force = DeleteOptions {
                grace_period_seconds: Some(0),
                precondition_uid: Some(uid.clone()),
                ..DeleteOptions::default()
            };
            let deleted = self.store.delete(
                &self.types.pods,
                meta::namespace_of(pod),
                meta::name_of(pod),
                &force,
            );
            if deleted.is_ok() {
                lock(&self.shared).by_uid.remove(&uid);
            }
        }
    }

    /// Records exited containers and starts those due.
    fn reap_and_start(&self, ours: &BTreeMap<String, &Value>) {
        let mut pods = lock(&self.shared);
        if pods.stopping {
            return;
        }
        for (uid, runtime) in pods.by_uid.iter_mut() {
            let Some(pod) = ours.get(uid).filter(|p| !meta::is_terminating(p)) else {
                continue;
            };
            if let Some(running) = runtime.container.as_mut() {
                let Ok(Some(exit)) = running.child.try_wait() else {
                    continue;
                };
                let code = exit.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&exit).unwrap_or(0)
                });
                let message = fs::read_to_string(&running.termination_log).unwrap_or_default();
                let mut terminated = json!({
                    "exitCode": code,
                    "reason": if code == 0 { "Completed" } else { "Error" },
                    "startedAt": running.started_at,
                    "finishedAt": meta::now(),
                    "containerID": container_id(&running.child),
                });
                if !message.trim().is_empty() {
                    terminated["message"] = json!(message.trim_end());
                }
                runtime.last_terminated = Some(terminated);
                runtime.container = None;
                runtime.restart_count += 1;
                let backoff =
                    Duration::from_secs(1 << runtime.restart_count.min(3)).min(MAX_BACKOFF);
                runtime.next_start = Instant::now() + backoff;
                runtime.waiting = json!({
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off {}s restarting failed container",
                        backoff.as_secs()
                    ),
                });
                runtime.ready = false;
                runtime.ready_since = meta::now();
            }
            if runtime.container.is_none() && Instant::now() >= runtime.next_start {
                match self.start_container(pod, runtime) {
                    Ok(running) => {
                        runtime.container = Some(running);
                        runtime.waiting = Value::Null;
                        runtime.probe_failures = 0;
                        runtime.next_probe = Instant::now();
                    }
                    Err(error) => {
                        runtime.waiting = json!({
                            "reason": "CreateContainerConfigError",
                            "message": format!("{error:#}"),
                        });
                        runtime.next_start = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
        }
    }

    fn start_container(&self, pod: &Value, runtime: &PodRuntime) -> anyhow::Result<Running> {
        let container = &pod["spec"]["containers"][0];
        let slot = &self.slots[runtime.slot];
        let mounts = self.mounts(pod, container)?;
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(value) = var["value"].as_str() {
                expand(value, &env)
            } else {
                self.env_source(pod, &var["valueFrom"], slot)
                    .with_context(|| format!("env {name}"))?
            };
            env.push((name, rewrite_paths(&value, &mounts)));
        }
        let command: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(container["args"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .map(|arg| rewrite_paths(&expand(arg, &env), &mounts))
            .collect();
        let Some((program, args)) = command.split_first() else {
            bail!("the container has no command");
        };
        let program = self
            .config
            .programs
            .get(program)
            .ok_or_else(|| anyhow!("no program {program:?} on this node"))?;

        let pod_dir = self.config.dir.join("pods").join(meta::uid_of(pod));
        fs::create_dir_all(&pod_dir)?;
        let termination_log = pod_dir.join("termination-log");
        File::create(&termination_log)?;
        let log_path = log_path(&self.config.dir, &runtime.namespace, &runtime.name);
        fs::create_dir_all(log_path.parent().expect("in the logs directory"))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(log, "--- start {} ---", runtime.restart_count)?;

        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &slot.namespace])
            .arg(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env(
                "HOSTNAME",
                pod["spec"]["hostname"]
                    .as_str()
                    .unwrap_or(meta::name_of(pod)),
            )
            .envs(env)
            .env(TERMINATION_LOG_ENV, &termination_log)
            .current_dir(&pod_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl in the child between fork and exec, touching no shared state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Running {
            child,
            started_at: meta::now(),
            termination_log,
        })
    }

    /// `valueFrom`: the downward API's `fieldRef` and `configMapKeyRef`.
    fn env_source(&self, pod: &Value, source: &Value, slot: &Slot) -> anyhow::Result<String> {
        if let Some(path) = source["fieldRef"]["fieldPath"].as_str() {
            return Ok(match path {
                "metadata.name" => meta::name_of(pod).to_string(),
                "metadata.namespace" => meta::namespace_of(pod).to_string(),
                "metadata.uid" => meta::uid_of(pod).to_string(),
                "spec.nodeName" => self.config.node_name.clone(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                "status.podIP" => slot.address.to_string(),
                "status.hostIP" => self.host_ip.to_string(),
                other => bail!("unsupported fieldRef {other}"),
            });
        }
        let key_ref = &source["configMapKeyRef"];
        if key_ref.is_object() {
            let name = key_ref["name"].as_str().unwrap_or_default();
            let key = key_ref["key"].as_str().unwrap_or_default();
            let optional = key_ref["optional"].as_bool().unwrap_or(false);
            let value = self
                .store
                .get(&self.types.config_maps, meta::namespace_of(pod), name)
                .ok()
                .and_then(|cm| cm["data"][key].as_str().map(str::to_string));
            return match value {
                Some(value) => Ok(value),
                None if optional => Ok(String::new()),
                None => bail!("configmap {name:?} has no key {key:?}"),
            };
        }
        bail!("unsupported env source {source}")
    }

    /// Mount path -> directory, for the container's volume mounts.
    fn mounts(&self, pod: &Value, container: &Value) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let namespace = meta::namespace_of(pod);
        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = mount["name"].as_str().unwrap_or_default();
            let path = mount["mountPath"].as_str().unwrap_or_default().to_string();
            let volume = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == volume_name)
                .ok_or_else(|| anyhow!("volume {volume_name:?} is not in the pod"))?;
            let dir = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                self.bind_claim(namespace, claim)?;
                claim_dir(&self.config.dir, namespace, claim)
            } else if volume["emptyDir"].is_object() {
                self.config
                    .dir
                    .join("pods")
                    .join(meta::uid_of(pod))
                    .join("volumes")
                    .join(volume_name)
            } else {
                bail!("volume {volume_name:?}: only claims and emptyDir are supported");
            };
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            mounts.push((path, dir));
        }
        // Longest first, so a mount inside another one wins.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Ok(mounts)
    }

    /// Marks a claim Bound to its directory, as a provisioner would; a missing claim keeps the
    /// container from starting, as it does on a real node.
    fn bind_claim(&self, namespace: &str, claim: &str) -> anyhow::Result<()> {
        let live = self
            .store
            .get(&self.types.claims, namespace, claim)
            .map_err(|e| anyhow!("claim {claim:?}: {e}"))?;
        if live["status"]["phase"] == "Bound" {
            return Ok(());
        }
        // A claim binds once, to a new volume: one deleted and made again under the same name
        // does not see its predecessor's data.
        let dir = claim_dir(&self.config.dir, namespace, claim);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("emptying {}", dir.display())),
        }
        let status = json!({
            "phase": "Bound",
            "accessModes": live["spec"]["accessModes"],
            "capacity": {"storage": live["spec"]["resources"]["requests"]["storage"]},
        });
        self.store
            .patch(
                &self.types.claims,
                namespace,
                claim,
                Patch::Merge(json!({ "status": status })),
                true,
                &options(),
            )
            .map_err(|e| anyhow!("binding claim {claim:?}: {e}"))?;
        Ok(())
    }

    /// Rewrites every host's hosts file (and the test's) when the names changed.
    fn publish_names(&mut self) -> anyhow::Result<()> {
        let services = self
            .store
            .list(&self.types.services, None, &ListOptions::default())
            .map_err(|e| anyhow!("listing services: {e}"))?
            .items;
        let pods = self
            .store
            .list(&self.types.pods, None, &ListOptions::default())
            .map_err(|e| anyhow!("listing pods: {e}"))?
            .items;
        let addressed: Vec<PodAddress> = {
            let runtimes = lock(&self.shared);
            pods.iter()
                .filter_map(|pod| {
                    let runtime = runtimes.by_uid.get(meta::uid_of(pod))?;
                    Some(PodAddress {
                        pod: pod.clone(),
                        address: self.slots[runtime.slot].address,
                        ready: runtime.ready,
                    })
                })
                .collect()
        };
        let text = hosts_text(&dns_records(&services, &addressed));
        if text == self.published_hosts {
            return Ok(());
        }
        for slot in &self.slots {
            write_in_place(&slot.hosts_path, &text)?;
        }
        write_in_place(&self.hosts_file, &text)?;
        self.published_hosts = text;
        Ok(())
    }

    /// Runs the readiness probes that are due, all at once.
    async fn probe(&self) {
        let due: Vec<(String, String, String, u32)> = {
            let pods = lock(&self.shared);
            pods.by_uid
                .iter()
                .filter(|(_, r)| r.container.is_some() && r.kill_at.is_none())
                .filter(|(_, r)| Instant::now() >= r.next_probe)
                .filter_map(|(uid, r)| {
                    let pod = self
                        .store
                        .get(&self.types.pods, &r.namespace, &r.name)
                        .ok()?;
                    let container = &pod["spec"]["containers"][0];
                    let probe = &container["readinessProbe"]["httpGet"];
                    let path = probe["path"].as_str().unwrap_or("/").to_string();
                    let port = match &probe["port"] {
                        Value::Number(n) => n.as_u64()? as u16,
                        Value::String(name) => container["ports"]
                            .as_array()?
                            .iter()
                            .find(|p| p["name"] == name.as_str())?["containerPort"]
                            .as_u64()? as u16,
                        _ => return None,
                    };
                    let failures = container["readinessProbe"]["failureThreshold"]
                        .as_u64()
                        .unwrap_or(3) as u32;
                    let address = format!("{}:{port}", self.slots[r.slot].address);
                    Some((uid.clone(), address, path, failures))
                })
                .collect()
        };
        let results = futures::future::join_all(
            due.iter()
                .map(|(_, address, path, _)| http_get_ok(address.clone(), path.clone())),
        )
        .await;
        let mut pods = lock(&self.shared);
        for ((uid, _, _, threshold), ok) in due.into_iter().zip(results) {
            let Some(runtime) = pods.by_uid.get_mut(&uid) else {
                continue;
            };
            runtime.next_probe = Instant::now() + Duration::from_secs(1);
            runtime.probe_failures = if ok { 0 } else { runtime.probe_failures + 1 };
            let ready = ok || (runtime.ready && runtime.probe_failures < threshold);
            if ready != runtime.ready {
                runtime.ready = ready;
                runtime.ready_since = meta::now();
            }
        }
    }

    /// Writes each pod's status when it changed.
    fn report(&self, ours: &BTreeMap<String, &Value>) {
        let statuses: Vec<(String, Value)> = {
            let pods = lock(&self.shared);
            pods.by_uid
                .iter()
                .filter_map(|(uid, runtime)| {
                    let pod = ours.get(uid)?;
                    let status = self.status_of(pod, runtime);
                    (runtime.written.as_ref() != Some(&status)).then(|| (uid.clone(), status))
                })
                .collect()
        };
        for (uid, status) in statuses {
            let pod = ours[&uid];
            let mut body = (*pod).clone();
            body["status"] = status.clone();
            let written = self.store.update(
                &self.types.pods,
                meta::namespace_of(pod),
                meta::name_of(pod),
                body,
                true,
                &options(),
            );
            if written.is_ok() {
                if let Some(runtime) = lock(&self.shared).by_uid.get_mut(&uid) {
                    runtime.written = Some(status);
                }
            }
        }
    }

    fn status_of(&self, pod: &Value, runtime: &PodRuntime) -> Value {
        let container = &pod["spec"]["containers"][0];
        let ready = runtime.ready && runtime.container.is_some();
        let state = match &runtime.container {
            Some(running) => json!({"running": {"startedAt": running.started_at}}),
            None => json!({ "waiting": runtime.waiting }),
        };
        let mut container_status = json!({
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": ready,
            "started": runtime.container.is_some(),
            "restartCount": runtime.restart_count,
            "state": state,
            "lastState": {},
        });
        if let Some(running) = &runtime.container {
            container_status["containerID"] = json!(container_id(&running.child));
        }
        if let Some(terminated) = &runtime.last_terminated {
            container_status["lastState"] = json!({ "terminated": terminated });
        }
        let scheduled = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&runtime.start_time)
            .to_string();
        let condition = |type_: &str, status: bool, since: &str| {
            json!({
                "type": type_,
                "status": if status { "True" } else { "False" },
                "lastTransitionTime": since,
            })
        };
        let address = self.slots[runtime.slot].address.to_string();
        let started = runtime.container.is_some() || runtime.restart_count > 0;
        let phase = if started { "Running" } else { "Pending" };
        json!({
            "phase": phase,
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{"ip": self.host_ip.to_string()}],
            "podIP": address,
            "podIPs": [{"ip": address}],
            "startTime": runtime.start_time,
            "qosClass": "Burstable",
            "conditions": [
                condition("PodScheduled", true, &scheduled),
                condition("Initialized", true, &runtime.start_time),
                condition("ContainersReady", ready, &runtime.ready_since),
                condition("Ready", ready, &runtime.ready_since),
            ],
            "containerStatuses": [container_status],
        })
    }
}

/// A pod the kubelet gave an address.
struct PodAddress {
    pod: Value,
    address: Ipv4Addr,
    ready: bool,
}

/// `(address, name)` records: pods by `HOSTNAME.SUBDOMAIN.NS.svc` (when the headless Service
/// `SUBDOMAIN` exists), Services by `NAME.NS.svc` to the pods they select.
fn dns_records(services: &[Value], pods: &[PodAddress]) -> Vec<(Ipv4Addr, String)> {
    let mut records = Vec::new();
    for service in services {
        let namespace = meta::namespace_of(service);
        let name = meta::name_of(service);
        let Some(selector) = service["spec"]["selector"].as_object() else {
            continue;
        };
        let not_ready_too = service["spec"]["publishNotReadyAddresses"] == true;
        for member in pods {
            let pod = &member.pod;
            if meta::namespace_of(pod) != namespace
                || meta::is_terminating(pod)
                || !selector
                    .iter()
                    .all(|(k, v)| &pod["metadata"]["labels"][k] == v)
            {
                continue;
            }
            if member.ready || not_ready_too {
                records.push((member.address, format!("{name}.{namespace}.svc")));
            }
            if let (Some(hostname), Some(subdomain)) = (
                pod["spec"]["hostname"].as_str(),
                pod["spec"]["subdomain"].as_str(),
            ) {
                if subdomain == name {
                    records.push((
                        member.address,
                        format!("{hostname}.{subdomain}.{namespace}.svc"),
                    ));
                }
            }
        }
    }
    records.sort();
    records.dedup();
    records
}

fn hosts_text(records: &[(Ipv4Addr, String)]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n");
    for (address, name) in records {
        text.push_str(&format!("{address}\t{name} {name}.cluster.local\n"));
    }
    text
}

/// Rewrites a file keeping its inode, so bind mounts of it see the new text.
fn write_in_place(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The directory that holds claim `claim`'s data, whichever pod uses it.
pub fn claim_dir(dir: &Path, namespace: &str, claim: &str) -> PathBuf {
    dir.join("volumes").join(namespace).join(claim)
}

fn log_path(dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    dir.join("logs").join(format!("{namespace}_{pod}.log"))
}

fn container_id(child: &Child) -> String {
    format!("process://{}", child.id())
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Kubernetes' `$(VAR)` expansion: variables defined earlier are replaced, `$$` is a literal
/// `$`, and unknown references stay as they are.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after
            .strip_prefix('(')
            .and_then(|r| r.find(')').map(|end| &r[..end]))
        {
            match env.iter().rev().find(|(name, _)| name == reference) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&format!("$({reference})")),
            }
            rest = &after[reference.len() + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces a mount path at the start of `text`, or of the value of a `--flag=VALUE`, by the
/// directory it stands for.
pub fn rewrite_paths(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let (prefix, value) = match text.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => (format!("{flag}="), value),
        _ => (String::new(), text),
    };
    for (path, dir) in mounts {
        if let Some(tail) = value.strip_prefix(path.as_str()) {
            if tail.is_empty() || tail.starts_with('/') {
                return format!("{prefix}{}{tail}", dir.display());
            }
        }
    }
    text.to_string()
}

/// Whether `GET http://address/path` answers 200 within a second.
async fn http_get_ok(address: String, path: String) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_replaces_defined_references_only() {
        let env = vec![
            ("POD_NAME".to_string(), "kv-1".to_string()),
            ("NS".to_string(), "prod".to_string()),
        ];
        assert_eq!(
            expand("--name=$(POD_NAME).x.$(NS).svc", &env),
            "--name=kv-1.x.prod.svc"
        );
        assert_eq!(
            expand("$(MISSING)-$$(POD_NAME)-$", &env),
            "$(MISSING)-$(POD_NAME)-$"
        );
    }

    #[test]
    fn mount_paths_in_flags_become_claim_directories() {
        let mounts = vec![
            (
                "/var/lib/ferrokv/data".to_string(),
                PathBuf::from("/t/data-kv-0"),
            ),
            (
                "/var/lib/ferrokv/wal".to_string(),
                PathBuf::from("/t/wal-kv-0"),
            ),
        ];
        assert_eq!(
            rewrite_paths("--data-dir=/var/lib/ferrokv/data", &mounts),
            "--data-dir=/t/data-kv-0"
        );
        assert_eq!(
            rewrite_paths("/var/lib/ferrokv/wal/x", &mounts),
            "/t/wal-kv-0/x"
        );
        assert_eq!(
            rewrite_paths("--data-dir=/var/lib/ferrokv/database", &mounts),
            "--data-dir=/var/lib/ferrokv/database"
        );
    }

    #[test]
    fn services_resolve_to_selected_pods_and_pods_by_their_subdomain() {
        let service = |name: &str, not_ready: bool| {
            json!({
                "metadata": {"name": name, "namespace": "prod"},
                "spec": {"selector": {"app": "kv"}, "publishNotReadyAddresses": not_ready},
            })
        };
        let pod = |name: &str, ready: bool, octet: u8| PodAddress {
            pod: json!({
                "metadata": {"name": name, "namespace": "prod", "labels": {"app": "kv"}},
                "spec": {"hostname": name, "subdomain": "kv-peer"},
            }),
            address: Ipv4Addr::new(10, 0, 0, octet),
            ready,
        };
        let records = dns_records(
            &[service("kv-peer", true), service("kv-client", false)],
            &[pod("kv-0", true, 1), pod("kv-1", false, 2)],
        );
        let names: Vec<String> = records.iter().map(|(a, n)| format!("{a} {n}")).collect();
        assert_eq!(
            names,
            [
                "10.0.0.1 kv-0.kv-peer.prod.svc",
                "10.0.0.1 kv-client.prod.svc",
                "10.0.0.1 kv-peer.prod.svc",
                "10.0.0.2 kv-1.kv-peer.prod.svc",
                "10.0.0.2 kv-peer.prod.svc",
            ]
        );
    }
}
