//! `robustness`: runs randomized schedules (traffic, nemeses, checked histories) against fresh
//! clusters and prints, as its last line, `robustness: N schedules, K anomalies`; exits 1 if
//! K > 0. `scripts/robustness` builds it and ferrokv and runs it; docs/robustness.md explains
//! the schedules. Needs root: members run in network namespaces.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use ferrokv_e2e::robustness::failpoints::failpoint_server;
use ferrokv_e2e::robustness::report::{failure_report, full_history, result_line};
use ferrokv_e2e::robustness::schedule::{self, Plan};

/// Randomized fault-injection schedules with checked histories (issue 11).
#[derive(Debug, Parser)]
#[command(name = "robustness")]
struct Options {
    /// How many schedules to run; schedule i runs with seed S + i.
    #[arg(long, default_value_t = 10)]
    schedules: u64,
    /// Seed of the first schedule; a schedule's seed replays it. Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// The member server: default this workspace's ferrokv-failpoints (the member with
    /// failpoints; or $FERROKV_E2E_SERVER); `/usr/bin/etcd` works too, without the failpoint
    /// nemeses.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Members per cluster.
    #[arg(long, default_value_t = 3, value_parser = parse_members)]
    members: usize,
}

fn parse_members(text: &str) -> Result<usize, String> {
    match text {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{text} members: a cluster here has 3 or 5")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = Options::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("robustness: members run in network namespaces; run as root");
        return ExitCode::from(2);
    }
    let server = options.server.unwrap_or_else(failpoint_server);
    let first_seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_secs())
    });
    println!(
        "robustness: {} schedules from seed {first_seed} against {} with {} members",
        options.schedules,
        server.display(),
        options.members
    );
    let mut anomalies = 0;
    for i in 0..options.schedules {
        let seed = first_seed.wrapping_add(i);
        let plan = Plan::from_seed(seed, options.members);
        println!(
            "schedule {}/{} seed {seed}: {}",
            i + 1,
            options.schedules,
            plan.summary()
        );
        let outcome = schedule::run(&plan, &server).await;
        println!("{}", result_line(&outcome));
        if outcome.anomaly_count() > 0 {
            println!("{}", failure_report(&outcome));
            let path = std::env::temp_dir().join(format!("robustness-seed-{seed}.history"));
            match std::fs::write(&path, full_history(&outcome)) {
                Ok(()) => println!("  the whole history: {}", path.display()),
                Err(error) => println!("  could not write {}: {error}", path.display()),
            }
        }
        anomalies += outcome.anomaly_count();
    }
    println!(
        "robustness: {} schedules, {anomalies} anomalies",
        options.schedules
    );
    if anomalies > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
