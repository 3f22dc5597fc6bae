//! Segments replayed onto a snapshot give the store the source had at the target revision.
//!
//! The source is a real store; its segments are made from its watch events, as the operator's
//! streamer makes them from a follower's watch.

use etcd_client::proto::{
    PbDeleteRequest, PbEvent, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest,
    PbTxnRequestOp,
};
use tempfile::TempDir;

use super::*;
use crate::mvcc::{event_type, MvccStore, MvccWrite, StoreContents};
use crate::StorageError;

fn open_store() -> (TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
    (dir, store)
}

fn apply(store: &MvccStore, body: impl FnOnce(&mut MvccWrite)) {
    let mut batch = store.begin_write().unwrap();
    body(&mut batch);
    batch.commit(false).unwrap();
}

fn put_req(key: &str, value: &str, lease: i64) -> PbPutRequest {
    PbPutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    }
}

fn put(store: &MvccStore, key: &str, value: &str) {
    apply(store, |w| {
        w.put(&put_req(key, value, 0)).unwrap();
    });
}

fn delete(store: &MvccStore, key: &str, range_end: &str) {
    apply(store, |w| {
        w.delete_range(&PbDeleteRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        })
        .unwrap();
    });
}

/// A transaction of several changes in one revision: sub revisions 0, 1, 2.
fn txn(store: &MvccStore, puts: &[(&str, &str)], delete: &str) {
    let mut success: Vec<PbTxnRequestOp> = puts
        .iter()
        .map(|(key, value)| PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(put_req(key, value, 0))),
        })
        .collect();
    success.push(PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key: delete.into(),
            ..Default::default()
        })),
    });
    apply(store, |w| {
        w.txn(&PbTxnRequest {
            success,
            ..Default::default()
        })
        .unwrap();
    });
}

/// The history before the snapshot: overwrites, a deletion, a lease with a key.
fn history_before(store: &MvccStore) {
    put(store, "a", "a1");
    put(store, "b", "b1");
    put(store, "a", "a2");
    delete(store, "b", "");
    apply(store, |w| w.lease_grant(7, 600).unwrap());
    apply(store, |w| {
        w.put(&put_req("leased/old", "x", 7)).unwrap();
    });
}

/// The history after it: a recreated key, a transaction, a range deletion, a lease granted
/// after the snapshot with a key on it, a revoked lease's deletions. Returns a revision in the
/// middle, and the revision at the end.
fn history_after(store: &MvccStore) -> (i64, i64) {
    put(store, "b", "b2");
    txn(store, &[("t1", "one"), ("t2", "two")], "a");
    apply(store, |w| w.lease_grant(9, 300).unwrap());
    apply(store, |w| {
        w.put(&put_req("leased/new", "y", 9)).unwrap();
    });
    put(store, "c", "c1");
    let middle = store.current_revision().unwrap();
    delete(store, "t", "u");
    put(store, "a", "a3");
    apply(store, |w| {
        w.lease_revoke(7).unwrap();
    });
    (middle, store.current_revision().unwrap())
}

/// What the operator's streamer writes for revisions `first..=last` of `source`.
fn segment_of(source: &MvccStore, first: i64, last: i64, leases: &[(i64, i64)]) -> Segment {
    let events: Vec<PbEvent> = source.events_between(first, last).unwrap();
    let changes = events
        .into_iter()
        .map(|event| {
            let kv = event.kv.unwrap();
            LoggedChange {
                key: kv.key.clone(),
                revision: kv.mod_revision,
                put: (event.r#type == event_type::PUT).then_some(Version {
                    create_revision: kv.create_revision,
                    version: kv.version,
                    value: kv.value,
                    lease: kv.lease,
                }),
            }
        })
        .collect();
    Segment {
        first_revision: first,
        last_revision: last,
        changes,
        leases: leases
            .iter()
            .map(|&(id, ttl)| crate::mvcc::Lease { id, ttl })
            .collect(),
        seen: vec![RevisionSeen {
            revision: last,
            unix_millis: 1_000 * last,
        }],
    }
}

/// The source, its snapshot after `history_before`, and its revisions.
struct Source {
    _dir: TempDir,
    store: MvccStore,
    snapshot: StoreContents,
    middle: i64,
    end: i64,
}

fn source() -> Source {
    let (dir, store) = open_store();
    history_before(&store);
    let snapshot = store.contents().unwrap();
    let (middle, end) = history_after(&store);
    Source {
        _dir: dir,
        store,
        snapshot,
        middle,
        end,
    }
}

fn restored(contents: StoreContents) -> (TempDir, MvccStore) {
    let (dir, store) = open_store();
    store.restore_contents(contents).unwrap();
    (dir, store)
}

fn everything_at(store: &MvccStore, revision: i64) -> Vec<etcd_client::proto::PbKeyValue> {
    store
        .range(&PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        })
        .unwrap()
        .kvs
}

#[test]
fn replay_to_a_revision_gives_the_sources_keys_revisions_and_hash_at_it() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let segments = [
        segment_of(&source.store, snap + 1, snap + 3, &[]),
        segment_of(&source.store, snap + 4, source.end, &[(9, 300)]),
    ];
    for target in [snap, snap + 2, source.middle, source.end] {
        let mut contents = source.snapshot.clone();
        let replayed = replay(&mut contents, &segments, target).unwrap();
        assert_eq!(replayed.to_revision, target);
        let (_dir, store) = restored(contents);
        assert_eq!(store.current_revision().unwrap(), target);
        for revision in snap..=target {
            assert_eq!(
                everything_at(&store, revision),
                everything_at(&source.store, revision),
                "target {target}, read at {revision}"
            );
        }
        assert_eq!(
            store.hash_kv(target).unwrap(),
            source.store.hash_kv(target).unwrap(),
            "HashKV at {target}"
        );
    }
}

#[test]
fn replay_keeps_the_sub_revisions_of_a_transaction() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let segments = [segment_of(&source.store, snap + 1, source.end, &[(9, 300)])];
    let mut contents = source.snapshot.clone();
    replay(&mut contents, &segments, snap + 2).unwrap();
    let mut subs: Vec<(Vec<u8>, i64)> = contents
        .history
        .iter()
        .filter(|change| change.main == snap + 2)
        .map(|change| (change.key.clone(), change.sub))
        .collect();
    subs.sort_by_key(|(_, sub)| *sub);
    assert_eq!(
        subs,
        [(b"t1".to_vec(), 0), (b"t2".to_vec(), 1), (b"a".to_vec(), 2)]
    );
}

#[test]
fn replay_grants_a_lease_granted_after_the_snapshot_with_its_recorded_ttl() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let with_ttl = [segment_of(&source.store, snap + 1, source.end, &[(9, 300)])];
    let mut contents = source.snapshot.clone();
    let replayed = replay(&mut contents, &with_ttl, source.middle).unwrap();
    assert_eq!(replayed.leases_granted, [(9, 300)]);
    let (_dir, store) = restored(contents);
    let lease = store.lease(9).unwrap().expect("lease 9 granted");
    assert_eq!((lease.ttl, lease.keys), (300, vec![b"leased/new".to_vec()]));
    assert_eq!(
        store.lease(7).unwrap().unwrap().keys,
        [b"leased/old".to_vec()]
    );

    // A TTL the writer never learnt: the lease is granted expired, for the leader to revoke.
    let without_ttl = [segment_of(&source.store, snap + 1, source.end, &[])];
    let mut contents = source.snapshot.clone();
    let replayed = replay(&mut contents, &without_ttl, source.middle).unwrap();
    assert_eq!(replayed.leases_granted, [(9, 0)]);
}

#[test]
fn replay_refuses_a_gap_and_changes_nothing() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let segments = [
        segment_of(&source.store, snap + 1, snap + 2, &[]),
        segment_of(&source.store, snap + 4, source.end, &[(9, 300)]),
    ];
    let mut contents = source.snapshot.clone();
    let error = replay(&mut contents, &segments, source.end).unwrap_err();
    assert!(
        matches!(&error, StorageError::SegmentsIncomplete(m) if m.contains(&format!("revisions {} to {}", snap + 3, snap + 3))),
        "{error}"
    );
    assert_eq!(contents, source.snapshot);
    // Up to the gap, the log is whole.
    replay(&mut contents, &segments, snap + 2).unwrap();

    let mut contents = source.snapshot.clone();
    let error = replay(&mut contents, &segments[..1], source.end).unwrap_err();
    assert!(
        matches!(error, StorageError::SegmentsIncomplete(_)),
        "{error}"
    );
    let error = replay(&mut source.snapshot.clone(), &segments, snap - 1).unwrap_err();
    assert!(
        error.to_string().contains("before the snapshot's revision"),
        "{error}"
    );
}

#[test]
fn replay_refuses_segments_of_another_history() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let mut segment = segment_of(&source.store, snap + 1, source.end, &[]);
    // "b" was deleted before the snapshot: its recreation cannot be version 2.
    segment.changes[0].put.as_mut().unwrap().version = 2;
    let mut contents = source.snapshot.clone();
    let error = replay(&mut contents, &[segment], source.end).unwrap_err();
    assert!(
        matches!(&error, StorageError::SegmentInvalid(m) if m.contains("\"b\"")),
        "{error}"
    );
}

#[test]
fn segment_round_trips_and_a_flipped_byte_is_refused() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let segment = segment_of(&source.store, snap + 1, source.end, &[(9, 300)]);
    let bytes = encode_segment(&segment).unwrap();
    assert_eq!(decode_segment(&bytes).unwrap(), segment);
    for at in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        let error = decode_segment(&damaged).unwrap_err();
        assert!(
            matches!(&error, StorageError::SegmentInvalid(m) if m.contains("SHA-256")),
            "byte {at}: {error}"
        );
    }
    assert!(decode_segment(&bytes[..bytes.len() - 5]).is_err());
    assert!(decode_segment(b"short").is_err());
}

#[test]
fn segment_missing_a_revision_is_refused() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let mut segment = segment_of(&source.store, snap + 1, source.end, &[]);
    segment.changes.retain(|change| change.revision != snap + 3);
    let error = encode_segment(&segment).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("where revision {} comes next", snap + 3)),
        "{error}"
    );
    let mut short = segment_of(&source.store, snap + 1, source.end, &[]);
    short.changes.retain(|change| change.revision != source.end);
    let error = encode_segment(&short).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("no change at revision {}", source.end)),
        "{error}"
    );
    let mut out_of_order = segment_of(&source.store, snap + 1, source.end, &[]);
    out_of_order.changes.swap(0, 3);
    assert!(encode_segment(&out_of_order).is_err());
}

#[test]
fn revision_at_time_is_the_last_seen_by_then() {
    let source = source();
    let snap = source.snapshot.current_revision;
    let mut segment = segment_of(&source.store, snap + 1, source.end, &[]);
    segment.seen = vec![
        RevisionSeen {
            revision: snap + 2,
            unix_millis: 100,
        },
        RevisionSeen {
            revision: source.end,
            unix_millis: 200,
        },
    ];
    let segments = [segment];
    assert_eq!(revision_at_time(&segments, 99), None);
    assert_eq!(revision_at_time(&segments, 150), Some(snap + 2));
    assert_eq!(revision_at_time(&segments, 200), Some(source.end));
}
