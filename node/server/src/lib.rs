//! ferrokv-server: turns client requests into Raft proposals and serves reads.
//!
//! A write is proposed to Raft on whichever member received it (a follower's Raft forwards it
//! to the leader as a Raft message) and answered once this member has applied it, so a client
//! reading from the member it wrote through sees its write. A proposal is made once: if its
//! outcome cannot be known (the leader changed, the request timed out) the client is told so
//! with etcd's error and nothing is proposed again. Linearizable reads wait for a read index
//! the leader confirmed with a quorum (ReadIndex); serializable reads are served from the
//! local store as it is.

pub mod auth;
pub mod compactor;
pub mod config;
pub mod jwt;
pub mod lease;
pub mod maintenance;
pub mod membership;
pub mod metrics;
pub mod proposer;
pub mod read_index;
pub mod watch;

mod error;

pub use error::{Result, ServerError};
/// What a write asks for and what applying it yields: the server's request vocabulary.
pub use ferrokv_raft::types::{ApplyError, Request, Response};
/// A range of keys, as requests name them.
pub use ferrokv_storage::mvcc::KeySpan;
/// The storage failures a `ServerError::Storage` carries.
pub use ferrokv_storage::StorageError;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::proto::{PbRangeRequest, PbRangeResponse, PbResponseHeader};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::ServerError as Error;
use ferrokv_raft::apply::{StateMachine, Waiters};
use ferrokv_raft::members::Members;
use ferrokv_raft::node::{RaftHandle, RaftStatus};
use ferrokv_raft::transport::PeerNetwork;
use ferrokv_raft::types::{codec, Proposal};
use ferrokv_raft::RaftError;
use ferrokv_storage::identity::Identity;
use ferrokv_storage::mvcc::MvccStore;

/// The version of etcd's API this server speaks, reported by Status and /version.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// How long one read-index round may go unanswered before it is asked again (etcd's
/// readIndexRetryTime): a round is lost when leadership changes under it.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// One member of the cluster as MemberList reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// This member's Raft state as clients see it (etcd's `RaftStatusGetter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftSummary {
    /// The leader this member follows, or itself; 0 when it knows of none.
    pub leader: u64,
    pub term: u64,
    /// The committed index.
    pub commit: u64,
    pub is_learner: bool,
}

/// What a server is made of, from `run`.
pub struct ServerParts {
    pub raft: RaftHandle,
    pub store: MvccStore,
    pub state_machine: StateMachine,
    pub network: PeerNetwork,
    pub members: Members,
    pub waiters: Waiters,
    pub identity: Identity,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    raft: RaftHandle,
    store: MvccStore,
    state_machine: StateMachine,
    network: PeerNetwork,
    members: Members,
    waiters: Waiters,
    identity: Identity,
    config: Arc<ServerConfig>,
    request_timeout: Duration,
    lease_clock: std::sync::Mutex<lease::LeaseClock>,
    lease_ids: lease::LeaseIds,
    metrics: Arc<Metrics>,
    proposer: proposer::Proposer,
    read_barrier: read_index::ReadBarrier,
    next_proposal: AtomicU64,
    /// One membership change at a time.
    membership: tokio::sync::Mutex<()>,
}

/// Removes a proposal's waiter when its caller stops waiting, whatever the reason.
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Server {
    pub fn new(
        parts: ServerParts,
    ) -> (
        Server,
        proposer::ProposerQueue,
        read_index::ReadBarrierQueue,
    ) {
        let ServerParts {
            raft,
            store,
            state_machine,
            network,
            members,
            waiters,
            identity,
            config,
            metrics,
        } = parts;
        // etcd: 5s plus the time of two elections.
        let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;
        let (proposer, queue) = proposer::proposer();
        let (read_barrier, reads) = read_index::read_barrier();
        // Proposal IDs start from the clock, so that an entry proposed before a restart never
        // answers a proposal made after it.
        let first_proposal = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_millis() as u64) << 20)
            .unwrap_or(1);
        let server = Server {
            inner: Arc::new(Inner {
                raft,
                store,
                state_machine,
                network,
                members,
                waiters,
                lease_ids: lease::LeaseIds::new(identity.member_id),
                identity,
                config,
                request_timeout,
                lease_clock: Default::default(),
                metrics,
                proposer,
                read_barrier,
                next_proposal: AtomicU64::new(first_proposal),
                membership: tokio::sync::Mutex::new(()),
            }),
        };
        (server, queue, reads)
    }

    /// What Raft says of this member now.
    pub(crate) fn raft_status(&self) -> RaftStatus {
        self.inner.raft.status()
    }

    pub(crate) fn store(&self) -> &MvccStore {
        &self.inner.store
    }

    pub(crate) fn state_machine(&self) -> &StateMachine {
        &self.inner.state_machine
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> Result<i64> {
        Ok(self.inner.store.current_revision()?)
    }

    /// The revision the store is compacted to.
    pub fn compact_revision(&self) -> Result<i64> {
        Ok(self.inner.store.compact_revision()?)
    }

    /// The size of the backend file.
    pub fn db_size_bytes(&self) -> u64 {
        self.inner.store.db_size_bytes()
    }

    /// The bytes the backend holds in use (its file may be larger).
    pub fn db_size_in_use(&self) -> u64 {
        self.inner.state_machine.size_in_use()
    }

    /// The last Raft index this member applied.
    pub fn applied_index(&self) -> u64 {
        self.inner.state_machine.applied_index()
    }

    /// The Raft state Status, /metrics and the v2 headers report.
    pub fn raft_summary(&self) -> RaftSummary {
        let me = self.member_id();
        self.inner.raft.read_status(|status| RaftSummary {
            leader: status.leader,
            term: status.term,
            commit: status.commit,
            is_learner: status.learners.contains(&me),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn member_id(&self) -> u64 {
        self.inner.identity.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.network.cluster_id()
    }

    /// The header of every response: the revision is the caller's.
    pub fn header(&self, revision: i64) -> PbResponseHeader {
        PbResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id(),
            revision,
            raft_term: self.inner.raft.read_status(|status| status.term),
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.read_status(RaftStatus::leader)
    }

    /// Whether this member is in touch with a leader. A leader that loses its quorum steps
    /// down within an election timeout (check-quorum), and a follower that stops hearing from
    /// its leader forgets it when it starts a pre-vote; health and readiness go by this.
    pub fn leader_alive(&self) -> bool {
        self.leader().is_some()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.read_status(RaftStatus::is_leader)
    }

    fn peer_url_of(&self, id: u64) -> Option<String> {
        self.inner.members.peer_url(id)
    }

    /// Whether this member has known of no leader for two election timeouts: the side of a
    /// partition without a quorum, which refuses rather than waiting out the request timeout.
    fn out_of_touch(&self) -> bool {
        self.inner
            .raft
            .read_status(|status| status.leaderless_since)
            .is_some_and(|since| since.elapsed() >= 2 * self.inner.config.election_timeout)
    }

    /// The leader a proposal can go to now: this member, or a leader heard from within half an
    /// election timeout whose stream has not broken since. A proposal forwarded to a leader that has died is lost, and its client
    /// waits out the request timeout; one held back until a live leader is known is not (not
    /// proposing is always safe, proposing twice never is).
    fn leader_to_forward_to(&self) -> Option<u64> {
        let (leader, is_leader) = self
            .inner
            .raft
            .read_status(|status| (status.leader(), status.is_leader()));
        let leader = leader?;
        let live = is_leader
            || self
                .inner
                .network
                .reachable(leader, self.inner.config.election_timeout / 2);
        live.then_some(leader)
    }

    /// Waits until a leader is known; "no leader" once out of touch, or at `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<u64> {
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if self.out_of_touch() || Instant::now() >= deadline {
                return Err(Error::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes a write and returns its result once committed and applied on this member.
    /// Concurrent writes are batched into one Raft entry (see `proposer`).
    pub async fn propose(&self, req: Request) -> Result<Response> {
        let metrics = &self.inner.metrics;
        metrics.proposals_pending.inc();
        let started = std::time::Instant::now();
        let result = match self.inner.proposer.try_direct() {
            // The slot is held until the write is answered, as a batch's would be.
            Some(_slot) => self.propose_direct(req, &[started]).await,
            None => self.inner.proposer.propose(req).await,
        };
        metrics
            .stages
            .proposal
            .observe(started.elapsed().as_secs_f64());
        metrics.proposals_pending.dec();
        if result.is_err() {
            metrics.proposals_failed.inc();
        }
        result
    }

    fn next_proposal_id(&self) -> u64 {
        self.inner.next_proposal.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a waiter for proposal `id`; the guard removes it when dropped.
    fn wait_for_proposal(
        &self,
        id: u64,
    ) -> (
        oneshot::Receiver<ferrokv_raft::Result<Response>>,
        WaiterGuard<'_>,
    ) {
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        (
            rx,
            WaiterGuard {
                waiters: &self.inner.waiters,
                id,
            },
        )
    }

    /// Proposes one entry, once, and waits for this member to apply it.
    ///
    /// Raft refuses a proposal outright only when it knows of no leader (or is handing
    /// leadership over): such a proposal was never made and is tried again once a leader is
    /// known. Once Raft took it, its fate is the log's: it is answered when applied, or with
    /// "request timed out" — never proposed a second time. `queued` is when each of the
    /// requests it carries was queued.
    async fn propose_direct(
        &self,
        request: Request,
        queued: &[std::time::Instant],
    ) -> Result<Response> {
        let deadline = Instant::now() + self.inner.request_timeout;
        let id = self.next_proposal_id();
        let data = codec::encode(&Proposal {
            proposer: self.member_id(),
            id,
            request,
        });
        let (answer, _guard) = self.wait_for_proposal(id);
        loop {
            if self.leader_to_forward_to().is_some() {
                match self.inner.raft.propose(data.clone()).await {
                    Ok(()) => {
                        for since in queued {
                            let waited = since.elapsed().as_secs_f64();
                            self.inner.metrics.stages.proposal_wait.observe(waited);
                        }
                        break;
                    }
                    Err(RaftError::NoLeader) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.out_of_touch() {
                return Err(Error::NoLeader);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(_)) => Err(Error::Raft("the server is stopping".into())),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Waits until this member has applied log `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        Ok(self
            .inner
            .state_machine
            .wait_applied(index, deadline)
            .await?)
    }

    /// Makes the next local read linearizable: waits until this member has applied everything
    /// the leader had committed when the read arrived. Concurrent reads share one read index
    /// (see `read_index`).
    pub async fn read_barrier(&self) -> Result<()> {
        self.inner.read_barrier.wait().await
    }

    /// Obtains one read index — confirmed by the leader with a quorum after this call began —
    /// and waits until this member has applied it; refuses with "no leader" when cut off.
    async fn read_barrier_once(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.request_timeout;
        loop {
            if self.out_of_touch() {
                return Err(Error::NoLeader);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            if let Some(index) = self.inner.raft.read_index(READ_INDEX_RETRY).await {
                return self.wait_applied(index, deadline).await;
            }
        }
    }

    /// Serves a Range: linearizable unless the request asks for a serializable read.
    pub async fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        self.range_barrier(req).await?;
        self.range_read(req).await
    }

    /// What a Range waits for before it reads: the read barrier, unless the request asks for a
    /// serializable read. A permission check after it sees the auth store the read will.
    pub async fn range_barrier(&self, req: &PbRangeRequest) -> Result<()> {
        if !req.serializable {
            self.read_barrier().await?;
        }
        Ok(())
    }

    /// Reads a Range from the store as this member has it (after `range_barrier`).
    pub async fn range_read(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        let store = self.inner.store.clone();
        let req = req.clone();
        let mut resp = tokio::task::spawn_blocking(move || store.range(&req))
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        resp.header = Some(self.header(revision));
        Ok(resp)
    }

    /// The members as the cluster knows them, with the client URLs they published.
    pub fn members(&self) -> Result<Vec<MemberInfo>> {
        let attributes = self.inner.state_machine.member_attributes()?;
        let status = self.raft_status();
        let nodes = self.inner.members.nodes();
        let ids = status.voters.iter().chain(status.learners.iter());
        Ok(ids
            .map(|id| {
                let node = nodes.get(id).cloned().unwrap_or_default();
                let attrs = attributes.get(id);
                MemberInfo {
                    id: *id,
                    name: attrs
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| node.name.clone()),
                    peer_urls: node.peer_urls,
                    client_urls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: status.learners.contains(id),
                }
            })
            .map(|member| (member.id, member))
            .collect::<std::collections::BTreeMap<u64, MemberInfo>>()
            .into_values()
            .collect())
    }

    /// Counts leader changes as this member sees them (`etcd_server_leader_changes_seen_total`).
    pub async fn count_leader_changes(self) {
        let mut status = self.inner.raft.status_watch();
        let mut leader = None;
        loop {
            let now = status.borrow_and_update().leader();
            if now.is_some() && now != leader {
                self.inner.metrics.leader_changes_seen.inc();
            }
            leader = now;
            if status.changed().await.is_err() {
                return;
            }
        }
    }

    /// Publishes this member's name and client URLs through Raft, as etcd does on start.
    pub async fn publish_self(&self) {
        let config = &self.inner.config;
        let req = Request::PublishMember {
            id: self.member_id(),
            name: config.name.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        loop {
            let published = self
                .inner
                .state_machine
                .member_attributes()
                .ok()
                .and_then(|a| a.get(&self.member_id()).cloned());
            if published.is_some_and(|a| {
                a.name == config.name && a.client_urls == config.advertise_client_urls
            }) {
                return;
            }
            match self.propose(req.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::info!(error = %e, "publishing member attributes; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
