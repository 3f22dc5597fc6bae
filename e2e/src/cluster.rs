//! [`TestCluster`]: a cluster of real member processes on loopback, and the operations tests
//! perform on it — wait for health, find the leader, SIGKILL / SIGTERM / restart members, talk to
//! them with etcdctl and the `etcd-client` crate.
//!
//! Members are started with exactly etcd's flags, so the same test runs against ferrokv or, with
//! `FERROKV_E2E_SERVER=/usr/bin/etcd`, against etcd itself. Every member gets its own reserved
//! ports, its own directories under one temporary directory and a log file there; dropping the
//! cluster kills every member, and a panicking test prints the tail of each member's log.
//! Set `FERROKV_E2E_KEEP_DIRS=1` to keep the temporary directory for a post-mortem.
//!
//! Member processes are started with `PR_SET_PDEATHSIG = SIGKILL`, so they die even when the test
//! process is killed before `Drop` runs. Linux delivers that signal when the *thread* that spawned
//! the member exits, so start and restart members from the test's own task (as all tests do), not
//! from `spawn_blocking`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tempfile::TempDir;

use crate::binaries::{etcdctl_binary, server_binary};
use crate::etcdctl::{run_etcdctl, EtcdctlOutput, EtcdctlProcess};
use crate::ports::ReservedPort;

/// How long [`TestCluster::wait_healthy`] and [`TestCluster::leader`] wait by default. Generous:
/// a loaded 2-core CI machine elects slowly.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The `--election-timeout` of a cluster's members unless its builder sets another: etcd's
/// default. Tests that bound an election's length derive their bounds from it.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long [`TestCluster::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Lines of each member's log printed when a test panics.
const LOG_TAIL_LINES: usize = 40;

/// Set to keep a cluster's temporary directory (data dirs and logs) after the test.
const KEEP_DIRS_ENV: &str = "FERROKV_E2E_KEEP_DIRS";

/// How members learn who their peers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bootstrap {
    /// `--initial-cluster`, `--initial-cluster-state new`, `--initial-cluster-token`, `--name`.
    Static,
    /// No cluster flags at all: the server's defaults make it a one-member cluster.
    Defaults,
}

/// Options for a [`TestCluster`]; start from [`TestCluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    members: usize,
    bootstrap: Bootstrap,
    separate_wal_dir: bool,
    snapshot_count: Option<u64>,
    heartbeat_interval_ms: u64,
    election_timeout_ms: u64,
    /// Further flags every member is started with, e.g. `--max-txn-ops=4`.
    extra_flags: Vec<String>,
    /// The server binary, when not the one under test ([`server_binary`]).
    server: Option<PathBuf>,
    /// `https://` client URLs, and what the harness's clients connect with.
    client_tls: Option<ClientCredentials>,
    /// `https://` peer URLs.
    peer_https: bool,
}

/// What a client of a TLS cluster connects with: the CA bundle that verifies the members, and
/// a client certificate and key for `--client-cert-auth`. etcdctl gets them as `--cacert`,
/// `--cert` and `--key`; the `etcd-client` crate as its `TlsOptions`.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub ca: PathBuf,
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

impl ClientCredentials {
    /// etcdctl's flags for these credentials.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--cacert={}", self.ca.display())];
        if let Some((cert, key)) = &self.cert_and_key {
            flags.push(format!("--cert={}", cert.display()));
            flags.push(format!("--key={}", key.display()));
        }
        flags
    }

    /// The `etcd-client` TLS options for these credentials, read from the files now.
    pub fn tls_options(&self) -> anyhow::Result<TlsOptions> {
        let read =
            |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.cert_and_key {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(options)
    }
}

impl ClusterBuilder {
    /// Gives every member `--wal-dir` outside its `--data-dir`, as the operator does with two
    /// volumes.
    pub fn separate_wal_dir(mut self) -> Self {
        self.separate_wal_dir = true;
        self
    }

    /// Serves clients on `https://` URLs; the harness's clients (health probes, etcdctl,
    /// `etcd-client`) connect with `credentials`. The TLS flags themselves are the test's to
    /// give with [`flag`](Self::flag).
    pub fn client_https(mut self, credentials: ClientCredentials) -> Self {
        self.client_tls = Some(credentials);
        self
    }

    /// Uses `https://` peer URLs (the peer TLS flags are the test's to give).
    pub fn peer_https(mut self) -> Self {
        self.peer_https = true;
        self
    }

    /// Passes `--snapshot-count`, e.g. a small one so a test exercises snapshots and WAL
    /// truncation.
    pub fn snapshot_count(mut self, entries: u64) -> Self {
        self.snapshot_count = Some(entries);
        self
    }

    /// Runs the members with `server` instead of the server under test, e.g. `/usr/bin/etcd`
    /// for a test that moves data between etcd and ferrokv.
    pub fn server(mut self, server: impl Into<PathBuf>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Starts every member with one more flag, written `--flag=value` (etcd's flag names), e.g.
    /// `--quota-backend-bytes=...` or `--max-request-bytes=...`.
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.extra_flags.push(flag.into());
        self
    }

    /// Starts a single member with no cluster flags, only its directories, its client URLs and
    /// `--listen-peer-urls`, relying on the server's defaults to form a one-member cluster: named
    /// `default`, advertising the default peer URL `http://localhost:2380` (which nothing dials
    /// in a one-member cluster, so no other test's port is touched).
    pub fn without_cluster_flags(mut self) -> Self {
        assert_eq!(
            self.members, 1,
            "only a single member can bootstrap from defaults"
        );
        self.bootstrap = Bootstrap::Defaults;
        self
    }

    /// Spawns the members and waits until every one of them is healthy.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        let mut cluster = self.spawn()?;
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Spawns the members without waiting for them.
    pub fn spawn(self) -> anyhow::Result<TestCluster> {
        let mut cluster = self.create()?;
        for i in 0..cluster.members.len() {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// Lays out the members — ports, directories, flags — without starting any, so a test can
    /// prepare their data dirs first (e.g. restore a snapshot into them) and then start each with
    /// [`TestCluster::restart`].
    pub fn create(self) -> anyhow::Result<TestCluster> {
        assert!(self.members > 0, "a cluster needs at least one member");
        let server = self.server.clone().unwrap_or_else(server_binary);
        let dir = tempfile::Builder::new()
            .prefix("ferrokv-e2e-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;

        let mut ports = Vec::with_capacity(self.members);
        for _ in 0..self.members {
            ports.push((ReservedPort::reserve()?, ReservedPort::reserve()?));
        }
        let names: Vec<String> = (0..self.members).map(|i| format!("member-{i}")).collect();
        let client_scheme = scheme(self.client_tls.is_some());
        let peer_scheme = scheme(self.peer_https);
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}={}", peer.url_with(peer_scheme)))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per cluster, so members of two concurrent tests could never join each other.
        let token = format!("ferrokv-e2e-{}-{}", std::process::id(), ports[0].0.port());

        let mut members = Vec::with_capacity(self.members);
        for (name, (client_port, peer_port)) in names.into_iter().zip(ports) {
            let member_dir = dir.path().join(&name);
            let data_dir = member_dir.join("data");
            let wal_dir = self.separate_wal_dir.then(|| member_dir.join("wal"));
            let mut args = vec![
                format!("--data-dir={}", data_dir.display()),
                format!(
                    "--listen-client-urls={}",
                    client_port.url_with(client_scheme)
                ),
                format!(
                    "--advertise-client-urls={}",
                    client_port.url_with(client_scheme)
                ),
                format!("--listen-peer-urls={}", peer_port.url_with(peer_scheme)),
            ];
            if let Some(wal_dir) = &wal_dir {
                args.push(format!("--wal-dir={}", wal_dir.display()));
            }
            let name = match self.bootstrap {
                Bootstrap::Static => {
                    args.extend([
                        format!(
                            "--initial-advertise-peer-urls={}",
                            peer_port.url_with(peer_scheme)
                        ),
                        format!("--name={name}"),
                        format!("--initial-cluster={initial_cluster}"),
                        "--initial-cluster-state=new".to_string(),
                        format!("--initial-cluster-token={token}"),
                        format!("--heartbeat-interval={}", self.heartbeat_interval_ms),
                        format!("--election-timeout={}", self.election_timeout_ms),
                    ]);
                    if let Some(entries) = self.snapshot_count {
                        args.push(format!("--snapshot-count={entries}"));
                    }
                    name
                }
                // etcd's default member name.
                Bootstrap::Defaults => "default".to_string(),
            };
            args.extend(self.extra_flags.iter().cloned());
            fs::create_dir_all(&member_dir)
                .with_context(|| format!("creating {}", member_dir.display()))?;
            members.push(Member {
                log_path: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                data_dir,
                wal_dir,
                args,
                env: Vec::new(),
                process: None,
                starts: 0,
            });
        }

        Ok(TestCluster {
            server,
            client_tls: self.client_tls.clone(),
            client_scheme,
            peer_scheme,
            etcdctl: etcdctl_binary(),
            members,
            initial_cluster,
            token,
            dir: Some(dir),
        })
    }
}

/// One member: its identity, its directories and, while it runs, its process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: ReservedPort,
    peer_port: ReservedPort,
    data_dir: PathBuf,
    wal_dir: Option<PathBuf>,
    log_path: PathBuf,
    /// The exact flags of the first start; restarts reuse them.
    args: Vec<String>,
    /// Environment variables set for the member's next starts, e.g. `FERROKV_TERMINATION_LOG`.
    env: Vec<(String, OsString)>,
    process: Option<Child>,
    /// How many times the member has been started, for the log's section markers.
    starts: u32,
}

/// A cluster of real member processes on loopback. See the module documentation.
#[derive(Debug)]
pub struct TestCluster {
    server: PathBuf,
    /// What the harness's clients connect with, on `https://` client URLs.
    client_tls: Option<ClientCredentials>,
    client_scheme: &'static str,
    peer_scheme: &'static str,
    etcdctl: PathBuf,
    members: Vec<Member>,
    /// `--initial-cluster` of a statically bootstrapped cluster.
    initial_cluster: String,
    /// `--initial-cluster-token` of a statically bootstrapped cluster.
    token: String,
    /// `None` only after `Drop` decided to keep it.
    dir: Option<TempDir>,
}

impl TestCluster {
    /// Options for a cluster of `members` members bootstrapped statically.
    pub fn builder(members: usize) -> ClusterBuilder {
        ClusterBuilder {
            members,
            bootstrap: Bootstrap::Static,
            separate_wal_dir: false,
            snapshot_count: None,
            // etcd's defaults, passed explicitly so the flags are exercised.
            heartbeat_interval_ms: 100,
            election_timeout_ms: ELECTION_TIMEOUT.as_millis() as u64,
            extra_flags: Vec::new(),
            server: None,
            client_tls: None,
            peer_https: false,
        }
    }

    /// Starts `members` members with default options and waits until all are healthy.
    pub async fn start(members: usize) -> anyhow::Result<TestCluster> {
        Self::builder(members).start().await
    }

    /// Number of members, running or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The server binary the members run.
    pub fn server(&self) -> &Path {
        &self.server
    }

    /// Member `i`'s `--name`.
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s client URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_port.url_with(self.client_scheme)
    }

    /// What the harness's clients connect with, on a cluster with `https://` client URLs.
    pub fn client_credentials(&self) -> Option<&ClientCredentials> {
        self.client_tls.as_ref()
    }

    /// Makes the harness's clients (health probes, etcdctl, `etcd-client`) connect with
    /// `credentials` from now on, e.g. a certificate of a new CA during a rotation.
    pub fn set_client_credentials(&mut self, credentials: ClientCredentials) {
        self.client_tls = Some(credentials);
    }

    /// Member `i`'s peer URL (what it listens on; a member started
    /// [`without_cluster_flags`](ClusterBuilder::without_cluster_flags) advertises the default).
    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].peer_port.url_with(self.peer_scheme)
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The `--initial-cluster` the members were (or will be) started with: `name=peer-url,...`.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// The `--initial-cluster-token` the members were (or will be) started with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the members run etcd rather than ferrokv (see [`crate::binaries::is_etcd`]).
    pub fn server_is_etcd(&self) -> bool {
        crate::binaries::is_etcd(&self.server)
    }

    /// Sets flag `flag` (e.g. `--initial-cluster-token`) of member `i` to `value` for its next
    /// starts, replacing the flag's earlier value or adding it.
    pub fn set_flag(&mut self, i: usize, flag: &str, value: &str) {
        let prefix = format!("{flag}=");
        let args = &mut self.members[i].args;
        args.retain(|arg| !arg.starts_with(&prefix));
        args.push(format!("{flag}={value}"));
    }

    /// Sets environment variable `key` of member `i` to `value` for its next starts, e.g.
    /// `FERROKV_TERMINATION_LOG` to collect the reason a member refuses to start.
    pub fn set_env(&mut self, i: usize, key: &str, value: impl Into<OsString>) {
        let env = &mut self.members[i].env;
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.into()));
    }

    /// Moves stopped member `i` to a "new machine": copies its data dir (and WAL dir) to a new
    /// place and gives it a new peer port, as an admin migrating a member does; the member's
    /// next start uses them. Returns the new peer URL, for `etcdctl member update`.
    pub fn relocate(&mut self, i: usize) -> anyhow::Result<String> {
        let member = &mut self.members[i];
        if member.process.is_some() {
            bail!("member {} must be stopped before it is moved", member.name);
        }
        let new_home = member
            .data_dir
            .parent()
            .context("member dir")?
            .join("moved");
        let new_data = new_home.join("data");
        copy_dir(&member.data_dir, &new_data)?;
        let new_wal = match &member.wal_dir {
            Some(wal) => {
                let new_wal = new_home.join("wal");
                copy_dir(wal, &new_wal)?;
                Some(new_wal)
            }
            None => None,
        };
        let peer_port = ReservedPort::reserve()?;
        let url = peer_port.url_with(self.peer_scheme);
        let replace = |args: &mut Vec<String>, flag: &str, value: String| {
            let prefix = format!("{flag}=");
            args.retain(|arg| !arg.starts_with(&prefix));
            args.push(format!("{flag}={value}"));
        };
        replace(
            &mut member.args,
            "--data-dir",
            new_data.display().to_string(),
        );
        if let Some(wal) = &new_wal {
            replace(&mut member.args, "--wal-dir", wal.display().to_string());
        }
        replace(&mut member.args, "--listen-peer-urls", url.clone());
        replace(
            &mut member.args,
            "--initial-advertise-peer-urls",
            url.clone(),
        );
        member.data_dir = new_data;
        member.wal_dir = new_wal;
        member.peer_port = peer_port;
        Ok(url)
    }

    /// Member `i`'s `--data-dir`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// Member `i`'s `--wal-dir`, when the cluster was built with a separate one.
    pub fn wal_dir(&self, i: usize) -> Option<&Path> {
        self.members[i].wal_dir.as_deref()
    }

    /// The file member `i` writes its stdout and stderr to.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log_path
    }

    /// Process ID of member `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.as_ref().map(Child::id)
    }

    /// Whether member `i` has a process (that has not been reaped).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].process.is_some()
    }

    /// Indices of the members that have a process.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Starts member `i` again with the flags and directories of its first start (including
    /// `--initial-cluster-state new`: a member with an initialised data dir ignores it). Does not
    /// wait; follow with [`wait_healthy`](Self::wait_healthy).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let server = self.server.clone();
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
            "=== ferrokv-e2e: start #{} of {}: {} {}",
            member.starts,
            member.name,
            server.display(),
            member.args.join(" ")
        )?;
        let mut command = Command::new(&server);
        command
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Variables such as ETCD_NAME would override the flags of an etcd under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        command.envs(member.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
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
            .with_context(|| format!("spawning {}", server.display()))?;
        member.process = Some(child);
        Ok(())
    }

    /// Waits up to `timeout` for member `i` to exit by itself (e.g. refusing to start) and
    /// returns how it exited; fails if it is still running then (and kills it).
    pub async fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let member = &mut self.members[i];
            let child = member
                .process
                .as_mut()
                .ok_or_else(|| anyhow!("member {} is not running", member.name))?;
            if let Some(status) = child.try_wait()? {
                member.process = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill(i)?;
                bail!(
                    "member {} still running after {timeout:?}; log tail:\n{}",
                    self.name(i),
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs member `i` and reaps it, like a machine losing power.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGKILL)?;
        self.reap(i)
    }

    /// SIGKILLs every running member before reaping any, so none outlives another by more
    /// than the few microseconds between two kill(2) calls.
    pub fn kill_all(&mut self) -> anyhow::Result<()> {
        let running = self.running();
        for &i in &running {
            self.signal(i, libc::SIGKILL)?;
        }
        for &i in &running {
            self.reap(i)?;
        }
        Ok(())
    }

    /// Stops member `i` with SIGTERM, SIGKILLing it if it has not exited after 10 seconds.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGTERM)?;
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let child = self.members[i].process.as_mut().expect("signalled member");
            if child.try_wait()?.is_some() {
                self.members[i].process = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return self.kill(i);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let child = member
            .process
            .as_mut()
            .ok_or_else(|| anyhow!("member {} is not running", member.name))?;
        // A member that exited on its own crashed: that is a finding, not something to paper over.
        if let Some(status) = child.try_wait()? {
            member.process = None;
            bail!(
                "member {} had already exited ({status}) before it was signalled; log tail:\n{}",
                member.name,
                log_tail(&member.log_path, LOG_TAIL_LINES)
            );
        }
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on a child we have not reaped, so the pid cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling member {}", member.name));
        }
        Ok(())
    }

    fn reap(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members[i].process.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// Waits until every running member answers Maintenance.Status and a linearizable Range,
    /// failing fast (with its log) if a member process exits.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        self.wait_healthy_within(HEALTH_TIMEOUT).await
    }

    /// [`wait_healthy`](Self::wait_healthy) with a chosen timeout.
    pub async fn wait_healthy_within(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let running = self.running();
        let credentials = self.client_tls.clone();
        if running.is_empty() {
            bail!("no member is running");
        }
        let deadline = Instant::now() + timeout;
        for i in running {
            let endpoint = self.endpoint(i);
            loop {
                self.check_alive(i)?;
                let error = match probe_health(&endpoint, credentials.as_ref()).await {
                    Ok(()) => break,
                    Err(error) => error,
                };
                if Instant::now() >= deadline {
                    bail!(
                        "member {} ({endpoint}) not healthy after {timeout:?}: {error:#}; \
                         log tail:\n{}",
                        self.name(i),
                        self.log_tail(i)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Fails with the member's log if its process has exited.
    fn check_alive(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if let Some(child) = member.process.as_mut() {
            if let Some(status) = child.try_wait()? {
                member.process = None;
                bail!(
                    "member {} exited ({status}); log tail:\n{}",
                    member.name,
                    log_tail(&member.log_path, LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// The index of the leader, once every running member that answers agrees on one and a
    /// majority of the cluster answers.
    pub async fn leader(&mut self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let majority = self.len() / 2 + 1;
        loop {
            let mut member_ids = Vec::new();
            let mut leaders = Vec::new();
            for i in self.running() {
                self.check_alive(i)?;
                if let Ok(status) = member_status(&self.endpoint(i), self.client_tls.as_ref()).await
                {
                    member_ids.push((status.member_id, i));
                    leaders.push(status.leader);
                }
            }
            if leaders.len() >= majority && leaders.iter().all(|&l| l != 0 && l == leaders[0]) {
                if let Some(&(_, index)) = member_ids.iter().find(|(id, _)| *id == leaders[0]) {
                    return Ok(index);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no agreed leader after {HEALTH_TIMEOUT:?}: members (id, index) \
                     {member_ids:x?} report leaders {leaders:x?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Member `i`'s 64-bit member ID, from its Maintenance.Status response header.
    pub async fn member_id(&self, i: usize) -> anyhow::Result<u64> {
        Ok(member_status(&self.endpoint(i), self.client_tls.as_ref())
            .await?
            .member_id)
    }

    /// An `etcd-client` connection balanced over all members.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.endpoints(), self.client_tls.as_ref()).await
    }

    /// An `etcd-client` connection to member `i` only, e.g. for a linearizable read served by
    /// that member.
    pub async fn member_client(&self, i: usize) -> anyhow::Result<Client> {
        connect(&[self.endpoint(i)], self.client_tls.as_ref()).await
    }

    /// Runs `etcdctl --endpoints=<all members> <args>`.
    pub async fn etcdctl(&self, args: &[&str]) -> EtcdctlOutput {
        self.etcdctl_at(&self.endpoints(), args, None).await
    }

    /// Runs `etcdctl --endpoints=<all members> <args>` with `stdin` as its standard input.
    pub async fn etcdctl_with_stdin(&self, args: &[&str], stdin: &str) -> EtcdctlOutput {
        self.etcdctl_at(&self.endpoints(), args, Some(stdin)).await
    }

    /// Runs `etcdctl --endpoints=<member i> <args>`.
    pub async fn member_etcdctl(&self, i: usize, args: &[&str]) -> EtcdctlOutput {
        self.etcdctl_at(&[self.endpoint(i)], args, None).await
    }

    /// Starts `etcdctl --endpoints=<all members> <args>` for a command that keeps running and
    /// printing, such as `watch`; it is killed when the returned process is dropped.
    pub fn etcdctl_process(&self, args: &[&str]) -> EtcdctlProcess {
        let args = self.with_credentials(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        EtcdctlProcess::spawn(&self.etcdctl, &self.endpoints(), &args)
            .unwrap_or_else(|error| panic!("starting etcdctl {args:?}: {error:#}"))
    }

    /// The etcdctl binary the cluster's helpers run.
    pub fn etcdctl_path(&self) -> &Path {
        &self.etcdctl
    }

    async fn etcdctl_at(
        &self,
        endpoints: &[String],
        args: &[&str],
        stdin: Option<&str>,
    ) -> EtcdctlOutput {
        let args = self.with_credentials(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_etcdctl(&self.etcdctl, endpoints, &args, stdin)
            .await
            .unwrap_or_else(|error| panic!("running etcdctl {args:?}: {error:#}"))
    }

    /// `args` after etcdctl's TLS flags, on a cluster with `https://` client URLs.
    fn with_credentials(&self, args: &[&str]) -> Vec<String> {
        let mut all = self
            .client_tls
            .as_ref()
            .map(ClientCredentials::etcdctl_flags)
            .unwrap_or_default();
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        log_tail(self.log_path(i), LOG_TAIL_LINES)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                // Errors here mean the process is already gone, which is what we want.
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
                    log_tail(&member.log_path, LOG_TAIL_LINES)
                );
            }
        }
        if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("ferrokv-e2e: kept {}", dir.keep().display());
            }
        }
    }
}

/// The parts of a Maintenance.Status answer the harness uses.
struct MemberStatus {
    member_id: u64,
    leader: u64,
}

async fn member_status(
    endpoint: &str,
    credentials: Option<&ClientCredentials>,
) -> anyhow::Result<MemberStatus> {
    let mut client = connect(&[endpoint.to_string()], credentials).await?;
    let status = client.status().await?;
    let member_id = status
        .header()
        .ok_or_else(|| anyhow!("status response without a header"))?
        .member_id();
    Ok(MemberStatus {
        member_id,
        leader: status.leader(),
    })
}

async fn probe_health(
    endpoint: &str,
    credentials: Option<&ClientCredentials>,
) -> anyhow::Result<()> {
    let mut client = connect(&[endpoint.to_string()], credentials).await?;
    client.status().await.context("Maintenance.Status")?;
    // A linearizable read needs a leader and a quorum, unlike Status.
    match client.get("ferrokv-e2e/health", None).await {
        Ok(_) => Ok(()),
        // With auth enabled an anonymous read is refused once the member has caught up with
        // the cluster (the permission check comes after the read barrier, before the read):
        // healthy enough.
        Err(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::InvalidArgument
                && status.message() == "etcdserver: user name is empty" =>
        {
            Ok(())
        }
        Err(error) => Err(anyhow!(error).context("linearizable Range")),
    }
}

/// `http` or `https`.
fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

async fn connect(
    endpoints: &[String],
    credentials: Option<&ClientCredentials>,
) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    if let Some(credentials) = credentials {
        options = options.with_tls(credentials.tls_options()?);
    }
    Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("connecting to {endpoints:?}"))
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// Copies a directory tree (files and directories only, as data and WAL dirs are).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
