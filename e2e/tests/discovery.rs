//! Discovery bootstrap: three ferrokv members that know nothing of each other form one cluster
//! through a discovery service — etcd's v2 protocol (`--discovery <url>`) served by a one-member
//! ferrokv or by Debian's etcd 3.4 (`--enable-v2`), and etcd's v3 protocol
//! (`--discovery-endpoints` + `--discovery-token`) against a ferrokv or an etcd 3.4. A fourth
//! member beyond the size is refused with etcd's "discovery: cluster is full", and members
//! restarted later come back from their data dirs without asking discovery again.
//!
//! The members (and the ferrokv discovery services) run the server binary the harness tests
//! (`ferrokv`); the etcd discovery services run `/usr/bin/etcd`. Each process here is started
//! with the test's own flags, so this file keeps its own small process handle rather than a
//! statically bootstrapped `TestCluster`.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions, GetOptions};
use ferrokv_e2e::binaries::server_binary;
use ferrokv_e2e::ports::ReservedPort;
use tempfile::TempDir;

/// Debian's etcd (package `etcd-server`), 3.4: serves the v2 API with `--enable-v2`.
const ETCD: &str = "/usr/bin/etcd";
const SIZE: usize = 3;
/// A cluster found through discovery waits for all its members, so this covers three starts.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// One server process with its ports, data dir and log.
struct Server {
    name: String,
    binary: PathBuf,
    client: ReservedPort,
    peer: ReservedPort,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// A member named `name` under `dir`, with etcd's URL flags and `bootstrap` flags.
    fn new(dir: &Path, binary: &Path, name: &str, bootstrap: &[String]) -> anyhow::Result<Server> {
        let (client, peer) = (ReservedPort::reserve()?, ReservedPort::reserve()?);
        let data_dir = dir.join(name);
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={}", client.url()),
            format!("--advertise-client-urls={}", client.url()),
            format!("--listen-peer-urls={}", peer.url()),
            format!("--initial-advertise-peer-urls={}", peer.url()),
        ];
        args.extend(bootstrap.iter().cloned());
        Ok(Server {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            client,
            peer,
            log: dir.join(format!("{name}.log")),
            args,
            child: None,
        })
    }

    /// A one-member cluster serving as a discovery service; etcd gets `--enable-v2`.
    async fn discovery_service(dir: &Path, binary: &Path) -> anyhow::Result<Server> {
        let mut flags = Vec::new();
        if binary == Path::new(ETCD) {
            flags.push("--enable-v2".to_string());
        }
        let mut server = Server::new(dir, binary, "discovery", &flags)?;
        let initial_cluster = format!("--initial-cluster=discovery={}", server.peer.url());
        server.args.push(initial_cluster);
        server.start()?;
        server.wait_healthy().await?;
        Ok(server)
    }

    fn endpoint(&self) -> String {
        self.client.url()
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        use std::io::Write;
        writeln!(
            log,
            "=== start: {} {}",
            self.binary.display(),
            self.args.join(" ")
        )?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The member dies
        // with the test's thread even if the test process is killed before Drop runs.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("spawning {}", self.binary.display()))?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails with the log if the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited ({status}); log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// Waits until the server answers a linearizable read.
    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            self.check_alive()?;
            let error = match connect(&self.endpoint()).await {
                Ok(mut client) => match client.get("discovery-e2e/health", None).await {
                    Ok(_) => return Ok(()),
                    Err(e) => anyhow!(e),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not healthy after {HEALTH_TIMEOUT:?}: {error:#}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the process to exit by itself and returns how it exited.
    async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| anyhow!("{} is not running", self.name))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail();
                self.kill();
                bail!(
                    "{} still running after {timeout:?}; log tail:\n{tail}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- tail of {} -----\n{}", self.name, self.log_tail());
        }
    }
}

fn temp_dir() -> anyhow::Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("ferrokv-e2e-discovery-")
        .tempdir()?)
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(options))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// `curl` with `args`; returns what it printed. Fails unless curl exits 0.
async fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .await
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The members of a cluster a member reports: name → (ID, peer URLs).
async fn member_list(endpoint: &str) -> anyhow::Result<BTreeMap<String, (u64, Vec<String>)>> {
    let mut client = connect(endpoint).await?;
    let members = client.member_list().await?;
    Ok(members
        .members()
        .iter()
        .map(|m| (m.name().to_string(), (m.id(), m.peer_urls().to_vec())))
        .collect())
}

/// Starts `SIZE` members with `bootstrap` flags, all at once, and checks they form one
/// cluster: every member sees the same three members, each under its own peer URL.
async fn bootstrap_members(dir: &Path, bootstrap: &[String]) -> anyhow::Result<Vec<Server>> {
    let binary = server_binary();
    let mut members = Vec::new();
    for i in 0..SIZE {
        let mut member = Server::new(dir, &binary, &format!("member-{i}"), bootstrap)?;
        member.start()?;
        members.push(member);
    }
    for member in &mut members {
        member.wait_healthy().await?;
    }
    let expected: BTreeMap<String, Vec<String>> = members
        .iter()
        .map(|m| (m.name.clone(), vec![m.peer.url()]))
        .collect();
    let first = member_list(&members[0].endpoint()).await?;
    for member in &members {
        let list = member_list(&member.endpoint()).await?;
        assert_eq!(list, first, "{} sees the same members", member.name);
    }
    let seen: BTreeMap<String, Vec<String>> = first
        .iter()
        .map(|(name, (_, urls))| (name.clone(), urls.clone()))
        .collect();
    assert_eq!(
        seen, expected,
        "the cluster is the three discovered members"
    );
    Ok(members)
}

/// A fourth member, beyond the size, exits with etcd's error and without registering.
async fn fourth_member_is_refused(dir: &Path, bootstrap: &[String]) -> anyhow::Result<()> {
    let mut fourth = Server::new(dir, &server_binary(), "member-3", bootstrap)?;
    fourth.start()?;
    let status = fourth.wait_exit(Duration::from_secs(60)).await?;
    assert!(!status.success(), "the fourth member must not start");
    let log = fs::read_to_string(&fourth.log)?;
    assert!(
        log.contains("discovery: cluster is full"),
        "the fourth member names the reason; log:\n{log}"
    );
    Ok(())
}

/// Members killed and restarted with the discovery service gone come back from their data
/// dirs as the same members, and the cluster serves writes.
async fn restart_without_discovery(
    mut members: Vec<Server>,
    discovery: &mut Server,
) -> anyhow::Result<()> {
    let before = member_list(&members[0].endpoint()).await?;
    discovery.kill();
    for member in &mut members {
        member.kill();
    }
    for member in &mut members {
        member.start()?;
    }
    for member in &mut members {
        member.wait_healthy().await?;
    }
    assert_eq!(
        member_list(&members[2].endpoint()).await?,
        before,
        "restarted members keep their IDs"
    );
    let mut client = connect(&members[1].endpoint()).await?;
    client.put("after-restart", "yes", None).await?;
    let mut client = connect(&members[0].endpoint()).await?;
    let resp = client.get("after-restart", None).await?;
    assert_eq!(resp.kvs()[0].value(), b"yes");
    Ok(())
}

/// The v2 discovery flow against `service`: size set with curl, three members, the
/// registrations they left (`<member-id-hex>` = `name=peer-url`, as etcd writes them), a
/// refused fourth, restarts.
async fn v2_discovery_through(service_binary: &Path) -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut service = Server::discovery_service(dir.path(), service_binary).await?;
    let cluster_url = format!(
        "{}/v2/keys/discovery/{}",
        service.endpoint(),
        "6c007a14875d53d9bf0ef5a6fc0257c8"
    );
    let set = curl(&[
        "-X",
        "PUT",
        &format!("{cluster_url}/_config/size"),
        "-d",
        &format!("value={SIZE}"),
    ])
    .await?;
    assert!(set.contains(r#""value":"3""#), "{set}");
    let bootstrap = vec![format!("--discovery={cluster_url}")];
    let members = bootstrap_members(dir.path(), &bootstrap).await?;
    fourth_member_is_refused(dir.path(), &bootstrap).await?;

    let listing: serde_json::Value = serde_json::from_str(&curl(&[&cluster_url]).await?)?;
    let mut registered: BTreeMap<String, String> = BTreeMap::new();
    for node in listing["node"]["nodes"].as_array().context("a listing")? {
        let key = node["key"].as_str().context("key")?;
        let id = key.rsplit('/').next().context("id")?.to_string();
        registered.insert(id, node["value"].as_str().context("value")?.to_string());
    }
    let mut expected = BTreeMap::new();
    for (name, (id, urls)) in member_list(&members[0].endpoint()).await? {
        expected.insert(format!("{id:x}"), format!("{name}={}", urls[0]));
    }
    assert_eq!(
        registered, expected,
        "each founding member registered under the ID the cluster knows it by, and the \
         refused fourth did not register (_config is hidden)"
    );

    restart_without_discovery(members, &mut service).await
}

/// The v3 discovery flow against `service`: size set with a v3 put, three members, etcd's
/// registry layout, a refused fourth, restarts.
async fn v3_discovery_through(service_binary: &Path) -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut service = Server::discovery_service(dir.path(), service_binary).await?;
    let token = "e2e-v3-token";
    let mut client = connect(&service.endpoint()).await?;
    client
        .put(
            format!("/_etcd/registry/{token}/_config/size"),
            SIZE.to_string(),
            None,
        )
        .await?;
    let bootstrap = vec![
        format!("--discovery-endpoints={}", service.endpoint()),
        format!("--discovery-token={token}"),
        "--discovery-dial-timeout=2s".to_string(),
    ];
    let members = bootstrap_members(dir.path(), &bootstrap).await?;
    fourth_member_is_refused(dir.path(), &bootstrap).await?;

    let prefix = format!("/_etcd/registry/{token}/members/");
    let resp = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let registered: BTreeMap<String, String> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default()[prefix.len()..].to_string(),
                kv.value_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut expected = BTreeMap::new();
    for (name, (id, urls)) in member_list(&members[0].endpoint()).await? {
        expected.insert(format!("{id:x}"), format!("{name}={}", urls[0]));
    }
    assert_eq!(
        registered, expected,
        "etcd's v3 registry layout, holding the founding members only"
    );

    restart_without_discovery(members, &mut service).await
}

#[tokio::test]
async fn three_members_bootstrap_through_v2_discovery_served_by_ferrokv() {
    v2_discovery_through(&server_binary())
        .await
        .expect("v2 discovery through ferrokv");
}

#[tokio::test]
async fn three_members_bootstrap_through_v2_discovery_served_by_etcd() {
    v2_discovery_through(Path::new(ETCD))
        .await
        .expect("v2 discovery through etcd 3.4");
}

#[tokio::test]
async fn three_members_bootstrap_through_v3_discovery_served_by_ferrokv() {
    v3_discovery_through(&server_binary())
        .await
        .expect("v3 discovery through ferrokv");
}

#[tokio::test]
async fn three_members_bootstrap_through_v3_discovery_served_by_etcd() {
    v3_discovery_through(Path::new(ETCD))
        .await
        .expect("v3 discovery through etcd 3.4");
}

#[tokio::test]
async fn a_v2_wait_answers_with_the_registration_it_waited_for() {
    let dir = temp_dir().expect("temp dir");
    let service = Server::discovery_service(dir.path(), &server_binary())
        .await
        .expect("a ferrokv serving v2 keys");
    let base = format!("{}/v2/keys/w/tok", service.endpoint());
    let created = curl(&[
        "-X",
        "PUT",
        &format!("{base}/_config/size"),
        "-d",
        "value=2",
    ])
    .await
    .expect("set size");
    let created: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let index = created["node"]["modifiedIndex"].as_u64().expect("index");
    // A recursive wait from the next index sees neither the hidden _config nor anything else
    // until a member registers.
    let wait_url = format!("{base}?wait=true&recursive=true&waitIndex={}", index + 1);
    let waiting = tokio::spawn(async move { curl(&[&wait_url]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "nothing happened yet");
    curl(&[
        "-X",
        "PUT",
        &format!("{base}/_config/other"),
        "-d",
        "value=x",
    ])
    .await
    .expect("hidden write");
    let registered = curl(&[
        "-X",
        "PUT",
        &format!("{base}/abc?prevExist=false"),
        "-d",
        "value=m=http://127.0.0.1:1",
    ])
    .await
    .expect("register");
    let answer = waiting.await.expect("join").expect("wait");
    let event: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(event["action"], "create");
    assert_eq!(event["node"]["value"], "m=http://127.0.0.1:1");
    assert_eq!(
        event,
        serde_json::from_str::<serde_json::Value>(&registered).expect("JSON"),
        "the wait answers with the event of the registration"
    );
    let again = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        &format!("{base}/abc?prevExist=false"),
        "-d",
        "value=other",
    ])
    .await
    .expect("register twice");
    assert_eq!(again, "412");
}
