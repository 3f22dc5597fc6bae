//! Linearizability of the key-value history, one key at a time (P-compositionality: a history
//! of independent keys is linearizable exactly when each key's part is), by the search of Wing
//! and Gong as Lowe improved it and porcupine implements it.
//!
//! Each operation is projected onto the keys it touched: a List becomes a read of every key in
//! its range, a DeleteRange a delete of every key in its range. The model of one key is its value
//! and mod_revision, or nothing. Operations whose outcome is unknown have no end: the search may
//! place them anywhere after their invocation, or never (after everything else). An unknown
//! write whose value no one ever saw is dropped, since placing it last always fits; one whose
//! value was seen gets the revision it was seen with. Multi-key atomicity is not checked here;
//! [`super::revision_order`] checks revisions against real time across keys.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::{leased_keys, Anomaly, CheckOptions, Checker};
use crate::robustness::history::{
    Compare, EventKind, History, KeyValue, Outcome, Request, Response,
};

/// What the linearizability checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search ran out of budget.
    pub inconclusive: Vec<String>,
}

/// The state of one key: its value and mod_revision, or nothing.
type KeyState = Option<(String, i64)>;

/// One operation's effect on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A put, or a transaction whose compare held: applied, at `revision`.
    Write {
        compare: Option<Compare>,
        value: String,
        revision: i64,
    },
    /// A transaction whose compare failed, and what its else branch read.
    FailedCompare {
        compare: Compare,
        current: KeyState,
    },
    Read {
        found: KeyState,
    },
    /// A delete that answered: it deleted `deleted`, or found nothing.
    Delete {
        deleted: KeyState,
    },
    /// A delete without an answer.
    UnknownDelete,
}

/// One operation of one key's history.
#[derive(Debug, Clone)]
struct KeyOperation {
    /// The [`Operation::id`] it came from.
    id: usize,
    invoked: Duration,
    /// `None` for an operation without an answer: it has no end.
    returned: Option<Duration>,
    step: Step,
}

/// The outcome of one key's search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

/// Checks every key of `history` that no lease is attached to.
pub fn check(history: &History, options: CheckOptions) -> Findings {
    let mut findings = Findings::default();
    for (key, operations) in key_histories(history, options) {
        match search(&operations, options.search_budget) {
            Search::Linearizable => {}
            Search::OutOfBudget => findings.inconclusive.push(key),
            Search::NotLinearizable => {
                let shown = smallest_failing_part(&operations, options.search_budget);
                findings.anomalies.push(Anomaly::new(
                    Checker::Linearizability,
                    format!(
                        "the operations on key {key:?} have no linearization; these {} of its {} \
                         operations already have none",
                        shown.len(),
                        operations.len()
                    ),
                    shown,
                ));
            }
        }
    }
    findings
}

/// Every value seen anywhere — in answers, watch events — with the revision it was seen at.
fn seen_values(history: &History) -> HashMap<(String, String), i64> {
    let mut seen = HashMap::new();
    let mut see = |kv: &KeyValue| {
        seen.entry((kv.key.clone(), kv.value.clone()))
            .or_insert(kv.mod_revision);
    };
    for op in &history.operations {
        match op.response() {
            Some(Response::Range { kvs, .. }) => kvs.iter().for_each(&mut see),
            Some(Response::Delete { deleted, .. }) => deleted.iter().for_each(&mut see),
            Some(Response::CompareAndPut {
                current: Some(kv), ..
            }) => see(kv),
            _ => {}
        }
    }
    for watch in &history.watches {
        for event in &watch.events {
            if let EventKind::Put { value } = &event.kind {
                see(&KeyValue {
                    key: event.key.clone(),
                    value: value.clone(),
                    mod_revision: event.revision,
                });
            }
        }
    }
    seen
}

/// Each key's operations, projected as the module documentation describes.
fn key_histories(history: &History, options: CheckOptions) -> BTreeMap<String, Vec<KeyOperation>> {
    let leased = leased_keys(history);
    let seen = seen_values(history);
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for op in &history.operations {
        match &op.request {
            Request::Put { key, .. }
            | Request::Get { key, .. }
            | Request::CompareAndPut { key, .. }
            | Request::Delete {
                start: key,
                end: None,
            } => {
                keys.insert(key.clone());
            }
            _ => {}
        }
    }
    keys.retain(|key| !leased.contains(key));
    let in_range = |start: &str, end: &str| -> Vec<String> {
        keys.iter()
            .filter(|key| start <= key.as_str() && key.as_str() < end)
            .cloned()
            .collect()
    };

    let mut per_key: BTreeMap<String, Vec<KeyOperation>> = BTreeMap::new();
    for op in &history.operations {
        let known = |step: Step| KeyOperation {
            id: op.id,
            invoked: op.invoked,
            returned: Some(op.returned),
            step,
        };
        let endless = |step: Step| KeyOperation {
            id: op.id,
            invoked: op.invoked,
            returned: None,
            step,
        };
        let mut add = |key: &str, operation: KeyOperation| {
            if keys.contains(key) {
                per_key.entry(key.to_string()).or_default().push(operation);
            }
        };
        match (&op.request, &op.outcome) {
            (Request::Put { key, value, .. }, Outcome::Ok(Response::Put { revision })) => {
                let step = Step::Write {
                    compare: None,
                    value: value.clone(),
                    revision: *revision,
                };
                add(key, known(step));
            }
            (Request::Put { key, value, .. }, Outcome::Unknown(_)) => {
                if let Some(&revision) = seen.get(&(key.clone(), value.clone())) {
                    let step = Step::Write {
                        compare: None,
                        value: value.clone(),
                        revision,
                    };
                    add(key, endless(step));
                }
            }
            (Request::Get { key, serializable }, Outcome::Ok(Response::Range { kvs, .. }))
                if !serializable || options.serializable_as_linearizable =>
            {
                add(
                    key,
                    known(Step::Read {
                        found: found(kvs, key),
                    }),
                );
            }
            (
                Request::List {
                    start,
                    end,
                    serializable,
                },
                Outcome::Ok(Response::Range { kvs, .. }),
            ) if !serializable || options.serializable_as_linearizable => {
                for key in in_range(start, end) {
                    add(
                        &key,
                        known(Step::Read {
                            found: found(kvs, &key),
                        }),
                    );
                }
            }
            (Request::Delete { start, end }, outcome) => {
                let covered = match end {
                    None => vec![start.clone()],
                    Some(end) => in_range(start, end),
                };
                for key in covered {
                    let operation = match outcome {
                        Outcome::Ok(Response::Delete { deleted, .. }) => known(Step::Delete {
                            deleted: found(deleted, &key),
                        }),
                        _ => endless(Step::UnknownDelete),
                    };
                    add(&key, operation);
                }
            }
            (
                Request::CompareAndPut {
                    key,
                    compare,
                    value,
                },
                Outcome::Ok(Response::CompareAndPut {
                    revision,
                    succeeded,
                    current,
                }),
            ) => {
                let step = if *succeeded {
                    Step::Write {
                        compare: Some(compare.clone()),
                        value: value.clone(),
                        revision: *revision,
                    }
                } else {
                    Step::FailedCompare {
                        compare: compare.clone(),
                        current: current
                            .as_ref()
                            .map(|kv| (kv.value.clone(), kv.mod_revision)),
                    }
                };
                add(key, known(step));
            }
            (
                Request::CompareAndPut {
                    key,
                    compare,
                    value,
                },
                Outcome::Unknown(_),
            ) => {
                if let Some(&revision) = seen.get(&(key.clone(), value.clone())) {
                    let step = Step::Write {
                        compare: Some(compare.clone()),
                        value: value.clone(),
                        revision,
                    };
                    add(key, endless(step));
                }
            }
            // Lease operations, serializable reads, unknown reads (they constrain nothing),
            // and answers of the wrong kind (which the recorder never makes).
            _ => {}
        }
    }
    per_key
}

fn found(kvs: &[KeyValue], key: &str) -> KeyState {
    kvs.iter()
        .find(|kv| kv.key == key)
        .map(|kv| (kv.value.clone(), kv.mod_revision))
}

fn holds(compare: &Compare, state: &KeyState) -> bool {
    match (compare, state) {
        (Compare::Value(expected), Some((value, _))) => value == expected,
        (Compare::Value(_), None) => false,
        (Compare::ModRevision(0), state) => state.is_none(),
        (Compare::ModRevision(expected), Some((_, revision))) => revision == expected,
        (Compare::ModRevision(_), None) => false,
    }
}

/// The key's state after `step`, or `None` if `step` cannot happen in `state`.
fn apply(state: &KeyState, step: &Step) -> Option<KeyState> {
    match step {
        Step::Write {
            compare,
            value,
            revision,
        } => {
            if compare.as_ref().is_some_and(|c| !holds(c, state)) {
                return None;
            }
            // Every write makes a new, higher revision.
            if matches!(state, Some((_, current)) if current >= revision) {
                return None;
            }
            Some(Some((value.clone(), *revision)))
        }
        Step::FailedCompare { compare, current } => {
            (!holds(compare, state) && current == state).then(|| state.clone())
        }
        Step::Read { found } => (found == state).then(|| state.clone()),
        Step::Delete { deleted } => (deleted == state).then_some(None),
        Step::UnknownDelete => Some(None),
    }
}

/// The search over one key's operations.
fn search(operations: &[KeyOperation], budget: u64) -> Search {
    let n = operations.len();
    if n == 0 {
        return Search::Linearizable;
    }
    // Entries 1..=2n are calls and returns in time order; 0 is the head, 2n + 1 the tail.
    // At equal times calls come first, so touching operations count as concurrent.
    let mut order: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in operations.iter().enumerate() {
        order.push((op.invoked, false, i));
        order.push((op.returned.unwrap_or(Duration::MAX), true, i));
    }
    order.sort();
    let head = 0;
    let tail = 2 * n + 1;
    let mut operation_of = vec![0; tail + 1];
    let mut is_call = vec![false; tail + 1];
    let mut return_of = vec![0; tail + 1];
    let mut call_entry = vec![0; n];
    for (position, &(_, is_return, op)) in order.iter().enumerate() {
        let entry = position + 1;
        operation_of[entry] = op;
        is_call[entry] = !is_return;
        if is_return {
            return_of[call_entry[op]] = entry;
        } else {
            call_entry[op] = entry;
        }
    }
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|e| e.saturating_sub(1)).collect();

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    let mut calls: Vec<(usize, KeyState)> = Vec::new();
    let mut state: KeyState = None;
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != tail {
        steps += 1;
        if steps > budget {
            return Search::OutOfBudget;
        }
        if is_call[entry] {
            let op = operation_of[entry];
            if let Some(after) = apply(&state, &operations[op].step) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), after.clone())) {
                    calls.push((entry, std::mem::replace(&mut state, after)));
                    // Lift the call and its return out of the list.
                    let ret = return_of[entry];
                    next[prev[entry]] = next[entry];
                    prev[next[entry]] = prev[entry];
                    next[prev[ret]] = next[ret];
                    prev[next[ret]] = prev[ret];
                    entry = next[head];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = next[entry];
        } else {
            // The return of an operation not yet placed: undo the last placement.
            let Some((call, before)) = calls.pop() else {
                return Search::NotLinearizable;
            };
            let op = operation_of[call];
            linearized[op / 64] &= !(1 << (op % 64));
            state = before;
            let ret = return_of[call];
            next[prev[ret]] = ret;
            prev[next[ret]] = ret;
            next[prev[call]] = call;
            prev[next[call]] = call;
            entry = next[call];
        }
    }
    Search::Linearizable
}

/// Ids of a small part of a non-linearizable key history that has no linearization either: the
/// shortest failing prefix (in invocation order), then without each read that is not needed.
/// Only reads are dropped: dropping a write could fail the part for another reason (a value
/// read that no one wrote).
fn smallest_failing_part(operations: &[KeyOperation], budget: u64) -> Vec<usize> {
    let mut by_invocation = operations.to_vec();
    by_invocation.sort_by_key(|op| op.invoked);
    let fails = |part: &[KeyOperation]| search(part, budget) == Search::NotLinearizable;
    let (mut low, mut high) = (1, by_invocation.len());
    while low < high {
        let middle = (low + high) / 2;
        if fails(&by_invocation[..middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let mut part: Vec<KeyOperation> = by_invocation[..high].to_vec();
    let mut i = 0;
    while i < part.len() {
        let is_observation = matches!(part[i].step, Step::Read { .. } | Step::FailedCompare { .. });
        if is_observation && i + 1 < part.len() {
            let mut without = part.clone();
            without.remove(i);
            if fails(&without) {
                part = without;
                continue;
            }
        }
        i += 1;
    }
    part.iter().map(|op| op.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::checker::fixtures::*;
    use crate::robustness::history::{History, Response};

    fn verdict(operations: Vec<crate::robustness::history::Operation>) -> Findings {
        check(
            &History::new(operations, Vec::new()),
            CheckOptions::default(),
        )
    }

    #[test]
    fn sequential_puts_and_reads_are_linearizable() {
        let findings = verdict(vec![
            put(0, 10, "k", "a", 2),
            get(20, 30, "k", Some(("a", 2)), 2),
            put(40, 50, "k", "b", 3),
            get(60, 70, "k", Some(("b", 3)), 3),
        ]);
        assert_eq!(findings, Findings::default());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_flagged() {
        let findings = verdict(vec![
            put(0, 10, "k", "a", 2),
            put(20, 30, "k", "b", 3),
            get(40, 50, "k", Some(("a", 2)), 3),
        ]);
        assert_eq!(findings.anomalies.len(), 1, "{findings:?}");
        assert_eq!(findings.anomalies[0].checker, Checker::Linearizability);
        // The part shown is the whole (minimal) history: both writes and the stale read.
        assert_eq!(findings.anomalies[0].operations, vec![0, 1, 2]);
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        let findings = verdict(vec![
            put(0, 100, "k", "a", 2),
            get(10, 20, "k", None, 1),
            get(30, 40, "k", Some(("a", 2)), 2),
        ]);
        assert_eq!(findings, Findings::default());
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let late = verdict(vec![
            unknown_put(0, "k", "a"),
            get(100, 110, "k", None, 1),
            get(6000, 6010, "k", Some(("a", 2)), 2),
        ]);
        assert_eq!(late, Findings::default());
        let never = verdict(vec![unknown_put(0, "k", "a"), get(100, 110, "k", None, 1)]);
        assert_eq!(never, Findings::default());
    }

    #[test]
    fn value_that_flickers_back_is_flagged() {
        let findings = verdict(vec![
            unknown_put(0, "k", "a"),
            get(100, 110, "k", Some(("a", 2)), 2),
            get(200, 210, "k", None, 2),
        ]);
        assert_eq!(findings.anomalies.len(), 1, "{findings:?}");
    }

    #[test]
    fn read_of_a_value_no_one_wrote_is_flagged() {
        let findings = verdict(vec![get(0, 10, "k", Some(("ghost", 5)), 5)]);
        assert_eq!(findings.anomalies.len(), 1);
    }

    #[test]
    fn create_if_absent_that_answers_already_exists_with_its_own_value_is_flagged() {
        let findings = verdict(vec![create(
            0,
            10,
            "k",
            "mine",
            Response::CompareAndPut {
                revision: 2,
                succeeded: false,
                current: Some(kv("k", "mine", 2)),
            },
        )]);
        assert_eq!(findings.anomalies.len(), 1);
    }

    #[test]
    fn two_successful_creates_of_one_key_are_flagged() {
        let created = |revision| Response::CompareAndPut {
            revision,
            succeeded: true,
            current: None,
        };
        let findings = verdict(vec![
            create(0, 10, "k", "a", created(2)),
            create(20, 30, "k", "b", created(3)),
        ]);
        assert_eq!(findings.anomalies.len(), 1);
    }

    #[test]
    fn serializable_stale_reads_pass_unless_checked_as_linearizable() {
        let history = History::new(
            vec![
                put(0, 10, "k", "a", 2),
                put(20, 30, "k", "b", 3),
                read(40, 50, "k", Some(("a", 2)), 2, true),
            ],
            Vec::new(),
        );
        assert_eq!(
            check(&history, CheckOptions::default()),
            Findings::default()
        );
        let control = CheckOptions {
            serializable_as_linearizable: true,
            ..CheckOptions::default()
        };
        assert_eq!(check(&history, control).anomalies.len(), 1);
    }

    #[test]
    fn list_and_delete_range_are_checked_per_key() {
        let list = |invoked, kvs| {
            op(
                invoked,
                invoked + 10,
                Request::List {
                    start: "a".into(),
                    end: "c".into(),
                    serializable: false,
                },
                Outcome::Ok(Response::Range { revision: 4, kvs }),
            )
        };
        let delete_range = op(
            30,
            40,
            Request::Delete {
                start: "a".into(),
                end: Some("c".into()),
            },
            Outcome::Ok(Response::Delete {
                revision: 4,
                deleted: vec![kv("a", "1", 2), kv("b", "2", 3)],
            }),
        );
        let good = verdict(vec![
            put(0, 5, "a", "1", 2),
            put(10, 15, "b", "2", 3),
            delete_range.clone(),
            list(50, vec![]),
        ]);
        assert_eq!(good, Findings::default());
        // The list after the delete still shows "b".
        let bad = verdict(vec![
            put(0, 5, "a", "1", 2),
            put(10, 15, "b", "2", 3),
            delete_range,
            list(50, vec![kv("b", "2", 3)]),
        ]);
        assert_eq!(bad.anomalies.len(), 1, "{bad:?}");
        assert!(bad.anomalies[0].summary.contains("\"b\""));
    }

    #[test]
    fn search_that_runs_out_of_budget_is_inconclusive_not_an_anomaly() {
        let mut operations = Vec::new();
        for i in 0..40 {
            operations.push(unknown_put(i, "k", &format!("v{i}")));
            operations.push(get(
                100 + i,
                200 + i,
                "k",
                Some((&format!("v{i}"), 2 + i as i64)),
                50,
            ));
        }
        let history = History::new(operations, Vec::new());
        let tiny = CheckOptions {
            search_budget: 10,
            ..CheckOptions::default()
        };
        let findings = check(&history, tiny);
        assert_eq!(findings.inconclusive, vec!["k".to_string()]);
        assert!(findings.anomalies.is_empty());
    }
}
