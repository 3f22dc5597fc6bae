//! Behaviour of the MVCC store, rule by rule, against what etcd answers.

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbEvent, PbKeyValue, PbPutRequest, PbRangeRequest, PbRangeResponse,
    PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use redb::{ReadableDatabase, ReadableTableMetadata};
use tempfile::TempDir;

use super::tables::{LEGACY_HISTORY, LEGACY_LATEST, REVS, VALUES};
use super::*;

// ---- helpers ---------------------------------------------------------------------------------

fn open_store() -> (TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("member/kv.redb")).unwrap();
    (dir, store)
}

/// Applies one batch and commits it (not durably), returning the batch's result.
fn apply<T>(store: &MvccStore, body: impl FnOnce(&mut MvccWrite) -> Result<T>) -> Result<T> {
    let mut batch = store.begin_write()?;
    let out = body(&mut batch)?;
    batch.commit(false)?;
    Ok(out)
}

fn put_req(key: &str, value: &str) -> PbPutRequest {
    PbPutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Puts `key = value` in its own batch and returns the new revision.
fn put(store: &MvccStore, key: &str, value: &str) -> i64 {
    let resp = apply(store, |w| w.put(&put_req(key, value))).unwrap();
    resp.header.unwrap().revision
}

fn put_with_lease(store: &MvccStore, key: &str, value: &str, lease: i64) -> Result<i64> {
    let req = PbPutRequest {
        lease,
        ..put_req(key, value)
    };
    Ok(apply(store, |w| w.put(&req))?.header.unwrap().revision)
}

fn delete(store: &MvccStore, key: &str, range_end: &str) -> i64 {
    let req = PbDeleteRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    };
    apply(store, |w| w.delete_range(&req)).unwrap().deleted
}

fn range_req(key: &str, range_end: &str) -> PbRangeRequest {
    PbRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

fn range(store: &MvccStore, req: PbRangeRequest) -> PbRangeResponse {
    store.range(&req).unwrap()
}

fn get(store: &MvccStore, key: &str, revision: i64) -> Option<PbKeyValue> {
    let resp = range(
        store,
        PbRangeRequest {
            revision,
            ..range_req(key, "")
        },
    );
    assert!(resp.kvs.len() <= 1);
    resp.kvs.into_iter().next()
}

fn value_at(store: &MvccStore, key: &str, revision: i64) -> Option<String> {
    get(store, key, revision).map(|kv| String::from_utf8(kv.value).unwrap())
}

fn keys(kvs: &[PbKeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(key: &str, value: &str) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(put_req(key, value))),
    }
}

fn op_range(key: &str, range_end: &str) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(range_req(key, range_end))),
    }
}

fn op_delete(key: &str, range_end: &str) -> PbTxnRequestOp {
    let req = PbDeleteRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    };
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestDeleteRange(req)),
    }
}

fn op_txn(txn: PbTxnRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestTxn(txn)),
    }
}

fn compare(key: &str, range_end: &str, result: i32, target: PbTargetUnion) -> PbCompare {
    let target_code = match target {
        PbTargetUnion::Version(_) => compare_target::VERSION,
        PbTargetUnion::CreateRevision(_) => compare_target::CREATE,
        PbTargetUnion::ModRevision(_) => compare_target::MOD,
        PbTargetUnion::Value(_) => compare_target::VALUE,
        PbTargetUnion::Lease(_) => compare_target::LEASE,
    };
    PbCompare {
        result,
        target: target_code,
        key: key.into(),
        range_end: range_end.into(),
        target_union: Some(target),
    }
}

fn txn(store: &MvccStore, req: &PbTxnRequest) -> Result<PbTxnResponse> {
    apply(store, |w| w.txn(req))
}

fn range_response(resp: &PbTxnResponse, index: usize) -> &PbRangeResponse {
    match &resp.responses[index].response {
        Some(PbTxnOpResponse::ResponseRange(range)) => range,
        other => panic!("response {index} is not a range: {other:?}"),
    }
}

fn values_len(store: &MvccStore) -> u64 {
    store
        .db()
        .begin_read()
        .unwrap()
        .open_table(VALUES)
        .unwrap()
        .len()
        .unwrap()
}

fn history_len(store: &MvccStore) -> u64 {
    store
        .db()
        .begin_read()
        .unwrap()
        .open_table(REVS)
        .unwrap()
        .len()
        .unwrap()
}

#[test]
fn store_is_shareable_across_threads_and_a_batch_can_move_between_them() {
    fn shareable<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shareable::<MvccStore>();
    movable::<MvccWrite>();
}

// ---- revisions, put, delete ---------------------------------------------------------------------

#[test]
fn empty_store_is_at_revision_one_and_never_compacted() {
    let (_dir, store) = open_store();
    assert_eq!(store.current_revision().unwrap(), 1);
    assert_eq!(store.compact_revision().unwrap(), -1);
    let resp = range(&store, range_req("a", "\0"));
    assert_eq!(resp.header.unwrap().revision, 1);
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 0, false));
}

#[test]
fn put_increments_version_and_keeps_create_revision() {
    let (_dir, store) = open_store();
    assert_eq!(put(&store, "k", "v1"), 2);
    assert_eq!(put(&store, "k", "v2"), 3);
    assert_eq!(put(&store, "other", "x"), 4);
    assert_eq!(put(&store, "k", "v3"), 5);
    let kv = get(&store, "k", 0).unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (2, 5, 3, &b"v3"[..])
    );
    assert_eq!(store.current_revision().unwrap(), 5);
}

#[test]
fn put_after_delete_starts_a_new_generation() {
    let (_dir, store) = open_store();
    put(&store, "k", "v1");
    put(&store, "k", "v2");
    assert_eq!(delete(&store, "k", ""), 1);
    let rev = put(&store, "k", "v3");
    let kv = get(&store, "k", 0).unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (rev, rev, 1)
    );
}

#[test]
fn range_at_old_revisions_sees_overwritten_and_deleted_keys() {
    let (_dir, store) = open_store();
    put(&store, "a", "a1"); // 2
    put(&store, "b", "b1"); // 3
    put(&store, "a", "a2"); // 4
    delete(&store, "b", ""); // 5
    put(&store, "c", "c1"); // 6
    delete(&store, "a", ""); // 7
    put(&store, "b", "b2"); // 8
    let cases: &[(i64, &[(&str, &str)])] = &[
        (1, &[]),
        (2, &[("a", "a1")]),
        (3, &[("a", "a1"), ("b", "b1")]),
        (4, &[("a", "a2"), ("b", "b1")]),
        (5, &[("a", "a2")]),
        (6, &[("a", "a2"), ("c", "c1")]),
        (7, &[("c", "c1")]),
        (8, &[("b", "b2"), ("c", "c1")]),
        (0, &[("b", "b2"), ("c", "c1")]),
    ];
    for &(revision, want) in cases {
        let resp = range(
            &store,
            PbRangeRequest {
                revision,
                ..range_req("a", "\0")
            },
        );
        let got: Vec<(String, String)> = resp
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.clone()).unwrap(),
                    String::from_utf8(kv.value.clone()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want, "range at revision {revision}");
        assert_eq!(
            resp.count,
            want.len() as i64,
            "count at revision {revision}"
        );
        assert_eq!(
            resp.header.unwrap().revision,
            8,
            "header carries the current revision"
        );
        for (key, value) in &want {
            assert_eq!(
                value_at(&store, key, revision).as_deref(),
                Some(value.as_str())
            );
        }
    }
    // Versions at an old revision are the versions of then.
    let a_at_4 = get(&store, "a", 4).unwrap();
    assert_eq!(
        (a_at_4.create_revision, a_at_4.mod_revision, a_at_4.version),
        (2, 4, 2)
    );
}

#[test]
fn single_key_prefix_and_from_key_ranges() {
    let (_dir, store) = open_store();
    for key in ["a", "foo", "foo/1", "foo/2", "fop", "z"] {
        put(&store, key, "v");
    }
    let cases: &[(&str, &str, &[&str])] = &[
        ("foo", "", &["foo"]),
        ("fo", "", &[]),
        ("foo/", "foo0", &["foo/1", "foo/2"]),
        ("foo", "fop", &["foo", "foo/1", "foo/2"]),
        ("foo", "\0", &["foo", "foo/1", "foo/2", "fop", "z"]),
        ("\0", "\0", &["a", "foo", "foo/1", "foo/2", "fop", "z"]),
        ("z", "a", &[]),
    ];
    for &(key, end, want) in cases {
        for revision in [0, store.current_revision().unwrap() - 1] {
            let resp = range(
                &store,
                PbRangeRequest {
                    revision,
                    ..range_req(key, end)
                },
            );
            let want: Vec<&str> = if revision == 0 {
                want.to_vec()
            } else {
                want.iter().copied().filter(|k| *k != "z").collect()
            };
            assert_eq!(
                keys(&resp.kvs),
                want,
                "range {key:?}..{end:?} at {revision}"
            );
        }
    }
}

#[test]
fn limit_sets_more_and_count_counts_the_whole_range() {
    let (_dir, store) = open_store();
    for key in ["a", "b", "c", "d", "e"] {
        put(&store, key, "v");
    }
    let old = store.current_revision().unwrap();
    put(&store, "f", "v");
    // (limit, revision, keys returned, more, count)
    let cases: &[(i64, i64, &[&str], bool, i64)] = &[
        (0, 0, &["a", "b", "c", "d", "e", "f"], false, 6),
        (2, 0, &["a", "b"], true, 6),
        (5, 0, &["a", "b", "c", "d", "e"], true, 6),
        (6, 0, &["a", "b", "c", "d", "e", "f"], false, 6),
        (10, 0, &["a", "b", "c", "d", "e", "f"], false, 6),
        (2, old, &["a", "b"], true, 5),
        (5, old, &["a", "b", "c", "d", "e"], false, 5),
    ];
    for &(limit, revision, want, more, count) in cases {
        let resp = range(
            &store,
            PbRangeRequest {
                limit,
                revision,
                ..range_req("a", "\0")
            },
        );
        assert_eq!(keys(&resp.kvs), want, "limit {limit} at {revision}");
        assert_eq!(
            (resp.more, resp.count),
            (more, count),
            "limit {limit} at {revision}"
        );
    }
}

#[test]
fn sort_by_every_target_and_order() {
    let (_dir, store) = open_store();
    put(&store, "b", "2"); // create 2
    put(&store, "a", "3"); // create 3
    put(&store, "c", "1"); // create 4
    put(&store, "a", "3"); // a: version 2, mod 5
    put(&store, "a", "3"); // a: version 3, mod 6
    put(&store, "b", "2"); // b: version 2, mod 7
    use sort_order::*;
    use sort_target::*;
    let cases: &[(i32, i32, &[&str])] = &[
        (NONE, KEY, &["a", "b", "c"]),
        (ASCEND, KEY, &["a", "b", "c"]),
        (DESCEND, KEY, &["c", "b", "a"]),
        // NONE with a target other than KEY sorts ascending, as etcd does.
        (NONE, VERSION, &["c", "b", "a"]),
        (ASCEND, VERSION, &["c", "b", "a"]),
        (DESCEND, VERSION, &["a", "b", "c"]),
        (ASCEND, CREATE, &["b", "a", "c"]),
        (DESCEND, CREATE, &["c", "a", "b"]),
        (ASCEND, MOD, &["c", "a", "b"]),
        (DESCEND, MOD, &["b", "a", "c"]),
        (ASCEND, VALUE, &["c", "b", "a"]),
        (DESCEND, VALUE, &["a", "b", "c"]),
    ];
    for &(sort_order, sort_target, want) in cases {
        let req = PbRangeRequest {
            sort_order,
            sort_target,
            ..range_req("a", "\0")
        };
        assert_eq!(
            keys(&range(&store, req).kvs),
            want,
            "order {sort_order} target {sort_target}"
        );
    }
    // The limit applies after sorting.
    let req = PbRangeRequest {
        sort_order: DESCEND,
        sort_target: KEY,
        limit: 1,
        ..range_req("a", "\0")
    };
    let resp = range(&store, req);
    assert_eq!(
        (keys(&resp.kvs), resp.more, resp.count),
        (vec!["c".to_string()], true, 3)
    );
}

#[test]
fn revision_filters_apply_before_the_limit_and_leave_count_alone() {
    let (_dir, store) = open_store();
    for key in ["a", "b", "c", "d"] {
        put(&store, key, "v"); // a=2, b=3, c=4, d=5
    }
    put(&store, "a", "v2"); // a: create 2, mod 6
    let base = range_req("a", "\0");
    let cases: &[(PbRangeRequest, &[&str], bool)] = &[
        (
            PbRangeRequest {
                min_mod_revision: 4,
                ..base.clone()
            },
            &["a", "c", "d"],
            false,
        ),
        (
            PbRangeRequest {
                max_mod_revision: 4,
                ..base.clone()
            },
            &["b", "c"],
            false,
        ),
        (
            PbRangeRequest {
                min_create_revision: 3,
                ..base.clone()
            },
            &["b", "c", "d"],
            false,
        ),
        (
            PbRangeRequest {
                max_create_revision: 3,
                ..base.clone()
            },
            &["a", "b"],
            false,
        ),
        (
            PbRangeRequest {
                min_mod_revision: 3,
                max_mod_revision: 5,
                ..base.clone()
            },
            &["b", "c", "d"],
            false,
        ),
        (
            PbRangeRequest {
                min_mod_revision: 4,
                limit: 2,
                ..base.clone()
            },
            &["a", "c"],
            true,
        ),
    ];
    for (req, want, more) in cases {
        let resp = range(&store, req.clone());
        assert_eq!(keys(&resp.kvs), *want, "{req:?}");
        assert_eq!(resp.more, *more, "{req:?}");
        assert_eq!(resp.count, 4, "count ignores filters: {req:?}");
    }
}

#[test]
fn keys_only_drops_values_and_count_only_drops_kvs() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    put(&store, "b", "2");
    let resp = range(
        &store,
        PbRangeRequest {
            keys_only: true,
            ..range_req("a", "\0")
        },
    );
    assert_eq!(keys(&resp.kvs), ["a", "b"]);
    assert!(resp
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    let resp = range(
        &store,
        PbRangeRequest {
            count_only: true,
            limit: 1,
            ..range_req("a", "\0")
        },
    );
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (0, 2, false));
}

#[test]
fn range_at_future_or_compacted_revision_fails() {
    let (_dir, store) = open_store();
    for i in 0..5 {
        put(&store, "k", &i.to_string()); // 2..=6
    }
    apply(&store, |w| w.compact(4)).unwrap();
    let at = |revision| {
        store.range(&PbRangeRequest {
            revision,
            ..range_req("k", "")
        })
    };
    assert!(matches!(at(7), Err(Error::FutureRev)));
    assert!(matches!(at(3), Err(Error::Compacted)));
    assert!(matches!(at(1), Err(Error::Compacted)));
    assert_eq!(at(4).unwrap().kvs[0].value, b"2");
    assert_eq!(at(6).unwrap().kvs[0].value, b"4");
    assert_eq!(at(0).unwrap().kvs[0].value, b"4");
}

#[test]
fn put_prev_kv_and_ignore_flags() {
    let (_dir, store) = open_store();
    apply(&store, |w| w.lease_grant(7, 60)).unwrap();
    put_with_lease(&store, "k", "v1", 7).unwrap();

    let req = PbPutRequest {
        prev_kv: true,
        ..put_req("k", "v2")
    };
    let resp = apply(&store, |w| w.put(&req)).unwrap();
    let prev = resp.prev_kv.unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.lease, prev.version),
        (&b"v1"[..], 7, 1)
    );
    assert_eq!(
        get(&store, "k", 0).unwrap().lease,
        0,
        "a put without lease detaches it"
    );

    put_with_lease(&store, "k", "v3", 7).unwrap();
    let req = PbPutRequest {
        ignore_value: true,
        ..put_req("k", "ignored")
    };
    apply(&store, |w| w.put(&req)).unwrap();
    let kv = get(&store, "k", 0).unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v3"[..], 0));

    put_with_lease(&store, "k", "v4", 7).unwrap();
    let req = PbPutRequest {
        ignore_lease: true,
        ..put_req("k", "v5")
    };
    apply(&store, |w| w.put(&req)).unwrap();
    let kv = get(&store, "k", 0).unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v5"[..], 7));

    let before = store.current_revision().unwrap();
    for req in [
        PbPutRequest {
            ignore_value: true,
            ..put_req("missing", "")
        },
        PbPutRequest {
            ignore_lease: true,
            ..put_req("missing", "v")
        },
    ] {
        assert!(matches!(
            apply(&store, |w| w.put(&req)),
            Err(Error::KeyNotFound)
        ));
    }
    let req = PbPutRequest {
        prev_kv: true,
        ..put_req("new", "v")
    };
    assert_eq!(apply(&store, |w| w.put(&req)).unwrap().prev_kv, None);
    assert_eq!(store.current_revision().unwrap(), before + 1);
}

#[test]
fn put_with_unknown_lease_fails_and_writes_nothing() {
    let (_dir, store) = open_store();
    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("a", "1")).unwrap();
    let req = PbPutRequest {
        lease: 99,
        ..put_req("b", "2")
    };
    assert!(matches!(batch.put(&req), Err(Error::LeaseNotFound)));
    // The batch stays usable and the failed request consumed no revision.
    batch.put(&put_req("c", "3")).unwrap();
    assert_eq!(batch.revision(), 3);
    batch.commit(false).unwrap();
    assert_eq!(keys(&range(&store, range_req("a", "\0")).kvs), ["a", "c"]);
}

#[test]
fn put_moves_a_key_from_its_old_lease_to_the_new_one() {
    let (_dir, store) = open_store();
    apply(&store, |w| {
        w.lease_grant(1, 10)?;
        w.lease_grant(2, 20)
    })
    .unwrap();
    put_with_lease(&store, "k", "v", 1).unwrap();
    put_with_lease(&store, "j", "v", 1).unwrap();
    put_with_lease(&store, "k", "v", 2).unwrap();
    assert_eq!(store.lease(1).unwrap().unwrap().keys, vec![b"j".to_vec()]);
    assert_eq!(store.lease(2).unwrap().unwrap().keys, vec![b"k".to_vec()]);
    delete(&store, "j", "");
    assert!(
        store.lease(1).unwrap().unwrap().keys.is_empty(),
        "a deleted key leaves its lease"
    );
}

#[test]
fn delete_range_returns_prev_kvs_and_deleting_nothing_keeps_the_revision() {
    let (_dir, store) = open_store();
    for key in ["a", "b", "c"] {
        put(&store, key, key);
    }
    let req = PbDeleteRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: true,
    };
    let resp = apply(&store, |w| w.delete_range(&req)).unwrap();
    assert_eq!(
        (resp.deleted, keys(&resp.prev_kvs)),
        (2, vec!["a".into(), "b".into()])
    );
    assert_eq!(resp.header.unwrap().revision, 5);
    assert_eq!(keys(&range(&store, range_req("a", "\0")).kvs), ["c"]);

    let req = PbDeleteRequest {
        key: "a".into(),
        range_end: "c".into(),
        prev_kv: true,
    };
    let resp = apply(&store, |w| w.delete_range(&req)).unwrap();
    assert_eq!((resp.deleted, resp.prev_kvs.len()), (0, 0));
    assert_eq!(resp.header.unwrap().revision, 5);
    assert_eq!(store.current_revision().unwrap(), 5);
}

// ---- txn --------------------------------------------------------------------------------------

#[test]
fn txn_compares_every_target_with_every_result() {
    let (_dir, store) = open_store();
    apply(&store, |w| w.lease_grant(5, 60)).unwrap();
    put(&store, "k", "m"); // create 2 (a lease grant takes no revision)
    put_with_lease(&store, "k", "m", 5).unwrap(); // mod 3, version 2, lease 5
    use compare_result::*;
    use PbTargetUnion::*;
    let cases: Vec<(PbTargetUnion, i32, bool)> = vec![
        (Value(b"m".to_vec()), EQUAL, true),
        (Value(b"m".to_vec()), NOT_EQUAL, false),
        (Value(b"a".to_vec()), GREATER, true),
        (Value(b"z".to_vec()), LESS, true),
        (Value(b"z".to_vec()), GREATER, false),
        (Version(2), EQUAL, true),
        (Version(1), GREATER, true),
        (Version(2), LESS, false),
        (Version(3), LESS, true),
        (CreateRevision(2), EQUAL, true),
        (CreateRevision(2), NOT_EQUAL, false),
        (CreateRevision(3), LESS, true),
        (ModRevision(3), EQUAL, true),
        (ModRevision(2), GREATER, true),
        (ModRevision(3), GREATER, false),
        (Lease(5), EQUAL, true),
        (Lease(0), GREATER, true),
        (Lease(6), LESS, true),
    ];
    for (target, result, holds) in cases {
        let req = PbTxnRequest {
            compare: vec![compare("k", "", result, target.clone())],
            ..Default::default()
        };
        assert_eq!(
            txn(&store, &req).unwrap().succeeded,
            holds,
            "{target:?} result {result}"
        );
    }
}

#[test]
fn txn_compare_on_missing_keys_uses_zero_values_but_value_compares_fail() {
    let (_dir, store) = open_store();
    use compare_result::*;
    use PbTargetUnion::*;
    let cases: Vec<(PbTargetUnion, i32, bool)> = vec![
        (CreateRevision(0), EQUAL, true),
        (Version(0), EQUAL, true),
        (ModRevision(0), EQUAL, true),
        (Lease(0), EQUAL, true),
        (Version(0), GREATER, false),
        (Value(Vec::new()), EQUAL, false),
        (Value(Vec::new()), NOT_EQUAL, false),
    ];
    for (target, result, holds) in cases {
        let req = PbTxnRequest {
            compare: vec![compare("missing", "", result, target.clone())],
            ..Default::default()
        };
        assert_eq!(
            txn(&store, &req).unwrap().succeeded,
            holds,
            "{target:?} result {result}"
        );
    }
}

#[test]
fn txn_compare_with_range_end_must_hold_for_every_key() {
    let (_dir, store) = open_store();
    put(&store, "p/a", "1");
    put(&store, "p/b", "1");
    put(&store, "p/b", "1"); // p/b version 2
    use compare_result::*;
    let cases: &[(&str, &str, i32, i64, bool)] = &[
        ("p/", "p0", GREATER, 0, true),
        ("p/", "p0", EQUAL, 1, false),
        ("p/", "p0", LESS, 3, true),
        ("p/", "p/b", EQUAL, 1, true),
        ("p/", "\0", GREATER, 0, true),
        ("q/", "q0", EQUAL, 0, true),
    ];
    for &(key, end, result, version, holds) in cases {
        let req = PbTxnRequest {
            compare: vec![compare(key, end, result, PbTargetUnion::Version(version))],
            ..Default::default()
        };
        assert_eq!(
            txn(&store, &req).unwrap().succeeded,
            holds,
            "{key}..{end} {result} {version}"
        );
    }
}

#[test]
fn txn_runs_the_chosen_branch_as_one_revision_with_sub_revisions() {
    let (_dir, store) = open_store();
    put(&store, "x", "old"); // 2
    let req = PbTxnRequest {
        compare: vec![compare(
            "x",
            "",
            compare_result::EQUAL,
            PbTargetUnion::Value(b"old".to_vec()),
        )],
        success: vec![
            op_put("a", "1"),
            op_put("b", "2"),
            op_delete("x", ""),
            op_range("a", "c"),
        ],
        failure: vec![op_put("failed", "1")],
    };
    let mut batch = store.begin_write().unwrap();
    let resp = batch.txn(&req).unwrap();
    let events = batch.commit(false).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(store.current_revision().unwrap(), 3);
    // The range inside the txn sees the txn's own puts.
    assert_eq!(keys(&range_response(&resp, 3).kvs), ["a", "b"]);
    assert_eq!(range_response(&resp, 3).header.unwrap().revision, 3);
    let revisions: Vec<(i32, String, i64)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [
            (event_type::PUT, "a".into(), 3),
            (event_type::PUT, "b".into(), 3),
            (event_type::DELETE, "x".into(), 3)
        ]
    );
    assert!(get(&store, "failed", 0).is_none());
    // Sub revisions order the changes of one revision in history too.
    let replay = store.events_since(3).unwrap();
    assert_eq!(replay, events);
}

#[test]
fn txn_without_writes_keeps_the_revision() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    let req = PbTxnRequest {
        compare: vec![compare(
            "a",
            "",
            compare_result::EQUAL,
            PbTargetUnion::Version(5),
        )],
        success: vec![op_put("a", "2")],
        failure: vec![op_range("a", ""), op_delete("missing", "")],
    };
    let resp = txn(&store, &req).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 2);
    assert_eq!(store.current_revision().unwrap(), 2);
    assert_eq!(range_response(&resp, 0).kvs[0].value, b"1");
}

#[test]
fn nested_txn_compares_see_the_state_before_the_outer_txn() {
    let (_dir, store) = open_store();
    put(&store, "flag", "off"); // 2
                                // The outer txn flips the flag, then a nested txn tests it: etcd decides every branch
                                // before running any op, so the nested compare still sees "off".
    let nested = PbTxnRequest {
        compare: vec![compare(
            "flag",
            "",
            compare_result::EQUAL,
            PbTargetUnion::Value(b"off".to_vec()),
        )],
        success: vec![op_put("nested", "saw-off"), op_range("flag", "")],
        failure: vec![op_put("nested", "saw-on")],
    };
    let req = PbTxnRequest {
        compare: vec![],
        success: vec![op_put("flag", "on"), op_txn(nested)],
        failure: vec![],
    };
    let resp = txn(&store, &req).unwrap();
    assert_eq!(value_at(&store, "nested", 0).as_deref(), Some("saw-off"));
    let nested_resp = match &resp.responses[1].response {
        Some(PbTxnOpResponse::ResponseTxn(nested)) => nested,
        other => panic!("not a txn response: {other:?}"),
    };
    assert!(nested_resp.succeeded);
    // Ops of the nested txn do see the earlier writes.
    assert_eq!(range_response(nested_resp, 1).kvs[0].value, b"on");
    assert_eq!(nested_resp.header.unwrap().revision, 3);
    assert_eq!(store.current_revision().unwrap(), 3);
    let flag = get(&store, "flag", 0).unwrap();
    let nested_kv = get(&store, "nested", 0).unwrap();
    assert_eq!((flag.mod_revision, nested_kv.mod_revision), (3, 3));
}

#[test]
fn txn_whose_checks_fail_writes_nothing() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    let with_lease = PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            lease: 42,
            ..put_req("b", "1")
        })),
    };
    let future_read = PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(PbRangeRequest {
            revision: 100,
            ..range_req("a", "")
        })),
    };
    let ignore_deleted = PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            ignore_value: true,
            ..put_req("a", "")
        })),
    };
    type IsExpected = fn(&Error) -> bool;
    let cases: Vec<(Vec<PbTxnRequestOp>, IsExpected)> = vec![
        (vec![op_put("c", "1"), with_lease], |e| {
            matches!(e, Error::LeaseNotFound)
        }),
        (vec![op_put("c", "1"), future_read], |e| {
            matches!(e, Error::FutureRev)
        }),
        // The put's key is deleted by an earlier op of the same txn.
        (vec![op_delete("a", ""), ignore_deleted], |e| {
            matches!(e, Error::KeyNotFound)
        }),
        (
            vec![
                op_txn(PbTxnRequest {
                    success: vec![op_put("c", "1"), op_put("d", "")],
                    ..Default::default()
                }),
                {
                    PbTxnRequestOp {
                        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                            ignore_lease: true,
                            ..put_req("e", "")
                        })),
                    }
                },
            ],
            |e| matches!(e, Error::KeyNotFound),
        ),
    ];
    for (ops, is_expected) in cases {
        let req = PbTxnRequest {
            success: ops,
            ..Default::default()
        };
        let err = txn(&store, &req).unwrap_err();
        assert!(is_expected(&err), "unexpected {err:?}");
        assert_eq!(store.current_revision().unwrap(), 2);
        assert_eq!(keys(&range(&store, range_req("\0", "\0")).kvs), ["a"]);
    }
    // A key put earlier in the same txn satisfies ignore_value.
    let req = PbTxnRequest {
        success: vec![
            op_put("new", "v"),
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    ignore_value: true,
                    ..put_req("new", "")
                })),
            },
        ],
        ..Default::default()
    };
    txn(&store, &req).unwrap();
    let kv = get(&store, "new", 0).unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v"[..], 2));
}

#[test]
fn txn_ops_see_deletes_and_repeated_puts_of_the_same_txn() {
    let (_dir, store) = open_store();
    put(&store, "a", "0"); // 2
    put(&store, "b", "0"); // 3
    let req = PbTxnRequest {
        success: vec![
            op_delete("a", ""),
            op_range("a", "c"),
            op_put("b", "1"),
            op_put("b", "2"),
            op_range("b", ""),
        ],
        ..Default::default()
    };
    let mut batch = store.begin_write().unwrap();
    let resp = batch.txn(&req).unwrap();
    let events = batch.commit(false).unwrap();
    assert_eq!(keys(&range_response(&resp, 1).kvs), ["b"]);
    let b = &range_response(&resp, 4).kvs[0];
    assert_eq!(
        (
            b.value.as_slice(),
            b.version,
            b.mod_revision,
            b.create_revision
        ),
        (&b"2"[..], 3, 4, 3)
    );
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2].prev_kv.as_ref().unwrap().value,
        b"1",
        "prev_kv of the second put"
    );
    assert_eq!(store.events_since(4).unwrap(), events);
    // An old revision still reads the state before the txn.
    assert_eq!(value_at(&store, "a", 3).as_deref(), Some("0"));
    assert_eq!(value_at(&store, "b", 3).as_deref(), Some("0"));
}

#[test]
fn events_between_stops_at_the_requested_and_the_current_revision() {
    let (_dir, store) = open_store();
    for value in ["1", "2", "3"] {
        put(&store, "k", value); // 2, 3, 4
    }
    let mod_revisions = |events: Vec<PbEvent>| -> Vec<i64> {
        events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    };
    assert_eq!(mod_revisions(store.events_between(3, 3).unwrap()), [3]);
    assert_eq!(
        mod_revisions(store.events_between(0, 100).unwrap()),
        [2, 3, 4]
    );
    assert_eq!(
        mod_revisions(store.events_since(5).unwrap()),
        Vec::<i64>::new()
    );
    assert_eq!(
        mod_revisions(store.events_between(4, 2).unwrap()),
        Vec::<i64>::new()
    );
}

// ---- compaction -------------------------------------------------------------------------------

#[test]
fn compaction_rejects_old_and_future_revisions() {
    let (_dir, store) = open_store();
    put(&store, "k", "1"); // 2
    put(&store, "k", "2"); // 3
    assert!(matches!(
        apply(&store, |w| w.compact(4)),
        Err(Error::FutureRev)
    ));
    let resp = apply(&store, |w| w.compact(3)).unwrap();
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(store.compact_revision().unwrap(), 3);
    assert!(matches!(
        apply(&store, |w| w.compact(3)),
        Err(Error::Compacted)
    ));
    assert!(matches!(
        apply(&store, |w| w.compact(2)),
        Err(Error::Compacted)
    ));
    assert_eq!(
        store.current_revision().unwrap(),
        3,
        "compaction takes no revision"
    );
}

#[test]
fn compaction_keeps_each_keys_version_at_the_revision_unless_deleted() {
    let (_dir, store) = open_store();
    put(&store, "a", "a1"); // 2
    put(&store, "a", "a2"); // 3
    put(&store, "b", "b1"); // 4
    delete(&store, "b", ""); // 5
    put(&store, "c", "c1"); // 6
    put(&store, "c", "c2"); // 7
    put(&store, "a", "a3"); // 8
    assert_eq!(history_len(&store), 7);
    apply(&store, |w| w.compact(7)).unwrap();
    // a keeps a2 (live at 7) and a3; b's deletion and its version go; c keeps c2 (at 7 itself).
    assert_eq!(history_len(&store), 3);
    assert_eq!(
        keys(
            &range(
                &store,
                PbRangeRequest {
                    revision: 7,
                    ..range_req("a", "\0")
                }
            )
            .kvs
        ),
        ["a", "c"]
    );
    assert_eq!(value_at(&store, "a", 7).as_deref(), Some("a2"));
    assert_eq!(value_at(&store, "c", 7).as_deref(), Some("c2"));
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("a3"));
    let kv = get(&store, "a", 0).unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (2, 3),
        "compaction keeps versions intact"
    );
    assert!(matches!(store.events_since(6), Err(Error::Compacted)));
    let replay = store.events_since(7).unwrap();
    let replayed: Vec<(String, i64)> = replay
        .iter()
        .map(|e| {
            (
                String::from_utf8(e.kv.as_ref().unwrap().key.clone()).unwrap(),
                e.kv.as_ref().unwrap().mod_revision,
            )
        })
        .collect();
    assert_eq!(replayed, [("c".to_string(), 7), ("a".to_string(), 8)]);
    assert_eq!(replay[1].prev_kv.as_ref().unwrap().value, b"a2");
    // Compacting again removes a2, now superseded before the new point.
    put(&store, "d", "d1"); // 9
    apply(&store, |w| w.compact(9)).unwrap();
    assert_eq!(history_len(&store), 3);
    assert_eq!(value_at(&store, "a", 9).as_deref(), Some("a3"));
}

// ---- leases -----------------------------------------------------------------------------------

#[test]
fn lease_grant_twice_is_lease_exists_and_revoke_of_unknown_is_lease_not_found() {
    let (_dir, store) = open_store();
    apply(&store, |w| w.lease_grant(1, 30)).unwrap();
    assert!(matches!(
        apply(&store, |w| w.lease_grant(1, 30)),
        Err(Error::LeaseExists)
    ));
    assert!(matches!(
        apply(&store, |w| w.lease_revoke(2)),
        Err(Error::LeaseNotFound)
    ));
    assert_eq!(
        store.leases().unwrap(),
        [LeaseInfo {
            id: 1,
            ttl: 30,
            keys: vec![]
        }]
    );
    // Revoking a lease without keys takes no revision.
    assert_eq!(apply(&store, |w| w.lease_revoke(1)).unwrap(), 1);
    assert!(store.leases().unwrap().is_empty());
    assert_eq!(store.lease(1).unwrap(), None);
}

#[test]
fn lease_revoke_deletes_attached_keys_in_one_revision() {
    let (_dir, store) = open_store();
    apply(&store, |w| {
        w.lease_grant(9, 10)?;
        w.lease_grant(10, 10)
    })
    .unwrap();
    for key in ["z", "m", "a"] {
        put_with_lease(&store, key, "v", 9).unwrap();
    }
    put_with_lease(&store, "other", "v", 10).unwrap();
    put(&store, "free", "v");
    let info = store.lease(9).unwrap().unwrap();
    assert_eq!(info.keys, [b"a".to_vec(), b"m".to_vec(), b"z".to_vec()]);

    let mut batch = store.begin_write().unwrap();
    let revision = batch.lease_revoke(9).unwrap();
    let events = batch.commit(false).unwrap();
    assert_eq!(revision, 7);
    assert_eq!(store.current_revision().unwrap(), 7);
    let deleted: Vec<(i32, String, i64)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            (event_type::DELETE, "a".into(), 7),
            (event_type::DELETE, "m".into(), 7),
            (event_type::DELETE, "z".into(), 7)
        ]
    );
    assert_eq!(
        keys(&range(&store, range_req("\0", "\0")).kvs),
        ["free", "other"]
    );
    assert_eq!(store.lease(9).unwrap(), None);
    assert_eq!(store.lease(10).unwrap().unwrap().keys, [b"other".to_vec()]);
}

// ---- batches, events, metadata, durability --------------------------------------------------

#[test]
fn batch_returns_its_events_in_revision_order_with_prev_kv() {
    let (_dir, store) = open_store();
    put(&store, "a", "0");
    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("a", "1")).unwrap();
    batch.put(&put_req("b", "1")).unwrap();
    batch
        .delete_range(&PbDeleteRequest {
            key: "a".into(),
            ..Default::default()
        })
        .unwrap();
    batch.set_meta("applied", b"7").unwrap();
    let events = batch.commit(false).unwrap();
    let kv = |key: &str, value: &str, create, modr, version| PbKeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    };
    let want = vec![
        PbEvent {
            r#type: event_type::PUT,
            kv: Some(kv("a", "1", 2, 3, 2)),
            prev_kv: Some(kv("a", "0", 2, 2, 1)),
        },
        PbEvent {
            r#type: event_type::PUT,
            kv: Some(kv("b", "1", 4, 4, 1)),
            prev_kv: None,
        },
        PbEvent {
            r#type: event_type::DELETE,
            kv: Some(PbKeyValue {
                key: "a".into(),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: Some(kv("a", "1", 2, 3, 2)),
        },
    ];
    assert_eq!(events, want);
    assert_eq!(
        store.events_since(3).unwrap(),
        want,
        "replay gives the same events"
    );
    assert_eq!(store.events_between(4, 4).unwrap(), want[1..2]);
    assert_eq!(store.meta("applied").unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(store.meta("absent").unwrap(), None);
}

#[test]
fn dropped_batch_changes_nothing() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("a", "2")).unwrap();
    batch.set_meta("applied", b"9").unwrap();
    drop(batch);
    assert_eq!(store.current_revision().unwrap(), 2);
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("1"));
    assert_eq!(store.meta("applied").unwrap(), None);
}

#[test]
fn reopen_keeps_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        put(&store, "a", "1");
        put(&store, "a", "2");
        let mut batch = store.begin_write().unwrap();
        batch.set_meta("applied", b"2").unwrap();
        batch.compact(2).unwrap();
        batch.commit(true).unwrap();
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(store.current_revision().unwrap(), 3);
    assert_eq!(store.compact_revision().unwrap(), 2);
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("2"));
    assert_eq!(store.meta("applied").unwrap().as_deref(), Some(&b"2"[..]));
}

/// redb makes pending non-durable commits durable when a database is closed cleanly, so a crash
/// is simulated by copying the file while the database is still open: the copy is what the disk
/// holds if the process dies at that moment.
#[test]
fn crash_loses_non_durable_commits_but_keeps_durable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let crashed = dir.path().join("crashed.redb");
    let store = MvccStore::open(&path).unwrap();

    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("durable", "1")).unwrap();
    batch.set_meta("applied", b"1").unwrap();
    batch.commit(true).unwrap();
    for i in 0..50 {
        let mut batch = store.begin_write().unwrap();
        batch.put(&put_req("volatile", &i.to_string())).unwrap();
        batch
            .set_meta("applied", (i + 2).to_string().as_bytes())
            .unwrap();
        batch.commit(false).unwrap();
    }
    assert_eq!(
        store.current_revision().unwrap(),
        52,
        "non-durable commits are visible"
    );
    std::fs::copy(&path, &crashed).unwrap();

    let recovered = MvccStore::open(&crashed).unwrap();
    assert_eq!(recovered.current_revision().unwrap(), 2);
    assert_eq!(value_at(&recovered, "durable", 0).as_deref(), Some("1"));
    assert_eq!(get(&recovered, "volatile", 0), None);
    assert_eq!(
        recovered.meta("applied").unwrap().as_deref(),
        Some(&b"1"[..])
    );

    // A durable commit (even an empty one) persists everything before it.
    drop(recovered);
    store.persist().unwrap();
    std::fs::copy(&path, &crashed).unwrap();
    let recovered = MvccStore::open(&crashed).unwrap();
    assert_eq!(recovered.current_revision().unwrap(), 52);
    assert_eq!(
        recovered.meta("applied").unwrap().as_deref(),
        Some(&b"51"[..])
    );
}

/// The other half of redb's contract: closing the database cleanly (dropping the last handle)
/// makes pending non-durable commits durable, so only a crash loses them.
#[test]
fn clean_close_keeps_non_durable_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        let mut batch = store.begin_write().unwrap();
        batch.put(&put_req("a", "1")).unwrap();
        batch.set_meta("applied", b"1").unwrap();
        batch.commit(false).unwrap();
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("1"));
    assert_eq!(store.meta("applied").unwrap().as_deref(), Some(&b"1"[..]));
}

// ---- snapshot and hash ------------------------------------------------------------------------

/// A store with history, a compaction, deletions, leases and metadata.
fn populated_store() -> (TempDir, MvccStore) {
    let (dir, store) = open_store();
    apply(&store, |w| {
        w.lease_grant(3, 30)?;
        w.lease_grant(4, 40)
    })
    .unwrap();
    put(&store, "a", "a1");
    put_with_lease(&store, "b", "b1", 3).unwrap();
    put(&store, "a", "a2");
    delete(&store, "a", "");
    put(&store, "c", "c1");
    apply(&store, |w| w.compact(4)).unwrap();
    put_with_lease(&store, "a", "a3", 3).unwrap();
    put(&store, "c", "c2");
    apply(&store, |w| w.set_meta("applied", b"term-2-index-17")).unwrap();
    (dir, store)
}

#[test]
fn snapshot_restores_history_leases_revisions_and_meta() {
    let (_dir, source) = populated_store();
    let snapshot = source.snapshot().unwrap();

    let (_dir2, target) = open_store();
    put(&target, "stale", "gone after restore");
    apply(&target, |w| w.lease_grant(99, 1)).unwrap();
    target.restore(&snapshot).unwrap();

    assert_eq!(
        target.current_revision().unwrap(),
        source.current_revision().unwrap()
    );
    assert_eq!(target.compact_revision().unwrap(), 4);
    for revision in 4..=source.current_revision().unwrap() {
        let req = PbRangeRequest {
            revision,
            ..range_req("\0", "\0")
        };
        assert_eq!(
            target.range(&req).unwrap(),
            source.range(&req).unwrap(),
            "at {revision}"
        );
    }
    assert!(matches!(
        target.range(&PbRangeRequest {
            revision: 3,
            ..range_req("a", "")
        }),
        Err(Error::Compacted)
    ));
    assert_eq!(target.leases().unwrap(), source.leases().unwrap());
    assert_eq!(
        target.lease(3).unwrap().unwrap().keys,
        [b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        target.meta("applied").unwrap(),
        source.meta("applied").unwrap()
    );
    assert_eq!(
        target.events_since(4).unwrap(),
        source.events_since(4).unwrap()
    );
    assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    assert_eq!(
        target.snapshot().unwrap(),
        snapshot,
        "a restored store dumps the same snapshot"
    );

    // The restored store keeps working where the source left off.
    let rev = put(&target, "a", "a4");
    assert_eq!(rev, source.current_revision().unwrap() + 1);
    let kv = get(&target, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.version, kv.lease), (7, 2, 0));
}

#[test]
fn restore_survives_reopen() {
    let (_dir, source) = populated_store();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    MvccStore::open(&path)
        .unwrap()
        .restore(&source.snapshot().unwrap())
        .unwrap();
    let reopened = MvccStore::open(&path).unwrap();
    assert_eq!(reopened.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    assert_eq!(
        reopened.current_revision().unwrap(),
        source.current_revision().unwrap()
    );
}

#[test]
fn restore_rejects_what_snapshot_did_not_write() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    let good = store.snapshot().unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut trailing = good.clone();
    trailing.push(0);
    let mut wrong_version = good.clone();
    // The header is the magic string (u64 length + bytes) followed by the u32 format version.
    let version_at = 8 + "ferrokv mvcc snapshot".len();
    wrong_version[version_at] = 2;
    for bad in [
        Vec::new(),
        b"not a snapshot at all".to_vec(),
        truncated,
        trailing,
        wrong_version,
    ] {
        assert!(
            matches!(store.restore(&bad), Err(Error::SnapshotInvalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        value_at(&store, "a", 0).as_deref(),
        Some("1"),
        "a rejected restore changes nothing"
    );
}

#[test]
fn hash_kv_is_equal_for_equal_history_and_differs_otherwise() {
    let (_d1, one) = populated_store();
    let (_d2, two) = populated_store();
    assert_eq!(one.hash_kv(0).unwrap(), two.hash_kv(0).unwrap());
    let (hash, compacted, revision) = one.hash_kv(0).unwrap();
    assert_eq!((compacted, revision), (4, one.current_revision().unwrap()));
    let (hash_at_5, _, rev) = one.hash_kv(5).unwrap();
    assert_eq!(rev, 5);
    assert_ne!(hash_at_5, hash);

    put(&one, "a", "x");
    put(&two, "a", "y");
    assert_ne!(one.hash_kv(0).unwrap().0, two.hash_kv(0).unwrap().0);
    assert_eq!(
        one.hash_kv(5).unwrap(),
        two.hash_kv(5).unwrap(),
        "history up to 5 is still equal"
    );
    assert!(matches!(one.hash_kv(100), Err(Error::FutureRev)));
    assert!(matches!(one.hash_kv(3), Err(Error::Compacted)));
}

// ---- throughput -------------------------------------------------------------------------------

/// Not a benchmark with a threshold: prints how fast the store applies small puts in Raft-sized
/// batches, and checks they all landed.
#[test]
fn apply_throughput_of_batched_puts() {
    const PUTS: usize = 100_000;
    const BATCH: usize = 64;
    let (_dir, store) = open_store();
    let value = vec![b'v'; 256];
    let started = std::time::Instant::now();
    let mut written = 0;
    while written < PUTS {
        let mut batch = store.begin_write().unwrap();
        for i in written..(written + BATCH).min(PUTS) {
            let req = PbPutRequest {
                key: format!("key/{i:08}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            };
            batch.put(&req).unwrap();
        }
        batch.set_meta("applied", &written.to_le_bytes()).unwrap();
        batch.commit(false).unwrap();
        written = (written + BATCH).min(PUTS);
    }
    store.persist().unwrap();
    let elapsed = started.elapsed();
    println!(
        "mvcc apply: {PUTS} puts of 256 bytes in batches of {BATCH}: {:.2?}, {:.0} puts/s, db {} MiB",
        elapsed,
        PUTS as f64 / elapsed.as_secs_f64(),
        store.db_size_bytes() / (1024 * 1024)
    );
    assert_eq!(store.current_revision().unwrap(), PUTS as i64 + 1);
    let resp = range(
        &store,
        PbRangeRequest {
            count_only: true,
            ..range_req("key/", "key0")
        },
    );
    assert_eq!(resp.count, PUTS as i64);
}

// ---- file size: compaction and defragment -----------------------------------------------------

/// Writes `rounds` versions of each of `keys` keys with `value_len`-byte values the way the
/// apply stage does: batches of 64 puts, most commits non-durable, every 16th durable.
fn load_versions(store: &MvccStore, keys: usize, rounds: usize, value_len: usize) {
    let mut batches = 0usize;
    for round in 0..rounds {
        let value = vec![b'a' + (round % 26) as u8; value_len];
        for chunk in (0..keys).collect::<Vec<_>>().chunks(64) {
            let mut batch = store.begin_write().unwrap();
            for &i in chunk {
                batch
                    .put(&PbPutRequest {
                        key: format!("key/{i:08}").into_bytes(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .unwrap();
            }
            batch.set_meta("applied", &batches.to_le_bytes()).unwrap();
            batches += 1;
            batch.commit(batches.is_multiple_of(16)).unwrap();
        }
    }
    store.persist().unwrap();
}

#[test]
fn defragment_after_compaction_shrinks_the_file_to_a_fresh_load_of_the_live_data() {
    const KEYS: usize = 2_000;
    const VALUE: usize = 1_000;
    let (_dir, store) = open_store();
    load_versions(&store, KEYS, 10, VALUE);
    let loaded = store.db_size_bytes();

    let current = store.current_revision().unwrap();
    apply(&store, |w| w.compact(current)).unwrap();
    store.defragment().unwrap();
    let defragmented = store.db_size_bytes();

    let (_fresh_dir, fresh) = open_store();
    load_versions(&fresh, KEYS, 1, VALUE);
    let fresh_size = fresh.db_size_bytes();
    let fresh_footprint = fresh.footprint().unwrap();
    let fresh_pages = fresh_footprint.allocated_pages * fresh_footprint.page_size;

    println!(
        "loaded {loaded} bytes, after compact + defragment {defragmented}, \
         fresh load {fresh_size} with {fresh_pages} in pages"
    );
    assert!(
        loaded > 5 * fresh_size,
        "ten versions of each key take at least five times the space of one ({loaded} vs {fresh_size})"
    );
    assert!(
        defragmented as f64 <= 1.2 * fresh_size as f64,
        "after compaction and defragment the file is {defragmented} bytes, a fresh load of the same values {fresh_size}"
    );
    assert!(
        defragmented as f64 <= 1.1 * fresh_pages as f64,
        "after compaction and defragment the file is {defragmented} bytes, the pages of a fresh load of the same values {fresh_pages}"
    );
    // Everything live is still there.
    let resp = range(
        &store,
        PbRangeRequest {
            count_only: true,
            ..range_req("key/", "key0")
        },
    );
    assert_eq!(resp.count, KEYS as i64);
    assert_eq!(
        get(&store, "key/00000007", 0).unwrap().value,
        vec![b'a' + 9; VALUE]
    );
}

#[test]
fn defragment_keeps_non_durable_commits_and_the_store_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let store = MvccStore::open(&path).unwrap();
    put(&store, "a", "1");
    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("b", "2")).unwrap();
    batch.set_meta("applied", b"2").unwrap();
    batch.commit(false).unwrap();
    store.defragment().unwrap();
    assert!(!defragment::copy_path(&path).exists());
    put(&store, "c", "3");
    assert_eq!(store.current_revision().unwrap(), 4);

    // What a crash right after the defragment leaves is the copy, with everything in it.
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    let recovered = MvccStore::open(&crashed).unwrap();
    assert_eq!(value_at(&recovered, "b", 0).as_deref(), Some("2"));
    assert_eq!(
        recovered.meta("applied").unwrap().as_deref(),
        Some(&b"2"[..])
    );
}

#[test]
fn open_removes_the_copy_an_interrupted_defragment_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        put(&store, "a", "1");
    }
    let copy = defragment::copy_path(&path);
    std::fs::write(&copy, b"half a database").unwrap();
    let store = MvccStore::open(&path).unwrap();
    assert!(!copy.exists());
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("1"));
}

// ---- record layout: large values, records of earlier releases ---------------------------------

fn put_bytes(store: &MvccStore, key: &str, value: Vec<u8>) -> i64 {
    apply(store, |w| {
        w.put(&PbPutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })
    })
    .unwrap()
    .header
    .unwrap()
    .revision
}

#[test]
fn large_values_read_back_whole_at_every_revision_in_events_and_snapshots() {
    let (_dir, store) = open_store();
    let first: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i % 251) as u8).collect();
    let second: Vec<u8> = (0..super::tables::INLINE_VALUE_MAX + 1)
        .map(|i| (i % 13) as u8)
        .collect();
    let r1 = put_bytes(&store, "big", first.clone());
    let r2 = put_bytes(&store, "big", second.clone());
    put_bytes(&store, "small", b"s".to_vec());
    assert!(values_len(&store) > 0, "large values go to kv_values");

    assert_eq!(get(&store, "big", r1).unwrap().value, first);
    assert_eq!(get(&store, "big", 0).unwrap().value, second);
    let events = store.events_since(r2).unwrap();
    assert_eq!(events[0].kv.as_ref().unwrap().value, second);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, first);

    let restored_dir = tempfile::tempdir().unwrap();
    let restored = MvccStore::open(&restored_dir.path().join("kv.redb")).unwrap();
    restored.restore(&store.snapshot().unwrap()).unwrap();
    assert_eq!(get(&restored, "big", r1).unwrap().value, first);
    assert_eq!(restored.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());

    // Compaction drops the chunks of the versions it drops, and only those.
    apply(&store, |w| w.compact(r2)).unwrap();
    let chunks_of_second = second.len().div_ceil(super::tables::VALUE_CHUNK) as u64;
    assert_eq!(values_len(&store), chunks_of_second);
    assert_eq!(get(&store, "big", 0).unwrap().value, second);
}

/// The size in use counts the data the tables hold, as of the last commit, durable or not: it
/// grows with the values written and falls when a compaction removes old versions.
#[test]
fn size_in_use_follows_the_live_data_through_writes_and_compaction() {
    const KEYS: usize = 500;
    const VALUE: usize = 1_000;
    let (_dir, store) = open_store();
    let empty = store.size_in_use().unwrap();
    load_versions(&store, KEYS, 4, VALUE);
    let loaded = store.size_in_use().unwrap();
    let written = (KEYS * 4 * VALUE) as u64;
    assert!(
        loaded >= empty + written && loaded <= empty + 2 * written,
        "{written} bytes of values written; size in use went from {empty} to {loaded}"
    );

    // A commit that is not durable is counted too: the size follows the store, not the disk.
    apply(&store, |w| {
        w.put(&PbPutRequest {
            key: b"one-more".to_vec(),
            value: vec![b'z'; 100 * VALUE],
            ..Default::default()
        })
    })
    .unwrap();
    let grown = store.size_in_use().unwrap();
    assert!(
        grown >= loaded + (100 * VALUE) as u64,
        "{loaded} -> {grown}"
    );

    let current = store.current_revision().unwrap();
    apply(&store, |w| w.compact(current)).unwrap();
    let compacted = store.size_in_use().unwrap();
    let live = (KEYS * VALUE + 100 * VALUE) as u64;
    assert!(
        compacted >= live && compacted < grown - written / 2,
        "{live} bytes live after compaction; size in use went from {grown} to {compacted}"
    );
}

#[test]
fn defragment_leaves_a_store_of_large_values_the_size_of_the_values() {
    const KEYS: usize = 16;
    const VALUE: usize = 1 << 20;
    let (_dir, store) = open_store();
    load_versions(&store, KEYS, 4, VALUE);
    let current = store.current_revision().unwrap();
    apply(&store, |w| w.compact(current)).unwrap();
    store.defragment().unwrap();
    let live = (KEYS * VALUE) as f64;
    let file = store.db_size_bytes();
    println!("{KEYS} values of {VALUE} bytes: file {file} bytes after defragment");
    assert!(
        file as f64 <= 1.1 * live,
        "{KEYS} live values of {VALUE} bytes take a file of {file} bytes"
    );
}

/// Releases before the key index kept versions by key (`kv_history`, beside `kv_latest` and
/// `kv_events`), and releases before the lean layout stored each version as a whole
/// `mvccpb.KeyValue`; a data dir they wrote is moved into `kv_revs` when it opens, and reads,
/// writes, watch replay and the KV hash go on from there.
#[test]
fn a_store_in_the_layout_of_earlier_releases_is_moved_into_kv_revs_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let old = PbKeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        value: b"old".to_vec(),
        lease: 0,
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut whole = vec![1u8];
            prost::Message::encode(&old, &mut whole).unwrap();
            let mut history = txn.open_table(LEGACY_HISTORY).unwrap();
            history.insert((&b"k"[..], 2, 0), whole.as_slice()).unwrap();
            // The lean record of a version of "j" at revision 3: create revision 3, version 1,
            // lease 0, then the value.
            history
                .insert((&b"j"[..], 3, 0), &[2u8, 3, 1, 0, b'v'][..])
                .unwrap();
            let mut latest = txn.open_table(LEGACY_LATEST).unwrap();
            latest.insert(&b"k"[..], &[0u8; 16][..]).unwrap();
            txn.open_table(super::tables::REVISIONS)
                .unwrap()
                .insert(super::tables::CURRENT_REVISION, 3)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(history_len(&store), 2);
    {
        let db = store.db();
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n == "kv_history" || n == "kv_latest"),
            "{names:?}"
        );
    }
    assert_eq!(get(&store, "k", 0), Some(old.clone()));
    assert_eq!(get(&store, "j", 0).unwrap().value, b"v");
    put(&store, "k", "new");
    assert_eq!(get(&store, "k", 2), Some(old));
    let new = get(&store, "k", 0).unwrap();
    assert_eq!(
        (new.version, new.create_revision, new.mod_revision),
        (2, 2, 4)
    );
    let events = store.events_since(4).unwrap();
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
    drop(store);
    // Opened again, it is in the new layout already and reads the same.
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(get(&store, "k", 0).unwrap().mod_revision, 4);
    assert_eq!(get(&store, "j", 3).unwrap().value, b"v");
}

/// The key index learns a batch's versions as they are written: readers must not see them
/// before the batch commits, and a batch dropped without committing must leave no trace.
#[test]
fn a_batch_is_invisible_until_it_commits_and_leaves_nothing_when_dropped() {
    let (_dir, store) = open_store();
    put(&store, "a", "1");
    let mut batch = store.begin_write().unwrap();
    batch.put(&put_req("a", "2")).unwrap();
    batch.put(&put_req("b", "1")).unwrap();
    assert_eq!(value_at(&store, "a", 0).as_deref(), Some("1"));
    assert_eq!(range(&store, range_req("a", "c")).count, 1);
    drop(batch);
    assert_eq!(range(&store, range_req("a", "c")).count, 1);
    assert_eq!(put(&store, "b", "x"), 3);
    let b = get(&store, "b", 0).unwrap();
    assert_eq!((b.version, b.create_revision), (1, 3));
    let a = get(&store, "a", 0).unwrap();
    assert_eq!((a.version, a.mod_revision), (1, 2));
    assert_eq!(store.events_since(2).unwrap().len(), 2);
}

/// A compaction's removals reach the index only when its batch commits: a reader meanwhile
/// still reads the versions the compaction drops.
#[test]
fn a_compaction_reaches_readers_only_when_its_batch_commits() {
    let (_dir, store) = open_store();
    put(&store, "k", "1");
    put(&store, "k", "2");
    let current = put(&store, "k", "3");
    let mut batch = store.begin_write().unwrap();
    batch.compact(current).unwrap();
    assert_eq!(value_at(&store, "k", 2).as_deref(), Some("1"));
    batch.commit(false).unwrap();
    let old = store.range(&PbRangeRequest {
        revision: 2,
        ..range_req("k", "")
    });
    assert!(matches!(old, Err(Error::Compacted)), "{old:?}");
    assert_eq!(value_at(&store, "k", current).as_deref(), Some("3"));
    assert_eq!(history_len(&store), 1);
}

/// A restore writes the whole store in one transaction, and redb grows the file by doubling as
/// it fills: `trim` gives the free tail back, so a restored member's file is its data's size.
#[test]
fn a_restored_store_trimmed_is_the_size_of_its_pages() {
    let (_dir, store) = open_store();
    load_versions(&store, 20_000, 1, 256);
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = MvccStore::open(&restored_dir.path().join("kv.redb")).unwrap();
    restored.restore(&store.snapshot().unwrap()).unwrap();
    let before = restored.db_size_bytes();
    restored.trim().unwrap();
    let footprint = restored.footprint().unwrap();
    let pages = footprint.allocated_pages * footprint.page_size;
    println!(
        "restored file {before} bytes, trimmed {}, pages {pages}",
        footprint.file_bytes
    );
    assert!(
        footprint.file_bytes as f64 <= 1.1 * pages as f64,
        "a trimmed file of {} bytes for {pages} bytes of pages",
        footprint.file_bytes
    );
    assert_eq!(restored.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
}

/// After a defragment the file is as long as its data; the next writes make redb grow it by
/// about its whole length, sparsely. etcd's `dbSize` is the space bbolt's pages take; counting
/// that sparse tail would show a defragmented store at twice its size, and make an operator that
/// defragments by free space do it again at once.
#[test]
fn db_size_counts_what_the_file_holds_not_the_sparse_tail_redb_grows_it_by() {
    let (dir, store) = open_store();
    load_versions(&store, 4_000, 1, 1_000);
    store.defragment().unwrap();
    let defragmented = store.db_size_bytes();
    // A twentieth of the values written again.
    load_versions(&store, 200, 1, 1_000);
    let length = std::fs::metadata(dir.path().join("member/kv.redb"))
        .unwrap()
        .len();
    let size = store.db_size_bytes();
    println!("after defragment {defragmented} bytes; after 200 puts: file length {length}, db size {size}");
    assert!(
        length as f64 > 1.5 * defragmented as f64,
        "redb no longer grows the file ahead: nothing to tell apart"
    );
    assert!(
        (size as f64) < 1.2 * defragmented as f64,
        "200 puts of 1,000 bytes took the db size from {defragmented} to {size} bytes"
    );
}
