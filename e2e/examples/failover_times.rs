//! How long a 3-member cluster on separate hosts takes to elect a new leader after its leader is
//! SIGKILLed or cut off from the network, for ferrokv and for Debian's etcd 3.4 with the same
//! flags. Prints p50 and max over `--runs` runs of each; docs/partitions.md records a run.
//!
//! ```sh
//! cargo build -p ferrokv-node
//! cargo run -p ferrokv-e2e --example failover_times -- --runs 10
//! ```
//!
//! "Elected" is the moment every surviving member names one and the same new leader in its
//! Maintenance.Status, polled every 20 ms from the moment of the fault. One cluster serves all
//! runs of one server and fault: after each run the fault is undone (the member restarted, or
//! the network healed) and the cluster left to settle before the next.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferrokv_e2e::latency::LatencySummary;
use ferrokv_e2e::HostCluster;

#[derive(Parser)]
struct Args {
    /// Runs per server and fault.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// --heartbeat-interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// --election-timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// The ferrokv binary; by default the one built into this example's target directory.
    #[arg(long)]
    ferrokv: Option<PathBuf>,
    /// Measure only this server: `ferrokv` or `etcd`.
    #[arg(long)]
    only: Option<String>,
    /// The etcd binary to compare with.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Sigkill,
    CutOff,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ferrokv = match &args.ferrokv {
        Some(path) => path.clone(),
        None => built_ferrokv()?,
    };
    let servers = [("ferrokv", ferrokv), ("etcd 3.4", args.etcd.clone())];
    let mut rows = Vec::new();
    for (name, server) in &servers {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !name.starts_with(only.as_str()))
        {
            continue;
        }
        for fault in [Fault::Sigkill, Fault::CutOff] {
            let times = measure(&args, server, fault)
                .await
                .with_context(|| format!("{name}, {fault:?}"))?;
            eprintln!("{name} {fault:?}: {times:?}");
            rows.push((name, fault, times));
        }
    }
    println!(
        "3 members, --heartbeat-interval {} --election-timeout {}, {} runs each",
        args.heartbeat_interval, args.election_timeout, args.runs
    );
    println!("| server | fault | p50 (ms) | max (ms) |");
    println!("|---|---|---:|---:|");
    for (name, fault, times) in rows {
        let summary = LatencySummary::from_samples(times).context("no runs")?;
        let fault = match fault {
            Fault::Sigkill => "leader SIGKILLed",
            Fault::CutOff => "leader cut off",
        };
        println!(
            "| {name} | {fault} | {:.0} | {:.0} |",
            summary.p50, summary.max
        );
    }
    Ok(())
}

async fn measure(args: &Args, server: &PathBuf, fault: Fault) -> anyhow::Result<Vec<Duration>> {
    let mut cluster = HostCluster::builder(3)
        .server(server)
        .timing(args.heartbeat_interval, args.election_timeout)
        .start()
        .await?;
    let all: Vec<usize> = (0..cluster.len()).collect();
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let leader = cluster.leader_among(&all, Duration::from_secs(60)).await?;
        let old_id = cluster.status(leader).await?.member_id;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        let started = Instant::now();
        match fault {
            Fault::Sigkill => cluster.kill(leader)?,
            Fault::CutOff => cluster.isolate(leader)?,
        }
        loop {
            let mut named = Vec::new();
            for &i in &survivors {
                named.push(cluster.status(i).await.map(|s| s.leader).unwrap_or(0));
            }
            if named[0] != 0 && named[0] != old_id && named.iter().all(|&l| l == named[0]) {
                times.push(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("no new leader 60 s after the fault: survivors name {named:x?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match fault {
            Fault::Sigkill => cluster.restart(leader)?,
            Fault::CutOff => cluster.heal()?,
        }
        cluster.wait_healthy().await?;
        // Let a returning member's disruption (if any) play out before the next run.
        tokio::time::sleep(Duration::from_millis(3 * args.election_timeout)).await;
    }
    Ok(times)
}

/// `<target dir>/<profile>/ferrokv`: examples run from `<target dir>/<profile>/examples/`.
fn built_ferrokv() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("ferrokv"))
        .context("locating the target directory")?;
    if !path.is_file() {
        bail!(
            "{} does not exist: run `cargo build -p ferrokv-node` first, or pass --ferrokv",
            path.display()
        );
    }
    Ok(path)
}
