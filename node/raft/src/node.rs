//! The Ready loop: one thread that owns tikv's `RawNode` and drives it the way etcd's raftNode
//! drives etcd's raft.
//!
//! Everything reaches the node as a `Command` on one channel — messages from peers, proposals,
//! read-index requests, ticks' worth of time, and the WAL's notices that writes are durable.
//! For each Ready:
//! - messages a leader may send at once go to the transport before anything is written, so the
//!   leader's fsync and its followers' run in parallel (Raft thesis §10.2.1);
//! - new entries and the hard state go to the WAL, which group-commits them and notifies the
//!   loop (`Command::Persisted`); messages that must follow persistence (a follower's
//!   acknowledgements, votes) are held until every earlier write is durable. The leader's
//!   writes go to the WAL's writer thread; a follower writes on this thread, as etcd's raftNode
//!   does, since it has nothing to send until they are durable;
//! - a received snapshot is installed by the apply stage before the log records it;
//! - committed entries go to the apply stage; configuration changes are applied to Raft here,
//!   in log order, as they are handed over.
//!
//! The leader's loop never blocks on the WAL or on applying (only a snapshot install waits), so
//! its heartbeats keep their rhythm while storage is busy; a follower's loop waits for its own
//! WAL writes, one fsync at a time, and gathers what arrives meanwhile into its next Ready.
//!
//! Failpoints (failpoint builds only; docs/robustness.md): `raftAfterSave` when the WAL reports
//! a Ready durable, before its held messages (a follower's acknowledgements) are sent;
//! `raftAfterApplySnap` after the apply stage installed a snapshot, before the log records it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeV2, Entry, EntryType, HardState, Message};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use super::apply::{decode_conf_change, ApplyTask, Committed, StateMachine};
use super::log::RaftLog;
use super::stages::Stages;
use super::transport::Transport;
use crate::{RaftError as Error, Result};

/// What the Ready loop is asked to do.
pub enum Command {
    /// A message from a peer.
    Step(Box<Message>),
    Propose {
        data: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    /// A configuration change; what it concerns travels in the change's own context.
    ProposeConfChange {
        change: ConfChangeV2,
        done: oneshot::Sender<Result<()>>,
    },
    /// Asks for a read index; answered with the index once the leader has confirmed it
    /// with a quorum. Never answered if leadership changes meanwhile: the caller retries.
    ReadIndex(oneshot::Sender<u64>),
    TransferLeader(u64),
    Campaign,
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    /// Every WAL write of Ready `number` and before is durable.
    Persisted(u64),
    /// The store holds everything up to the index durably (minus catch-up entries): compact.
    Compact(u64),
}

/// Progress of one member as the leader tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    pub matched: u64,
    pub recent_active: bool,
}

/// What Raft says of this member now; published after every turn of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub term: u64,
    /// The leader this member follows, or itself; 0 when it knows of none.
    pub leader: u64,
    pub role: StateRole,
    pub commit: u64,
    pub last_index: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Filled on the leader only.
    pub progress: BTreeMap<u64, PeerProgress>,
    /// A configuration change is in flight until the applied index reaches this.
    pub pending_conf_index: u64,
    /// Since when this member has known of no leader.
    pub leaderless_since: Option<Instant>,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }

    pub fn leader(&self) -> Option<u64> {
        (self.leader != 0).then_some(self.leader)
    }
}

/// How the Ready loop is tuned.
pub struct LoopOptions {
    pub tick: Duration,
    pub stages: Stages,
}

/// The rest of the member's handle on the Ready loop.
#[derive(Clone)]
pub struct RaftHandle {
    commands: Sender<Command>,
    status: watch::Receiver<RaftStatus>,
    failed: watch::Receiver<Option<String>>,
}

impl RaftHandle {
    pub fn send(&self, command: Command) {
        // The loop only stops after a failure, which `failed` reports.
        let _ = self.commands.send(command);
    }

    pub fn commands(&self) -> Sender<Command> {
        self.commands.clone()
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Reads from the status without copying it (its member sets and progress map): for the
    /// hot paths that need a field or two, such as the term in every response header. `read`
    /// runs under the status's read lock, so it should only pick fields out.
    pub fn read_status<R>(&self, read: impl FnOnce(&RaftStatus) -> R) -> R {
        read(&self.status.borrow())
    }

    pub fn status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Appends `data` to the log through Raft (forwarded to the leader by a follower). `Ok`
    /// means handed to Raft, not committed; an error means it was certainly not proposed.
    pub async fn propose(&self, data: Vec<u8>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Propose { data, done });
        rx.await.unwrap_or(Err(Error::Raft("raft stopped".into())))
    }

    pub async fn propose_conf_change(&self, change: ConfChangeV2) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Command::ProposeConfChange { change, done });
        rx.await.unwrap_or(Err(Error::Raft("raft stopped".into())))
    }

    /// One read-index round; `None` if no answer came within `wait`.
    pub async fn read_index(&self, wait: Duration) -> Option<u64> {
        let (done, rx) = oneshot::channel();
        self.send(Command::ReadIndex(done));
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }

    /// Resolves with the reason once the loop has failed.
    pub async fn failed(&self) -> String {
        failure(self.failed.clone(), "Raft loop").await
    }
}

/// Resolves with the reason `stage` reported for failing, or once it stopped without one (a
/// panic): while the member runs, a stage stops only by failing.
pub(super) async fn failure(mut failed: watch::Receiver<Option<String>>, stage: &str) -> String {
    match failed.wait_for(|f| f.is_some()).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => format!("the {stage} stopped without saying why"),
    }
}

/// The context of this member's `number`th read-index request. The leader keeps its pending
/// reads by context and ignores a request whose context is already pending, so contexts must
/// differ across members, not only within one: with a bare counter, two members' reads of the
/// same number met at the leader and one of them went unanswered until its 500 ms retry.
fn read_context(member: u64, number: u64) -> Vec<u8> {
    let mut context = Vec::with_capacity(16);
    context.extend_from_slice(&member.to_be_bytes());
    context.extend_from_slice(&number.to_be_bytes());
    context
}

/// Messages held until the writes of their Ready (and of every earlier one) are durable.
struct HeldMessages {
    number: u64,
    messages: Vec<Message>,
}

struct ReadyLoop {
    node: RawNode<RaftLog>,
    log: RaftLog,
    state_machine: StateMachine,
    transport: Transport,
    /// Ready numbers whose WAL writes are not yet durable, in order, with when they were
    /// handed to the WAL.
    writing: VecDeque<(u64, Instant)>,
    /// On the leader: the index of each entry it proposed and not yet committed, with when.
    proposed: VecDeque<(u64, Instant)>,
    stages: Stages,
    held: VecDeque<HeldMessages>,
    last_hard_state: HardState,
    reads: HashMap<Vec<u8>, oneshot::Sender<u64>>,
    next_read: u64,
    status: watch::Sender<RaftStatus>,
    leaderless_since: Option<Instant>,
}

/// Starts the Ready loop on a thread of its own.
pub fn spawn(
    node: RawNode<RaftLog>,
    commands: (Sender<Command>, Receiver<Command>),
    state_machine: StateMachine,
    transport: Transport,
    options: LoopOptions,
) -> Result<RaftHandle> {
    let log = node.store().clone();
    let last_hard_state = log.hard_state();
    let tick = options.tick;
    let (sender, receiver) = commands;
    let mut ready_loop = ReadyLoop {
        node,
        log,
        state_machine,
        transport,
        writing: VecDeque::new(),
        proposed: VecDeque::new(),
        stages: options.stages,
        held: VecDeque::new(),
        last_hard_state,
        reads: HashMap::new(),
        next_read: 0,
        status: watch::channel(placeholder_status()).0,
        leaderless_since: Some(Instant::now()),
    };
    let status_rx = ready_loop.status.subscribe();
    ready_loop.publish_status();
    let (failed_tx, failed) = watch::channel(None);
    std::thread::Builder::new()
        .name("ferrokv-raft".into())
        .spawn(move || {
            if let Err(e) = ready_loop.run(receiver, tick) {
                tracing::error!(error = %e, "the Raft loop failed; the member stops");
                let _ = failed_tx.send(Some(e.to_string()));
            }
        })
        .map_err(|e| Error::Raft(format!("starting the Raft thread: {e}")))?;
    Ok(RaftHandle {
        commands: sender,
        status: status_rx,
        failed,
    })
}

fn placeholder_status() -> RaftStatus {
    RaftStatus {
        id: 0,
        term: 0,
        leader: 0,
        role: StateRole::Follower,
        commit: 0,
        last_index: 0,
        voters: BTreeSet::new(),
        learners: BTreeSet::new(),
        progress: BTreeMap::new(),
        pending_conf_index: 0,
        leaderless_since: None,
    }
}

/// Commands handled before the loop looks at the Ready again: bounds the work of one turn.
const COMMANDS_PER_TURN: usize = 4096;

impl ReadyLoop {
    fn run(&mut self, commands: Receiver<Command>, tick: Duration) -> Result<()> {
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(command) => {
                    self.handle(command)?;
                    for _ in 0..COMMANDS_PER_TURN {
                        match commands.try_recv() {
                            Ok(command) => self.handle(command)?,
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                // A loop held up (a snapshot install) does not tick twice to catch up.
                next_tick = (next_tick + tick).max(now);
                self.reads.retain(|_, waiter| !waiter.is_closed());
            }
            self.on_ready()?;
            self.publish_status();
        }
    }

    fn handle(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Step(message) => {
                // Messages from unknown or removed members, stale terms: Raft ignores them.
                let _ = self.node.step(*message);
            }
            Command::Propose { data, done } => {
                let result = self
                    .node
                    .propose(Vec::new(), data)
                    .map_err(|_| Error::NoLeader);
                if result.is_ok() && self.node.raft.state == StateRole::Leader {
                    let index = self.node.raft.raft_log.last_index();
                    self.proposed.push_back((index, Instant::now()));
                }
                let _ = done.send(result);
            }
            Command::ProposeConfChange { change, done } => {
                let result =
                    self.node
                        .propose_conf_change(Vec::new(), change)
                        .map_err(|e| match e {
                            raft::Error::ProposalDropped => Error::NoLeader,
                            other => Error::Raft(other.to_string()),
                        });
                let _ = done.send(result);
            }
            Command::ReadIndex(done) => {
                self.next_read += 1;
                let context = read_context(self.node.raft.id, self.next_read);
                self.reads.insert(context.clone(), done);
                self.node.read_index(context);
            }
            Command::TransferLeader(target) => self.node.transfer_leader(target),
            Command::Campaign => {
                let _ = self.node.campaign();
            }
            Command::Unreachable(id) => self.node.report_unreachable(id),
            Command::SnapshotSent { to, ok } => {
                self.log.forget_snapshot();
                self.node.report_snapshot(
                    to,
                    if ok {
                        raft::SnapshotStatus::Finish
                    } else {
                        raft::SnapshotStatus::Failure
                    },
                );
            }
            Command::Persisted(number) => {
                fail::fail_point!("raftAfterSave");
                while let Some((_, since)) =
                    self.writing.front().filter(|(n, _)| *n <= number).copied()
                {
                    self.stages.append.observe(since.elapsed().as_secs_f64());
                    self.writing.pop_front();
                }
                self.release_held();
            }
            Command::Compact(index) => self.log.compact(index),
        }
        Ok(())
    }

    fn on_ready(&mut self) -> Result<()> {
        if self.log.take_snapshot_request() {
            self.state_machine.submit(ApplyTask::BuildSnapshot);
        }
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        let number = ready.number();
        self.transport.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let (done, installed) = std::sync::mpsc::channel();
            self.state_machine.submit(ApplyTask::Install {
                snapshot: snapshot.clone(),
                done,
            });
            installed
                .recv()
                .unwrap_or_else(|_| Err(Error::Raft("the apply stage stopped".into())))?;
            fail::fail_point!("raftAfterApplySnap");
            let meta = snapshot.get_metadata();
            self.log.set_conf_state(meta.get_conf_state().clone());
            self.log.record_snapshot_blocking(meta.index, meta.term)?;
        }

        self.hand_over(ready.take_committed_entries())?;
        for read in ready.take_read_states() {
            if let Some(waiter) = self.reads.remove(&read.request_ctx) {
                let _ = waiter.send(read.index);
            }
        }

        let handed_over = Instant::now();
        let writes = if self.node.raft.state == StateRole::Leader {
            self.persist(&mut ready)
        } else {
            // A follower sends nothing for this Ready until it is durable: it writes it on this
            // thread, as etcd's raftNode does, sparing two thread wake-ups (to the WAL's writer
            // and back) on the path of every acknowledgement. The leader hands its writes to
            // the writer thread and goes on handling its followers' answers meanwhile.
            let log = self.log.clone();
            log.write_here(|| self.persist(&mut ready))
        };
        let held = ready.take_persisted_messages();
        self.node.advance_append_async(ready);
        if writes {
            self.writing.push_back((number, handed_over));
        }
        self.held.push_back(HeldMessages {
            number,
            messages: held,
        });
        self.release_held();
        Ok(())
    }

    /// Sends the Ready's entries and hard state to the WAL; whether anything needs a sync.
    fn persist(&mut self, ready: &mut raft::Ready) -> bool {
        let number = ready.number();
        let entries = ready.take_entries();
        let mut writes = !entries.is_empty();
        if let Some(hs) = ready.hs().cloned() {
            let vote_changed =
                hs.term != self.last_hard_state.term || hs.vote != self.last_hard_state.vote;
            let done = (vote_changed && entries.is_empty()).then(|| self.persisted_notice(number));
            writes |= done.is_some();
            self.log.save_hard_state(&hs, vote_changed, done);
            self.last_hard_state = hs;
        }
        if !entries.is_empty() {
            self.log.append(&entries, self.persisted_notice(number));
        }
        writes
    }

    /// A WAL completion that tells the loop Ready `number` is durable; a failed write stops
    /// the member, since Raft cannot go on without its log.
    fn persisted_notice(&self, number: u64) -> Box<dyn FnOnce(ferrokv_storage::Result<()>) + Send> {
        let commands = self.transport.commands();
        Box::new(move |result| match result {
            Ok(()) => {
                let _ = commands.send(Command::Persisted(number));
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the Raft log failed; the member stops");
                std::process::exit(1);
            }
        })
    }

    /// Sends the held messages of every Ready whose writes, and all earlier ones, are durable.
    fn release_held(&mut self) {
        let oldest_writing = self.writing.front().map(|(number, _)| *number);
        let mut released = None;
        while let Some(front) = self.held.front() {
            if oldest_writing.is_some_and(|w| front.number >= w) {
                break;
            }
            let held = self.held.pop_front().expect("front exists");
            self.transport.send(held.messages);
            released = Some(held.number);
        }
        if let Some(number) = released {
            self.node.on_persist_ready(number);
        }
    }

    /// Gives committed entries to the apply stage, applying configuration changes to Raft.
    fn hand_over(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut batch = Vec::with_capacity(entries.len());
        for entry in entries {
            let conf_state = match entry.get_entry_type() {
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = decode_conf_change(&entry)?;
                    match self.node.apply_conf_change(&change) {
                        Ok(conf_state) => {
                            self.log.set_conf_state(conf_state.clone());
                            Some(conf_state)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, index = entry.index, "Raft refused a committed configuration change");
                            None
                        }
                    }
                }
                EntryType::EntryNormal => None,
            };
            batch.push(Committed { entry, conf_state });
        }
        while let Some((_, since)) = self.proposed.front().filter(|(i, _)| *i <= last).copied() {
            self.stages.commit.observe(since.elapsed().as_secs_f64());
            self.proposed.pop_front();
        }
        self.state_machine.submit(ApplyTask::Entries {
            batch,
            committed_at: Instant::now(),
        });
        self.node.advance_apply_to(last);
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            // What it proposed as leader may never commit.
            self.proposed.clear();
        }
        if raft.leader_id == 0 {
            self.leaderless_since.get_or_insert_with(Instant::now);
        } else {
            self.leaderless_since = None;
        }
        let progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| {
                    (
                        *id,
                        PeerProgress {
                            matched: pr.matched,
                            recent_active: pr.recent_active,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = RaftStatus {
            id: raft.id,
            term: raft.term,
            leader: raft.leader_id,
            role: raft.state,
            commit: raft.raft_log.committed,
            last_index: raft.raft_log.last_index(),
            voters: raft.prs().conf().voters().ids().iter().collect(),
            learners: raft.prs().conf().learners().iter().copied().collect(),
            progress,
            pending_conf_index: raft.pending_conf_index,
            leaderless_since: self.leaderless_since,
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::read_context;

    #[test]
    fn read_index_contexts_of_different_members_never_collide() {
        for number in [1, 2, 1000] {
            assert_ne!(read_context(1, number), read_context(2, number));
        }
        assert_ne!(read_context(1, 1), read_context(1, 2));
    }
}
