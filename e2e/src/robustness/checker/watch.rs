//! Watches against the store's history: every watch delivers exactly the events of its range
//! from its start revision, in revision order, each once, as the store's own history after the
//! schedule lists them ([`FinalState::events`], which [`super::durability`] checks against the
//! clients' writes). A watch that broke may stop early; one that was open when traffic stopped
//! and waited for the last revision ([`WatchRecord::complete_to`]) must have delivered all.

use super::{Anomaly, Checker};
use crate::robustness::history::{Event, FinalState, History, WatchRecord};

pub fn check(history: &History, final_state: &FinalState) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for (index, watch) in history.watches.iter().enumerate() {
        if let Some(summary) = check_one(watch, &final_state.events) {
            anomalies.push(Anomaly {
                checker: Checker::Watch,
                summary: format!(
                    "watch {index} of client {} on member {} over [{:?}, {:?}) from revision {}: \
                     {summary}",
                    watch.client, watch.member, watch.start, watch.end, watch.start_revision
                ),
                operations: Vec::new(),
                watch: Some(index),
            });
        }
    }
    anomalies
}

fn check_one(watch: &WatchRecord, store_events: &[Event]) -> Option<String> {
    let expected: Vec<&Event> = store_events
        .iter()
        .filter(|event| watch.covers(&event.key) && event.revision >= watch.start_revision)
        .collect();
    for (position, got) in watch.events.iter().enumerate() {
        if got.revision < watch.start_revision {
            return Some(format!(
                "event #{position} {got:?} is before the start revision"
            ));
        }
        match expected.get(position) {
            Some(&want) if want == got => {}
            Some(&want) => {
                return Some(format!(
                    "event #{position} is {got:?}, the store's history has {want:?} there"
                ))
            }
            None => {
                return Some(format!(
                    "event #{position} {got:?} is beyond the store's history of the range"
                ))
            }
        }
    }
    if let Some(revision) = watch.complete_to {
        let due = expected.iter().filter(|e| e.revision <= revision).count();
        if watch.events.len() < due {
            return Some(format!(
                "delivered {} events but the range has {due} up to revision {revision}, which \
                 it waited for; first missing: {:?}",
                watch.events.len(),
                expected[watch.events.len()]
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::checker::fixtures::*;

    fn store() -> FinalState {
        FinalState {
            events: vec![
                put_event(2, "a", "1"),
                put_event(3, "b", "2"),
                put_event(4, "a", "3"),
                delete_event(5, "a"),
            ],
            kvs: vec![kv("b", "2", 3)],
            revision: 5,
        }
    }

    fn watch(start_revision: i64, events: Vec<Event>, complete_to: Option<i64>) -> WatchRecord {
        WatchRecord {
            client: 0,
            member: 0,
            start: "a".into(),
            end: "b".into(),
            start_revision,
            opened: ms(0),
            events,
            complete_to,
            ended: "traffic stopped".into(),
        }
    }

    fn found(watch: WatchRecord) -> Vec<Anomaly> {
        check(&History::new(Vec::new(), vec![watch]), &store())
    }

    #[test]
    fn watch_that_sees_its_range_from_its_start_passes() {
        let events = vec![put_event(4, "a", "3"), delete_event(5, "a")];
        assert!(found(watch(3, events, Some(5))).is_empty());
        // A broken watch may stop early.
        assert!(found(watch(1, vec![put_event(2, "a", "1")], None)).is_empty());
    }

    #[test]
    fn duplicate_event_is_flagged() {
        let events = vec![put_event(2, "a", "1"), put_event(2, "a", "1")];
        assert_eq!(found(watch(2, events, None)).len(), 1);
    }

    #[test]
    fn missing_event_is_flagged() {
        let events = vec![put_event(2, "a", "1"), delete_event(5, "a")];
        assert_eq!(found(watch(2, events, None)).len(), 1);
    }

    #[test]
    fn event_before_the_start_revision_is_flagged() {
        let events = vec![put_event(2, "a", "1"), put_event(4, "a", "3")];
        assert_eq!(found(watch(3, events, None)).len(), 1);
    }

    #[test]
    fn event_outside_the_range_is_flagged() {
        let events = vec![put_event(3, "b", "2")];
        assert_eq!(found(watch(3, events, None)).len(), 1);
    }

    #[test]
    fn watch_that_stops_short_of_its_awaited_revision_is_flagged() {
        let events = vec![put_event(4, "a", "3")];
        assert_eq!(found(watch(3, events, Some(5))).len(), 1);
    }
}
