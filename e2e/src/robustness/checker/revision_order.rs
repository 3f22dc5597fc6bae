//! Revisions against real time, across all keys: an operation that starts after another
//! finished sees at least that one's revision, a write makes a revision higher than any seen
//! before it started, and no two writes share a revision. This catches stale reads and lost
//! ordering between keys, which the per-key linearizability search cannot see.

use std::collections::HashMap;

use super::{Anomaly, CheckOptions, Checker};
use crate::robustness::history::{History, Operation, Request, Response};

/// An answered operation with the revision it reports.
struct Revisioned<'a> {
    op: &'a Operation,
    revision: i64,
    /// Whether it made the revision (a write) rather than observed it.
    wrote: bool,
}

fn revisioned(op: &Operation, options: CheckOptions) -> Option<Revisioned<'_>> {
    let (revision, wrote) = match (&op.request, op.response()?) {
        (Request::Get { serializable, .. } | Request::List { serializable, .. }, _)
            if *serializable && !options.serializable_as_linearizable =>
        {
            return None
        }
        (_, Response::Put { revision }) => (*revision, true),
        (_, Response::Range { revision, .. }) => (*revision, false),
        (_, Response::Delete { revision, deleted }) => (*revision, !deleted.is_empty()),
        (
            _,
            Response::CompareAndPut {
                revision,
                succeeded,
                ..
            },
        ) => (*revision, *succeeded),
        _ => return None,
    };
    Some(Revisioned {
        op,
        revision,
        wrote,
    })
}

pub fn check(history: &History, options: CheckOptions) -> Vec<Anomaly> {
    let ops: Vec<Revisioned> = history
        .operations
        .iter()
        .filter_map(|op| revisioned(op, options))
        .collect();
    let mut anomalies = Vec::new();

    let mut writers: HashMap<i64, usize> = HashMap::new();
    for op in ops.iter().filter(|op| op.wrote) {
        if let Some(&first) = writers.get(&op.revision) {
            anomalies.push(Anomaly::new(
                Checker::RevisionOrder,
                format!("two writes both made revision {}", op.revision),
                vec![first, op.op.id],
            ));
        } else {
            writers.insert(op.revision, op.op.id);
        }
    }

    // `ops` is in invocation order (History::new sorts it); walk the answers in answer order
    // alongside, keeping the highest revision answered before each invocation.
    let mut by_return: Vec<&Revisioned> = ops.iter().collect();
    by_return.sort_by_key(|op| op.op.returned);
    let mut answered = 0;
    let mut highest: Option<&Revisioned> = None;
    for op in &ops {
        while answered < by_return.len() && by_return[answered].op.returned < op.op.invoked {
            let candidate = by_return[answered];
            if highest.is_none_or(|h| candidate.revision > h.revision) {
                highest = Some(candidate);
            }
            answered += 1;
        }
        let Some(before) = highest else { continue };
        let backwards = if op.wrote {
            op.revision <= before.revision
        } else {
            op.revision < before.revision
        };
        if backwards {
            anomalies.push(Anomaly::new(
                Checker::RevisionOrder,
                format!(
                    "operation {} started after operation {} answered revision {}, yet {} \
                     revision {}",
                    op.op.id,
                    before.op.id,
                    before.revision,
                    if op.wrote { "wrote" } else { "read at" },
                    op.revision
                ),
                vec![before.op.id, op.op.id],
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::checker::fixtures::*;

    fn anomalies(operations: Vec<Operation>, options: CheckOptions) -> Vec<Anomaly> {
        check(&History::new(operations, Vec::new()), options)
    }

    #[test]
    fn revisions_that_grow_with_time_pass() {
        let found = anomalies(
            vec![
                put(0, 10, "a", "1", 2),
                get(20, 30, "b", None, 2),
                put(40, 50, "b", "2", 3),
                get(45, 60, "a", Some(("1", 2)), 3),
            ],
            CheckOptions::default(),
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn read_at_an_older_revision_than_a_finished_write_is_flagged() {
        let found = anomalies(
            vec![put(0, 10, "a", "1", 5), get(20, 30, "b", None, 4)],
            CheckOptions::default(),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].operations, vec![0, 1]);
    }

    #[test]
    fn two_writes_with_one_revision_are_flagged() {
        let found = anomalies(
            vec![put(0, 10, "a", "1", 5), put(0, 10, "b", "2", 5)],
            CheckOptions::default(),
        );
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn stale_serializable_read_is_flagged_only_in_the_control() {
        let operations = vec![put(0, 10, "a", "1", 5), read(20, 30, "b", None, 3, true)];
        assert!(anomalies(operations.clone(), CheckOptions::default()).is_empty());
        let control = CheckOptions {
            serializable_as_linearizable: true,
            ..CheckOptions::default()
        };
        assert_eq!(anomalies(operations, control).len(), 1);
    }
}
