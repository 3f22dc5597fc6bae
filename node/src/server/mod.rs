//! The server: turns client requests into Raft proposals and serves reads.
//!
//! Writes are proposed on the leader; a follower forwards them over the peer network and
//! answers once it has applied them itself, so a client reading from the member it wrote
//! through sees its write. Linearizable reads wait for a read index confirmed by the leader
//! (ReadIndex); serializable reads are served from the local store as it is.

pub mod compactor;
pub mod lease;
pub mod maintenance;
pub mod membership;
pub mod proposer;
pub mod read_index;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::proto::{PbRangeRequest, PbRangeResponse, PbResponseHeader};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::raft::election::LeaderContact;
use crate::raft::network::PeerNetwork;
use crate::raft::peer::{ProposeReply, ReadIndexReply};
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{MemberNode, Raft, Request, Response, WriteGate};
use crate::storage::identity::Identity;
use crate::storage::mvcc::MvccStore;
use crate::{Error, Result};

/// The version of etcd's API this server speaks, reported by Status and /version.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// One member of the cluster as MemberList reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// What a server is made of, from `run`.
pub struct ServerParts {
    pub raft: Raft,
    pub store: MvccStore,
    pub state_machine: StateMachine,
    pub network: PeerNetwork,
    pub identity: Identity,
    pub config: Arc<NodeConfig>,
    pub metrics: Arc<Metrics>,
    pub write_gate: WriteGate,
    pub leader_contact: LeaderContact,
}

#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    store: MvccStore,
    state_machine: StateMachine,
    network: PeerNetwork,
    identity: Identity,
    config: Arc<NodeConfig>,
    request_timeout: Duration,
    lease_clock: std::sync::Mutex<lease::LeaseClock>,
    lease_ids: lease::LeaseIds,
    metrics: Arc<Metrics>,
    proposer: proposer::Proposer,
    read_barrier: read_index::ReadBarrier,
    write_gate: WriteGate,
    leader_contact: LeaderContact,
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
            identity,
            config,
            metrics,
            write_gate,
            leader_contact,
        } = parts;
        // etcd: 5s plus the time of two elections.
        let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;
        let (proposer, queue) = proposer::proposer();
        let (read_barrier, reads) = read_index::read_barrier();
        let server = Server {
            inner: Arc::new(Inner {
                raft,
                store,
                state_machine,
                network,
                lease_ids: lease::LeaseIds::new(identity.member_id),
                identity,
                config,
                request_timeout,
                lease_clock: Default::default(),
                metrics,
                proposer,
                read_barrier,
                write_gate,
                leader_contact,
            }),
        };
        (server, queue, reads)
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn store(&self) -> &MvccStore {
        &self.inner.store
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.inner.state_machine
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn config(&self) -> &NodeConfig {
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
            raft_term: self.inner.raft.metrics().borrow().current_term,
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this member is in touch with a leader: it is the leader and a quorum has
    /// acknowledged it within an election timeout, or it has heard from the leader within one.
    /// A member cut off from its leader still names it (openraft keeps the last leader it knew)
    /// but is not in touch; health and readiness go by this.
    pub fn leader_alive(&self) -> bool {
        let timeout = self.inner.config.election_timeout;
        let metrics = self.inner.raft.metrics().borrow().clone();
        match metrics.state {
            ServerState::Leader => {
                let voters = metrics.membership_config.membership().voter_ids().count();
                voters == 1
                    || metrics
                        .millis_since_quorum_ack
                        .is_some_and(|ms| ms < timeout.as_millis() as u64)
            }
            _ => metrics.current_leader.is_some() && self.inner.leader_contact.elapsed() < timeout,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    fn peer_url_of(&self, id: u64) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .and_then(|n: &MemberNode| n.peer_urls.first().cloned())
    }

    /// Waits until a leader is known, or the request times out.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<u64> {
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
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
        let result = self.inner.proposer.propose(req).await;
        metrics.proposals_pending.dec();
        if result.is_err() {
            metrics.proposals_failed.inc();
        }
        result
    }

    /// Proposes one entry: on the leader directly, from a follower through the leader. A member
    /// cut off from a live leader refuses with "no leader" after two election timeouts rather
    /// than waiting out the whole request timeout.
    async fn propose_direct(&self, req: Request) -> Result<Response> {
        tokio::select! {
            result = self.propose_through_leader(req) => result,
            _ = self.out_of_touch() => Err(Error::NoLeader),
        }
    }

    /// Resolves once this member has been out of touch with a live leader for two election
    /// timeouts: the side of a partition without a quorum.
    async fn out_of_touch(&self) {
        let limit = 2 * self.inner.config.election_timeout;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.out_of_touch_for() >= limit {
                return;
            }
        }
    }

    /// How long this member has been without a live leader: as leader, since a quorum last
    /// acknowledged it; as follower, since it last heard from a leader.
    fn out_of_touch_for(&self) -> Duration {
        let metrics = self.inner.raft.metrics().borrow().clone();
        match metrics.state {
            ServerState::Leader => {
                if metrics.membership_config.membership().voter_ids().count() == 1 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(metrics.millis_since_quorum_ack.unwrap_or(0))
                }
            }
            _ => self.inner.leader_contact.elapsed(),
        }
    }

    async fn propose_through_leader(&self, req: Request) -> Result<Response> {
        let deadline = Instant::now() + self.inner.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            if self.is_leader() {
                let write = async {
                    let _gate = self.inner.write_gate.read().await;
                    self.inner.raft.client_write(req.clone()).await
                };
                match tokio::time::timeout(remaining, write).await {
                    Err(_) => return Err(Error::Timeout),
                    Ok(Ok(written)) => return Ok(written.data),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => continue,
                    Ok(Err(e)) => return Err(Error::Raft(e.to_string())),
                }
            }
            let leader = self.wait_for_leader(deadline).await?;
            if leader == self.member_id() {
                continue;
            }
            let Some(url) = self.peer_url_of(leader) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match self.inner.network.propose(&url, &req, remaining).await {
                Ok(ProposeReply::Applied { index, response }) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(response);
                }
                Ok(ProposeReply::NotLeader { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(ProposeReply::Failed(msg)) => {
                    if msg.contains("timed out") {
                        return Err(Error::Timeout);
                    }
                    return Err(Error::Raft(msg));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "forwarding a write to the leader failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Waits until this member has applied log `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read or forwarded write")
            .await
            .map(|_| ())
            .map_err(|_| Error::Timeout)
    }

    /// Makes the next local read linearizable: waits until this member has applied everything
    /// the leader had committed when the read arrived. Concurrent reads share one read index
    /// (see `read_index`).
    pub async fn read_barrier(&self) -> Result<()> {
        self.inner.read_barrier.wait().await
    }

    /// Obtains one read index and waits until this member has applied it; refuses with "no
    /// leader" when cut off from a live leader, as writes do.
    async fn read_barrier_once(&self) -> Result<()> {
        tokio::select! {
            result = self.read_index_from_leader() => result,
            _ = self.out_of_touch() => Err(Error::NoLeader),
        }
    }

    async fn read_index_from_leader(&self) -> Result<()> {
        let deadline = Instant::now() + self.inner.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            if self.is_leader() {
                match tokio::time::timeout(remaining, self.inner.raft.ensure_linearizable()).await {
                    Err(_) => return Err(Error::Timeout),
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                        continue
                    }
                    Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                        return Err(Error::Timeout)
                    }
                    Ok(Err(e)) => return Err(Error::Raft(e.to_string())),
                }
            }
            let leader = self.wait_for_leader(deadline).await?;
            if leader == self.member_id() {
                continue;
            }
            let Some(url) = self.peer_url_of(leader) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match self.inner.network.read_index(&url, remaining).await {
                Ok(ReadIndexReply::Index(index)) => {
                    return self.wait_applied(index, deadline).await
                }
                Ok(ReadIndexReply::NotLeader { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(ReadIndexReply::Failed(msg)) => {
                    if msg.contains("timed out") {
                        return Err(Error::Timeout);
                    }
                    return Err(Error::Raft(msg));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "read index from the leader failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Serves a Range: linearizable unless the request asks for a serializable read.
    pub async fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse> {
        if !req.serializable {
            self.read_barrier().await?;
        }
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
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let mut members = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let attrs = attributes.get(id);
            members.insert(
                *id,
                MemberInfo {
                    id: *id,
                    name: attrs
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| node.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                },
            );
        }
        Ok(members.into_values().collect())
    }

    /// Counts leader changes as this member sees them (`etcd_server_leader_changes_seen_total`).
    pub async fn count_leader_changes(self) {
        let mut metrics = self.inner.raft.metrics();
        let mut leader = None;
        loop {
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some() && now != leader {
                self.inner.metrics.leader_changes_seen.inc();
            }
            leader = now;
            if metrics.changed().await.is_err() {
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
