//! A bounded run of the robustness suite (issue 11; docs/robustness.md): a few short randomized
//! schedules and the cheaper regression cases must find no anomaly, and the negative controls —
//! serializable reads from an isolated leader checked as linearizable, and members that
//! acknowledge writes before fsync killed all at once — must be flagged. Long campaigns run
//! `scripts/robustness`.
//!
//! The members are `ferrokv-failpoints` (`cargo build -p ferrokv-node --features failpoints
//! --bin ferrokv-failpoints`), so crashes at failpoints are part of the run. Members run in
//! network namespaces, so these tests need root, as the partition tests do.
//! `FERROKV_E2E_SERVER=/usr/bin/etcd` runs them against etcd, without the failpoint nemeses;
//! the tests that are only about failpoints skip themselves there.

use std::path::PathBuf;

use ferrokv_e2e::robustness::checker::Checker;
use ferrokv_e2e::robustness::failpoints::{failpoint_server, has_failpoints};
use ferrokv_e2e::robustness::report::{failure_report, result_line};
use ferrokv_e2e::robustness::schedule::{self, Plan, ScheduleOutcome};

/// Runs `plan`, printing what a campaign prints for it.
async fn run(plan: Plan) -> ScheduleOutcome {
    eprintln!("seed {}: {}", plan.seed, plan.summary());
    let outcome = schedule::run(&plan, &server()).await;
    eprintln!("{}", result_line(&outcome));
    outcome
}

fn server() -> PathBuf {
    failpoint_server()
}

/// Whether the server has failpoints; says why a test skips itself when it has not.
fn failpoints_built_in(test: &str) -> bool {
    let has = has_failpoints(&server());
    if !has {
        eprintln!("{test}: skipped, {} has no failpoints", server().display());
    }
    has
}

/// Runs a negative control, which must finish for its verdict to mean anything.
async fn run_control(plan: Plan) -> ScheduleOutcome {
    let outcome = run(plan).await;
    assert!(
        outcome.failure.is_none(),
        "the control schedule did not finish:\n{}",
        failure_report(&outcome)
    );
    outcome
}

fn assert_clean(outcome: &ScheduleOutcome) {
    assert_eq!(outcome.anomaly_count(), 0, "\n{}", failure_report(outcome));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_schedules_find_no_anomalies() {
    // Seeds of random plans (a multiple of REGRESSION_EVERY would plan a regression case).
    for seed in [11, 23, 37] {
        let plan = Plan::from_seed(seed, 3);
        assert_eq!(plan.name, "random");
        assert_clean(&run(plan).await);
    }
}

/// Seed 103 found the whole cluster stalling: a member far behind after a crash during a
/// snapshot install made the leader start a new ~100 MB store dump at every heartbeat until the
/// healthy members lost their quorum (docs/robustness.md, bug 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_far_behind_after_a_crash_in_snapshot_install_does_not_stall_the_cluster() {
    let plan = Plan::from_seed(103, 3);
    assert_clean(&run(plan).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_and_isolated_leaders_find_no_anomalies() {
    for case in [
        "write-applied-once-after-leader-kills",
        "isolated-leader-renews-no-lease",
    ] {
        let plan = Plan::regression(case, 7, 3).expect("a listed regression case");
        assert_clean(&run(plan).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_checked_as_linearizable_are_flagged() {
    let outcome = run_control(Plan::stale_read_control(3, 3)).await;
    let anomalies = &outcome.verdict.anomalies;
    assert!(
        !anomalies.is_empty(),
        "serializable reads from an isolated leader passed as linearizable: the checkers \
         cannot see stale reads"
    );
    // Stale reads, and nothing else: the control breaks only the read guarantee.
    assert!(
        anomalies
            .iter()
            .all(|a| matches!(a.checker, Checker::Linearizability | Checker::RevisionOrder)),
        "\n{}",
        failure_report(&outcome)
    );
    eprintln!(
        "the control found {} anomalies, e.g. {}",
        anomalies.len(),
        anomalies[0].summary
    );
}

/// Crashes at the points of the write path (after the WAL's fsync on the leader, before a
/// follower's acknowledgement, around the store's commit) and inside defragment lose nothing
/// and apply nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_failpoints_find_no_anomalies() {
    if !failpoints_built_in("crashes_at_failpoints_find_no_anomalies") {
        return;
    }
    for case in ["crashes-in-the-write-path", "crashes-in-defragment"] {
        let plan = Plan::regression(case, 9, 3).expect("a listed regression case");
        let crashes = plan.faults.len();
        let outcome = run(plan).await;
        assert_clean(&outcome);
        // A point never reached would make this test pass without testing anything.
        let reached = outcome
            .timeline
            .iter()
            .filter(|entry| entry.what.contains(" crashed at "))
            .count();
        assert_eq!(reached, crashes, "\n{}", failure_report(&outcome));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_before_fsync_and_lost_are_flagged() {
    if !failpoints_built_in("writes_acknowledged_before_fsync_and_lost_are_flagged") {
        return;
    }
    let outcome = run_control(Plan::ack_before_fsync_control(4, 3)).await;
    let anomalies = &outcome.verdict.anomalies;
    assert!(
        anomalies.iter().any(|a| a.checker == Checker::Durability),
        "members that acknowledged writes before fsync were all killed, yet the durability \
         checker found no lost write: it cannot see lost writes\n{}",
        failure_report(&outcome)
    );
    eprintln!(
        "the control found {} anomalies, {} of them lost writes",
        anomalies.len(),
        anomalies
            .iter()
            .filter(|a| a.checker == Checker::Durability)
            .count()
    );
}
