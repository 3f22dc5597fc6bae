//! ferrokv-bench: a load generator for any etcd v3 endpoints — ferrokv or etcd — in the spirit of
//! etcd's `tools/benchmark`, so the two can be measured with one tool.
//!
//! `--clients` concurrent clients share `--conns` gRPC connections (connection `j` goes to
//! endpoint `j mod len`); each client issues one request at a time. A run ends after `--total`
//! requests or after `--duration`, whichever comes first, and prints the request count, the
//! elapsed seconds, requests per second and latency percentiles of the successful requests.
//! Any failed request makes the exit status 1.
//!
//! Besides single requests (`put`, `range`, `txn`), two workloads measure streams:
//! `watch-latency` (put-to-event delivery to many watchers of one prefix, and that each watcher
//! saw every put once, in order; see `watch_latency.rs`) and `lease` (grants, then keep-alives
//! over the keep-alive stream; see `lease.rs`).
//!
//! ```text
//! ferrokv-bench --endpoints=http://127.0.0.1:2379 --clients=64 --conns=8 --total=100000 \
//!     --val-size=256 --key-space=100000 put
//! ferrokv-bench --clients=64 --conns=8 --total=100000 range some-key --consistency=s
//! ferrokv-bench --clients=16 --total=10000 txn --txn-ops=2 --json
//! ferrokv-bench --clients=64 --conns=8 --total=2000 watch-latency --watchers=1000 --put-rate=100
//! ferrokv-bench --clients=64 --conns=8 --total=50000 lease
//! ferrokv-bench --endpoints=https://127.0.0.1:2379 --cacert=ca.pem --cert=client.pem \
//!     --key=client-key.pem --user=root:PASSWORD --clients=64 --conns=8 put
//! ```

mod lease;
mod watch_latency;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};
use ferrokv_e2e::latency::LatencySummary;
use rand::distributions::Alphanumeric;
use rand::Rng;

/// Requests per run when neither `--total` nor `--duration` is given.
const DEFAULT_TOTAL: u64 = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "ferrokv-bench",
    about = "Load generator for etcd v3 API endpoints"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,

    /// Comma-separated client URLs.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    endpoints: Vec<String>,

    /// Concurrent clients, each with one request in flight [default: 1; 64 for watch-latency
    /// and lease].
    #[arg(long, global = true)]
    clients: Option<usize>,

    /// gRPC connections shared by the clients.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,

    /// Requests to issue in total (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,

    /// Stop after this long, e.g. `30s`, `2m`, `1.5` (seconds).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Verify the endpoints' TLS certificates with this CA bundle (https:// endpoints; etcdctl's
    /// flag).
    #[arg(long, global = true)]
    cacert: Option<std::path::PathBuf>,

    /// Identify with this TLS client certificate (etcdctl's flag; needs --key).
    #[arg(long, global = true)]
    cert: Option<std::path::PathBuf>,

    /// The key of --cert (etcdctl's flag). Its own argument ID: `range`'s key is `key`, and
    /// clap panics when two arguments share one.
    #[arg(long = "key", id = "client_key", global = true)]
    client_key: Option<std::path::PathBuf>,

    /// Authenticate as `name:password` on a cluster with auth on (etcdctl's flag).
    #[arg(long, global = true)]
    user: Option<String>,

    /// Key length in bytes; keys are zero-padded decimal indices into the key space.
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,

    /// Value length in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    val_size: usize,

    /// Number of distinct keys.
    #[arg(long, global = true, default_value_t = 1)]
    key_space: u64,

    /// Walk the key space in order instead of picking keys at random.
    #[arg(long, global = true)]
    sequential_keys: bool,

    /// Give up on a request after this long; it counts as an error.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    request_timeout: Duration,

    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Clone, Subcommand)]
enum Workload {
    /// Put one key per request.
    Put,
    /// Read one key per request.
    Range {
        /// The key to read; without it each request reads a key of the key space.
        key: Option<String>,
        /// Linearizable (l) or serializable (s) reads.
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Put keys in a transaction (etcd benchmark's txn-put).
    #[command(alias = "txn-put")]
    Txn {
        /// Puts per transaction, to distinct keys.
        #[arg(long, default_value_t = 1)]
        txn_ops: u64,
    },
    /// The clients put `--total` keys under one prefix that watchers watch; reports put-to-event
    /// delivery latency over every (watcher, event) and checks every watcher saw every put once,
    /// in revision order.
    WatchLatency(watch_latency::WatchLatencyArgs),
    /// Lease grants, then keep-alives: each client keeps its own lease alive over one
    /// keep-alive stream, one request in flight.
    Lease(lease::LeaseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Consistency {
    #[value(name = "l")]
    Linearizable,
    #[value(name = "s")]
    Serializable,
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range {
                consistency: Consistency::Linearizable,
                ..
            } => "range-linearizable",
            Workload::Range {
                consistency: Consistency::Serializable,
                ..
            } => "range-serializable",
            Workload::Txn { .. } => "txn-put",
            Workload::WatchLatency(_) => "watch-latency",
            Workload::Lease(_) => "lease",
        }
    }

    fn default_clients(&self) -> usize {
        match self {
            Workload::Put | Workload::Range { .. } | Workload::Txn { .. } => 1,
            Workload::WatchLatency(_) | Workload::Lease(_) => 64,
        }
    }
}

/// The run's shape, settled from the command line: what every workload needs.
#[derive(Debug, Clone)]
struct RunPlan {
    endpoints: Vec<String>,
    clients: usize,
    conns: usize,
    /// Requests to issue; `u64::MAX` when only `--duration` bounds the run.
    limit: u64,
    /// `--duration`: each measured phase ends after this long.
    duration: Option<Duration>,
    started: Instant,
    deadline: Option<Instant>,
    request_timeout: Duration,
    /// `--cacert`, `--cert`, `--key`, read once; `None` for plain-text endpoints.
    tls: Option<etcd_client::TlsOptions>,
    /// `--user`, as name and password.
    user: Option<(String, String)>,
}

impl RunPlan {
    fn new(cli: &Cli) -> anyhow::Result<RunPlan> {
        let clients = cli
            .clients
            .unwrap_or_else(|| cli.workload.default_clients());
        if clients == 0 || cli.conns == 0 {
            bail!("--clients and --conns must be at least 1");
        }
        if cli.endpoints.is_empty() {
            bail!("--endpoints is empty");
        }
        let limit = match (cli.total, cli.duration) {
            (Some(total), _) => total,
            (None, Some(_)) => u64::MAX,
            (None, None) => DEFAULT_TOTAL,
        };
        let tls = tls_options(cli)?;
        let user = match &cli.user {
            Some(user) => match user.split_once(':') {
                Some((name, password)) if !name.is_empty() => {
                    Some((name.to_string(), password.to_string()))
                }
                _ => bail!("--user must be name:password"),
            },
            None => None,
        };
        let started = Instant::now();
        Ok(RunPlan {
            endpoints: cli.endpoints.clone(),
            clients,
            conns: cli.conns,
            limit,
            duration: cli.duration,
            started,
            deadline: cli.duration.map(|duration| started + duration),
            request_timeout: cli.request_timeout,
            tls,
            user,
        })
    }

    /// Restarts the clock when a measured phase begins, so setup (connecting, creating
    /// watchers) does not count.
    fn restart_clock(&mut self) {
        self.started = Instant::now();
        self.deadline = self.duration.map(|duration| self.started + duration);
    }

    /// Whether request number `request` is past the run's end.
    fn is_over(&self, request: u64) -> bool {
        request >= self.limit || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// `count` connections, connection `j` to endpoint `j mod len`. With `request_timeout`,
    /// every unary request fails after `--request-timeout`; streams (watch, keep-alive) need
    /// connections without it, as their responses never end.
    async fn connect(&self, count: usize, request_timeout: bool) -> anyhow::Result<Vec<Client>> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if request_timeout {
            options = options.with_timeout(self.request_timeout);
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((name, password)) = &self.user {
            options = options.with_user(name, password);
        }
        let mut connections = Vec::with_capacity(count);
        for j in 0..count {
            let endpoint = &self.endpoints[j % self.endpoints.len()];
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            connections.push(client);
        }
        Ok(connections)
    }
}

/// The TLS options of `--cacert`, `--cert` and `--key`, as etcdctl takes them: `--cacert`
/// alone verifies the endpoints, `--cert` with `--key` also identifies the client.
fn tls_options(cli: &Cli) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let mut options = match &cli.cacert {
        Some(ca) => etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("--cacert", ca)?)),
        None => etcd_client::TlsOptions::new(),
    };
    match (&cli.cert, &cli.client_key) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        (None, None) if cli.cacert.is_none() => return Ok(None),
        (None, None) => {}
        _ => bail!("--cert and --key must be given together"),
    }
    if cli.endpoints.iter().any(|e| e.starts_with("http://")) {
        bail!("--cacert/--cert/--key are for https:// endpoints; --endpoints has http:// ones");
    }
    Ok(Some(options))
}

/// What a run (or one phase of it) measured.
#[derive(Debug)]
struct Outcome {
    workload: &'static str,
    /// Successful requests.
    succeeded: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    latency: Option<LatencySummary>,
    /// Workload-specific figures, in print order.
    extra: Vec<(&'static str, serde_json::Value)>,
    /// Whether the workload's own checks passed (watch-latency: nothing missed).
    checks_passed: bool,
}

impl Outcome {
    /// A run of single requests whose per-client reports are merged.
    fn from_clients(workload: &'static str, reports: Vec<ClientReport>, seconds: f64) -> Outcome {
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for report in reports {
            latencies.extend(report.latencies);
            errors += report.errors;
            first_error = first_error.or(report.first_error);
        }
        Outcome {
            workload,
            succeeded: latencies.len() as u64,
            errors,
            first_error,
            seconds,
            latency: LatencySummary::from_samples(latencies),
            extra: Vec::new(),
            checks_passed: true,
        }
    }

    fn ops_per_sec(&self) -> f64 {
        self.succeeded as f64 / self.seconds
    }

    /// Whether the run counts as a success (exit status 0).
    fn passed(&self) -> bool {
        self.errors == 0 && self.checks_passed
    }

    fn print(&self, cli: &Cli, plan: &RunPlan) {
        if cli.json {
            let mut report = serde_json::json!({
                "workload": self.workload,
                "endpoints": plan.endpoints,
                "clients": plan.clients,
                "conns": plan.conns,
                "key_size": cli.key_size,
                "val_size": cli.val_size,
                "key_space": cli.key_space,
                "total": self.succeeded,
                "errors": self.errors,
                "first_error": self.first_error,
                "seconds": self.seconds,
                "ops_per_sec": self.ops_per_sec(),
                "latency_ms": self.latency,
            });
            for (name, value) in &self.extra {
                report[*name] = value.clone();
            }
            println!("{report}");
            return;
        }
        println!(
            "{}: {} clients, {} conns, key {} B, value {} B, key space {}",
            self.workload, plan.clients, plan.conns, cli.key_size, cli.val_size, cli.key_space
        );
        println!(
            "  total:   {} requests ({} errors)",
            self.succeeded, self.errors
        );
        println!("  seconds: {:.3}", self.seconds);
        println!("  ops/s:   {:.1}", self.ops_per_sec());
        match self.latency {
            Some(l) => println!(
                "  latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                l.p50, l.p90, l.p99, l.max
            ),
            None => println!("  latency: no successful requests"),
        }
        for (name, value) in &self.extra {
            println!("  {name}: {value}");
        }
        if let Some(error) = &self.first_error {
            println!("  first error: {error}");
        }
    }
}

/// Turns request numbers into keys and holds the value every write stores.
#[derive(Debug)]
struct Keys {
    key_size: usize,
    key_space: u64,
    sequential: bool,
    value: Vec<u8>,
}

impl Keys {
    fn new(cli: &Cli) -> anyhow::Result<Keys> {
        if cli.key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        let digits = (cli.key_space - 1).to_string().len();
        if digits > cli.key_size {
            bail!(
                "--key-size {} cannot hold {} distinct keys; it needs at least {digits}",
                cli.key_size,
                cli.key_space
            );
        }
        let value = rand::thread_rng()
            .sample_iter(Alphanumeric)
            .take(cli.val_size)
            .collect();
        Ok(Keys {
            key_size: cli.key_size,
            key_space: cli.key_space,
            sequential: cli.sequential_keys,
            value,
        })
    }

    /// The key of request number `request` (or of one of its puts, for transactions).
    fn key(&self, request: u64) -> String {
        let index = if self.sequential {
            request % self.key_space
        } else {
            rand::thread_rng().gen_range(0..self.key_space)
        };
        format!("{index:0width$}", width = self.key_size)
    }
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientReport {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl ClientReport {
    fn record_error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

async fn run_request(
    kv: &mut KvClient,
    workload: &Workload,
    keys: &Keys,
    request: u64,
) -> Result<(), etcd_client::Error> {
    match workload {
        Workload::Put => {
            kv.put(keys.key(request), keys.value.clone(), None).await?;
        }
        Workload::Range { key, consistency } => {
            let key = key.clone().unwrap_or_else(|| keys.key(request));
            let options = match consistency {
                Consistency::Linearizable => None,
                Consistency::Serializable => Some(GetOptions::new().with_serializable()),
            };
            kv.get(key, options).await?;
        }
        Workload::Txn { txn_ops } => {
            let puts: Vec<TxnOp> = (0..*txn_ops)
                .map(|op| TxnOp::put(keys.key(request * txn_ops + op), keys.value.clone(), None))
                .collect();
            kv.txn(Txn::new().and_then(puts)).await?;
        }
        Workload::WatchLatency(_) | Workload::Lease(_) => {
            unreachable!("{} is not a single-request workload", workload.name())
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let plan = RunPlan::new(&cli)?;
    let keys = Keys::new(&cli)?;
    let outcomes = match &cli.workload {
        Workload::WatchLatency(args) => {
            vec![watch_latency::run(&cli, plan.clone(), args, &keys).await?]
        }
        Workload::Lease(args) => lease::run(plan.clone(), args).await?,
        _ => vec![run_requests(&cli, &plan, keys).await?],
    };
    let mut passed = true;
    for outcome in &outcomes {
        outcome.print(&cli, &plan);
        passed &= outcome.passed();
    }
    Ok(passed)
}

/// The single-request workloads: each client issues one request at a time until the run ends.
async fn run_requests(cli: &Cli, plan: &RunPlan, keys: Keys) -> anyhow::Result<Outcome> {
    let keys = Arc::new(keys);
    let workload = Arc::new(cli.workload.clone());
    let connections = plan.connect(plan.conns, true).await?;

    let next_request = Arc::new(AtomicU64::new(0));
    let mut plan = plan.clone();
    plan.restart_clock();
    let plan = Arc::new(plan);
    let mut tasks = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let mut kv = connections[c % connections.len()].kv_client();
        let (keys, workload, next_request, plan) = (
            keys.clone(),
            workload.clone(),
            next_request.clone(),
            plan.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            loop {
                let request = next_request.fetch_add(1, Ordering::Relaxed);
                if plan.is_over(request) {
                    return report;
                }
                let sent = Instant::now();
                match run_request(&mut kv, &workload, &keys, request).await {
                    Ok(()) => report.latencies.push(sent.elapsed()),
                    Err(error) => report.record_error(error),
                }
            }
        }));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await.context("benchmark client panicked")?);
    }
    let seconds = plan.started.elapsed().as_secs_f64();
    Ok(Outcome::from_clients(workload.name(), reports, seconds))
}

/// Parses `30s`, `2m`, `250ms` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_seconds) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 2m, 250ms or 1.5"))?;
    Duration::try_from_secs_f64(value * unit_seconds).map_err(|error| error.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ferrokv-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_etcd_style_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_range_key_and_a_tls_key_parse_side_by_side() {
        // Both were once the argument `key`: clap panicked on every `range` command line.
        let cli = Cli::try_parse_from([
            "ferrokv-bench",
            "--cert=client.pem",
            "--key=client-key.pem",
            "range",
            "bench-read-key",
            "--consistency=s",
        ])
        .unwrap();
        assert_eq!(
            cli.client_key.as_deref(),
            Some(std::path::Path::new("client-key.pem"))
        );
        match cli.workload {
            Workload::Range { key, .. } => assert_eq!(key.as_deref(), Some("bench-read-key")),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn keys(key_size: usize, key_space: u64, sequential: bool) -> anyhow::Result<Keys> {
        let mut args = vec![
            "ferrokv-bench".to_string(),
            format!("--key-size={key_size}"),
            format!("--key-space={key_space}"),
            "--val-size=256".to_string(),
        ];
        if sequential {
            args.push("--sequential-keys".to_string());
        }
        args.push("put".to_string());
        Keys::new(&Cli::parse_from(args))
    }

    #[test]
    fn sequential_keys_walk_the_key_space_zero_padded() {
        let keys = keys(6, 200_000, true).unwrap();
        assert_eq!(keys.key(0), "000000");
        assert_eq!(keys.key(199_999), "199999");
        assert_eq!(keys.key(200_000), "000000");
        assert_eq!(keys.value.len(), 256);
    }

    #[test]
    fn random_keys_stay_inside_the_key_space() {
        let keys = keys(3, 10, false).unwrap();
        for request in 0..1000 {
            let key: u64 = keys.key(request).parse().unwrap();
            assert!(key < 10);
        }
    }

    #[test]
    fn key_size_too_small_for_the_key_space_is_refused() {
        let error = keys(4, 100_000, true).unwrap_err();
        assert!(error.to_string().contains("needs at least 5"), "{error}");
    }
}
