//! `Kubelet`: the agent of one Node of a [`NodePool`], whose pods are real processes, each in
//! a network namespace of its own, driven from the [`Store`] in-process.
//!
//! What it does:
//! - registers its Node (labelled `kubernetes.io/hostname`) and renews the Ready condition's
//!   `lastHeartbeatTime` every heartbeat period;
//! - runs each pod bound to its node (the pool's scheduler binds them) as a local program —
//!   `command[0]` looked up in the pool's programs — inside one of the node's hosts of the
//!   pool's network, which gives the pod its IP;
//! - runs the pod's init containers first, once each and in order, each to completion, before
//!   the main container: one that fails is restarted after the back-off (`Init:Error`, then
//!   `Init:CrashLoopBackOff` as kubectl shows them), and the pod stays `Pending`, not
//!   `Initialized`, until all have succeeded (`status.initContainerStatuses`);
//! - expands the container's env (values, `fieldRef`, `configMapKeyRef`, `secretKeyRef` — read
//!   again at every start) and the `$(VAR)` references in its args;
//! - mounts each PersistentVolumeClaim as its volume's directory (`pvc-UID`) under the pool's
//!   `volumes/` (network storage: the same directory on every node), marking the claim Bound
//!   (a claim made again under a deleted one's name gets a new volume), and rewrites the
//!   container's mount paths in args and env to it; `emptyDir` lives on the node;
//! - writes each `secret` volume's files from its Secret before the container starts, and
//!   keeps them up to date while it runs (a changed key is replaced whole, as a real kubelet's
//!   atomic writer does, within about a second rather than its sync period of a minute);
//! - runs the readiness probe (`httpGet`; without one a running container is ready) and writes
//!   the Ready condition and container status;
//! - pulls the container's image from a registry that holds every image but the pool's
//!   `unavailable_images`: a pod naming one of those waits in `ErrImagePull` /
//!   `ImagePullBackOff` and is never ready, as with a mistyped tag;
//! - restarts exited containers after a short back-off (`restartPolicy: Always`), keeping the last
//!   termination with its exit code and message, read from the file `FERROKV_TERMINATION_LOG`
//!   names; under `restartPolicy: Never` (or `OnFailure` once it exits 0) the container stays
//!   terminated with that message and the pod ends `Succeeded` or `Failed`, as a one-off pod
//!   of a real cluster does;
//! - ends a deleted pod's process with SIGTERM, SIGKILL after the grace period, then removes the
//!   pod.
//!
//! A kubelet can lose power (`Kubelet::power_off`, through [`NodePool::fail_node`]): every process of its pods is killed at
//! once and from then on it writes nothing — no heartbeat, no pod status, no finished deletion.
//! What the cluster makes of that is the node lifecycle controller's business.
//!
//! Not here: other containers than the first, sidecar init containers, startup and liveness probes,
//! resource limits, image contents (every image runs the program from the local build), admission (a pod bound here
//! runs whatever its node selector says), a container's child processes (only its own process
//! is signalled). Names are published by the pool's cluster DNS, not by the kubelet.
//!
//! [`NodePool`]: crate::kube::nodes::NodePool
//! [`NodePool::fail_node`]: crate::kube::nodes::NodePool::fail_node

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
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::kube::meta;
use crate::kube::resources::ResourceType;
use crate::kube::scheduler::HOSTNAME_LABEL;
use crate::kube::store::{DeleteOptions, ListOptions, Patch, Store, WatchOptions, WriteOptions};

/// Field manager of every write the kubelet makes.
const MANAGER: &str = "kubelet";

/// How often the kubelet looks at its pods when nothing wakes it; also the probe period floor.
const TICK: Duration = Duration::from_millis(500);

/// Longest wait before restarting an exited container.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Environment variable through which the container learns where to write its termination
/// message (the node's `fail` honours it).
pub const TERMINATION_LOG_ENV: &str = "FERROKV_TERMINATION_LOG";

/// Settings of one kubelet, made by the pool.
#[derive(Debug, Clone)]
pub(crate) struct KubeletConfig {
    /// Name of its Node object.
    pub node_name: String,
    /// The hosts of the pool's network this node runs pods in: one pod each.
    pub slots: Vec<Slot>,
    /// The node's own address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// The pool's directory: claims under `volumes/`, logs under `logs/`, and this node's own
    /// files under `nodes/NAME/`.
    pub dir: PathBuf,
    /// Programs containers may run, by the name in `command[0]`.
    pub programs: BTreeMap<String, PathBuf>,
    /// Images the registry does not have.
    pub unavailable_images: BTreeSet<String>,
    /// How often the Node's Ready condition is renewed.
    pub heartbeat: Duration,
}

/// A network host: where a pod runs and the address it gets.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub namespace: String,
    pub address: Ipv4Addr,
}

/// A running kubelet; kills its pods' processes when dropped.
pub(crate) struct Kubelet {
    node_name: String,
    slots: Vec<Slot>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the loop and the pool share.
struct Shared {
    pods: Mutex<Pods>,
}

#[derive(Default)]
struct Pods {
    by_uid: BTreeMap<String, PodRuntime>,
    /// Set when the node loses power (or the pool is dropped): nothing starts and nothing is
    /// written any more.
    off: bool,
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
    init: InitProgress,
    /// `state.terminated` of a container its restart policy does not restart: the pod is done.
    finished: Option<Value>,
}

/// Where a pod's init containers are: those before `done` have completed, the next one runs or
/// waits for its back-off.
#[derive(Default)]
struct InitProgress {
    done: usize,
    running: Option<Running>,
    /// Restarts of the current init container.
    restart_count: u32,
    /// `lastState.terminated` of the current init container.
    last_terminated: Option<Value>,
    /// `state.terminated` of each completed one.
    completed: Vec<Value>,
    next_start: Option<Instant>,
}

impl InitProgress {
    /// Ends the running init container at once.
    fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

struct Running {
    child: Child,
    started_at: String,
    termination_log: PathBuf,
}

impl Kubelet {
    /// Registers the Node and starts the loop in the current tokio runtime.
    pub fn start(store: Arc<Store>, config: KubeletConfig) -> anyhow::Result<Kubelet> {
        fs::create_dir_all(node_dir(&config.dir, &config.node_name))
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let shared = Arc::new(Shared {
            pods: Mutex::new(Pods::default()),
        });
        let node = NodeLoop {
            types: Types::of(&store),
            store,
            config: config.clone(),
            shared: shared.clone(),
        };
        node.register()?;
        Ok(Kubelet {
            node_name: config.node_name,
            slots: config.slots,
            shared,
            task: tokio::spawn(node.run()),
        })
    }

    /// Name of its Node.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node loses power: every process of its pods gets SIGKILL at once, and the kubelet
    /// never writes to the API again.
    pub fn power_off(&self) {
        self.task.abort();
        let mut pods = lock(&self.shared);
        pods.off = true;
        let mut killed = Vec::new();
        for runtime in pods.by_uid.values_mut() {
            runtime.init.kill();
            if let Some(mut running) = runtime.container.take() {
                let _ = running.child.kill();
                killed.push(running.child);
            }
        }
        for mut child in killed {
            let _ = child.wait();
        }
    }

    /// SIGKILL to the container of pod `namespace/pod`, if it runs here; the kubelet sees it
    /// exit and restarts it after the back-off, as it would a crashed container.
    pub fn kill_container(&self, namespace: &str, pod: &str) -> bool {
        let mut pods = lock(&self.shared);
        if pods.off {
            return false;
        }
        pods.by_uid
            .values_mut()
            .filter(|r| r.namespace == namespace && r.name == pod)
            .filter_map(|r| r.container.as_mut())
            .any(|running| running.child.kill().is_ok())
    }

    /// The network namespace pod `namespace/pod` runs in, if it runs here.
    pub fn network_namespace_of(&self, namespace: &str, pod: &str) -> Option<String> {
        let pods = lock(&self.shared);
        if pods.off {
            return None;
        }
        pods.by_uid
            .values()
            .find(|r| r.namespace == namespace && r.name == pod && r.container.is_some())
            .map(|r| self.slots[r.slot].namespace.clone())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.power_off();
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
    config_maps: Arc<ResourceType>,
    claims: Arc<ResourceType>,
    secrets: Arc<ResourceType>,
}

impl Types {
    fn of(store: &Store) -> Types {
        let core = |plural| store.resource_type("", "v1", plural).expect("built-in");
        Types {
            nodes: core("nodes"),
            pods: core("pods"),
            config_maps: core("configmaps"),
            claims: core("persistentvolumeclaims"),
            secrets: core("secrets"),
        }
    }
}

/// The kubelet's loop and everything it reads.
struct NodeLoop {
    store: Arc<Store>,
    types: Types,
    config: KubeletConfig,
    shared: Arc<Shared>,
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
                "labels": {HOSTNAME_LABEL: name, "kubernetes.io/os": "linux"},
            },
            "spec": {},
        });
        self.store
            .create(&self.types.nodes, "", node, &options())
            .map_err(|e| anyhow!("creating Node {name}: {e}"))?;
        self.heartbeat()
    }

    /// Runs a write to the API unless the node lost power. The check and the write happen under
    /// the lock [`Kubelet::power_off`] takes, so no write follows it. `write` must not lock.
    fn while_on<T>(&self, write: impl FnOnce() -> T) -> Option<T> {
        let pods = lock(&self.shared);
        if pods.off {
            return None;
        }
        let result = write();
        drop(pods);
        Some(result)
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
        let capacity = self.config.slots.len().to_string();
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
                {"type": "InternalIP", "address": self.config.host_ip.to_string()},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "capacity": {"pods": capacity},
            "allocatable": {"pods": capacity},
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

    async fn run(self) {
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
            if last_heartbeat.elapsed() >= self.config.heartbeat {
                if let Some(Err(error)) = self.while_on(|| self.heartbeat()) {
                    eprintln!("kubelet {}: {error:#}", self.config.node_name);
                }
                last_heartbeat = Instant::now();
            }
            if let Err(error) = self.sync().await {
                eprintln!("kubelet {}: {error:#}", self.config.node_name);
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

    /// One pass: adopt, stop, start, probe, report.
    async fn sync(&self) -> anyhow::Result<()> {
        let pods = self
            .store
            .list(&self.types.pods, None, &ListOptions::default())
            .map_err(|e| anyhow!("listing pods: {e}"))?
            .items;
        let ours: BTreeMap<String, &Value> = pods
            .iter()
            .filter(|p| p["spec"]["nodeName"] == self.config.node_name.as_str())
            .map(|p| (meta::uid_of(p).to_string(), p))
            .collect();

        self.stop_vanished(&ours);
        self.adopt(&ours);
        self.finish_terminating(&ours);
        self.reap_and_start(&ours);
        self.sync_secret_volumes(&ours);
        self.probe().await;
        self.report(&ours);
        Ok(())
    }

    /// Pods that are gone from the API (forced deletion) lose their process at once.
    fn stop_vanished(&self, ours: &BTreeMap<String, &Value>) {
        let mut pods = lock(&self.shared);
        pods.by_uid.retain(|uid, runtime| {
            if ours.contains_key(uid) {
                return true;
            }
            runtime.init.kill();
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
            let Some(slot) = (0..self.config.slots.len()).find(|s| !used.contains(s)) else {
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
                    init: InitProgress::default(),
                    finished: None,
                },
            );
        }
    }

    /// Deleted pods: SIGTERM, SIGKILL after the grace period, then the pod object goes.
    fn finish_terminating(&self, ours: &BTreeMap<String, &Value>) {
        let mut finished = Vec::new();
        {
            let mut pods = lock(&self.shared);
            if pods.off {
                return;
            }
            for (uid, runtime) in pods.by_uid.iter_mut() {
                let Some(pod) = ours.get(uid).filter(|p| meta::is_terminating(p)) else {
                    continue;
                };
                runtime.init.kill();
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
            let deleted = self.while_on(|| {
                self.store.delete(
                    &self.types.pods,
                    meta::namespace_of(pod),
                    meta::name_of(pod),
                    &force,
                )
            });
            if matches!(deleted, Some(Ok(_))) {
                lock(&self.shared).by_uid.remove(&uid);
            }
        }
    }

    /// Records exited containers and starts those due.
    fn reap_and_start(&self, ours: &BTreeMap<String, &Value>) {
        let mut pods = lock(&self.shared);
        if pods.off {
            return;
        }
        for (uid, runtime) in pods.by_uid.iter_mut() {
            let Some(pod) = ours.get(uid).filter(|p| !meta::is_terminating(p)) else {
                continue;
            };
            if runtime.finished.is_some() || !self.run_init_containers(pod, runtime) {
                continue;
            }
            if let Some(running) = runtime.container.as_mut() {
                let Some(terminated) = terminated_state(running) else {
                    continue;
                };
                let done = match pod["spec"]["restartPolicy"].as_str() {
                    Some("Never") => true,
                    Some("OnFailure") => terminated["exitCode"] == 0,
                    _ => false,
                };
                runtime.container = None;
                runtime.ready = false;
                runtime.ready_since = meta::now();
                if done {
                    runtime.finished = Some(terminated);
                    continue;
                }
                runtime.last_terminated = Some(terminated);
                runtime.restart_count += 1;
                let backoff = restart_backoff(runtime.restart_count);
                runtime.next_start = Instant::now() + backoff;
                runtime.waiting = json!({
                    "reason": "CrashLoopBackOff",
                    "message": format!(
                        "back-off {}s restarting failed container",
                        backoff.as_secs()
                    ),
                });
            }
            if runtime.container.is_none() && Instant::now() >= runtime.next_start {
                let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
                if self.config.unavailable_images.contains(image) {
                    let pulled_before = runtime.waiting["reason"] == "ErrImagePull"
                        || runtime.waiting["reason"] == "ImagePullBackOff";
                    runtime.waiting = json!({
                        "reason": if pulled_before { "ImagePullBackOff" } else { "ErrImagePull" },
                        "message": format!("failed to pull image {image:?}: not found"),
                    });
                    runtime.next_start = Instant::now() + MAX_BACKOFF;
                    continue;
                }
                match self.start_container(pod, runtime) {
                    Ok(running) => {
                        runtime.container = Some(running);
                        runtime.waiting = Value::Null;
                        runtime.probe_failures = 0;
                        runtime.next_probe = Instant::now();
                        // Without a readiness probe, a running container is ready.
                        if !pod["spec"]["containers"][0]["readinessProbe"].is_object() {
                            runtime.ready = true;
                            runtime.ready_since = meta::now();
                        }
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
        let header = format!(
            "--- start {} on {} ---",
            runtime.restart_count, self.config.node_name
        );
        self.start_process(
            pod,
            &pod["spec"]["containers"][0],
            runtime,
            &header,
            "termination-log",
        )
    }

    /// Starts `container` of the pod as a process in its network namespace, appending to the
    /// pod's log after `header`.
    fn start_process(
        &self,
        pod: &Value,
        container: &Value,
        runtime: &PodRuntime,
        header: &str,
        termination_log: &str,
    ) -> anyhow::Result<Running> {
        let slot = &self.config.slots[runtime.slot];
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

        let pod_dir = pod_dir(&self.config, meta::uid_of(pod));
        fs::create_dir_all(&pod_dir)?;
        let termination_log = pod_dir.join(termination_log);
        File::create(&termination_log)?;
        let log_path = log_path(&self.config.dir, &runtime.namespace, &runtime.name);
        fs::create_dir_all(log_path.parent().expect("in the logs directory"))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(log, "{header}")?;

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
                "status.hostIP" => self.config.host_ip.to_string(),
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
        if source["secretKeyRef"].is_object() {
            return self.secret_key(pod, &source["secretKeyRef"]);
        }
        bail!("unsupported env source {source}")
    }

    /// `valueFrom.secretKeyRef`: the key of a Secret of the pod's namespace, decoded from the
    /// base64 of its `data` (or as written in `stringData`).
    fn secret_key(&self, pod: &Value, key_ref: &Value) -> anyhow::Result<String> {
        let name = key_ref["name"].as_str().unwrap_or_default();
        let key = key_ref["key"].as_str().unwrap_or_default();
        let optional = key_ref["optional"].as_bool().unwrap_or(false);
        let secret = self
            .store
            .get(&self.types.secrets, meta::namespace_of(pod), name)
            .ok();
        let value = match secret {
            Some(secret) => match secret["data"][key].as_str() {
                Some(encoded) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(anyhow::Error::from)
                        .and_then(|bytes| Ok(String::from_utf8(bytes)?))
                        .with_context(|| {
                            format!("secret {name:?} key {key:?} is not base64 of UTF-8 text")
                        })?,
                ),
                None => secret["stringData"][key].as_str().map(str::to_string),
            },
            None => None,
        };
        match value {
            Some(value) => Ok(value),
            None if optional => Ok(String::new()),
            None => bail!("secret {name:?} has no key {key:?}"),
        }
    }

    /// Runs the pod's init containers, one after the other: reaps the one running, starts the
    /// next when its back-off is over. Answers whether all of them have completed.
    fn run_init_containers(&self, pod: &Value, runtime: &mut PodRuntime) -> bool {
        let containers = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if runtime.init.done >= containers.len() {
            return true;
        }
        let container = &containers[runtime.init.done];
        let name = container["name"].as_str().unwrap_or_default();
        if let Some(running) = runtime.init.running.as_mut() {
            let Some(terminated) = terminated_state(running) else {
                return false;
            };
            runtime.init.running = None;
            if terminated["exitCode"] == 0 {
                let init = &mut runtime.init;
                init.completed.push(json!({
                    "name": name,
                    "restartCount": init.restart_count,
                    "terminated": terminated,
                }));
                init.done += 1;
                init.restart_count = 0;
                init.last_terminated = None;
                init.next_start = None;
                return init.done >= containers.len();
            }
            let init = &mut runtime.init;
            init.restart_count += 1;
            init.last_terminated = Some(terminated);
            init.next_start = Some(Instant::now() + restart_backoff(init.restart_count));
            return false;
        }
        if runtime
            .init
            .next_start
            .is_some_and(|at| Instant::now() < at)
        {
            return false;
        }
        let header = format!(
            "--- init container {name} start {} on {} ---",
            runtime.init.restart_count, self.config.node_name
        );
        let log = format!("termination-log-init-{name}");
        match self.start_process(pod, container, runtime, &header, &log) {
            Ok(running) => {
                runtime.init.running = Some(running);
                runtime.waiting = json!({"reason": "PodInitializing"});
            }
            Err(error) => {
                runtime.waiting = json!({
                    "reason": "CreateContainerConfigError",
                    "message": format!("init container {name}: {error:#}"),
                });
                runtime.init.next_start = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        false
    }

    /// `status.initContainerStatuses`, and whether every init container has completed.
    fn init_statuses(&self, pod: &Value, runtime: &PodRuntime) -> (Vec<Value>, bool) {
        let containers = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let init = &runtime.init;
        let statuses = containers
            .iter()
            .enumerate()
            .map(|(i, container)| {
                let (state, restarts, last) = if let Some(done) = init.completed.get(i) {
                    (
                        json!({"terminated": done["terminated"]}),
                        done["restartCount"].clone(),
                        json!({}),
                    )
                } else if i == init.done {
                    let state = match (&init.running, &init.last_terminated) {
                        (Some(running), _) => json!({"running": {"startedAt": running.started_at}}),
                        (None, Some(_)) if init.restart_count > 1 => json!({"waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off restarting failed init container",
                        }}),
                        (None, Some(terminated)) => json!({ "terminated": terminated }),
                        (None, None) => json!({"waiting": {"reason": "PodInitializing"}}),
                    };
                    let last = init
                        .last_terminated
                        .as_ref()
                        .map_or(json!({}), |t| json!({ "terminated": t }));
                    (state, json!(init.restart_count), last)
                } else {
                    (
                        json!({"waiting": {"reason": "PodInitializing"}}),
                        json!(0),
                        json!({}),
                    )
                };
                let completed = state["terminated"]["exitCode"] == 0;
                json!({
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": completed,
                    "started": init.running.is_some() && i == init.done,
                    "restartCount": restarts,
                    "state": state,
                    "lastState": last,
                })
            })
            .collect();
        (statuses, init.done >= containers.len())
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
                let volume = self.bind_claim(namespace, claim)?;
                volume_dir(&self.config.dir, &volume)
            } else if volume["emptyDir"].is_object() {
                pod_dir(&self.config, meta::uid_of(pod))
                    .join("volumes")
                    .join(volume_name)
            } else if volume["secret"].is_object() {
                self.project_secret(pod, volume)?
            } else {
                bail!("volume {volume_name:?}: only claims, emptyDir and secret are supported");
            };
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            mounts.push((path, dir));
        }
        // Longest first, so a mount inside another one wins.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Ok(mounts)
    }

    /// Brings the `secret` volumes of every running container up to date with their Secrets.
    fn sync_secret_volumes(&self, ours: &BTreeMap<String, &Value>) {
        let running: Vec<String> = {
            let pods = lock(&self.shared);
            if pods.off {
                return;
            }
            pods.by_uid
                .iter()
                .filter(|(_, r)| r.container.is_some() && r.kill_at.is_none())
                .map(|(uid, _)| uid.clone())
                .collect()
        };
        for uid in running {
            let Some(pod) = ours.get(&uid) else {
                continue;
            };
            let volumes = pod["spec"]["volumes"].as_array().into_iter().flatten();
            for volume in volumes.filter(|v| v["secret"].is_object()) {
                if let Err(error) = self.project_secret(pod, volume) {
                    eprintln!(
                        "kubelet {}: pod {}: {error:#}",
                        self.config.node_name,
                        meta::name_of(pod)
                    );
                }
            }
        }
    }

    /// Writes a `secret` volume's files in the pod's directory and returns it: each key of the
    /// Secret's `data` a file (or the `items` named), with `defaultMode` (or an item's `mode`).
    /// A file whose content changed is replaced whole (a new file renamed over it), so a reader
    /// never sees half of one; files of keys gone from the Secret are removed. A missing Secret
    /// keeps the container from starting, unless the volume is `optional`.
    fn project_secret(&self, pod: &Value, volume: &Value) -> anyhow::Result<PathBuf> {
        let source = &volume["secret"];
        let volume_name = volume["name"].as_str().unwrap_or_default();
        let secret_name = source["secretName"].as_str().unwrap_or_default();
        let dir = pod_dir(&self.config, meta::uid_of(pod))
            .join("volumes")
            .join(volume_name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = match self
            .store
            .get(&self.types.secrets, meta::namespace_of(pod), secret_name)
        {
            Ok(secret) => secret["data"].as_object().cloned().unwrap_or_default(),
            Err(_) if source["optional"].as_bool() == Some(true) => Default::default(),
            Err(e) => bail!("volume {volume_name:?}: secret {secret_name:?}: {e}"),
        };
        let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let items: Vec<(String, String, u32)> = match source["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|item| {
                    let key = item["key"].as_str().unwrap_or_default().to_string();
                    let path = item["path"].as_str().unwrap_or(&key).to_string();
                    let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                    (key, path, mode)
                })
                .collect(),
            None => data
                .keys()
                .map(|key| (key.clone(), key.clone(), default_mode))
                .collect(),
        };
        let mut written = BTreeSet::new();
        for (key, path, mode) in items {
            let Some(encoded) = data.get(&key).and_then(Value::as_str) else {
                bail!("volume {volume_name:?}: secret {secret_name:?} has no key {key:?}");
            };
            let content = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .with_context(|| format!("secret {secret_name:?} key {key:?} is not base64"))?;
            let file = dir.join(&path);
            written.insert(file.clone());
            if fs::read(&file).ok().as_deref() == Some(content.as_slice()) {
                continue;
            }
            let next = dir.join(format!(".{path}.next"));
            fs::write(&next, &content).with_context(|| format!("writing {}", next.display()))?;
            fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            fs::rename(&next, &file).with_context(|| format!("replacing {}", file.display()))?;
        }
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.is_file() && !written.contains(&path) {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(dir)
    }

    /// Binds a claim to its volume, provisioned on first use as a dynamic provisioner would:
    /// volume `pvc-UID`, a directory of its own, so that a claim made again under the same name
    /// gets a fresh, empty volume. Returns the volume's name. A missing claim keeps the
    /// container from starting, as it does on a real node. Called while starting a container,
    /// under the lock, with the power on.
    fn bind_claim(&self, namespace: &str, claim: &str) -> anyhow::Result<String> {
        let live = self
            .store
            .get(&self.types.claims, namespace, claim)
            .map_err(|e| anyhow!("claim {claim:?}: {e}"))?;
        let volume = volume_name(&live);
        if live["status"]["phase"] == "Bound" {
            return Ok(volume);
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
                Patch::Merge(json!({ "spec": {"volumeName": volume}, "status": status })),
                true,
                &options(),
            )
            .map_err(|e| anyhow!("binding claim {claim:?}: {e}"))?;
        Ok(volume)
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
                    let address = format!("{}:{port}", self.config.slots[r.slot].address);
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
            let written = self.while_on(|| {
                self.store.update(
                    &self.types.pods,
                    meta::namespace_of(pod),
                    meta::name_of(pod),
                    body,
                    true,
                    &options(),
                )
            });
            if matches!(written, Some(Ok(_))) {
                if let Some(runtime) = lock(&self.shared).by_uid.get_mut(&uid) {
                    runtime.written = Some(status);
                }
            }
        }
    }

    fn status_of(&self, pod: &Value, runtime: &PodRuntime) -> Value {
        let container = &pod["spec"]["containers"][0];
        let ready = runtime.ready && runtime.container.is_some();
        let state = match (&runtime.container, &runtime.finished) {
            (Some(running), _) => json!({"running": {"startedAt": running.started_at}}),
            (None, Some(terminated)) => json!({ "terminated": terminated }),
            (None, None) => json!({ "waiting": runtime.waiting }),
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
        let address = self.config.slots[runtime.slot].address.to_string();
        let started = runtime.container.is_some() || runtime.restart_count > 0;
        let phase = match &runtime.finished {
            Some(terminated) if terminated["exitCode"] == 0 => "Succeeded",
            Some(_) => "Failed",
            None if started => "Running",
            None => "Pending",
        };
        let (init_statuses, initialized) = self.init_statuses(pod, runtime);
        let mut status = json!({
            "phase": phase,
            "hostIP": self.config.host_ip.to_string(),
            "hostIPs": [{"ip": self.config.host_ip.to_string()}],
            "podIP": address,
            "podIPs": [{"ip": address}],
            "startTime": runtime.start_time,
            "qosClass": "Burstable",
            "conditions": [
                condition("PodScheduled", true, &scheduled),
                condition("Initialized", initialized, &runtime.start_time),
                condition("ContainersReady", ready, &runtime.ready_since),
                condition("Ready", ready, &runtime.ready_since),
            ],
            "containerStatuses": [container_status],
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        status
    }
}

/// `state.terminated` of a container whose process has exited (`None` while it runs): its exit
/// code, or 128 plus the signal that ended it, and its termination log as the message.
fn terminated_state(running: &mut Running) -> Option<Value> {
    let Ok(Some(exit)) = running.child.try_wait() else {
        return None;
    };
    let code = exit
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&exit).unwrap_or(0));
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
    Some(terminated)
}

/// How long a container that has failed `restarts` times waits before its next start: 2, 4,
/// then 8 s, as a real kubelet's back-off doubles (from 10 s, to five minutes).
fn restart_backoff(restarts: u32) -> Duration {
    Duration::from_secs(1 << restarts.min(3)).min(MAX_BACKOFF)
}

/// The volume a claim is bound to, or will be: `pvc-UID`, as dynamic provisioners name them.
pub fn volume_name(claim: &Value) -> String {
    match claim["spec"]["volumeName"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("pvc-{}", meta::uid_of(claim)),
    }
}

/// The directory that holds a volume's data, whichever node mounts it.
pub fn volume_dir(dir: &Path, volume: &str) -> PathBuf {
    dir.join("volumes").join(volume)
}

/// Where a pod's container log goes, whichever node runs it: every start, appended.
pub(crate) fn log_path(dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    dir.join("logs").join(format!("{namespace}_{pod}.log"))
}

/// A node's own files: what does not move with a pod.
fn node_dir(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(node)
}

/// A pod's files on its node: termination log, `emptyDir` volumes.
fn pod_dir(config: &KubeletConfig, uid: &str) -> PathBuf {
    node_dir(&config.dir, &config.node_name)
        .join("pods")
        .join(uid)
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
}
