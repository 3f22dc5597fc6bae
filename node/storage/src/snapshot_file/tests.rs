//! Snapshot files out and in: ferrokv's contents through etcd's layout and back, fixtures in the
//! layouts of etcd 3.5 to 3.7, the old ferrokv format, and damaged files.

use etcd_client::proto::PbKeyValue;
use ferrokv_bbolt::{write_db, BucketData, DEFAULT_PAGE_SIZE};
use prost::Message;
use sha2::{Digest, Sha256};

use super::etcd::revision_key;
use super::*;
use crate::mvcc::{Change, Lease, StoreContents, Version};

fn put(key: &str, main: i64, create: i64, version: i64, value: &str, lease: i64) -> Change {
    Change {
        key: key.as_bytes().to_vec(),
        main,
        sub: 0,
        put: Some(Version {
            create_revision: create,
            version,
            value: value.as_bytes().to_vec(),
            lease,
        }),
    }
}

fn delete(key: &str, main: i64) -> Change {
    Change {
        key: key.as_bytes().to_vec(),
        main,
        sub: 0,
        put: None,
    }
}

fn sample_contents() -> StoreContents {
    StoreContents {
        current_revision: 6,
        compact_revision: 3,
        history: vec![
            put("a", 3, 2, 2, "a2", 0),
            put("a", 5, 2, 3, "a3", 0),
            delete("b", 4),
            put("leased", 6, 6, 1, "with lease", 0x1234),
        ],
        leases: vec![Lease {
            id: 0x1234,
            ttl: 600,
        }],
        meta: Vec::new(),
    }
}

fn sample_cluster() -> ClusterState {
    ClusterState {
        consistent_index: 42,
        term: 3,
        members: vec![SnapshotMember {
            id: 0x8e9e05c52164694d,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        }],
        removed: Vec::new(),
    }
}

fn with_trailer(mut db: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&db);
    db.extend_from_slice(&digest);
    db
}

#[test]
fn contents_round_trip_through_etcds_format() {
    let file = encode(&sample_contents(), &sample_cluster()).unwrap();
    assert_eq!(file.len() % 512, 32, "etcd's size rule for a trailer");
    let snapshot = decode(&file, HashCheck::Verify).unwrap();
    assert_eq!(snapshot.format, SnapshotFormat::Etcd);
    let mut expected = sample_contents();
    // etcd's key bucket is in revision order.
    expected
        .history
        .sort_by_key(|change| (change.main, change.sub));
    assert_eq!(snapshot.contents, expected);
    assert_eq!(snapshot.cluster, sample_cluster());
    assert_eq!(snapshot.unfinished_compaction, None);
}

#[test]
fn the_key_bucket_holds_etcds_revision_keys_and_key_values() {
    let file = encode(&sample_contents(), &sample_cluster()).unwrap();
    let db = ferrokv_bbolt::Db::open(&file).unwrap();
    let keys = db.bucket(b"key").unwrap().unwrap().values().unwrap();
    let (key, value) = keys[1];
    assert_eq!(
        key, b"\0\0\0\0\0\0\0\x04_\0\0\0\0\0\0\0\0t",
        "tombstone of b at 4"
    );
    assert_eq!(
        PbKeyValue::decode(value).unwrap(),
        PbKeyValue {
            key: b"b".to_vec(),
            ..PbKeyValue::default()
        }
    );
    let (key, value) = keys[3];
    assert_eq!(key, revision_key(6, 0, false).as_slice());
    let kv = PbKeyValue::decode(value).unwrap();
    assert_eq!((kv.mod_revision, kv.lease), (6, 0x1234));
    let meta = db.bucket(b"meta").unwrap().unwrap().values().unwrap();
    assert!(meta.contains(&(&b"consistent_index"[..], &42u64.to_be_bytes()[..])));
    assert!(meta.contains(&(&b"finishedCompactRev"[..], &revision_key(3, 0, false)[..])));
    let members = db.bucket(b"members").unwrap().unwrap().values().unwrap();
    assert_eq!(members[0].0, b"8e9e05c52164694d");
    assert_eq!(
        std::str::from_utf8(members[0].1).unwrap(),
        r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
    );
    for bucket in [
        "lease",
        "alarm",
        "cluster",
        "members_removed",
        "auth",
        "authUsers",
        "authRoles",
    ] {
        assert!(db.bucket(bucket.as_bytes()).unwrap().is_some(), "{bucket}");
    }
}

/// A database in the layout etcd 3.5, 3.6 and 3.7 write, built here from etcd's documented
/// bucket and key encodings (`server/storage/schema`): snapshot files of those releases cannot
/// be made on this machine, which has etcd 3.4 only.
fn etcd_35_plus_db(storage_version: Option<&str>) -> Vec<u8> {
    let mut root = BucketData::new();
    let keys = root.bucket(b"key").unwrap();
    let kv = |key: &str, create, modified, version, value: &str, lease| PbKeyValue {
        key: key.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.into(),
        lease,
    };
    keys.put(
        revision_key(2, 0, false),
        kv("x", 2, 2, 1, "x1", 0).encode_to_vec(),
    )
    .unwrap();
    keys.put(
        revision_key(3, 0, false),
        kv("y", 3, 3, 1, "y1", 0x77).encode_to_vec(),
    )
    .unwrap();
    keys.put(
        revision_key(3, 1, false),
        kv("z", 3, 3, 1, "z1", 0).encode_to_vec(),
    )
    .unwrap();
    keys.put(
        revision_key(4, 0, true),
        kv("x", 0, 0, 0, "", 0).encode_to_vec(),
    )
    .unwrap();
    keys.put(
        revision_key(5, 0, false),
        kv("x", 5, 5, 1, "x again", 0).encode_to_vec(),
    )
    .unwrap();
    let meta = root.bucket(b"meta").unwrap();
    meta.put(b"consistent_index".to_vec(), 99u64.to_be_bytes().to_vec())
        .unwrap();
    meta.put(b"term".to_vec(), 7u64.to_be_bytes().to_vec())
        .unwrap();
    meta.put(
        b"confState".to_vec(),
        br#"{"voters":[12345],"auto_leave":false}"#.to_vec(),
    )
    .unwrap();
    meta.put(b"finishedCompactRev".to_vec(), revision_key(2, 0, false))
        .unwrap();
    meta.put(b"scheduledCompactRev".to_vec(), revision_key(3, 0, false))
        .unwrap();
    if let Some(version) = storage_version {
        meta.put(b"storageVersion".to_vec(), version.as_bytes().to_vec())
            .unwrap();
    }
    let lease = root.bucket(b"lease").unwrap();
    // leasepb.Lease{ID: 0x77, TTL: 30, RemainingTTL: 12}
    lease
        .put(
            0x77i64.to_be_bytes().to_vec(),
            vec![0x08, 0x77, 0x10, 30, 0x18, 12],
        )
        .unwrap();
    root.bucket(b"cluster")
        .unwrap()
        .put(b"clusterVersion".to_vec(), b"3.6.0".to_vec())
        .unwrap();
    root.bucket(b"auth")
        .unwrap()
        .put(b"authEnabled".to_vec(), vec![0])
        .unwrap();
    for bucket in [
        "alarm",
        "members",
        "members_removed",
        "authUsers",
        "authRoles",
    ] {
        root.bucket(bucket.as_bytes()).unwrap();
    }
    write_db(&root, DEFAULT_PAGE_SIZE).unwrap()
}

#[test]
fn snapshots_in_the_layout_of_etcd_35_to_37_are_read() {
    for storage_version in [None, Some("3.6.0"), Some("3.7.0")] {
        let file = with_trailer(etcd_35_plus_db(storage_version));
        let snapshot = decode(&file, HashCheck::Verify).unwrap();
        let contents = snapshot.contents;
        assert_eq!(contents.current_revision, 5);
        assert_eq!(contents.compact_revision, 2);
        assert_eq!(snapshot.unfinished_compaction, Some(3));
        assert_eq!(snapshot.cluster.consistent_index, 99);
        assert_eq!(snapshot.cluster.term, 7);
        assert_eq!(contents.leases, vec![Lease { id: 0x77, ttl: 30 }]);
        assert_eq!(contents.history.len(), 5);
        assert_eq!(contents.history[1], put("y", 3, 3, 1, "y1", 0x77));
        assert_eq!(contents.history[2].sub, 1);
        assert_eq!(contents.history[3], delete("x", 4));
    }
}

#[test]
fn users_and_roles_in_etcds_auth_buckets_are_read() {
    let mut root = BucketData::new();
    root.bucket(b"key").unwrap();
    let auth = root.bucket(b"auth").unwrap();
    auth.put(b"authEnabled".to_vec(), vec![1]).unwrap();
    auth.put(b"authRevision".to_vec(), 9u64.to_be_bytes().to_vec())
        .unwrap();
    // authpb.User{Name: "alice", Password: "h", Roles: ["r"]}
    root.bucket(b"authUsers")
        .unwrap()
        .put(
            b"alice".to_vec(),
            b"\x0a\x05alice\x12\x01h\x1a\x01r".to_vec(),
        )
        .unwrap();
    // authpb.Role{Name: "r", KeyPermission: [{PermType: READWRITE, Key: "a", RangeEnd: "b"}]}
    root.bucket(b"authRoles")
        .unwrap()
        .put(
            b"r".to_vec(),
            b"\x0a\x01r\x12\x08\x08\x02\x12\x01a\x1a\x01b".to_vec(),
        )
        .unwrap();
    let file = with_trailer(write_db(&root, DEFAULT_PAGE_SIZE).unwrap());
    let contents = decode(&file, HashCheck::Verify).unwrap().contents;
    let (_, bytes) = contents
        .meta
        .iter()
        .find(|(k, _)| k == crate::auth::AUTH_STATE_KEY)
        .expect("auth state");
    let state = crate::auth::AuthState::from_meta(bytes).unwrap();
    assert!(state.enabled);
    assert_eq!(state.revision, 9);
    assert_eq!(state.users["alice"].password_hash, b"h");
    assert_eq!(state.users["alice"].roles, vec!["r".to_string()]);
    let perm = &state.roles["r"].permissions[0];
    assert_eq!(perm.kind, crate::auth::PermKind::ReadWrite);
    assert_eq!((&perm.key[..], &perm.range_end[..]), (&b"a"[..], &b"b"[..]));
}

#[test]
fn the_auth_store_round_trips_through_etcds_buckets() {
    use crate::auth::{AuthChange, AuthState, PermKind, Permission};
    let mut state = AuthState::default();
    for change in [
        AuthChange::UserAdd {
            name: "root".into(),
            password_hash: b"$2a$10$x".to_vec(),
            no_password: false,
        },
        AuthChange::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        AuthChange::UserAdd {
            name: "cn-user".into(),
            password_hash: vec![],
            no_password: true,
        },
        AuthChange::RoleAdd { name: "r".into() },
        AuthChange::RoleGrantPermission {
            role: "r".into(),
            permission: Permission {
                kind: PermKind::Read,
                key: b"p/".to_vec(),
                range_end: b"p0".to_vec(),
            },
        },
        AuthChange::Enable,
    ] {
        state.apply(&change).unwrap();
    }
    let mut contents = sample_contents();
    contents.meta = vec![(crate::auth::AUTH_STATE_KEY.to_string(), state.to_meta())];
    let file = encode(&contents, &ClusterState::default()).unwrap();
    let back = decode(&file, HashCheck::Verify).unwrap().contents;
    let (_, bytes) = back
        .meta
        .iter()
        .find(|(k, _)| k == crate::auth::AUTH_STATE_KEY)
        .unwrap();
    assert_eq!(crate::auth::AuthState::from_meta(bytes).unwrap(), state);
}

#[test]
fn snapshots_of_ferrokvs_first_format_are_still_read() {
    let file = legacy::write(&sample_contents());
    let snapshot = decode(&file, HashCheck::Verify).unwrap();
    assert_eq!(snapshot.format, SnapshotFormat::FerrokvV1);
    assert_eq!(snapshot.contents, sample_contents());
}

#[test]
fn a_damaged_snapshot_is_refused_by_its_hash() {
    let mut file = encode(&sample_contents(), &sample_cluster()).unwrap();
    let middle = file.len() / 2;
    file[middle] ^= 1;
    let err = decode(&file, HashCheck::Verify).unwrap_err();
    assert!(
        err.to_string().contains("sha256 checksum mismatch"),
        "{err}"
    );
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let file = encode(&sample_contents(), &sample_cluster()).unwrap();
    let err = decode(&file[..file.len() - 100], HashCheck::Verify).unwrap_err();
    assert!(err.to_string().contains("no sha256 trailer"), "{err}");
    // Without the hash check, the database's own meta page tells it is cut short.
    let err = decode(&file[..file.len() - 5000], HashCheck::Skip).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_database_copied_without_trailer_needs_the_hash_check_skipped() {
    let file = encode(&sample_contents(), &sample_cluster()).unwrap();
    let db = &file[..file.len() - 32];
    assert!(decode(db, HashCheck::Verify).is_err());
    let snapshot = decode(db, HashCheck::Skip).unwrap();
    assert_eq!(snapshot.contents.leases, sample_contents().leases);
}

#[test]
fn a_file_that_is_no_snapshot_is_refused() {
    let file = with_trailer(vec![7u8; 8192]);
    let err = decode(&file, HashCheck::Verify).unwrap_err();
    assert!(err.to_string().contains("invalid database"), "{err}");
    let mut root = BucketData::new();
    root.bucket(b"something else").unwrap();
    let file = with_trailer(write_db(&root, DEFAULT_PAGE_SIZE).unwrap());
    let err = decode(&file, HashCheck::Verify).unwrap_err();
    assert!(err.to_string().contains("no `key` bucket"), "{err}");
}
