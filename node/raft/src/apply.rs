//! The apply stage: applies committed entries to the MVCC store on a thread of its own, apart
//! from the Ready loop (as etcd's apply goroutine), and answers the proposals this member made.
//!
//! Each batch of entries is one redb write transaction that also records the applied index and
//! term, the configuration and the members, so a batch is applied entirely or not at all and
//! replay after a crash is idempotent. Most commits skip the fsync — the WAL holds every applied
//! entry — and one a second, and every `--snapshot-count` entries, is made durable; after such a
//! commit the log before it may be compacted. Snapshots are built (a consistent dump, off this
//! thread) for members too far behind, and installed here when this member receives one.
//!
//! Failpoints (failpoint builds only; docs/robustness.md): `applyBeforeCommit` and
//! `applyAfterCommit` around a batch's store commit (after it, before its proposers are
//! answered); `raftBeforeApplySnap` and `raftDuringApplySnap` before and after a received
//! snapshot replaces the store, before its state is recorded; `applySkipDurableCommit`, part of
//! the suite's negative control, keeps every commit but a snapshot's from being durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::proto::{PbEvent, PbTxnOpRequest, PbTxnRequest};
use prost_011::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Snapshot,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot, watch};

use super::log::RaftLog;
use super::members::Members;
use super::node::Command;
use super::size::{SizeInUse, SizeMeter};
use super::stages::Stages;
use super::tokens::SimpleTokens;
use super::types::{codec, ApplyError, ConfChangeContext, MemberNode, Proposal, Request, Response};
use crate::{RaftError as Error, Result};
use ferrokv_storage::auth::{Access, AuthFailure, AuthState};
use ferrokv_storage::mvcc::{MvccStore, Requests};
use ferrokv_storage::StorageError as Store;

const APPLIED_KEY: &str = "raft/applied";
const CONF_STATE_KEY: &str = "raft/conf_state";
const MEMBER_NODE_PREFIX: &str = "raft/member/";
const REMOVED_PREFIX: &str = "raft/removed/";
const MEMBER_ATTRIBUTES_PREFIX: &str = "member/";
const ALARM_PREFIX: &str = "alarm/";
/// What a data dir of ferrokv before its Raft engine changed (openraft) holds.
const OPENRAFT_MEMBERSHIP_KEY: &str = "raft/membership";

/// How long applied state may stay only in the page cache before a durable commit.
const DURABLE_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How many bytes of entries may be applied by commits that are not durable. redb cannot reuse
/// pages freed since its last durable commit, so this bounds the garbage that counts against
/// the backend quota and grows the file.
const DURABLE_COMMIT_BYTES: usize = 256 * 1024;
/// Entries kept in the log behind a compaction, so that a member a little behind catches up
/// from the log rather than a snapshot (etcd's SnapshotCatchUpEntries); never more than
/// `--snapshot-count`.
const CATCH_UP_ENTRIES: u64 = 5000;
/// Batches of committed entries that queued up while the apply stage was busy are applied
/// together, in one store transaction, up to these limits: a transaction's commit costs far
/// more than one more entry in it, so under load this is what keeps applying ahead of Raft.
const MAX_COALESCED_ENTRIES: usize = 4096;
const MAX_COALESCED_BYTES: usize = 8 * 1024 * 1024;

/// The proposals this member waits for, by proposal ID; the apply stage answers them.
pub type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response>>>>>;

/// What a member published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A committed entry, with the configuration after it when it is a configuration change (Raft
/// applied the change when the Ready loop handed the entry over).
pub struct Committed {
    pub entry: Entry,
    pub conf_state: Option<ConfState>,
}

pub enum ApplyTask {
    Entries {
        batch: Vec<Committed>,
        /// When the Ready loop handed the batch over.
        committed_at: Instant,
    },
    /// Replace the store with a received snapshot; `done` once it is durable.
    Install {
        snapshot: Snapshot,
        done: std_mpsc::Sender<Result<()>>,
    },
    /// Build a snapshot for a member too far behind and offer it to the log.
    BuildSnapshot,
    Defragment(oneshot::Sender<Result<()>>),
}

/// What the store had applied when the member started.
pub struct AppliedState {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// The state machine as the rest of the member sees it: applied state, events, and the apply
/// stage's queue.
#[derive(Clone)]
pub struct StateMachine {
    store: MvccStore,
    tasks: std_mpsc::Sender<ApplyTask>,
    events: broadcast::Sender<Arc<Vec<PbEvent>>>,
    applied: watch::Receiver<u64>,
    size_in_use: SizeInUse,
    /// Set when applying failed: the member cannot go on.
    failed: watch::Receiver<Option<String>>,
    auth: AuthView,
    alarms: AlarmView,
    tokens: SimpleTokens,
}

/// The auth store as of the last applied batch, for the checks made outside the apply stage.
type AuthView = Arc<RwLock<Arc<AuthState>>>;

/// The active alarms as of the last applied batch, as (member ID, alarm type) pairs: every
/// write checks the NOSPACE alarm, which must not cost it a read transaction.
type AlarmView = Arc<RwLock<Arc<Vec<(u64, i32)>>>>;

/// Everything the apply thread owns.
struct Applier {
    store: MvccStore,
    member_id: u64,
    members: Members,
    waiters: Waiters,
    log: RaftLog,
    commands: std_mpsc::Sender<Command>,
    events: broadcast::Sender<Arc<Vec<PbEvent>>>,
    applied: watch::Sender<u64>,
    size_in_use: SizeInUse,
    /// Measures the size in use, off this thread, when told it may have changed.
    size_meter: SizeMeter,
    /// A task taken from the queue while coalescing batches of entries, to run next.
    held_task: Option<ApplyTask>,
    commit_duration: prometheus::Histogram,
    stages: Stages,
    snapshot_count: u64,
    last_durable: Instant,
    /// Bytes of entries applied since the last durable commit.
    undurable_bytes: usize,
    /// The applied index at the last durable commit that allowed a compaction.
    last_snapshot: u64,
    /// Set while a snapshot is being built: Raft asks again at every probe of a member that
    /// is behind (every heartbeat), and each build dumps the whole store.
    building_snapshot: Arc<AtomicBool>,
    removed: watch::Sender<bool>,
    /// The auth store as applying changes it; published to `auth_view` after each commit.
    auth: AuthState,
    auth_view: AuthView,
    /// The alarms the store holds; refreshed after a batch that raised or cleared one.
    alarm_view: AlarmView,
    tokens: SimpleTokens,
}

/// Reads the applied state the store holds; refuses a data dir of the openraft engine.
pub fn applied_state(store: &MvccStore) -> Result<AppliedState> {
    if store.meta(OPENRAFT_MEMBERSHIP_KEY)?.is_some() {
        return Err(Error::Storage(Store::DataDir(
            "this data dir was written by a ferrokv release before its Raft engine changed and cannot be started by this one; move its data: `etcdctl snapshot save` with the old release, then `ferrokv snapshot restore` into new data dirs".into(),
        )));
    }
    let (index, term) = match store.meta(APPLIED_KEY)? {
        Some(bytes) => codec::decode(&bytes).map_err(Store::MvccCorrupt)?,
        None => (0, 0),
    };
    let conf_state = match store.meta(CONF_STATE_KEY)? {
        Some(bytes) => {
            ConfState::decode(bytes.as_slice()).map_err(|e| Store::MvccCorrupt(e.to_string()))?
        }
        None => ConfState::default(),
    };
    Ok(AppliedState {
        index,
        term,
        conf_state,
    })
}

/// The applied index and term recorded in a store's metadata (as
/// [`MvccStore::contents`](ferrokv_storage::mvcc::MvccStore::contents) reads it), so that a
/// snapshot file names the index its keys were read at; (0, 0) if nothing was applied.
pub fn applied_in_meta(meta: &[(String, Vec<u8>)]) -> Result<(u64, u64)> {
    match meta.iter().find(|(key, _)| key == APPLIED_KEY) {
        Some((_, bytes)) => Ok(codec::decode(bytes).map_err(Store::MvccCorrupt)?),
        None => Ok((0, 0)),
    }
}

/// The members and removed IDs the store records.
fn read_members(store: &MvccStore) -> Result<(BTreeMap<u64, MemberNode>, BTreeSet<u64>)> {
    let mut nodes = BTreeMap::new();
    for (key, value) in store.meta_with_prefix(MEMBER_NODE_PREFIX)? {
        let id = parse_id(&key[MEMBER_NODE_PREFIX.len()..], &key)?;
        nodes.insert(id, codec::decode(&value).map_err(Store::MvccCorrupt)?);
    }
    let mut removed = BTreeSet::new();
    for (key, _) in store.meta_with_prefix(REMOVED_PREFIX)? {
        removed.insert(parse_id(&key[REMOVED_PREFIX.len()..], &key)?);
    }
    Ok((nodes, removed))
}

/// The alarms the store records, as (member ID, alarm type) pairs.
fn read_alarms(store: &MvccStore) -> Result<Vec<(u64, i32)>> {
    let mut out = Vec::new();
    for (key, _) in store.meta_with_prefix(ALARM_PREFIX)? {
        let rest = &key[ALARM_PREFIX.len()..];
        let parsed = rest.split_once('/').and_then(|(member, alarm)| {
            Some((u64::from_str_radix(member, 16).ok()?, alarm.parse().ok()?))
        });
        match parsed {
            Some(pair) => out.push(pair),
            None => return Err(Store::Backend(format!("bad alarm key {key}")).into()),
        }
    }
    Ok(out)
}

fn parse_id(text: &str, key: &str) -> Result<u64> {
    u64::from_str_radix(text, 16)
        .map_err(|e| Store::MvccCorrupt(format!("bad key {key}: {e}")).into())
}

/// The parts the apply stage is started with.
pub struct ApplyParts {
    pub store: MvccStore,
    pub member_id: u64,
    pub members: Members,
    pub waiters: Waiters,
    pub log: RaftLog,
    pub commands: std_mpsc::Sender<Command>,
    pub commit_duration: prometheus::Histogram,
    pub stages: Stages,
    pub snapshot_count: u64,
    /// `--auth-token-ttl`: how long a simple token lives without use.
    pub token_ttl: Duration,
}

impl StateMachine {
    /// Starts the apply thread. Returns the handle and a receiver that turns true once this
    /// member applied its own removal.
    pub fn start(parts: ApplyParts) -> Result<(StateMachine, watch::Receiver<bool>)> {
        let ApplyParts {
            store,
            member_id,
            members,
            waiters,
            log,
            commands,
            commit_duration,
            stages,
            snapshot_count,
            token_ttl,
        } = parts;
        let auth = AuthState::load(&store)?;
        let auth_view: AuthView = Arc::new(RwLock::new(Arc::new(auth.clone())));
        let alarm_view: AlarmView = Arc::new(RwLock::new(Arc::new(read_alarms(&store)?)));
        let tokens = SimpleTokens::new(token_ttl);
        let applied_now = applied_state(&store)?;
        let (nodes, removed_ids) = read_members(&store)?;
        members.reset(nodes, removed_ids);
        let (tasks, queue) = std_mpsc::channel();
        let (events, _) = broadcast::channel(1024);
        let (applied, applied_rx) = watch::channel(applied_now.index);
        let (failed_tx, failed) = watch::channel(None);
        let (removed, removed_rx) = watch::channel(false);
        let size_in_use = SizeInUse::default();
        let machine = StateMachine {
            store: store.clone(),
            tasks,
            events: events.clone(),
            applied: applied_rx,
            size_in_use: size_in_use.clone(),
            failed,
            auth: auth_view.clone(),
            alarms: alarm_view.clone(),
            tokens: tokens.clone(),
        };
        size_in_use.measure(&machine.store)?;
        let size_meter = SizeMeter::start(
            store.clone(),
            size_in_use.clone(),
            stages.size_measure.clone(),
        )?;
        let mut applier = Applier {
            store,
            member_id,
            members,
            waiters,
            log,
            commands,
            events,
            applied,
            size_in_use,
            size_meter,
            held_task: None,
            commit_duration,
            stages,
            snapshot_count: snapshot_count.max(1),
            last_durable: Instant::now(),
            undurable_bytes: 0,
            last_snapshot: applied_now.index,
            building_snapshot: Arc::new(AtomicBool::new(false)),
            removed,
            auth,
            auth_view,
            alarm_view,
            tokens,
        };
        std::thread::Builder::new()
            .name("ferrokv-apply".into())
            .spawn(move || {
                while let Some(task) = applier.next_task(&queue) {
                    if let Err(e) = applier.run(task) {
                        tracing::error!(error = %e, "applying committed entries failed; the member stops");
                        let _ = failed_tx.send(Some(e.to_string()));
                        return;
                    }
                }
            })
            .map_err(|e| Store::Backend(format!("starting the apply thread: {e}")))?;
        Ok((machine, removed_rx))
    }

    /// Queues work for the apply thread.
    pub fn submit(&self, task: ApplyTask) {
        // The thread only stops after a failure, which `failed` reports.
        let _ = self.tasks.send(task);
    }

    /// The events of every applied batch, in order (for Watch).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<Vec<PbEvent>>> {
        self.events.subscribe()
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until entry `index` has been applied, or `deadline`.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<()> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, async {
            applied.wait_for(|a| *a >= index).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Raft("the apply stage stopped".into())),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Resolves with the reason once applying has failed.
    pub async fn failed(&self) -> String {
        super::node::failure(self.failed.clone(), "apply stage").await
    }

    /// The attributes every member has published, by member ID.
    pub fn member_attributes(&self) -> Result<BTreeMap<u64, MemberAttributes>> {
        let mut out = BTreeMap::new();
        for (key, value) in self.store.meta_with_prefix(MEMBER_ATTRIBUTES_PREFIX)? {
            let id = key[MEMBER_ATTRIBUTES_PREFIX.len()..]
                .parse::<u64>()
                .map_err(|e| Store::Backend(format!("bad member key {key}: {e}")))?;
            out.insert(id, codec::decode(&value).map_err(Store::Backend)?);
        }
        Ok(out)
    }

    /// The auth store as of the last applied entry.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The simple tokens issued by applied Authenticate requests.
    pub fn tokens(&self) -> &SimpleTokens {
        &self.tokens
    }

    /// The active alarms as of the last applied batch, as (member ID, alarm type) pairs.
    pub fn alarms(&self) -> Arc<Vec<(u64, i32)>> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bytes the store's data occupies, as of the last measurement (one a second while
    /// the store changes, less often for a store so large that the walk takes over 50 ms; see
    /// `size`); what `--quota-backend-bytes` limits.
    pub fn size_in_use(&self) -> u64 {
        self.size_in_use.get()
    }

    /// Defragments the store between two applied batches, on the apply thread.
    pub async fn defragment(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(ApplyTask::Defragment(tx));
        rx.await
            .map_err(|_| Error::Raft("the apply stage stopped".into()))?
    }
}

/// What a configuration change entry asks for, in one shape for both entry types.
pub(super) fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2> {
    let data = entry.data.as_ref();
    match entry.get_entry_type() {
        EntryType::EntryConfChange => {
            let cc = ConfChange::decode(data).map_err(|e| Store::MvccCorrupt(e.to_string()))?;
            let mut single = raft::prelude::ConfChangeSingle {
                node_id: cc.node_id,
                ..Default::default()
            };
            single.set_change_type(cc.get_change_type());
            Ok(ConfChangeV2 {
                changes: vec![single],
                context: cc.context,
                ..Default::default()
            })
        }
        _ => ConfChangeV2::decode(data).map_err(|e| Store::MvccCorrupt(e.to_string()).into()),
    }
}

impl Applier {
    /// The next task, with the batches of entries queued behind a batch joined to it. `None`
    /// once the member is stopping.
    fn next_task(&mut self, queue: &std_mpsc::Receiver<ApplyTask>) -> Option<ApplyTask> {
        let task = match self.held_task.take() {
            Some(task) => task,
            None => queue.recv().ok()?,
        };
        let ApplyTask::Entries {
            mut batch,
            committed_at,
        } = task
        else {
            return Some(task);
        };
        let mut bytes: usize = batch.iter().map(|c| c.entry.data.len()).sum();
        while batch.len() < MAX_COALESCED_ENTRIES && bytes < MAX_COALESCED_BYTES {
            match queue.try_recv() {
                Ok(ApplyTask::Entries { batch: more, .. }) => {
                    bytes += more.iter().map(|c| c.entry.data.len()).sum::<usize>();
                    batch.extend(more);
                }
                Ok(other) => {
                    self.held_task = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(ApplyTask::Entries {
            batch,
            committed_at,
        })
    }

    /// Measures the size in use on this thread, for the rare changes (a defragment, an
    /// installed snapshot) whose effect Status should show as soon as they are done.
    fn measure_size_now(&self) {
        self.size_in_use
            .refresh(&self.store, &self.stages.size_measure);
    }

    fn run(&mut self, task: ApplyTask) -> Result<()> {
        match task {
            ApplyTask::Entries {
                batch,
                committed_at,
            } => {
                let started = Instant::now();
                self.stages
                    .apply_wait
                    .observe((started - committed_at).as_secs_f64());
                let result = self.apply(batch);
                self.stages.apply.observe(started.elapsed().as_secs_f64());
                result
            }
            ApplyTask::Install { snapshot, done } => {
                let result = self.install(&snapshot);
                let failed = result.as_ref().err().map(|e| e.to_string());
                let _ = done.send(result);
                match failed {
                    Some(e) => Err(Store::Backend(format!("installing a snapshot: {e}")).into()),
                    None => Ok(()),
                }
            }
            ApplyTask::BuildSnapshot => {
                self.build_snapshot();
                Ok(())
            }
            ApplyTask::Defragment(done) => {
                let result = self.store.defragment().map_err(Error::from);
                self.last_durable = Instant::now();
                self.measure_size_now();
                let _ = done.send(result);
                Ok(())
            }
        }
    }

    fn apply(&mut self, batch: Vec<Committed>) -> Result<()> {
        let Some(last) = batch.last().map(|c| (c.entry.index, c.entry.term)) else {
            return Ok(());
        };
        let mut write = self.store.begin_write()?;
        let compacted_before = write.compact_revision();
        let mut answers: Vec<(u64, Result<Response>)> = Vec::new();
        let mut members_changed = false;
        let mut alarms_changed = false;
        let mut removed_self = false;
        let mut auth = AuthApply {
            state: &mut self.auth,
            changed: false,
            tokens: &self.tokens,
        };
        // The batch's requests and metadata go through one opening of the store's tables.
        let mut requests = write.requests()?;
        for committed in &batch {
            let entry = &committed.entry;
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    // A new leader's empty entry.
                    if entry.data.is_empty() {
                        continue;
                    }
                    let proposal: Proposal =
                        codec::decode(&entry.data).map_err(Store::MvccCorrupt)?;
                    let request = &proposal.request;
                    members_changed |= request.any(&|r| matches!(r, Request::UpdateMember { .. }));
                    alarms_changed |= request.any(&|r| matches!(r, Request::Alarm { .. }));
                    let response = apply_request(&mut requests, &mut auth, &proposal.request)?;
                    if proposal.proposer == self.member_id {
                        answers.push((proposal.id, Ok(response)));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = decode_conf_change(entry)?;
                    let context: ConfChangeContext = if change.context.is_empty() {
                        ConfChangeContext::default()
                    } else {
                        codec::decode(&change.context).map_err(Store::MvccCorrupt)?
                    };
                    for single in &change.changes {
                        let id = single.node_id;
                        match single.get_change_type() {
                            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                if let Some(node) = &context.member {
                                    requests.set_meta(
                                        &format!("{MEMBER_NODE_PREFIX}{id:016x}"),
                                        &codec::encode(node),
                                    )?;
                                }
                            }
                            ConfChangeType::RemoveNode => {
                                requests.delete_meta(&format!("{MEMBER_NODE_PREFIX}{id:016x}"))?;
                                requests.delete_meta(&format!("{MEMBER_ATTRIBUTES_PREFIX}{id}"))?;
                                requests.set_meta(&format!("{REMOVED_PREFIX}{id:016x}"), &[])?;
                                if id == self.member_id {
                                    removed_self = true;
                                }
                            }
                        }
                    }
                    if let Some(conf_state) = &committed.conf_state {
                        requests.set_meta(CONF_STATE_KEY, &conf_state.encode_to_vec())?;
                    }
                    members_changed = true;
                    if context.proposer == self.member_id && context.id != 0 {
                        answers.push((
                            context.id,
                            Ok(Response::Done {
                                revision: requests.revision(),
                            }),
                        ));
                    }
                }
            }
        }
        drop(requests);
        let auth_changed = auth.changed;
        write.set_meta(APPLIED_KEY, &codec::encode(&last))?;
        let snapshot_due = last.0 >= self.last_snapshot + self.snapshot_count;
        self.undurable_bytes += batch.iter().map(|c| c.entry.data.len()).sum::<usize>();
        let durable = snapshot_due
            || self.undurable_bytes >= DURABLE_COMMIT_BYTES
            || self.last_durable.elapsed() >= DURABLE_COMMIT_INTERVAL;
        // Stale after durable commits, and after a compaction, which is what frees space: the
        // size in use (Status, the quota, an operator's defragmentation threshold) must show it
        // even when no write follows.
        let size_stale = durable || write.compact_revision() != compacted_before;
        // The robustness suite's negative control: no commit is durable but a snapshot's.
        #[cfg(feature = "failpoints")]
        let durable =
            snapshot_due || (durable && fail::eval("applySkipDurableCommit", |_| ()).is_none());
        fail::fail_point!("applyBeforeCommit");
        let timer = self.commit_duration.start_timer();
        let events = write.commit(durable)?;
        timer.observe_duration();
        fail::fail_point!("applyAfterCommit");
        if durable {
            self.last_durable = Instant::now();
            self.undurable_bytes = 0;
        }
        if size_stale {
            self.size_meter.stale();
        }
        if members_changed {
            let (nodes, removed) = read_members(&self.store)?;
            self.members.reset(nodes, removed);
        }
        if auth_changed {
            self.publish_auth();
        }
        if alarms_changed {
            self.publish_alarms()?;
        }
        if !events.is_empty() {
            // No receiver is fine: nobody is watching.
            let _ = self.events.send(Arc::new(events));
        }
        self.applied.send_replace(last.0);
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            for (id, answer) in answers {
                if let Some(waiter) = waiters.remove(&id) {
                    let _ = waiter.send(answer);
                }
            }
        }
        if snapshot_due {
            // The store holds everything up to `last` durably: the log before it may go.
            self.last_snapshot = last.0;
            let _ = self.commands.send(Command::Compact(
                last.0
                    .saturating_sub(CATCH_UP_ENTRIES.min(self.snapshot_count)),
            ));
        }
        if removed_self {
            self.removed.send_replace(true);
        }
        Ok(())
    }

    fn install(&mut self, snapshot: &Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        tracing::info!(
            index = meta.index,
            term = meta.term,
            bytes = snapshot.data.len(),
            "installing a snapshot from the leader"
        );
        fail::fail_point!("raftBeforeApplySnap");
        self.store.restore(&snapshot.data)?;
        fail::fail_point!("raftDuringApplySnap");
        // The snapshot's own metadata describes its data; record it as this member's state.
        let mut write = self.store.begin_write()?;
        write.set_meta(APPLIED_KEY, &codec::encode(&(meta.index, meta.term)))?;
        write.set_meta(CONF_STATE_KEY, &meta.get_conf_state().encode_to_vec())?;
        write.commit(true)?;
        self.last_durable = Instant::now();
        self.last_snapshot = meta.index;
        self.measure_size_now();
        let (nodes, removed) = read_members(&self.store)?;
        self.members.reset(nodes, removed);
        self.auth = AuthState::load(&self.store)?;
        // Tokens were issued against the auth store the snapshot replaced (and Authenticate
        // entries the snapshot covers were never applied here): none of them is known to the
        // members that did apply that history, so none survives.
        self.tokens.clear();
        self.publish_auth();
        self.publish_alarms()?;
        self.applied.send_replace(meta.index);
        Ok(())
    }

    fn publish_auth(&self) {
        *self.auth_view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(self.auth.clone());
    }

    fn publish_alarms(&self) -> Result<()> {
        let alarms = Arc::new(read_alarms(&self.store)?);
        *self.alarm_view.write().unwrap_or_else(|p| p.into_inner()) = alarms;
        Ok(())
    }

    /// Dumps the store on a thread of its own (a read transaction is a consistent cut, and
    /// applying goes on meanwhile) and offers the result to the log.
    fn build_snapshot(&mut self) {
        if self.building_snapshot.swap(true, Ordering::AcqRel) {
            return;
        }
        let building = self.building_snapshot.clone();
        let store = self.store.clone();
        let log = self.log.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrokv-snapshot".into())
            .spawn(move || {
                let built = store
                    .snapshot_with_meta(&[APPLIED_KEY, CONF_STATE_KEY])
                    .and_then(|(data, meta)| {
                        let (index, term): (u64, u64) = match &meta[0] {
                            Some(bytes) => codec::decode(bytes).map_err(Store::MvccCorrupt)?,
                            None => (0, 0),
                        };
                        let conf_state = match &meta[1] {
                            Some(bytes) => ConfState::decode(bytes.as_slice())
                                .map_err(|e| Store::MvccCorrupt(e.to_string()))?,
                            None => ConfState::default(),
                        };
                        let mut snapshot = Snapshot {
                            data,
                            ..Default::default()
                        };
                        let metadata = snapshot.mut_metadata();
                        metadata.index = index;
                        metadata.term = term;
                        metadata.set_conf_state(conf_state);
                        Ok(snapshot)
                    });
                match built {
                    Ok(snapshot) => {
                        tracing::info!(
                            index = snapshot.get_metadata().index,
                            bytes = snapshot.data.len(),
                            "built a snapshot for a member that is behind"
                        );
                        log.offer_snapshot(snapshot);
                    }
                    Err(e) => tracing::warn!(error = %e, "building a snapshot failed"),
                }
                building.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.building_snapshot.store(false, Ordering::Release);
            tracing::warn!(error = %e, "starting the snapshot thread failed");
        }
    }
}

/// The auth store as one batch applies it.
struct AuthApply<'a> {
    state: &'a mut AuthState,
    /// Whether the batch changed the state, which is then published after the commit.
    changed: bool,
    tokens: &'a SimpleTokens,
}

/// Whether `user` may make `req` against the auth store as it is now (see
/// `Request::Authorized`). Write permissions are checked here, where every member sees the same
/// state, so a permission revoked concurrently is honoured by all.
fn authorize(
    write: &Requests<'_>,
    state: &AuthState,
    user: Option<&str>,
    auth_revision: u64,
    req: &Request,
) -> ferrokv_storage::Result<()> {
    if !state.enabled {
        return Ok(());
    }
    if user.is_none_or(str::is_empty) {
        return Err(AuthFailure::UserEmpty.into());
    }
    if auth_revision < state.revision {
        return Err(AuthFailure::AuthOldRevision.into());
    }
    match req {
        Request::Put(r) => {
            state.check_put(user, r)?;
            check_lease_puts(write, state, user, r.lease)?;
        }
        Request::DeleteRange(r) => state.check_delete(user, r)?,
        Request::Txn(r) => {
            state.check_txn(user, r)?;
            check_txn_lease_puts(write, state, user, r)?;
        }
        Request::LeaseRevoke { id } => {
            for key in write.lease_keys(*id)? {
                state.check(user, &key, &[], Access::Write)?;
            }
        }
        Request::Auth(_) | Request::Alarm { .. } => state.check_admin(user)?,
        Request::Batch(requests) => {
            for r in requests {
                authorize(write, state, user, auth_revision, r)?;
            }
        }
        Request::Authorized { request, .. } => {
            authorize(write, state, user, auth_revision, request)?
        }
        Request::Compact(_)
        | Request::LeaseGrant { .. }
        | Request::Authenticate { .. }
        | Request::UpdateMember { .. }
        | Request::PublishMember { .. } => {}
    }
    Ok(())
}

/// etcd's checkLeasePuts: a Put attaching a key to `lease` needs write permission on every key
/// the lease already holds (root may do anything).
fn check_lease_puts(
    write: &Requests<'_>,
    state: &AuthState,
    user: Option<&str>,
    lease: i64,
) -> ferrokv_storage::Result<()> {
    if lease == 0 {
        return Ok(());
    }
    for key in write.lease_keys(lease)? {
        state.check(user, &key, &[], Access::Write)?;
    }
    Ok(())
}

/// The lease check of every Put in a Txn, nested transactions included, whichever branch runs.
fn check_txn_lease_puts(
    write: &Requests<'_>,
    state: &AuthState,
    user: Option<&str>,
    req: &PbTxnRequest,
) -> ferrokv_storage::Result<()> {
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(r)) => check_lease_puts(write, state, user, r.lease)?,
            Some(PbTxnOpRequest::RequestTxn(r)) => check_txn_lease_puts(write, state, user, r)?,
            _ => {}
        }
    }
    Ok(())
}

/// Applies one request inside the batch's write transaction.
fn apply_request(
    write: &mut Requests<'_>,
    auth: &mut AuthApply<'_>,
    req: &Request,
) -> ferrokv_storage::Result<Response> {
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
                responses.push(apply_request(write, auth, r)?);
            }
            Ok(Response::Batch(responses))
        }
        Request::Authorized {
            user,
            auth_revision,
            request,
        } => authorize(write, auth.state, user.as_deref(), *auth_revision, request)
            .and_then(|()| apply_request(write, auth, request)),
        Request::Auth(change) => match auth.state.apply(change) {
            Ok(()) => {
                auth.changed = true;
                if let Some(user) = change.invalidates_user() {
                    auth.tokens.invalidate_user(user);
                }
                if !auth.state.enabled {
                    auth.tokens.clear();
                }
                auth.state.save(write).map(|()| Response::Done {
                    revision: write.revision(),
                })
            }
            Err(failure) => Err(failure.into()),
        },
        Request::Authenticate {
            name,
            token,
            checked_revision,
        } => {
            let state = &auth.state;
            if !state.enabled {
                Err(AuthFailure::AuthNotEnabled.into())
            } else if *checked_revision != state.revision {
                Err(AuthFailure::AuthOldRevision.into())
            } else if !state.users.contains_key(name) {
                Err(AuthFailure::AuthFailed.into())
            } else {
                auth.tokens.assign(token, name);
                Ok(Response::Done {
                    revision: write.revision(),
                })
            }
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
        Request::UpdateMember { id, peer_urls } => {
            let key = format!("{MEMBER_NODE_PREFIX}{id:016x}");
            let updated = match write.meta(&key)? {
                Some(bytes) => {
                    let mut node: MemberNode = codec::decode(&bytes).map_err(Store::MvccCorrupt)?;
                    node.peer_urls = peer_urls.clone();
                    write.set_meta(&key, &codec::encode(&node)).map(|_| ())
                }
                // An update of a member removed meanwhile: nothing to update.
                None => Ok(()),
            };
            updated.map(|()| Response::Done {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_the_openraft_engine_is_refused_saying_how_to_move_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("db.redb")).unwrap();
        let mut write = store.begin_write().unwrap();
        write.set_meta(OPENRAFT_MEMBERSHIP_KEY, b"old").unwrap();
        write.commit(true).unwrap();
        let message = applied_state(&store).err().expect("refused").to_string();
        assert!(message.contains("`etcdctl snapshot save`"), "{message}");
        assert!(message.contains("`ferrokv snapshot restore`"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }

    use etcd_client::proto::{PbPutRequest, PbTxnRequestOp};
    use ferrokv_storage::auth::{AuthChange, PermKind, Permission};

    fn put(key: &[u8], lease: i64) -> PbPutRequest {
        PbPutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        }
    }

    /// root, and alice who may write only `a`; auth enabled.
    fn alice_writes_a() -> AuthState {
        let mut state = AuthState::default();
        let user = |name: &str| AuthChange::UserAdd {
            name: name.into(),
            password_hash: b"hash".to_vec(),
            no_password: false,
        };
        let grant = |user: &str, role: &str| AuthChange::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        for change in [
            user("root"),
            grant("root", "root"),
            user("alice"),
            AuthChange::RoleAdd { name: "w".into() },
            AuthChange::RoleGrantPermission {
                role: "w".into(),
                permission: Permission {
                    kind: PermKind::ReadWrite,
                    key: b"a".to_vec(),
                    range_end: vec![],
                },
            },
            grant("alice", "w"),
            AuthChange::Enable,
        ] {
            state.apply(&change).unwrap();
        }
        state
    }

    #[test]
    fn a_put_onto_a_lease_needs_write_permission_on_the_keys_the_lease_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("db.redb")).unwrap();
        let state = alice_writes_a();
        let mut batch = store.begin_write().unwrap();
        let mut write = batch.requests().unwrap();
        write.lease_grant(7, 60).unwrap();
        write.lease_grant(8, 60).unwrap();
        write.put(&put(b"secret", 7)).unwrap();
        write.put(&put(b"a", 8)).unwrap();
        let rev = state.revision;
        let alice = Some("alice");
        let denied = |req: &Request| {
            let err = authorize(&write, &state, alice, rev, req).unwrap_err();
            assert!(
                err.to_string().contains("permission denied"),
                "{req:?}: {err}"
            );
        };
        // Lease 7 holds `secret`, which alice may not write.
        denied(&Request::Put(put(b"a", 7)));
        let txn = |req: PbPutRequest| PbTxnRequest {
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(req)),
            }],
            ..Default::default()
        };
        denied(&Request::Txn(txn(put(b"a", 7))));
        let nested = PbTxnRequest {
            failure: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestTxn(txn(put(b"a", 7)))),
            }],
            ..Default::default()
        };
        denied(&Request::Txn(nested));
        // Lease 8 holds only `a`; no lease needs no lease check.
        authorize(&write, &state, alice, rev, &Request::Put(put(b"a", 8))).unwrap();
        authorize(&write, &state, alice, rev, &Request::Put(put(b"a", 0))).unwrap();
        authorize(&write, &state, alice, rev, &Request::Txn(txn(put(b"a", 8)))).unwrap();
        // root may do anything.
        authorize(
            &write,
            &state,
            Some("root"),
            rev,
            &Request::Put(put(b"a", 7)),
        )
        .unwrap();
    }

    /// An apply stage of member 1 on a fresh store in `dir`, and its stage histograms.
    fn start_machine(dir: &std::path::Path) -> (StateMachine, MvccStore, Stages) {
        let store = MvccStore::open(&dir.join("db.redb")).unwrap();
        let (commands, _command_queue) = std_mpsc::channel();
        let stages = Stages::new();
        let (machine, _removed) = StateMachine::start(ApplyParts {
            store: store.clone(),
            member_id: 1,
            members: Members::default(),
            waiters: Waiters::default(),
            log: RaftLog::open(&dir.join("log")).unwrap(),
            commands,
            commit_duration: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
                "test_commit_duration",
                "test",
            ))
            .unwrap(),
            stages: stages.clone(),
            snapshot_count: 10_000,
            token_ttl: Duration::from_secs(60),
        })
        .unwrap();
        (machine, store, stages)
    }

    /// A batch of one new leader's empty entry at `index`.
    fn empty_entry(index: u64) -> ApplyTask {
        let entry = Entry {
            index,
            term: 1,
            ..Default::default()
        };
        ApplyTask::Entries {
            batch: vec![Committed {
                entry,
                conf_state: None,
            }],
            committed_at: Instant::now(),
        }
    }

    #[test]
    fn batches_queued_behind_a_busy_apply_stage_share_one_store_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, store, stages) = start_machine(dir.path());
        // Holding the store's only write transaction keeps the apply stage busy with batch 1.
        let held = store.begin_write().unwrap();
        machine.submit(empty_entry(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while stages.apply_wait.get_sample_count() < 1 {
            assert!(
                Instant::now() < deadline,
                "the apply stage never took batch 1"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        machine.submit(empty_entry(2));
        machine.submit(empty_entry(3));
        drop(held);
        while machine.applied_index() < 3 {
            assert!(
                Instant::now() < deadline,
                "entries 2 and 3 were never applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            stages.apply.get_sample_count(),
            2,
            "batch 1 alone, then 2 and 3 together"
        );
        assert_eq!(applied_state(&store).unwrap().index, 3);
    }

    #[test]
    fn an_alarm_raised_inside_a_batch_of_writes_is_seen_by_the_quota_check() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, _store, _stages) = start_machine(dir.path());
        assert!(machine.alarms().is_empty());
        // The proposer batches an alarm with whatever writes were queued beside it.
        let put = PbPutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let request = Request::Batch(vec![
            Request::Put(put),
            Request::Alarm {
                activate: true,
                member_id: 7,
                alarm: 1,
            },
        ]);
        let entry = Entry {
            index: 1,
            term: 1,
            data: codec::encode(&Proposal {
                proposer: 2,
                id: 1,
                request,
            }),
            ..Default::default()
        };
        machine.submit(ApplyTask::Entries {
            batch: vec![Committed {
                entry,
                conf_state: None,
            }],
            committed_at: Instant::now(),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while machine.applied_index() < 1 {
            assert!(Instant::now() < deadline, "entry 1 was never applied");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*machine.alarms(), [(7, 1)]);
    }

    #[test]
    fn installing_a_snapshot_ends_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let (machine, _store, _stages) = start_machine(dir.path());
        machine.tokens().assign("t", "alice");
        assert_eq!(machine.tokens().user_of("t").as_deref(), Some("alice"));

        let leader = MvccStore::open(&dir.path().join("leader.redb")).unwrap();
        let mut snapshot = Snapshot {
            data: leader.snapshot().unwrap(),
            ..Default::default()
        };
        snapshot.mut_metadata().index = 5;
        snapshot.mut_metadata().term = 1;
        let (done, installed) = std_mpsc::channel();
        machine.submit(ApplyTask::Install { snapshot, done });
        installed.recv().unwrap().unwrap();
        assert_eq!(machine.tokens().user_of("t"), None);
    }

    #[test]
    fn a_new_store_has_applied_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("db.redb")).unwrap();
        let applied = applied_state(&store).unwrap();
        assert_eq!((applied.index, applied.term), (0, 0));
        assert_eq!(applied.conf_state, ConfState::default());
    }
}
