//! The changes a follower's watch delivered and that are not uploaded yet, and where the next
//! segment can be cut.
//!
//! A segment must hold every change of each of its revisions, and a watch may deliver the
//! changes of one revision in more than one response. So a revision counts as complete only
//! once a later one arrived, or once a progress response said the watch was past it; a
//! segment is cut only up to the last complete revision.

use std::collections::BTreeMap;

use etcd_client::{Event, EventType};
use ferrokv_storage::change_log::{LoggedChange, RevisionSeen, Segment};
use ferrokv_storage::mvcc::{Lease, Version};

/// Pending changes from `next_revision` on.
#[derive(Debug)]
pub struct ChangeBuffer {
    /// The first revision of the next segment.
    next_revision: i64,
    changes: Vec<LoggedChange>,
    /// Every revision up to this one has been delivered whole.
    complete_through: i64,
    seen: Vec<RevisionSeen>,
    /// Granted TTLs of leases the pending changes attach keys to, where learnt.
    lease_ttls: BTreeMap<i64, Option<i64>>,
    /// Bytes of keys and values pending.
    bytes: usize,
    /// When the oldest pending change arrived (Unix milliseconds).
    oldest_pending: Option<i64>,
}

/// One change as the watch delivered it.
pub fn logged_change(event: &Event) -> Option<LoggedChange> {
    let kv = event.kv()?;
    Some(LoggedChange {
        key: kv.key().to_vec(),
        revision: kv.mod_revision(),
        put: (event.event_type() == EventType::Put).then(|| Version {
            create_revision: kv.create_revision(),
            version: kv.version(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
        }),
    })
}

impl ChangeBuffer {
    /// An empty buffer whose first segment starts at `start`.
    pub fn new(start: i64) -> Self {
        Self {
            next_revision: start,
            changes: Vec::new(),
            complete_through: start - 1,
            seen: Vec::new(),
            lease_ttls: BTreeMap::new(),
            bytes: 0,
            oldest_pending: None,
        }
    }

    /// The changes of one watch response, received at `now_millis`.
    pub fn add(&mut self, changes: Vec<LoggedChange>, now_millis: i64) {
        let Some(last) = changes.last().map(|c| c.revision) else {
            return;
        };
        // Changes arrive in revision order: every revision before the last one seen is whole.
        self.complete_through = self.complete_through.max(last - 1);
        for change in changes {
            if change.revision < self.next_revision {
                continue;
            }
            self.bytes += change.key.len() + change.put.as_ref().map_or(0, |v| v.value.len());
            if let Some(lease) = change.put.as_ref().map(|v| v.lease).filter(|&l| l != 0) {
                self.lease_ttls.entry(lease).or_insert(None);
            }
            self.changes.push(change);
        }
        self.oldest_pending.get_or_insert(now_millis);
        self.mark_seen(last, now_millis);
    }

    /// A progress response: the watch has delivered every revision up to `revision`.
    pub fn progress(&mut self, revision: i64, now_millis: i64) {
        self.complete_through = self.complete_through.max(revision);
        if self.changes.last().is_some_and(|c| c.revision <= revision) {
            self.mark_seen(self.changes.last().map_or(0, |c| c.revision), now_millis);
        }
    }

    fn mark_seen(&mut self, revision: i64, now_millis: i64) {
        if self.seen.last().is_none_or(|s| s.revision < revision) {
            self.seen.push(RevisionSeen {
                revision,
                unix_millis: now_millis,
            });
        }
    }

    /// Leases the pending changes use whose TTL is not known yet.
    pub fn leases_to_learn(&self) -> Vec<i64> {
        self.lease_ttls
            .iter()
            .filter(|(_, ttl)| ttl.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The granted TTL of `lease`, or `None` when it is gone already.
    pub fn learn_lease(&mut self, lease: i64, ttl: Option<i64>) {
        // A lease that is gone is asked again never: its keys are granted expired on restore.
        self.lease_ttls.insert(lease, Some(ttl.unwrap_or(-1)));
    }

    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest change not yet cut arrived.
    pub fn oldest_pending(&self) -> Option<i64> {
        self.oldest_pending
    }

    /// The first revision the next segment starts at.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The segment of every complete pending revision, if there is any; the rest stays.
    pub fn cut(&mut self, now_millis: i64) -> Option<Segment> {
        let whole = self
            .changes
            .partition_point(|c| c.revision <= self.complete_through);
        if whole == 0 {
            return None;
        }
        let rest = self.changes.split_off(whole);
        let changes = std::mem::replace(&mut self.changes, rest);
        let last_revision = changes.last().map_or(0, |c| c.revision);
        let first_revision = self.next_revision;
        let seen_rest = self.seen.partition_point(|s| s.revision <= last_revision);
        let mut seen: Vec<RevisionSeen> = self.seen.drain(..seen_rest).collect();
        if seen.last().is_none_or(|s| s.revision < last_revision) {
            // It existed by the time a later revision was seen, or by now.
            let by = self.seen.first().map_or(now_millis, |s| s.unix_millis);
            seen.push(RevisionSeen {
                revision: last_revision,
                unix_millis: by,
            });
        }
        let mut leases = Vec::new();
        for change in &changes {
            if let Some(lease) = change.put.as_ref().map(|v| v.lease).filter(|&l| l != 0) {
                if let Some(Some(ttl)) = self.lease_ttls.get(&lease) {
                    if *ttl >= 0 && !leases.iter().any(|l: &Lease| l.id == lease) {
                        leases.push(Lease {
                            id: lease,
                            ttl: *ttl,
                        });
                    }
                }
            }
        }
        self.bytes = self
            .changes
            .iter()
            .map(|c| c.key.len() + c.put.as_ref().map_or(0, |v| v.value.len()))
            .sum();
        self.oldest_pending = (!self.changes.is_empty()).then_some(now_millis);
        self.next_revision = last_revision + 1;
        Some(Segment {
            first_revision,
            last_revision,
            changes,
            leases,
            seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: i64, version: i64) -> LoggedChange {
        LoggedChange {
            key: key.as_bytes().to_vec(),
            revision,
            put: Some(Version {
                create_revision: revision - version + 1,
                version,
                value: b"v".to_vec(),
                lease: 0,
            }),
        }
    }

    #[test]
    fn change_buffer_cuts_only_whole_revisions() {
        let mut buffer = ChangeBuffer::new(10);
        buffer.add(
            vec![put("a", 10, 1), put("b", 10, 1), put("c", 11, 1)],
            1_000,
        );
        // Revision 11 may have more changes to come.
        let segment = buffer.cut(1_100).expect("revision 10 is whole");
        assert_eq!((segment.first_revision, segment.last_revision), (10, 10));
        assert_eq!(segment.changes.len(), 2);
        // Revision 10 existed when revision 11 was seen.
        assert_eq!(
            segment.seen,
            [RevisionSeen {
                revision: 10,
                unix_millis: 1_000
            }]
        );
        assert!(buffer.cut(1_200).is_none());
        buffer.add(vec![put("d", 11, 1)], 1_300);
        buffer.progress(11, 1_400);
        let segment = buffer.cut(1_500).expect("revision 11 is whole");
        assert_eq!((segment.first_revision, segment.last_revision), (11, 11));
        assert_eq!(segment.changes.len(), 2);
        assert_eq!(
            segment.seen,
            [RevisionSeen {
                revision: 11,
                unix_millis: 1_000
            }]
        );
        ferrokv_storage::change_log::encode_segment(&segment).expect("a whole segment");
        assert_eq!(buffer.next_revision(), 12);
        assert_eq!(buffer.pending_bytes(), 0);
        assert!(buffer.oldest_pending().is_none());
    }

    #[test]
    fn change_buffer_records_learnt_lease_ttls_and_skips_gone_leases() {
        let mut buffer = ChangeBuffer::new(5);
        let mut leased = put("l", 5, 1);
        leased.put.as_mut().unwrap().lease = 77;
        let mut gone = put("g", 6, 1);
        gone.put.as_mut().unwrap().lease = 88;
        buffer.add(vec![leased, gone], 0);
        assert_eq!(buffer.leases_to_learn(), [77, 88]);
        buffer.learn_lease(77, Some(30));
        buffer.learn_lease(88, None);
        assert!(buffer.leases_to_learn().is_empty());
        buffer.progress(6, 1);
        let segment = buffer.cut(2).unwrap();
        assert_eq!(segment.leases, [Lease { id: 77, ttl: 30 }]);
    }

    #[test]
    fn change_buffer_ignores_changes_before_its_start() {
        let mut buffer = ChangeBuffer::new(8);
        buffer.add(vec![put("a", 7, 1), put("a", 8, 2)], 0);
        buffer.progress(8, 0);
        let segment = buffer.cut(0).unwrap();
        assert_eq!(segment.first_revision, 8);
        assert_eq!(segment.changes.len(), 1);
    }
}
