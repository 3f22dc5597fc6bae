//! `backup-figures`: measures what docs/operator.md reports for backups (issue 14's figures) on
//! the hermetic Kubernetes with moto as the S3 server, and prints them as a table. A measurement,
//! not a test: nothing here runs in CI, and it asserts only that the restore is exact.
//!
//! One run: a 3-member KVCluster with continuous backup on (it waits for a full backup), `--keys`
//! keys loaded by concurrent `etcd-client` transactions of `--batch` puts; a `KVClusterBackup`
//! (time from apply to `Succeeded`, the object's and the manifest's size); a new KVCluster
//! restored from it (time from apply to Available; the key count, revision and every member's
//! `HashKV` equal the source's); then a writer paced at `--rate` puts/s for `--writer-seconds`
//! while the change log streams, with `status.backup.recoveryPoint` sampled (lag in seconds and
//! in revisions, mean and max, over the segments uploaded under the writer).
//!
//! The members run `$FERROKV_E2E_SERVER` (e.g. a release `ferrokv`) or this target's `ferrokv`;
//! the operator is this target's. Needs root (pods run in network namespaces) and moto in
//! `.venv` (`scripts/test` installs it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use serde_json::{json, Value};

use ferrokv_e2e::backup_fixture::{recovery_point, restored_cluster, S3Backups};
use ferrokv_e2e::binaries::{operator_binary, server_binary};
use ferrokv_e2e::kube_env::{KubeEnv, KVCLUSTERBACKUPS, PODS};
use ferrokv_e2e::latency::LatencySummary;

/// Backup, restore and recovery-point figures of the operator (issue 14).
#[derive(Debug, Parser)]
#[command(name = "backup-figures")]
struct Options {
    /// Keys loaded before the backup.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes of each value (keys are 32 bytes: `/figures/` and 23 digits).
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Puts per loader transaction (at most the members' --max-txn-ops, 128 by default).
    #[arg(long, default_value_t = 128)]
    batch: u64,
    /// Loader transactions in flight.
    #[arg(long, default_value_t = 8)]
    loaders: usize,
    /// Puts per second the steady writer aims at.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds the steady writer runs; 0 skips the recovery-point figure.
    #[arg(long, default_value_t = 60)]
    writer_seconds: u64,
    /// `spec.backup.continuous.segmentSeconds` of the source (the operator's default is 5).
    #[arg(long, default_value_t = 5)]
    segment_seconds: u64,
}

const BUCKET: &str = "ferrokv-figures";
const KEY_PREFIX: &str = "/figures/";
const BACKUP: &str = "figures";
const RESTORED: &str = "restored";
/// Generous bounds for a loaded 2-core machine: a figure that hits one is not a figure.
const FORMING: Duration = Duration::from_secs(300);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Steady-writer puts in flight at most: enough for 1,000 puts/s at 64 ms a put.
const WRITERS: u64 = 64;
/// Segments uploaded in the writer's first seconds still hold the quiet time before it.
const WRITER_WARM_UP: Duration = Duration::from_secs(5);

/// One figure of the table: what, the value, the load average when it was taken.
struct Row {
    what: String,
    value: String,
    load: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let row = Row {
            what: what.into(),
            value: value.into(),
            load: load_average(),
        };
        println!("  {}: {} (load {})", row.what, row.value, row.load);
        self.rows.push(row);
    }

    fn print(&self) {
        println!("| figure | value | load average (1, 5, 15 min) |");
        println!("| --- | --- | --- |");
        for row in &self.rows {
            println!("| {} | {} | {} |", row.what, row.value, row.load);
        }
    }
}

/// The 1, 5 and 15 minute load averages of the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn key_of(index: u64) -> String {
    format!("{KEY_PREFIX}{index:023}")
}

/// The value of key `index`: incompressible bytes (xorshift from the index), the same on every
/// attempt, so a retried transaction writes what the first one would have.
fn value_of(index: u64, bytes: usize) -> Vec<u8> {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The client endpoints of the members of KVCluster `cluster`, from their pods' IPs.
async fn endpoints(env: &KubeEnv, cluster: &str, members: u32) -> anyhow::Result<Vec<String>> {
    let mut endpoints = Vec::new();
    for ordinal in 0..members {
        let name = format!("{cluster}-{ordinal}");
        let pod = env
            .get(PODS, &name)
            .await
            .context(format!("no pod {name}"))?;
        let ip = pod["status"]["podIP"]
            .as_str()
            .context(format!("pod {name} has no IP"))?;
        endpoints.push(format!("http://{ip}:2379"));
    }
    Ok(endpoints)
}

/// Puts keys `0..keys` in transactions of `batch` puts, `loaders` at a time, spread over the
/// members; answers the revision after the last one and how many transactions were retried.
async fn load_keys(endpoints: &[String], options: &Options) -> anyhow::Result<(i64, u64)> {
    let next_batch = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let batches = options.keys.div_ceil(options.batch);
    let mut loaders = tokio::task::JoinSet::new();
    for loader in 0..options.loaders {
        let endpoint = endpoints[loader % endpoints.len()].clone();
        let (next_batch, retried) = (next_batch.clone(), retried.clone());
        let (keys, batch, value_bytes) = (options.keys, options.batch, options.value_bytes);
        loaders.spawn(async move {
            let mut client = Client::connect([endpoint], None).await?;
            let mut revision = 0;
            loop {
                let number = next_batch.fetch_add(1, Ordering::Relaxed);
                if number >= batches {
                    return anyhow::Ok(revision);
                }
                let puts: Vec<TxnOp> = (number * batch..((number + 1) * batch).min(keys))
                    .map(|i| TxnOp::put(key_of(i), value_of(i, value_bytes), None))
                    .collect();
                let mut attempt = 0;
                let answer = loop {
                    match client.txn(Txn::new().and_then(puts.clone())).await {
                        Ok(answer) => break answer,
                        // Unconditional puts of the same values: a retry after an unknown
                        // outcome leaves the same keyspace (at a later revision).
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            eprintln!("backup-figures: transaction {number} retried: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => bail!("transaction {number} failed 6 times: {e}"),
                    }
                };
                let header = answer.header().context("a transaction without a header")?;
                revision = revision.max(header.revision());
            }
        });
    }
    let mut revision = 0;
    while let Some(loaded) = loaders.join_next().await {
        revision = revision.max(loaded??);
    }
    Ok((revision, retried.load(Ordering::Relaxed)))
}

/// The number of loaded keys the member at `endpoint` holds, and its revision.
async fn count_keys(endpoint: &str) -> anyhow::Result<(i64, i64)> {
    let mut client = Client::connect([endpoint], None).await?;
    let answer = client
        .get(
            KEY_PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    let revision = answer.header().context("no header")?.revision();
    Ok((answer.count(), revision))
}

/// `HashKV` at `revision` of the member at `endpoint`.
async fn hash_kv(endpoint: &str, revision: i64) -> anyhow::Result<u32> {
    let mut client = Client::connect([endpoint], None).await?;
    Ok(client.hash_kv(revision).await?.hash())
}

/// Takes the backup `BACKUP` of `example`; answers its status and the seconds from apply to
/// `Succeeded`.
async fn take_backup(backups: &S3Backups) -> anyhow::Result<(Value, f64)> {
    let env = &backups.env;
    let started = Instant::now();
    env.apply(&json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "KVClusterBackup",
        "metadata": {"name": BACKUP, "namespace": env.namespace},
        "spec": {"clusterName": "example", "destination": backups.destination()},
    }))
    .await?;
    let status = env
        .eventually("the backup to finish", BACKUP_TIMEOUT, || async {
            let status = env.get(KVCLUSTERBACKUPS, BACKUP).await?["status"].clone();
            matches!(status["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(status)
        })
        .await;
    let took = started.elapsed().as_secs_f64();
    ensure!(
        status["phase"] == "Succeeded",
        "the backup failed: {status}"
    );
    Ok((status, took))
}

/// What the steady writer did.
struct Writing {
    puts: u64,
    failed: u64,
    seconds: f64,
    latency: Option<LatencySummary>,
    last_revision: i64,
}

/// Puts at `rate` a second for `seconds` (put `i` is due `i / rate` seconds after the start; at
/// most [`WRITERS`] in flight, so a slow cluster lowers the rate rather than piling up puts),
/// overwriting 10,000 keys with values of the loaded size.
async fn steady_writer(
    endpoints: &[String],
    rate: u64,
    seconds: u64,
    value_bytes: usize,
) -> anyhow::Result<Writing> {
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(seconds);
    let next_put = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for endpoint in endpoints {
        clients.push(Client::connect([endpoint.clone()], None).await?);
    }
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let mut client = clients[writer as usize % clients.len()].clone();
        let (next_put, failed, latencies) = (next_put.clone(), failed.clone(), latencies.clone());
        writers.spawn(async move {
            let mut revision = 0;
            loop {
                let i = next_put.fetch_add(1, Ordering::Relaxed);
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                if due >= end {
                    return revision;
                }
                tokio::time::sleep_until(due).await;
                if tokio::time::Instant::now() >= end {
                    return revision;
                }
                let sent = Instant::now();
                let key = format!("{KEY_PREFIX}writer/{:05}", i % 10_000);
                match client.put(key, value_of(i, value_bytes), None).await {
                    Ok(answer) => {
                        latencies.lock().unwrap().push(sent.elapsed());
                        if let Some(header) = answer.header() {
                            revision = revision.max(header.revision());
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("backup-figures: writer put failed: {e}");
                    }
                }
            }
        });
    }
    let mut last_revision = 0;
    while let Some(revision) = writers.join_next().await {
        last_revision = last_revision.max(revision?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Ok(Writing {
        puts: latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        latency: LatencySummary::from_samples(latencies),
        last_revision,
    })
}

/// `recoveryPoint` of each segment uploaded while `writing` runs (after the warm-up), and the
/// writer's result.
async fn sample_recovery_point(
    env: &KubeEnv,
    writing: impl std::future::Future<Output = anyhow::Result<Writing>>,
) -> anyhow::Result<(Vec<Value>, Writing)> {
    let started = Instant::now();
    let mut writing = std::pin::pin!(writing);
    let mut points = Vec::new();
    let mut last_segment = recovery_point(env).await["segment"].clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            done = &mut writing => return Ok((points, done?)),
            _ = tick.tick() => {
                let point = recovery_point(env).await;
                if !point["segment"].is_null() && point["segment"] != last_segment {
                    last_segment = point["segment"].clone();
                    if started.elapsed() > WRITER_WARM_UP {
                        points.push(point);
                    }
                }
            }
        }
    }
}

fn mean_max(values: &[f64]) -> String {
    if values.is_empty() {
        return "no segments".into();
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    format!("{mean:.1} mean, {max:.1} max")
}

async fn measure(options: &Options, table: &mut Table) -> anyhow::Result<()> {
    let Some(backups) = S3Backups::start("figures", BUCKET).await else {
        bail!("the figures need the hermetic Kubernetes (unset E2E_KUBECONFIG)");
    };
    let env = &backups.env;
    backups
        .start_continuous_source(options.segment_seconds, FORMING)
        .await;
    let source = endpoints(env, "example", 3).await?;
    table.add("before loading", "3 members Available");

    let loading = Instant::now();
    let (loaded_revision, retried) = load_keys(&source, options).await?;
    let took = loading.elapsed().as_secs_f64();
    table.add(
        format!(
            "load {} keys (32 B keys, {} B values, txns of {}, {} in flight)",
            options.keys, options.value_bytes, options.batch, options.loaders
        ),
        format!(
            "{took:.1} s, {:.0} keys/s, revision {loaded_revision}, {retried} txns retried",
            options.keys as f64 / took
        ),
    );
    let (count, revision) = count_keys(&source[0]).await?;
    ensure!(
        count == options.keys as i64,
        "the source holds {count} keys, not {}",
        options.keys
    );

    let (backup, took) = take_backup(&backups).await?;
    ensure!(
        backup["revision"] == revision,
        "the backup's revision is not the source's {revision}: {backup}"
    );
    let key = backup["key"].as_str().context("a backup without a key")?;
    let manifest_key = key.replace(".db", ".json");
    let manifest = backups.s3.objects(BUCKET, &manifest_key).await?;
    let manifest_size = manifest
        .iter()
        .find(|o| o.key == manifest_key)
        .context(format!("no manifest {manifest_key}"))?
        .size;
    let manifest_json = backups.s3.get_json(BUCKET, &manifest_key).await?;
    let size = backup["size"].as_i64().context("a backup without a size")?;
    table.add(
        "on-demand backup: apply → Succeeded",
        format!(
            "{took:.1} s (from {})",
            backup["member"].as_str().unwrap_or("?")
        ),
    );
    table.add(
        "backup object / manifest",
        format!(
            "{size} B ({:.1} MiB) / {manifest_size} B, revision {}",
            size as f64 / (1024.0 * 1024.0),
            manifest_json["revision"]
        ),
    );

    let restoring = Instant::now();
    env.apply(&restored_cluster(
        env,
        RESTORED,
        3,
        json!({"backup": {"name": BACKUP}}),
    ))
    .await?;
    env.wait_cluster_available(RESTORED, 3, FORMING).await;
    let took = restoring.elapsed().as_secs_f64();
    let restored = endpoints(env, RESTORED, 3).await?;
    let source_hash = hash_kv(&source[0], revision).await?;
    for endpoint in &restored {
        let (restored_count, restored_revision) = count_keys(endpoint).await?;
        ensure!(
            (restored_count, restored_revision) == (count, revision),
            "{endpoint} of the restored cluster holds {restored_count} keys at revision \
             {restored_revision}, the source {count} at {revision}"
        );
        let restored_hash = hash_kv(endpoint, revision).await?;
        ensure!(
            restored_hash == source_hash,
            "HashKV at {revision} of {endpoint} is {restored_hash}, the source's {source_hash}"
        );
    }
    table.add(
        "restore into a new 3-member KVCluster: apply → Available",
        format!(
            "{took:.1} s; {count} keys at revision {revision} and HashKV {source_hash} on all 3"
        ),
    );
    // The restored members would take CPU from the writer.
    env.kubectl_in_namespace(&["delete", "kvcluster", RESTORED, "--wait=false"])
        .await?;

    if options.writer_seconds == 0 {
        return Ok(());
    }
    // The change log streams from the backup's revision + 1 by now, but reports a recovery
    // point only once it uploads a segment, which takes a change: the writer's first.
    let load_before = load_average();
    let writing = steady_writer(
        &source,
        options.rate,
        options.writer_seconds,
        options.value_bytes,
    );
    let (points, writing) = sample_recovery_point(env, writing).await?;
    let caught_up = Instant::now();
    let last = writing.last_revision;
    env.eventually(
        "the change log to reach the writer's last put",
        Duration::from_secs(120),
        || async { (recovery_point(env).await["revision"].as_i64()? >= last).then_some(()) },
    )
    .await;
    let caught_up = caught_up.elapsed().as_secs_f64();
    let lag_seconds: Vec<f64> = points
        .iter()
        .filter_map(|p| p["lagSeconds"].as_f64())
        .collect();
    let lag_revisions: Vec<f64> = points
        .iter()
        .filter_map(|p| p["lagRevisions"].as_f64())
        .collect();
    let latency = writing
        .latency
        .map(|l| format!("put p50 {:.1} ms, p99 {:.1} ms", l.p50, l.p99))
        .unwrap_or_default();
    table.add(
        format!(
            "steady writer aiming at {} puts/s for {} s (load before: {load_before})",
            options.rate, options.writer_seconds
        ),
        format!(
            "{:.0} puts/s sustained ({} puts, {} failed), {latency}",
            writing.puts as f64 / writing.seconds,
            writing.puts,
            writing.failed
        ),
    );
    table.add(
        format!(
            "recovery point lagSeconds over {} segments (segmentSeconds {})",
            points.len(),
            options.segment_seconds
        ),
        mean_max(&lag_seconds),
    );
    table.add("recovery point lagRevisions", mean_max(&lag_revisions));
    table.add(
        "writer stopped → change log holds its last put",
        format!("{caught_up:.1} s"),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    ensure!(options.keys > 0, "--keys must be at least 1");
    ensure!(
        (1..=128).contains(&options.batch),
        "--batch must be 1 to 128 (the members' --max-txn-ops)"
    );
    ensure!(options.loaders > 0, "--loaders must be at least 1");
    ensure!(options.rate > 0, "--rate must be at least 1");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("pods run in network namespaces: run as root");
    }
    println!(
        "backup-figures: members {}, operator {}, {options:?}",
        server_binary().display(),
        operator_binary().display()
    );
    let mut table = Table::default();
    let measured = measure(&options, &mut table).await;
    table.print();
    measured
}
