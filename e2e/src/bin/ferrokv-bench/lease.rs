//! `lease`: lease grant throughput, then keep-alive throughput.
//!
//! - grant: `--clients` clients grant `--total` leases of `--lease-ttl` seconds in all, one
//!   request in flight each.
//! - keep-alive: each client first grants a lease of its own and opens a keep-alive stream on it
//!   (not measured); then the clients send `--total` keep-alives in all, each waiting for the
//!   response to its previous one. A keep-alive's latency runs from sending the request on the
//!   stream to receiving its response; a response with TTL 0 (lease not found) is an error.
//!
//! Leases are left to expire rather than revoked: revoking them would take as long as granting.
//! The default TTL (5 minutes) outlasts a run, so no lease expires while it is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};

use super::{ClientReport, Outcome, RunPlan};

#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// Phases to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Phase::Grant, Phase::KeepAlive]
    )]
    phases: Vec<Phase>,

    /// TTL of every lease granted, in seconds.
    #[arg(long, default_value_t = 300)]
    lease_ttl: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Grant,
    KeepAlive,
}

pub async fn run(plan: RunPlan, args: &LeaseArgs) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(args.phases.len());
    for phase in &args.phases {
        let outcome = match phase {
            Phase::Grant => grant(plan.clone(), args.lease_ttl).await?,
            Phase::KeepAlive => keep_alive(plan.clone(), args.lease_ttl).await?,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

async fn grant(mut plan: RunPlan, ttl: i64) -> anyhow::Result<Outcome> {
    let connections = plan.connect(plan.conns, true).await?;
    plan.restart_clock();
    let plan = Arc::new(plan);
    let next_request = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let mut leases = connections[c % connections.len()].lease_client();
        let (plan, next_request) = (plan.clone(), next_request.clone());
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            while !plan.is_over(next_request.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                match leases.grant(ttl, None).await {
                    Ok(_) => report.latencies.push(sent.elapsed()),
                    Err(error) => report.record_error(error),
                }
            }
            report
        }));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await.context("granting client panicked")?);
    }
    let seconds = plan.started.elapsed().as_secs_f64();
    Ok(Outcome::from_clients("lease-grant", reports, seconds))
}

async fn keep_alive(mut plan: RunPlan, ttl: i64) -> anyhow::Result<Outcome> {
    // Unary requests (the grants) time out; the keep-alive streams must not.
    let granting = plan.connect(plan.conns, true).await?;
    let streaming = plan.connect(plan.conns, false).await?;
    let mut keepers = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let lease = granting[c % granting.len()]
            .lease_client()
            .grant(ttl, None)
            .await
            .context("granting a lease to keep alive")?;
        let mut leases: LeaseClient = streaming[c % streaming.len()].lease_client();
        let stream = tokio::time::timeout(plan.request_timeout, leases.keep_alive(lease.id()))
            .await
            .context("opening a keep-alive stream timed out")?
            .context("opening a keep-alive stream")?;
        keepers.push(stream);
    }

    plan.restart_clock();
    let plan = Arc::new(plan);
    let next_request = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(keepers.len());
    for (keeper, responses) in keepers {
        let (plan, next_request) = (plan.clone(), next_request.clone());
        tasks.push(tokio::spawn(keep_alive_client(
            keeper,
            responses,
            plan,
            next_request,
        )));
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await.context("keep-alive client panicked")?);
    }
    let seconds = plan.started.elapsed().as_secs_f64();
    Ok(Outcome::from_clients("lease-keep-alive", reports, seconds))
}

/// One client's keep-alives on its own stream, one in flight; stops at the first failure, as
/// the stream is then unusable.
async fn keep_alive_client(
    mut keeper: LeaseKeeper,
    mut responses: LeaseKeepAliveStream,
    plan: Arc<RunPlan>,
    next_request: Arc<AtomicU64>,
) -> ClientReport {
    let mut report = ClientReport::default();
    while !plan.is_over(next_request.fetch_add(1, Ordering::Relaxed)) {
        let sent = Instant::now();
        if let Err(error) = keeper.keep_alive().await {
            report.record_error(error);
            break;
        }
        match tokio::time::timeout(plan.request_timeout, responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                report.latencies.push(sent.elapsed());
            }
            Ok(Ok(Some(response))) => {
                report.record_error(format!("lease {:x} not found", response.id()));
                break;
            }
            Ok(Ok(None)) => {
                report.record_error("keep-alive stream ended");
                break;
            }
            Ok(Err(error)) => {
                report.record_error(error);
                break;
            }
            Err(_) => {
                report.record_error(format!(
                    "no keep-alive response within {:?}",
                    plan.request_timeout
                ));
                break;
            }
        }
    }
    report
}
