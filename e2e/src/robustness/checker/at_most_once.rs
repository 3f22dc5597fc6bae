//! At most once: every write carries a value no other write carries, so a value that shows up
//! at two revisions — in answers, in watch events, in the store's history — was applied twice.
//! So was a compare-and-put that answers "compare failed" while the key already holds its own
//! value: the server applied it, then ran it again (the retried proposal of a dying leader).

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Checker};
use crate::robustness::history::{EventKind, FinalState, History, Request, Response};

/// Where a (key, value) was seen: the revisions, and the operations that saw it.
type Sightings = (BTreeSet<i64>, Vec<usize>);

pub fn check(history: &History, final_state: &FinalState) -> Vec<Anomaly> {
    let mut seen: BTreeMap<(&str, &str), Sightings> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for op in &history.operations {
        let kvs = match op.response() {
            Some(Response::Range { kvs, .. }) => kvs.iter().collect(),
            Some(Response::Delete { deleted, .. }) => deleted.iter().collect(),
            Some(Response::CompareAndPut {
                current: Some(kv), ..
            }) => vec![kv],
            _ => Vec::new(),
        };
        for kv in kvs {
            let entry = seen.entry((&kv.key, &kv.value)).or_default();
            entry.0.insert(kv.mod_revision);
            entry.1.push(op.id);
        }
        if let (
            Request::CompareAndPut { key, value, .. },
            Some(Response::CompareAndPut {
                succeeded: false,
                current: Some(current),
                ..
            }),
        ) = (&op.request, op.response())
        {
            if &current.key == key && &current.value == value {
                anomalies.push(Anomaly::new(
                    Checker::AtMostOnce,
                    format!(
                        "compare-and-put of {key:?} answered that its compare failed, but the \
                         key holds the value it was to write, at revision {}",
                        current.mod_revision
                    ),
                    vec![op.id],
                ));
            }
        }
    }
    let events = history
        .watches
        .iter()
        .flat_map(|watch| watch.events.iter())
        .chain(&final_state.events);
    for event in events {
        if let EventKind::Put { value } = &event.kind {
            seen.entry((&event.key, value))
                .or_default()
                .0
                .insert(event.revision);
        }
    }
    for ((key, value), (revisions, operations)) in seen {
        if revisions.len() > 1 {
            anomalies.push(Anomaly::new(
                Checker::AtMostOnce,
                format!("value {value:?} of key {key:?} was written at revisions {revisions:?}"),
                operations,
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::checker::fixtures::*;

    #[test]
    fn each_value_at_one_revision_passes() {
        let history = History::new(
            vec![put(0, 10, "a", "1", 2), get(20, 30, "a", Some(("1", 2)), 2)],
            Vec::new(),
        );
        let store = FinalState {
            events: vec![put_event(2, "a", "1")],
            kvs: vec![kv("a", "1", 2)],
            revision: 2,
        };
        assert!(check(&history, &store).is_empty());
    }

    #[test]
    fn value_applied_twice_is_flagged() {
        let history = History::new(vec![unknown_put(0, "a", "1")], Vec::new());
        let store = FinalState {
            events: vec![put_event(2, "a", "1"), put_event(3, "a", "1")],
            kvs: vec![kv("a", "1", 3)],
            revision: 3,
        };
        let anomalies = check(&history, &store);
        assert_eq!(anomalies.len(), 1);
        assert!(anomalies[0].summary.contains("{2, 3}"), "{anomalies:?}");
    }

    #[test]
    fn create_that_finds_its_own_value_is_flagged() {
        let history = History::new(
            vec![create(
                0,
                10,
                "k",
                "mine",
                Response::CompareAndPut {
                    revision: 2,
                    succeeded: false,
                    current: Some(kv("k", "mine", 2)),
                },
            )],
            Vec::new(),
        );
        assert_eq!(check(&history, &FinalState::default()).len(), 1);
    }
}
