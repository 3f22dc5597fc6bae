//! [`HostCluster`]: a cluster whose members run on separate hosts of a [`HostNetwork`], one
//! member per host, so tests can partition the network between them.
//!
//! Member `i` runs on host `i` (`ip netns exec`), listens on the host's address, ports 2379
//! (clients) and 2380 (peers), and advertises host names — `http://m1:2380`,
//! `http://m1:2379` — which every host resolves through its `/etc/netns/<namespace>/hosts`. The
//! test process reaches members by address from the root namespace, which no partition cuts.
//!
//! Spare hosts ([`HostClusterBuilder::spare_hosts`]) are on the network but run nothing until a
//! test adds them as members; members can be paused (SIGSTOP) and links cut one way.
//!
//! Flags are exactly etcd's, so `FERROKV_E2E_SERVER=/usr/bin/etcd` runs the same tests against
//! etcd. Members get `PR_SET_PDEATHSIG = SIGKILL` as in [`crate::cluster`]; dropping the cluster
//! kills them, prints their log tails if the test panicked, and then deletes the network.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::binaries::{etcdctl_binary, server_binary};
use crate::etcdctl::EtcdctlOutput;
use crate::netns::HostNetwork;

/// Client port of every member, on its own host's address.
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member, on its own host's address.
pub const PEER_PORT: u16 = 2380;

/// How long waits for health or for a leader last by default.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Set to keep the cluster's directory (data dirs and logs) after the test, as in [`crate::cluster`].
const KEEP_DIRS_ENV: &str = "FERROKV_E2E_KEEP_DIRS";

/// Lines of each member's log printed when a test panics.
const LOG_TAIL_LINES: usize = 40;

/// Options for a [`HostCluster`]; start from [`HostCluster::builder`].
#[derive(Debug, Clone)]
pub struct HostClusterBuilder {
    members: usize,
    heartbeat_interval_ms: u64,
    election_timeout_ms: u64,
    extra_args: Vec<String>,
    server: Option<PathBuf>,
    spare_hosts: usize,
}

impl HostClusterBuilder {
    /// Adds `hosts` hosts to the network that are not members and run nothing, for tests that
    /// add a member: host `members + k` is spare `k`. Set its `--initial-cluster` and
    /// `--initial-cluster-state existing` with [`HostCluster::set_flag`] before its first start.
    pub fn spare_hosts(mut self, hosts: usize) -> Self {
        self.spare_hosts = hosts;
        self
    }

    /// Runs `server` instead of [`server_binary`]'s choice, e.g. to compare ferrokv and etcd in
    /// one program.
    pub fn server(mut self, server: impl Into<PathBuf>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// `--heartbeat-interval` and `--election-timeout`, in milliseconds.
    pub fn timing(mut self, heartbeat_interval_ms: u64, election_timeout_ms: u64) -> Self {
        self.heartbeat_interval_ms = heartbeat_interval_ms;
        self.election_timeout_ms = election_timeout_ms;
        self
    }

    /// One more flag for every member, e.g. `--pre-vote` for etcd.
    pub fn arg(mut self, flag: impl Into<String>) -> Self {
        self.extra_args.push(flag.into());
        self
    }

    /// Creates the network, starts the members and waits until every one is healthy.
    pub async fn start(self) -> anyhow::Result<HostCluster> {
        let mut cluster = self.spawn()?;
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Creates the network and starts the members without waiting for them.
    pub fn spawn(self) -> anyhow::Result<HostCluster> {
        assert!(self.members > 0, "a cluster needs at least one member");
        let hosts = self.members + self.spare_hosts;
        let network = HostNetwork::create(hosts)?;
        let dir = tempfile::Builder::new()
            .prefix("ferrokv-e2e-hosts-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let initial_cluster = (0..self.members)
            .map(|i| {
                let name = network.host_name(i);
                format!("{name}=http://{name}:{PEER_PORT}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("ferrokv-e2e-hosts-{}", network.namespace(0));
        let mut members = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let name = network.host_name(i);
            let address = network.address(i);
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join(&name).display()),
                format!("--listen-client-urls=http://{address}:{CLIENT_PORT}"),
                format!("--advertise-client-urls=http://{name}:{CLIENT_PORT}"),
                format!("--listen-peer-urls=http://{address}:{PEER_PORT}"),
                format!("--initial-advertise-peer-urls=http://{name}:{PEER_PORT}"),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".to_string(),
                format!("--initial-cluster-token={token}"),
                format!("--heartbeat-interval={}", self.heartbeat_interval_ms),
                format!("--election-timeout={}", self.election_timeout_ms),
            ];
            args.extend(self.extra_args.iter().cloned());
            members.push(HostMember {
                log_path: dir.path().join(format!("{name}.log")),
                data_dir: dir.path().join(&name),
                name,
                args,
                process: None,
                starts: 0,
            });
        }
        let dir = if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            eprintln!("ferrokv-e2e: keeping {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        let mut cluster = HostCluster {
            server: self.server.unwrap_or_else(server_binary),
            etcdctl: etcdctl_binary(),
            members,
            network,
            _dir: dir,
        };
        for i in 0..self.members {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }
}

#[derive(Debug)]
struct HostMember {
    name: String,
    log_path: PathBuf,
    data_dir: PathBuf,
    args: Vec<String>,
    process: Option<Child>,
    starts: u32,
}

/// What Maintenance.Status reports about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemberStatus {
    pub member_id: u64,
    /// 0 when the member knows no leader.
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
}

/// Members on separate hosts. See the module documentation.
#[derive(Debug)]
pub struct HostCluster {
    server: PathBuf,
    etcdctl: PathBuf,
    members: Vec<HostMember>,
    // Dropped after the members are killed (in `Drop`), so no process keeps a namespace alive.
    network: HostNetwork,
    /// Deleted on drop; `None` when kept for a post-mortem.
    _dir: Option<TempDir>,
}

impl HostCluster {
    /// Options for a cluster of `members` members, one per host, with etcd's default timing
    /// (heartbeat 100 ms, election timeout 1000 ms).
    pub fn builder(members: usize) -> HostClusterBuilder {
        HostClusterBuilder {
            members,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            extra_args: Vec::new(),
            server: None,
            spare_hosts: 0,
        }
    }

    /// Number of hosts, spare hosts included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The server binary the members run.
    pub fn server(&self) -> &Path {
        &self.server
    }

    /// The network the members run on.
    pub fn network(&self) -> &HostNetwork {
        &self.network
    }

    /// Member `i`'s name, which is also its host's name (`m1`, `m2`, ...).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s client URL as the test process reaches it: by address.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.network.address(i))
    }

    /// Cuts the network into `groups` of member indices (see [`HostNetwork::partition`]).
    pub fn partition(&mut self, groups: &[&[usize]]) -> anyhow::Result<()> {
        self.network.partition(groups)
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&mut self, i: usize) -> anyhow::Result<()> {
        self.network.isolate(i)
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.network.heal()
    }

    /// Starts member `i` with the flags of its first start. Does not wait.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let mut command = self.network.command(i, &self.server);
        let member = &mut self.members[i];
        if member.process.is_some() {
            bail!("member {} is already running", member.name);
        }
        member.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .with_context(|| format!("opening {}", member.log_path.display()))?;
        writeln!(
            log,
            "=== ferrokv-e2e: start #{} of {} on {}: {} {}",
            member.starts,
            member.name,
            self.network.namespace(i),
            self.server.display(),
            member.args.join(" ")
        )?;
        command
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The signal
        // survives `ip netns exec`'s exec of the server.
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
            .with_context(|| format!("spawning {} on its host", self.server.display()))?;
        member.process = Some(child);
        Ok(())
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let mut child = member
            .process
            .take()
            .ok_or_else(|| anyhow!("member {} is not running", member.name))?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "member {} had already exited ({status}); log tail:\n{}",
                member.name,
                log_tail(&member.log_path)
            );
        }
        child.kill().context("SIGKILL")?;
        child.wait()?;
        Ok(())
    }

    /// Sets flag `flag` (e.g. `--initial-cluster-state`) of member `i` to `value` for its next
    /// starts, replacing the flag's earlier value.
    pub fn set_flag(&mut self, i: usize, flag: &str, value: &str) {
        let prefix = format!("{flag}=");
        let args = &mut self.members[i].args;
        args.retain(|arg| !arg.starts_with(&prefix));
        args.push(format!("{flag}={value}"));
    }

    /// Deletes stopped member `i`'s data dir, so its next start is a new member's first.
    pub fn wipe_data(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &self.members[i];
        if member.process.is_some() {
            bail!(
                "member {} must be stopped before its data is wiped",
                member.name
            );
        }
        match fs::remove_dir_all(&member.data_dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(error).with_context(|| format!("deleting {}", member.data_dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Stops member `i` with SIGSTOP: it keeps its sockets and state but does nothing, like a
    /// machine stalled by its hypervisor, until [`resume`](Self::resume).
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// Continues member `i` after [`pause`](Self::pause) with SIGCONT.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    fn signal(&mut self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        self.check_alive(i)?;
        let member = &self.members[i];
        let child = member
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("member {} is not running", member.name))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on a child we have not reaped, so the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling member {}", member.name));
        }
        Ok(())
    }

    /// Waits up to `timeout` for member `i` to exit by itself (as a removed member does);
    /// SIGKILLs it if it has not. Returns whether it exited by itself.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let member = &mut self.members[i];
            let Some(child) = member.process.as_mut() else {
                return Ok(true);
            };
            if child.try_wait()?.is_some() {
                member.process = None;
                return Ok(true);
            }
            if Instant::now() >= deadline {
                child.kill().context("SIGKILL")?;
                child.wait()?;
                member.process = None;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drops the packets of each `(from, to)` link (see [`HostNetwork::drop_links`]).
    pub fn drop_links(&mut self, links: &[(usize, usize)]) -> anyhow::Result<()> {
        self.network.drop_links(links)
    }

    /// Indices of the members that have a process.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.members[i].process.is_some())
            .collect()
    }

    /// Fails with the member's log if its process has exited.
    pub fn check_alive(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if let Some(child) = member.process.as_mut() {
            if let Some(status) = child.try_wait()? {
                member.process = None;
                bail!(
                    "member {} exited ({status}); log tail:\n{}",
                    member.name,
                    log_tail(&member.log_path)
                );
            }
        }
        Ok(())
    }

    /// Waits until every running member answers Status and a linearizable Range.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        for i in self.running() {
            loop {
                self.check_alive(i)?;
                let error = match probe_health(&self.endpoint(i)).await {
                    Ok(()) => break,
                    Err(error) => error,
                };
                if Instant::now() >= deadline {
                    bail!(
                        "member {} not healthy after {HEALTH_TIMEOUT:?}: {error:#}; log tail:\n{}",
                        self.name(i),
                        self.log_tail(i)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Member `i`'s Maintenance.Status.
    pub async fn status(&self, i: usize) -> anyhow::Result<HostMemberStatus> {
        let mut client = connect(&self.endpoint(i), Duration::from_secs(2)).await?;
        let status = client.status().await.context("Maintenance.Status")?;
        let header = status
            .header()
            .ok_or_else(|| anyhow!("status response without a header"))?;
        Ok(HostMemberStatus {
            member_id: header.member_id(),
            leader: status.leader(),
            raft_term: status.raft_term(),
            raft_index: status.raft_index(),
        })
    }

    /// The index of the member that every member of `group` names as leader, once they agree
    /// on one inside `group`; waits up to `timeout`.
    pub async fn leader_among(&self, group: &[usize], timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for &i in group {
                if let Ok(status) = self.status(i).await {
                    statuses.push((i, status));
                }
            }
            if statuses.len() == group.len() {
                let leader = statuses[0].1.leader;
                if leader != 0 && statuses.iter().all(|(_, s)| s.leader == leader) {
                    if let Some(&(i, _)) = statuses.iter().find(|(_, s)| s.member_id == leader) {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("members {group:?} agree on no leader among them after {timeout:?}: {statuses:x?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader every running member agrees on.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        self.leader_among(&self.running(), HEALTH_TIMEOUT).await
    }

    /// An `etcd-client` connection to member `i` only, whose requests time out after `timeout`.
    pub async fn member_client(&self, i: usize, timeout: Duration) -> anyhow::Result<Client> {
        connect(&self.endpoint(i), timeout).await
    }

    /// Runs `etcdctl --endpoints=http://<name of member i>:2379 <args>` on `host`: the name
    /// resolves through the host's hosts file, and partitions apply to etcdctl's traffic as to
    /// a member's.
    pub async fn etcdctl_on(&self, host: usize, i: usize, args: &[&str]) -> EtcdctlOutput {
        let mut command = tokio::process::Command::from(self.network.command(host, &self.etcdctl));
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://{}:{CLIENT_PORT}", self.name(i)))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {args:?} on host {host} ran for 60 s"))
            .unwrap_or_else(|error| panic!("running etcdctl {args:?}: {error}"));
        EtcdctlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        log_tail(&self.members[i].log_path)
    }
}

impl Drop for HostCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for member in &self.members {
                eprintln!(
                    "----- tail of {} ({}) -----\n{}",
                    member.name,
                    member.log_path.display(),
                    log_tail(&member.log_path)
                );
            }
        }
        // The network is dropped after this, with every member process gone.
    }
}

async fn probe_health(endpoint: &str) -> anyhow::Result<()> {
    let mut client = connect(endpoint, Duration::from_secs(5)).await?;
    client.status().await.context("Maintenance.Status")?;
    client
        .get("ferrokv-e2e/health", None)
        .await
        .context("linearizable Range")?;
    Ok(())
}

async fn connect(endpoint: &str, timeout: Duration) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(timeout);
    Client::connect([endpoint], Some(options))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
