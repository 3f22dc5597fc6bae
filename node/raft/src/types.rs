//! What the Raft log carries: a normal entry holds a `Proposal` (a `Request` and who proposed
//! it), a configuration change carries a `ConfChangeContext`; applying a request yields a
//! `Response`. `MemberNode` is what the cluster knows of each member. `LeaseQuery`, `LeaseTtl`
//! and `MemberChange` are the payloads of the unary calls a follower makes to the leader
//! (`transport::LeaderDuties`), with `WireError` as their errors.
//!
//! Requests hold etcd's own protobuf messages, so the log records exactly what the client sent;
//! they travel through serde as their protobuf encoding.

use std::fmt;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbPutRequest,
    PbPutResponse, PbTxnRequest, PbTxnResponse,
};
use ferrokv_storage::auth::{AuthChange, AuthFailure};
use ferrokv_storage::StorageError;
use serde::{Deserialize, Serialize};

/// The payload of a normal log entry. `id` is unique among the proposals of member
/// `proposer`, which alone waits for the entry's outcome; every member applies it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub proposer: u64,
    pub id: u64,
    pub request: Request,
}

/// The context of a configuration change entry: the member it concerns (for an addition) and
/// the proposal waiting for it, if any (bootstrap entries have none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfChangeContext {
    pub proposer: u64,
    pub id: u64,
    pub member: Option<MemberNode>,
}

/// What the Raft membership records of a member: its name and peer URLs. Client URLs are
/// published by the member itself once it runs (`Request::PublishMember`), as in etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A state machine command: one Raft log entry's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Put(#[serde(with = "pb")] PbPutRequest),
    DeleteRange(#[serde(with = "pb")] PbDeleteRequest),
    Txn(#[serde(with = "pb")] PbTxnRequest),
    Compact(#[serde(with = "pb")] PbCompactionRequest),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Raises (`activate`) or clears an alarm of a member, e.g. NOSPACE when its backend
    /// outgrows `--quota-backend-bytes`.
    Alarm {
        activate: bool,
        member_id: u64,
        alarm: i32,
    },
    /// Requests proposed together; applied in order, each with its own revision.
    Batch(Vec<Request>),
    /// MemberUpdate: new peer URLs for a member (not a configuration change to Raft).
    UpdateMember {
        id: u64,
        peer_urls: Vec<String>,
    },
    /// A member announces its name and client URLs (etcd's "publish" step).
    PublishMember {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    // New variants go last: bincode encodes a variant by its index, and the log and snapshots
    // of earlier releases must still decode.
    /// A client's request, checked when applied against the auth store as it is then: `user`
    /// (none for a request without credentials) must be allowed to do it, and the auth store
    /// must not have changed since `auth_revision`, when the request was authorized.
    Authorized {
        user: Option<String>,
        auth_revision: u64,
        request: Box<Request>,
    },
    /// A change to users, roles or the enabled flag.
    Auth(AuthChange),
    /// Issues simple token `token` to `name`, whose password was checked at `checked_revision`
    /// of the auth store (the check is not repeated where entries are applied).
    Authenticate {
        name: String,
        token: String,
        checked_revision: u64,
    },
}

impl Request {
    /// Whether this request, or one it carries (a batch's, an authorized request's), is one
    /// `is` picks out: the proposer batches any request with others.
    pub fn any(&self, is: &dyn Fn(&Request) -> bool) -> bool {
        is(self)
            || match self {
                Request::Batch(requests) => requests.iter().any(|r| r.any(is)),
                Request::Authorized { request, .. } => request.any(is),
                _ => false,
            }
    }

    /// About the bytes the request takes in a log entry, to bound batches.
    pub fn approximate_size(&self) -> usize {
        use prost::Message as _;
        match self {
            Request::Put(r) => r.key.len() + r.value.len() + 16,
            Request::DeleteRange(r) => r.key.len() + r.range_end.len() + 16,
            Request::Txn(r) => r.encoded_len(),
            Request::Batch(requests) => requests.iter().map(Request::approximate_size).sum(),
            Request::Authorized { request, .. } => request.approximate_size() + 32,
            _ => 64,
        }
    }
}

/// The result of applying a `Request`. Errors that applying can deterministically produce
/// (a compacted revision, a missing lease, ...) are results too: every member computes the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Put(#[serde(with = "pb")] PbPutResponse),
    DeleteRange(#[serde(with = "pb")] PbDeleteResponse),
    Txn(#[serde(with = "pb")] PbTxnResponse),
    Compact(#[serde(with = "pb")] PbCompactionResponse),
    /// Applied; nothing to report besides the store revision after it.
    Done {
        revision: i64,
    },
    Rejected(ApplyError),
    /// The responses of a `Request::Batch`, in its order.
    Batch(Vec<Response>),
}

/// Why applying a request failed; the same on every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyError {
    Compacted,
    FutureRev,
    LeaseNotFound,
    LeaseExists,
    KeyNotFound,
    NoSpace,
    /// Last, as new variants go: the peer wire carries this enum by variant index.
    Auth(AuthFailure),
}

impl ApplyError {
    /// The deterministic apply errors; any other error is a failure of this member's storage.
    pub fn from_error(e: &StorageError) -> Option<ApplyError> {
        use StorageError as Error;
        Some(match e {
            Error::Compacted => ApplyError::Compacted,
            Error::FutureRev => ApplyError::FutureRev,
            Error::LeaseNotFound => ApplyError::LeaseNotFound,
            Error::LeaseExists => ApplyError::LeaseExists,
            Error::KeyNotFound => ApplyError::KeyNotFound,
            Error::Auth(failure) => ApplyError::Auth(*failure),
            _ => return None,
        })
    }
}

/// An error as it crosses the peer wire: the conditions a member acts on keep their variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    NotLeader,
    NoLeader,
    Timeout,
    LeaseNotFound,
    MemberNotFound,
    MemberNotLearner,
    LearnerNotReady,
    PeerUrlExists,
    MembershipInProgress,
    Unhealthy(String),
    BadPeerUrl(String),
    /// Any other failure, by its message.
    Other(String),
}

/// A lease request forwarded to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseQuery {
    pub id: i64,
    /// Renew the lease (keep-alive), or only report its TTL.
    pub renew: bool,
}

/// The state of one lease as the leader reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseTtl {
    /// Remaining and granted TTL, in seconds.
    Alive {
        remaining: i64,
        granted: i64,
    },
    NotFound,
}

/// A membership change, as the leader receives it (from its own client or a follower).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

/// serde for prost messages: their protobuf encoding as bytes.
mod pb {
    use prost::Message;
    use serde::{Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(msg: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&msg.encode_to_vec())
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }

    /// Reads the bytes `serialize_bytes` wrote in one piece: a `Vec<u8>`'s own `Deserialize`
    /// reads them one element at a time, which costs dearly for megabyte values.
    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(byte) = seq.next_element()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// The encoding of everything Raft stores or sends: bincode.
pub mod codec {
    use serde::{de::DeserializeOwned, Serialize};

    pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serialize(value).expect("in-memory values always serialise")
    }

    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        bincode::deserialize(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_the_codec() {
        let req = Request::Put(PbPutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 5,
            prev_kv: true,
            ..Default::default()
        });
        let back: Request = codec::decode(&codec::encode(&req)).unwrap();
        match back {
            Request::Put(p) => {
                assert_eq!(p.key, b"k");
                assert_eq!(p.lease, 5);
                assert!(p.prev_kv);
            }
            other => panic!("decoded {other:?}"),
        }
    }

    /// bincode writes a variant's index (a little-endian u32): the variants of the previous
    /// release keep theirs, so its log entries, snapshots and peer messages still decode.
    #[test]
    fn earlier_variants_keep_their_index() {
        let index = |bytes: Vec<u8>| u32::from_le_bytes(bytes[..4].try_into().unwrap());
        let publish = Request::PublishMember {
            id: 1,
            name: "m".into(),
            client_urls: vec![],
        };
        assert_eq!(index(codec::encode(&publish)), 9);
        let update = Request::UpdateMember {
            id: 1,
            peer_urls: vec![],
        };
        assert_eq!(index(codec::encode(&update)), 8);
        assert_eq!(index(codec::encode(&ApplyError::Compacted)), 0);
        assert_eq!(index(codec::encode(&ApplyError::NoSpace)), 5);
    }
}
