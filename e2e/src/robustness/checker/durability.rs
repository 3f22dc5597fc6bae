//! Durability: after every member was SIGKILLed at once and restarted, the store's history
//! ([`FinalState::events`]) holds every acknowledged write at the revision it was acknowledged
//! with, holds no value that no client wrote, runs in revision order, and adds up to the pairs
//! the store serves.

use std::collections::{BTreeMap, HashSet};

use super::{Anomaly, Checker};
use crate::robustness::history::{
    Event, EventKind, FinalState, History, KeyValue, Request, Response,
};

pub fn check(history: &History, final_state: &FinalState) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let events: HashSet<&Event> = final_state.events.iter().collect();

    for op in &history.operations {
        let expected: Vec<Event> = match (&op.request, op.response()) {
            (Request::Put { key, value, .. }, Some(Response::Put { revision })) => {
                vec![put_event(*revision, key, value)]
            }
            (
                Request::CompareAndPut { key, value, .. },
                Some(Response::CompareAndPut {
                    revision,
                    succeeded: true,
                    ..
                }),
            ) => vec![put_event(*revision, key, value)],
            (_, Some(Response::Delete { revision, deleted })) => deleted
                .iter()
                .map(|kv| Event {
                    revision: *revision,
                    key: kv.key.clone(),
                    kind: EventKind::Delete,
                })
                .collect(),
            _ => Vec::new(),
        };
        for event in expected {
            if !events.contains(&event) {
                anomalies.push(Anomaly::new(
                    Checker::Durability,
                    format!(
                        "acknowledged write is not in the store's history after the restart: \
                         {event:?}"
                    ),
                    vec![op.id],
                ));
            }
        }
    }

    let written: HashSet<(&str, &str)> = history
        .operations
        .iter()
        .filter_map(|op| match &op.request {
            Request::Put { key, value, .. } | Request::CompareAndPut { key, value, .. } => {
                Some((key.as_str(), value.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut state: BTreeMap<&str, KeyValue> = BTreeMap::new();
    let mut last_revision = 0;
    for event in &final_state.events {
        if event.revision < last_revision {
            anomalies.push(Anomaly::new(
                Checker::Durability,
                format!("the store's history goes back from revision {last_revision} to {event:?}"),
                Vec::new(),
            ));
        }
        last_revision = event.revision;
        match &event.kind {
            EventKind::Put { value } => {
                if !written.contains(&(event.key.as_str(), value.as_str())) {
                    anomalies.push(Anomaly::new(
                        Checker::Durability,
                        format!("the store's history has a value no client wrote: {event:?}"),
                        Vec::new(),
                    ));
                }
                state.insert(
                    &event.key,
                    KeyValue {
                        key: event.key.clone(),
                        value: value.clone(),
                        mod_revision: event.revision,
                    },
                );
            }
            EventKind::Delete => {
                state.remove(event.key.as_str());
            }
        }
    }
    let replayed: Vec<KeyValue> = state.into_values().collect();
    let mut served = final_state.kvs.clone();
    served.sort_by(|a, b| a.key.cmp(&b.key));
    if replayed != served {
        let differ: Vec<String> = replayed
            .iter()
            .filter(|kv| !served.contains(kv))
            .map(|kv| format!("history makes {kv:?}"))
            .chain(
                served
                    .iter()
                    .filter(|kv| !replayed.contains(kv))
                    .map(|kv| format!("store serves {kv:?}")),
            )
            .collect();
        anomalies.push(Anomaly::new(
            Checker::Durability,
            format!(
                "the pairs served at revision {} are not what the store's history makes them: {}",
                final_state.revision,
                differ.join("; ")
            ),
            Vec::new(),
        ));
    }
    anomalies
}

fn put_event(revision: i64, key: &str, value: &str) -> Event {
    Event {
        revision,
        key: key.to_string(),
        kind: EventKind::Put {
            value: value.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::robustness::checker::fixtures::*;
    use crate::robustness::checker::Anomaly;
    use crate::robustness::history::{FinalState, History, Operation};

    fn found(operations: Vec<Operation>, final_state: FinalState) -> Vec<Anomaly> {
        check(&History::new(operations, Vec::new()), &final_state)
    }

    #[test]
    fn acknowledged_writes_in_the_store_pass() {
        let store = FinalState {
            events: vec![put_event(2, "a", "1"), put_event(3, "a", "2")],
            kvs: vec![kv("a", "2", 3)],
            revision: 3,
        };
        let anomalies = found(
            vec![put(0, 10, "a", "1", 2), unknown_put(20, "a", "2")],
            store,
        );
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }

    #[test]
    fn lost_acknowledged_write_is_flagged() {
        let store = FinalState {
            events: vec![put_event(2, "a", "1")],
            kvs: vec![kv("a", "1", 2)],
            revision: 2,
        };
        let anomalies = found(
            vec![put(0, 10, "a", "1", 2), put(20, 30, "a", "2", 3)],
            store,
        );
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        assert_eq!(anomalies[0].operations, vec![1]);
    }

    #[test]
    fn value_no_one_wrote_is_flagged() {
        let store = FinalState {
            events: vec![put_event(2, "a", "ghost")],
            kvs: vec![kv("a", "ghost", 2)],
            revision: 2,
        };
        assert_eq!(found(Vec::new(), store).len(), 1);
    }

    #[test]
    fn served_pairs_that_differ_from_the_history_are_flagged() {
        let store = FinalState {
            events: vec![put_event(2, "a", "1"), delete_event(3, "a")],
            kvs: vec![kv("a", "1", 2)],
            revision: 3,
        };
        assert_eq!(found(vec![put(0, 10, "a", "1", 2)], store).len(), 1);
    }
}
