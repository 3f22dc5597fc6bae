//! How a schedule is reported: one line for a clean one; for one with anomalies its seed, plan,
//! nemesis timeline and, per anomaly, the smallest part of the history that shows it.

use std::fmt::Write;

use super::history::{History, Operation, Outcome, Request, Response, WatchRecord};
use super::schedule::ScheduleOutcome;

/// Lines of history printed per anomaly at most.
const MAX_OPERATIONS_SHOWN: usize = 40;
/// Events printed per watch at most.
const MAX_EVENTS_SHOWN: usize = 12;

/// The one-line result of a schedule.
pub fn result_line(outcome: &ScheduleOutcome) -> String {
    let unknown = outcome
        .history
        .operations
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown(_)))
        .count();
    let mut line = format!(
        "  {} operations ({unknown} unknown), {} watches, {} events in the store's history, {} \
         anomalies, {:.1?}",
        outcome.history.operations.len(),
        outcome.history.watches.len(),
        outcome.final_state.events.len(),
        outcome.anomaly_count(),
        outcome.took
    );
    if !outcome.verdict.inconclusive.is_empty() {
        let _ = write!(
            line,
            "; linearizability search ran out of budget on keys {:?}",
            outcome.verdict.inconclusive
        );
    }
    line
}

/// Everything needed to understand and replay a schedule with anomalies.
pub fn failure_report(outcome: &ScheduleOutcome) -> String {
    let mut text = String::new();
    let plan = &outcome.plan;
    let _ = writeln!(
        text,
        "ANOMALY in schedule seed {} (replay: scripts/robustness --seed {} --schedules 1 \
         --members {})",
        plan.seed, plan.seed, plan.members
    );
    let _ = writeln!(text, "  plan: {}", plan.summary());
    let _ = writeln!(text, "  nemesis timeline:");
    for entry in &outcome.timeline {
        let _ = writeln!(text, "    {:>9.3?}  {}", entry.at, entry.what);
    }
    if let Some(failure) = &outcome.failure {
        let _ = writeln!(text, "  the schedule did not finish: {failure}");
    }
    for anomaly in &outcome.verdict.anomalies {
        let _ = writeln!(text, "  {}: {}", anomaly.checker, anomaly.summary);
        for &id in anomaly.operations.iter().take(MAX_OPERATIONS_SHOWN) {
            let _ = writeln!(
                text,
                "    {}",
                operation_line(&outcome.history.operations[id])
            );
        }
        if anomaly.operations.len() > MAX_OPERATIONS_SHOWN {
            let _ = writeln!(
                text,
                "    ... {} more",
                anomaly.operations.len() - MAX_OPERATIONS_SHOWN
            );
        }
        if let Some(index) = anomaly.watch {
            let _ = write!(text, "{}", watch_lines(&outcome.history, index));
        }
    }
    text
}

/// One operation: `#12 [1.234s, 1.240s] client 3 on host 1: put r/kv/k01 = c3-5 -> revision 17`.
pub fn operation_line(op: &Operation) -> String {
    let request = match &op.request {
        Request::Put { key, value, lease } => match lease {
            Some(lease) => format!("put {key} = {value} with lease {lease:x}"),
            None => format!("put {key} = {value}"),
        },
        Request::Get { key, serializable } => {
            format!(
                "get {key}{}",
                if *serializable { " (serializable)" } else { "" }
            )
        }
        Request::List {
            start,
            end,
            serializable,
        } => format!(
            "list [{start}, {end}){}",
            if *serializable { " (serializable)" } else { "" }
        ),
        Request::Delete { start, end: None } => format!("delete {start}"),
        Request::Delete {
            start,
            end: Some(end),
        } => format!("delete [{start}, {end})"),
        Request::CompareAndPut {
            key,
            compare,
            value,
        } => format!("txn if {key} {compare:?} then put {value} else get"),
        Request::LeaseGrant { ttl } => format!("lease grant ttl {ttl}"),
        Request::LeaseKeepAlive { lease } => format!("keep-alive {lease:x}"),
        Request::LeaseRevoke { lease } => format!("revoke {lease:x}"),
    };
    let answer = match &op.outcome {
        Outcome::Unknown(error) => format!("unknown ({error})"),
        Outcome::Ok(Response::Put { revision }) => format!("ok, revision {revision}"),
        Outcome::Ok(Response::Range { revision, kvs }) => {
            let kvs: Vec<String> = kvs
                .iter()
                .map(|kv| format!("{}={}@{}", kv.key, kv.value, kv.mod_revision))
                .collect();
            format!("at revision {revision}: [{}]", kvs.join(", "))
        }
        Outcome::Ok(Response::Delete { revision, deleted }) => {
            let keys: Vec<String> = deleted
                .iter()
                .map(|kv| format!("{}={}@{}", kv.key, kv.value, kv.mod_revision))
                .collect();
            format!("revision {revision}, deleted [{}]", keys.join(", "))
        }
        Outcome::Ok(Response::CompareAndPut {
            revision,
            succeeded,
            current,
        }) => match (succeeded, current) {
            (true, _) => format!("succeeded, revision {revision}"),
            (false, Some(kv)) => format!(
                "failed at revision {revision}, key holds {}@{}",
                kv.value, kv.mod_revision
            ),
            (false, None) => format!("failed at revision {revision}, key absent"),
        },
        Outcome::Ok(Response::LeaseGrant { lease, ttl }) => format!("lease {lease:x} ttl {ttl}"),
        Outcome::Ok(Response::LeaseKeepAlive { ttl }) => format!("ttl {ttl}"),
        Outcome::Ok(Response::LeaseRevoke { revision }) => format!("revoked, revision {revision}"),
    };
    format!(
        "#{} [{:.3?}, {:.3?}] client {} on host {}: {request} -> {answer}",
        op.id, op.invoked, op.returned, op.client, op.member
    )
}

fn watch_lines(history: &History, index: usize) -> String {
    let watch: &WatchRecord = &history.watches[index];
    let mut text = format!(
        "    watch opened at {:.3?} on host {}, ended: {}; first events:\n",
        watch.opened, watch.member, watch.ended
    );
    for event in watch.events.iter().take(MAX_EVENTS_SHOWN) {
        let _ = writeln!(text, "      {event:?}");
    }
    text
}

/// The whole history of a schedule, one line per operation, then every watch and the store's
/// history: written to a file next to a failure report, for a post-mortem.
pub fn full_history(outcome: &ScheduleOutcome) -> String {
    let mut text = failure_report(outcome);
    let _ = writeln!(text, "\noperations:");
    for op in &outcome.history.operations {
        let _ = writeln!(text, "{}", operation_line(op));
    }
    let _ = writeln!(text, "\nwatches:");
    for (index, watch) in outcome.history.watches.iter().enumerate() {
        let _ = writeln!(
            text,
            "watch {index}: client {} on host {} over [{}, {}) from revision {}, opened at \
             {:.3?}, {} events, complete to {:?}, ended: {}",
            watch.client,
            watch.member,
            watch.start,
            watch.end,
            watch.start_revision,
            watch.opened,
            watch.events.len(),
            watch.complete_to,
            watch.ended
        );
    }
    let _ = writeln!(text, "\nthe store's history:");
    for event in &outcome.final_state.events {
        let _ = writeln!(text, "{event:?}");
    }
    text
}
