//! openraft's state machine on the MVCC store: applies committed entries, builds and installs
//! snapshots.
//!
//! Each batch of entries is one redb write transaction that also records the applied log id
//! and the membership, so a batch is applied entirely or not at all and replay after a crash is
//! idempotent. Most commits skip the fsync — the WAL already holds every applied entry — and one
//! in a while (and before every snapshot, which lets the WAL be truncated) is made durable.

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::proto::PbEvent;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};

use super::types::{
    codec, ApplyError, Entry, LogId, MemberNode, Request, Response, StorageError, StoredMembership,
    TypeConfig,
};
use crate::storage::mvcc::{MvccStore, MvccWrite};

const APPLIED_KEY: &str = "raft/applied";
const MEMBERSHIP_KEY: &str = "raft/membership";
const MEMBER_ATTRIBUTES_PREFIX: &str = "member/";
const ALARM_PREFIX: &str = "alarm/";

/// How long applied state may stay only in the page cache before a durable commit.
const DURABLE_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// What a member published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Clone)]
pub struct StateMachine {
    store: MvccStore,
    /// Serialises applying a batch and dumping a snapshot, so a snapshot is a consistent cut.
    apply_lock: Arc<Mutex<ApplyClock>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    events: broadcast::Sender<Arc<Vec<PbEvent>>>,
    /// `etcd_disk_backend_commit_duration_seconds`.
    commit_duration: prometheus::Histogram,
    /// The store's size in use, measured at every durable commit (see `size_in_use`).
    size_in_use: Arc<std::sync::atomic::AtomicU64>,
}

struct ApplyClock {
    last_durable: Instant,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, MemberNode>,
    data: Vec<u8>,
}

fn sm_error(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            openraft::AnyError::new(&io::Error::other(e.to_string())),
        ),
    }
}

impl StateMachine {
    pub fn new(store: MvccStore, commit_duration: prometheus::Histogram) -> StateMachine {
        let (events, _) = broadcast::channel(1024);
        StateMachine {
            store,
            apply_lock: Arc::new(Mutex::new(ApplyClock {
                last_durable: Instant::now(),
            })),
            current: Arc::new(Mutex::new(None)),
            events,
            commit_duration,
            size_in_use: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The events of every applied batch, in order (for Watch).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<Vec<PbEvent>>> {
        self.events.subscribe()
    }

    /// The attributes every member has published, by member ID.
    pub fn member_attributes(&self) -> crate::Result<BTreeMap<u64, MemberAttributes>> {
        let mut out = BTreeMap::new();
        for (key, value) in self.store.meta_with_prefix(MEMBER_ATTRIBUTES_PREFIX)? {
            let id = key[MEMBER_ATTRIBUTES_PREFIX.len()..]
                .parse::<u64>()
                .map_err(|e| crate::Error::Backend(format!("bad member key {key}: {e}")))?;
            let attrs = codec::decode(&value).map_err(crate::Error::Backend)?;
            out.insert(id, attrs);
        }
        Ok(out)
    }

    /// The active alarms, as (member ID, alarm type) pairs.
    pub fn alarms(&self) -> crate::Result<Vec<(u64, i32)>> {
        let mut out = Vec::new();
        for (key, _) in self.store.meta_with_prefix(ALARM_PREFIX)? {
            let rest = &key[ALARM_PREFIX.len()..];
            let parsed = rest.split_once('/').and_then(|(member, alarm)| {
                Some((u64::from_str_radix(member, 16).ok()?, alarm.parse().ok()?))
            });
            match parsed {
                Some(pair) => out.push(pair),
                None => return Err(crate::Error::Backend(format!("bad alarm key {key}"))),
            }
        }
        Ok(out)
    }

    /// The bytes the store's data occupies, as of the last durable commit (at most about a
    /// second old); what `--quota-backend-bytes` limits.
    pub fn size_in_use(&self) -> u64 {
        self.size_in_use.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Measures the size in use now (at start, and after a defragmentation).
    pub fn measure_size_in_use(&self) -> crate::Result<()> {
        let write = self.store.begin_write()?;
        self.record_size_in_use(&write);
        drop(write);
        Ok(())
    }

    fn record_size_in_use(&self, write: &MvccWrite) {
        match write.size_in_use() {
            Ok(bytes) => self
                .size_in_use
                .store(bytes, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "measuring the store's size failed"),
        }
    }

    /// Defragments the store between two applied batches.
    pub async fn defragment(&self) -> crate::Result<()> {
        let mut clock = self.apply_lock.lock().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| crate::Error::Backend(e.to_string()))??;
        clock.last_durable = Instant::now();
        drop(clock);
        self.measure_size_in_use()
    }

    fn read_applied(&self) -> crate::Result<(Option<LogId>, StoredMembership)> {
        let applied = match self.store.meta(APPLIED_KEY)? {
            Some(b) => Some(codec::decode(&b).map_err(crate::Error::Backend)?),
            None => None,
        };
        let membership = match self.store.meta(MEMBERSHIP_KEY)? {
            Some(b) => codec::decode(&b).map_err(crate::Error::Backend)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    async fn dump(&self) -> Result<StoredSnapshot, StorageError> {
        let mut clock = self.apply_lock.lock().await;
        let (applied, membership) = self
            .read_applied()
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        // Make the state the snapshot describes durable first: the WAL is truncated after it.
        self.store
            .begin_write()
            .and_then(|w| w.commit(true))
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        clock.last_durable = Instant::now();
        let data = self
            .store
            .snapshot()
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        drop(clock);
        let snapshot_id = match applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        Ok(StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id,
            },
            data,
        })
    }
}

/// Applies one request inside the batch's write transaction.
fn apply_request(write: &mut MvccWrite, req: &Request) -> crate::Result<Response> {
    let result = match req {
        Request::Put(r) => write.put(r).map(Response::Put),
        Request::DeleteRange(r) => write.delete_range(r).map(Response::DeleteRange),
        Request::Txn(r) => write.txn(r).map(Response::Txn),
        Request::Compact(r) => write.compact(r.revision).map(Response::Compact),
        Request::LeaseGrant { id, ttl } => write.lease_grant(*id, *ttl).map(|_| Response::Done {
            revision: write.revision(),
        }),
        Request::LeaseRevoke { id } => write.lease_revoke(*id).map(|_| Response::Done {
            revision: write.revision(),
        }),
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for r in requests {
                responses.push(apply_request(write, r)?);
            }
            Ok(Response::Batch(responses))
        }
        Request::Alarm {
            activate,
            member_id,
            alarm,
        } => {
            let key = format!("{ALARM_PREFIX}{member_id:016x}/{alarm}");
            let done = if *activate {
                write.set_meta(&key, &[])
            } else {
                write.delete_meta(&key)
            };
            done.map(|_| Response::Done {
                revision: write.revision(),
            })
        }
        Request::PublishMember {
            id,
            name,
            client_urls,
        } => {
            let attrs = MemberAttributes {
                name: name.clone(),
                client_urls: client_urls.clone(),
            };
            write
                .set_meta(
                    &format!("{MEMBER_ATTRIBUTES_PREFIX}{id}"),
                    &codec::encode(&attrs),
                )
                .map(|_| Response::Done {
                    revision: write.revision(),
                })
        }
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(e) => match ApplyError::from_error(&e) {
            Some(rejected) => Ok(Response::Rejected(rejected)),
            None => Err(e),
        },
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snap = self.dump().await?;
        *self.current.lock().await = Some(snap.clone());
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_applied()
            .map_err(|e| sm_error(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut clock = self.apply_lock.lock().await;
        let mut write = self
            .store
            .begin_write()
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Done {
                    revision: write.revision(),
                },
                EntryPayload::Normal(req) => {
                    apply_request(&mut write, req).map_err(|e| sm_error(ErrorVerb::Write, e))?
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    write
                        .set_meta(MEMBERSHIP_KEY, &codec::encode(&stored))
                        .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                    Response::Done {
                        revision: write.revision(),
                    }
                }
            };
            responses.push(response);
        }
        let Some(last) = last else {
            return Ok(responses);
        };
        write
            .set_meta(APPLIED_KEY, &codec::encode(&last))
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let durable = clock.last_durable.elapsed() >= DURABLE_COMMIT_INTERVAL;
        if durable {
            self.record_size_in_use(&write);
        }
        let timer = self.commit_duration.start_timer();
        let events = write
            .commit(durable)
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        timer.observe_duration();
        if durable {
            clock.last_durable = Instant::now();
        }
        drop(clock);
        if !events.is_empty() {
            // No receiver is fine: nobody is watching.
            let _ = self.events.send(Arc::new(events));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        {
            let mut clock = self.apply_lock.lock().await;
            self.store
                .restore(&data)
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            // The snapshot's own meta describes its data; record it as this member's state.
            let mut write = self
                .store
                .begin_write()
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            let set = |w: &mut MvccWrite| -> crate::Result<()> {
                if let Some(last) = meta.last_log_id {
                    w.set_meta(APPLIED_KEY, &codec::encode(&last))?;
                }
                w.set_meta(MEMBERSHIP_KEY, &codec::encode(&meta.last_membership))
            };
            set(&mut write).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            write
                .commit(true)
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            clock.last_durable = Instant::now();
        }
        *self.current.lock().await = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let mut current = self.current.lock().await;
        if current.is_none() {
            // After a restart no snapshot is cached; the store itself is one, as of now.
            let (applied, _) = self
                .read_applied()
                .map_err(|e| sm_error(ErrorVerb::Read, e))?;
            if applied.is_none() {
                return Ok(None);
            }
            drop(current);
            let snap = self.dump().await?;
            current = self.current.lock().await;
            *current = Some(snap);
        }
        Ok(current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
