//! ferrokv-bench: a load generator for any etcd v3 endpoints — ferrokv or etcd — in the spirit of
//! etcd's `tools/benchmark`, so the two can be measured with one tool.
//!
//! `--clients` concurrent clients share `--conns` gRPC connections (connection `j` goes to
//! endpoint `j mod len`); each client issues one request at a time. A run ends after `--total`
//! requests or after `--duration`, whichever comes first, and prints the request count, the
//! elapsed seconds, requests per second and latency percentiles of the successful requests.
//! Any failed request makes the exit status 1.
//!
//! ```text
//! ferrokv-bench --endpoints=http://127.0.0.1:2379 --clients=64 --conns=8 --total=100000 \
//!     --val-size=256 --key-space=100000 put
//! ferrokv-bench --clients=64 --conns=8 --total=100000 range some-key --consistency=s
//! ferrokv-bench --clients=16 --total=10000 txn --txn-ops=2 --json
//! ```

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

    /// Concurrent clients, each with one request in flight.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,

    /// gRPC connections shared by the clients.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,

    /// Requests to issue in total (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,

    /// Stop after this long, e.g. `30s`, `2m`, `1.5` (seconds).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,

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
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.clients == 0 || cli.conns == 0 {
        bail!("--clients and --conns must be at least 1");
    }
    if cli.endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    let keys = Arc::new(Keys::new(&cli)?);
    let workload = Arc::new(cli.workload.clone());
    let limit = match (cli.total, cli.duration) {
        (Some(total), _) => total,
        (None, Some(_)) => u64::MAX,
        (None, None) => DEFAULT_TOTAL,
    };

    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(cli.request_timeout);
    let mut connections = Vec::with_capacity(cli.conns);
    for j in 0..cli.conns {
        let endpoint = &cli.endpoints[j % cli.endpoints.len()];
        let client = Client::connect([endpoint], Some(options.clone()))
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        connections.push(client.kv_client());
    }

    let next_request = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = cli.duration.map(|duration| started + duration);
    let mut tasks = Vec::with_capacity(cli.clients);
    for c in 0..cli.clients {
        let mut kv = connections[c % connections.len()].clone();
        let (keys, workload, next_request) = (keys.clone(), workload.clone(), next_request.clone());
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            loop {
                let request = next_request.fetch_add(1, Ordering::Relaxed);
                if request >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    return report;
                }
                let sent = Instant::now();
                match run_request(&mut kv, &workload, &keys, request).await {
                    Ok(()) => report.latencies.push(sent.elapsed()),
                    Err(error) => {
                        report.errors += 1;
                        report.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let report = task.await.context("benchmark client panicked")?;
        latencies.extend(report.latencies);
        errors += report.errors;
        first_error = first_error.or(report.first_error);
    }
    let seconds = started.elapsed().as_secs_f64();

    let succeeded = latencies.len() as u64;
    let ops_per_sec = succeeded as f64 / seconds;
    let latency = LatencySummary::from_samples(latencies);
    if cli.json {
        let report = serde_json::json!({
            "workload": workload.name(),
            "endpoints": cli.endpoints,
            "clients": cli.clients,
            "conns": cli.conns,
            "key_size": cli.key_size,
            "val_size": cli.val_size,
            "key_space": cli.key_space,
            "total": succeeded,
            "errors": errors,
            "first_error": first_error,
            "seconds": seconds,
            "ops_per_sec": ops_per_sec,
            "latency_ms": latency,
        });
        println!("{report}");
    } else {
        println!(
            "{}: {} clients, {} conns, key {} B, value {} B, key space {}",
            workload.name(),
            cli.clients,
            cli.conns,
            cli.key_size,
            cli.val_size,
            cli.key_space
        );
        println!("  total:   {succeeded} requests ({errors} errors)");
        println!("  seconds: {seconds:.3}");
        println!("  ops/s:   {ops_per_sec:.1}");
        match latency {
            Some(l) => println!(
                "  latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                l.p50, l.p90, l.p99, l.max
            ),
            None => println!("  latency: no successful requests"),
        }
        if let Some(error) = &first_error {
            println!("  first error: {error}");
        }
    }
    Ok(errors == 0)
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
