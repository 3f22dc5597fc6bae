//! etcd's backend layout: which buckets an etcd database holds and how their keys and values
//! are encoded, for the store contents ferrokv writes out and reads in.
//!
//! Checked against etcd's source: `server/storage/schema` (3.5 and later) and `mvcc/backend`,
//! `mvcc/kvstore.go`, `lease/lessor.go`, `etcdserver/api/membership` (3.4).
//!
//! - `key`: revision → `mvccpb.KeyValue`. A revision key is 17 bytes: the main revision (8 bytes,
//!   big-endian), `_`, the sub revision (8 bytes, big-endian); a deletion appends `t` and its
//!   value holds only the key.
//! - `meta`: `consistent_index` (u64, big-endian: the Raft index applied), `scheduledCompactRev`
//!   and `finishedCompactRev` (revision keys of the compaction point); since 3.5 also `term`
//!   (u64, big-endian), `confState` (JSON); since 3.6 `storageVersion`.
//! - `lease`: lease ID (8 bytes, big-endian) → `leasepb.Lease{ID, TTL, RemainingTTL}`.
//! - `members`: member ID in hex → the member as JSON; `members_removed`: ID in hex → `removed`.
//! - `cluster`: `clusterVersion`, `downgrade`; `alarm`; `auth` (`authEnabled`,
//!   `authRevision`), `authUsers`, `authRoles`.

use etcd_client::proto::PbKeyValue;
use ferrokv_bbolt::{write_db, BucketData, Db, DEFAULT_PAGE_SIZE};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::{ClusterState, SnapshotMember};
use crate::auth::{AuthState, PermKind, Permission, Role, User, AUTH_STATE_KEY};
use crate::mvcc::{Change, Lease, StoreContents, Version, INITIAL_REVISION, NEVER_COMPACTED};
use crate::{Result, StorageError as Error};

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const ALARM: &[u8] = b"alarm";
const CLUSTER: &[u8] = b"cluster";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
/// Every bucket an etcd 3.4 to 3.6 backend creates.
const ALL_BUCKETS: &[&[u8]] = &[
    KEY,
    META,
    LEASE,
    ALARM,
    CLUSTER,
    MEMBERS,
    MEMBERS_REMOVED,
    AUTH,
    AUTH_USERS,
    AUTH_ROLES,
];

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

const REVISION_KEY_LEN: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's `authpb.User`.
#[derive(Clone, PartialEq, prost::Message)]
struct UserPb {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    password: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<UserAddOptionsPb>,
}

/// etcd's `authpb.UserAddOptions`.
#[derive(Clone, PartialEq, prost::Message)]
struct UserAddOptionsPb {
    #[prost(bool, tag = "1")]
    no_password: bool,
}

/// etcd's `authpb.Role`.
#[derive(Clone, PartialEq, prost::Message)]
struct RolePb {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    key_permission: Vec<PermissionPb>,
}

/// etcd's `authpb.Permission`: type READ 0, WRITE 1, READWRITE 2.
#[derive(Clone, PartialEq, prost::Message)]
struct PermissionPb {
    #[prost(int32, tag = "1")]
    perm_type: i32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    range_end: Vec<u8>,
}

/// etcd's `membership.Member` as its backend stores it.
#[derive(Serialize, Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A revision key: main and sub revision, and whether the change is a deletion.
pub(super) fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_KEY_LEN + 1);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(TOMBSTONE_MARK);
    }
    key
}

/// Parses a revision key into (main, sub, is a deletion).
fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        REVISION_KEY_LEN => false,
        len if len == REVISION_KEY_LEN + 1 && key[REVISION_KEY_LEN] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// The bbolt database etcd would hold for `contents`.
pub(super) fn write(contents: &StoreContents, cluster: &ClusterState) -> Result<Vec<u8>> {
    let mut root = BucketData::new();
    for name in ALL_BUCKETS {
        root.bucket(name)?;
    }

    let keys = root.bucket(KEY)?;
    for change in &contents.history {
        let kv = match &change.put {
            Some(version) => PbKeyValue {
                key: change.key.clone(),
                create_revision: version.create_revision,
                mod_revision: change.main,
                version: version.version,
                value: version.value.clone(),
                lease: version.lease,
            },
            // etcd records a deletion as a KeyValue holding only the key.
            None => PbKeyValue {
                key: change.key.clone(),
                ..PbKeyValue::default()
            },
        };
        keys.put(
            revision_key(change.main, change.sub, change.put.is_none()),
            kv.encode_to_vec(),
        )?;
    }

    let meta = root.bucket(META)?;
    meta.put(CONSISTENT_INDEX, cluster.consistent_index.to_be_bytes())?;
    if cluster.term > 0 {
        meta.put(TERM, cluster.term.to_be_bytes())?;
    }
    if contents.compact_revision > 0 {
        let at = revision_key(contents.compact_revision, 0, false);
        meta.put(SCHEDULED_COMPACT, at.clone())?;
        meta.put(FINISHED_COMPACT, at)?;
    }

    let leases = root.bucket(LEASE)?;
    for lease in &contents.leases {
        // RemainingTTL 0 means "not checkpointed": etcd grants the full TTL again on restore.
        let value = LeasePb {
            id: lease.id,
            ttl: lease.ttl,
            remaining_ttl: 0,
        };
        leases.put(lease.id.to_be_bytes(), value.encode_to_vec())?;
    }

    let members = root.bucket(MEMBERS)?;
    for member in &cluster.members {
        let json = MemberJson {
            id: member.id,
            peer_urls: member.peer_urls.clone(),
            is_learner: member.is_learner,
            name: member.name.clone(),
            client_urls: member.client_urls.clone(),
        };
        let value = serde_json::to_vec(&json).expect("a member always serialises");
        members.put(format!("{:x}", member.id), value)?;
    }
    let removed = root.bucket(MEMBERS_REMOVED)?;
    for id in &cluster.removed {
        removed.put(format!("{id:x}"), b"removed".to_vec())?;
    }
    write_auth(&mut root, contents)?;
    // `cluster` stays empty: the cluster version is the new cluster's to decide once it forms.

    Ok(write_db(&root, DEFAULT_PAGE_SIZE)?)
}

/// What ferrokv takes from an etcd database.
pub(super) struct EtcdContents {
    pub contents: StoreContents,
    /// A compaction etcd scheduled but had not finished (etcd finishes it when it starts).
    pub unfinished_compaction: Option<i64>,
    pub cluster: ClusterState,
}

/// Reads the store contents out of an etcd database.
pub(super) fn read(db_bytes: &[u8]) -> Result<EtcdContents> {
    let db = Db::open(db_bytes)?;
    let invalid = |why: String| Error::SnapshotFile(why);
    let keys = db.bucket(KEY)?.ok_or_else(|| {
        invalid("not an etcd snapshot: the database has no `key` bucket".to_string())
    })?;

    let auth = read_auth(&db)?;

    let mut history = Vec::new();
    let mut last_revision = INITIAL_REVISION;
    for (key, value) in keys.values()? {
        let (main, sub, tombstone) = parse_revision_key(key)
            .ok_or_else(|| invalid(format!("`key` bucket: key {} is not a revision", hex(key))))?;
        let kv = PbKeyValue::decode(value).map_err(|e| {
            invalid(format!(
                "`key` bucket: the value at revision {main}_{sub} is not a KeyValue: {e}"
            ))
        })?;
        last_revision = last_revision.max(main);
        history.push(Change {
            key: kv.key,
            main,
            sub,
            put: (!tombstone).then_some(Version {
                create_revision: kv.create_revision,
                version: kv.version,
                value: kv.value,
                lease: kv.lease,
            }),
        });
    }

    let mut consistent_index = 0;
    let mut term = 0;
    let mut finished = None;
    let mut scheduled = None;
    if let Some(meta) = db.bucket(META)? {
        for (key, value) in meta.values()? {
            let name = String::from_utf8_lossy(key);
            let u64_value = || {
                value
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| invalid(format!("`meta` bucket: {name} is not a u64")))
            };
            let revision_value = || {
                parse_revision_key(value)
                    .map(|(main, _, _)| main)
                    .ok_or_else(|| invalid(format!("`meta` bucket: {name} is not a revision")))
            };
            match key {
                CONSISTENT_INDEX => consistent_index = u64_value()?,
                TERM => term = u64_value()?,
                FINISHED_COMPACT => finished = Some(revision_value()?),
                SCHEDULED_COMPACT => scheduled = Some(revision_value()?),
                _ => {}
            }
        }
    }
    let compact_revision = finished.unwrap_or(NEVER_COMPACTED);

    let mut leases = Vec::new();
    if let Some(bucket) = db.bucket(LEASE)? {
        for (key, value) in bucket.values()? {
            let lease = LeasePb::decode(value).map_err(|e| {
                invalid(format!(
                    "`lease` bucket: the value of {} is not a Lease: {e}",
                    hex(key)
                ))
            })?;
            leases.push(Lease {
                id: lease.id,
                ttl: lease.ttl,
            });
        }
    }

    let mut members = Vec::new();
    if let Some(bucket) = db.bucket(MEMBERS)? {
        for (key, value) in bucket.values()? {
            let member: MemberJson = serde_json::from_slice(value).map_err(|e| {
                invalid(format!(
                    "`members` bucket: member {} is not etcd's JSON: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            members.push(SnapshotMember {
                id: member.id,
                name: member.name,
                peer_urls: member.peer_urls,
                client_urls: member.client_urls,
                is_learner: member.is_learner,
            });
        }
    }

    Ok(EtcdContents {
        contents: StoreContents {
            // etcd's rule on restore: the last revision written, or the compaction point if
            // that is later.
            current_revision: last_revision.max(compact_revision),
            compact_revision,
            history,
            leases,
            meta: match auth {
                Some(auth) => vec![(AUTH_STATE_KEY.to_string(), auth.to_meta())],
                None => Vec::new(),
            },
        },
        unfinished_compaction: scheduled.filter(|&at| at > compact_revision),
        cluster: ClusterState {
            consistent_index,
            term,
            members,
            removed: Vec::new(),
        },
    })
}

/// The auth store in etcd's buckets: `auth` (`authEnabled` one byte, `authRevision` u64
/// big-endian), `authUsers` (name → `authpb.User`), `authRoles` (name → `authpb.Role`).
fn write_auth(root: &mut BucketData, contents: &StoreContents) -> Result<()> {
    let Some((_, bytes)) = contents.meta.iter().find(|(k, _)| k == AUTH_STATE_KEY) else {
        return Ok(());
    };
    let state = AuthState::from_meta(bytes)?;
    let auth = root.bucket(AUTH)?;
    auth.put(AUTH_ENABLED, vec![u8::from(state.enabled)])?;
    auth.put(AUTH_REVISION, state.revision.to_be_bytes())?;
    let users = root.bucket(AUTH_USERS)?;
    for user in state.users.values() {
        let value = UserPb {
            name: user.name.clone().into_bytes(),
            password: user.password_hash.clone(),
            roles: user.roles.clone(),
            options: Some(UserAddOptionsPb {
                no_password: user.no_password,
            }),
        };
        users.put(user.name.as_bytes(), value.encode_to_vec())?;
    }
    let roles = root.bucket(AUTH_ROLES)?;
    for role in state.roles.values() {
        let value = RolePb {
            name: role.name.clone().into_bytes(),
            key_permission: role
                .permissions
                .iter()
                .map(|p| PermissionPb {
                    perm_type: p.kind as i32,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        };
        roles.put(role.name.as_bytes(), value.encode_to_vec())?;
    }
    Ok(())
}

/// The auth store an etcd database holds; none when it never had one.
fn read_auth(db: &Db) -> Result<Option<AuthState>> {
    let invalid = |why: String| Error::SnapshotFile(why);
    let mut state = AuthState::default();
    let mut found = false;
    if let Some(bucket) = db.bucket(AUTH)? {
        for (key, value) in bucket.values()? {
            match key {
                AUTH_ENABLED => {
                    found = true;
                    state.enabled = value == [1];
                }
                AUTH_REVISION => {
                    found = true;
                    state.revision = value.try_into().map(u64::from_be_bytes).map_err(|_| {
                        invalid("`auth` bucket: authRevision is not a u64".to_string())
                    })?;
                }
                _ => {}
            }
        }
    }
    if let Some(bucket) = db.bucket(AUTH_USERS)? {
        for (key, value) in bucket.values()? {
            found = true;
            let user = UserPb::decode(value).map_err(|e| {
                invalid(format!(
                    "`authUsers` bucket: the value of {} is not a User: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            let name = String::from_utf8_lossy(&user.name).into_owned();
            let mut roles = user.roles;
            roles.sort();
            state.users.insert(
                name.clone(),
                User {
                    name,
                    password_hash: user.password,
                    roles,
                    no_password: user.options.is_some_and(|o| o.no_password),
                },
            );
        }
    }
    if let Some(bucket) = db.bucket(AUTH_ROLES)? {
        for (key, value) in bucket.values()? {
            found = true;
            let role = RolePb::decode(value).map_err(|e| {
                invalid(format!(
                    "`authRoles` bucket: the value of {} is not a Role: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            let mut permissions = role
                .key_permission
                .into_iter()
                .map(|p| {
                    let kind = PermKind::from_i32(p.perm_type).ok_or_else(|| {
                        invalid(format!(
                            "`authRoles` bucket: unknown permission type {}",
                            p.perm_type
                        ))
                    })?;
                    Ok(Permission {
                        kind,
                        key: p.key,
                        range_end: p.range_end,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            permissions.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            let name = String::from_utf8_lossy(&role.name).into_owned();
            state.roles.insert(name.clone(), Role { name, permissions });
        }
    }
    Ok(found.then_some(state))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
