//! The peer network: openraft's RPCs (and forwarded client requests) to other members, over
//! gRPC on their peer URLs. Every message carries this cluster's ID and the sender's member ID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::election::PreVoteRequest;
use super::peer::pb::peer_client::PeerClient;
use super::peer::pb::PeerRequest;
use super::peer::{LeaseQuery, MembersReply, ProposeReply, ReadIndexReply, REMOVED_MARK};
use super::types::{codec, MemberNode, Request, TypeConfig};
use crate::server::lease::LeaseTtl;
use crate::server::membership::MemberChange;

/// Largest message between members: snapshot chunks and batches of entries.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Connections to the other members, shared by Raft replication and request forwarding.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: Arc<Mutex<u64>>,
    member_id: u64,
    clients: Arc<Mutex<HashMap<String, PeerClient<Channel>>>>,
    /// Set when another member refuses this one as removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// `etcd_network_peer_round_trip_time_seconds`, by target member.
    round_trip: Option<prometheus::HistogramVec>,
    /// When each peer last answered an AppendEntries (heartbeats included) from this member.
    last_answer: Arc<Mutex<HashMap<u64, std::time::Instant>>>,
}

/// What went wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("peer {url} refused the request: {message}")]
    Refused { url: String, message: String },
    #[error("peer {url} sent an undecodable reply: {message}")]
    Garbled { url: String, message: String },
}

impl PeerNetwork {
    pub fn new(cluster_id: u64, member_id: u64) -> PeerNetwork {
        PeerNetwork {
            cluster_id: Arc::new(Mutex::new(cluster_id)),
            member_id,
            clients: Arc::new(Mutex::new(HashMap::new())),
            removed: Arc::new(tokio::sync::watch::channel(false).0),
            round_trip: None,
            last_answer: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How long ago member `id` last answered this member's AppendEntries; None if never.
    pub fn since_last_answer(&self, id: u64) -> Option<Duration> {
        self.last_answer
            .lock()
            .unwrap()
            .get(&id)
            .map(|at| at.elapsed())
    }

    /// Records the round trip of every AppendEntries (heartbeats included) in `histogram`.
    pub fn with_round_trip_metric(mut self, histogram: prometheus::HistogramVec) -> PeerNetwork {
        self.round_trip = Some(histogram);
        self
    }

    /// Resolves when another member has refused this one as removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|removed| *removed).await;
    }

    pub fn cluster_id(&self) -> u64 {
        *self.cluster_id.lock().unwrap()
    }

    pub fn set_cluster_id(&self, id: u64) {
        *self.cluster_id.lock().unwrap() = id;
    }

    fn client(&self, url: &str) -> Result<PeerClient<Channel>, PeerError> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| PeerError::Unreachable {
                url: url.into(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let client = PeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Sends one request to the member at `url` and decodes its reply.
    async fn call<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        url: &str,
        method: PeerMethod,
        req: &Req,
        timeout: Duration,
    ) -> Result<Reply, PeerError> {
        let mut client = self.client(url)?;
        let mut request = tonic::Request::new(PeerRequest {
            cluster_id: self.cluster_id(),
            from: self.member_id,
            payload: codec::encode(req),
        });
        request.set_timeout(timeout);
        let result = match method {
            PeerMethod::AppendEntries => client.append_entries(request).await,
            PeerMethod::Vote => client.vote(request).await,
            PeerMethod::InstallSnapshot => client.install_snapshot(request).await,
            PeerMethod::Propose => client.propose(request).await,
            PeerMethod::ReadIndex => client.read_index(request).await,
            PeerMethod::Lease => client.lease(request).await,
            PeerMethod::MemberChange => client.member_change(request).await,
            PeerMethod::Members => client.members(request).await,
            PeerMethod::Campaign => client.campaign(request).await,
            PeerMethod::PreVote => client.pre_vote(request).await,
        };
        let reply = result.map_err(|status| match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown => PeerError::Unreachable {
                url: url.into(),
                message: status.message().to_string(),
            },
            _ => {
                if status.message().starts_with(REMOVED_MARK) {
                    self.removed.send_replace(true);
                }
                PeerError::Refused {
                    url: url.into(),
                    message: status.message().to_string(),
                }
            }
        })?;
        codec::decode(&reply.into_inner().payload).map_err(|message| PeerError::Garbled {
            url: url.into(),
            message,
        })
    }

    /// Forwards a client write to the leader at `url`.
    pub async fn propose(
        &self,
        url: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<ProposeReply, PeerError> {
        self.call(url, PeerMethod::Propose, req, timeout).await
    }

    /// Asks the leader at `url` for the index a linearizable read must wait for.
    pub async fn read_index(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<ReadIndexReply, PeerError> {
        self.call(url, PeerMethod::ReadIndex, &(), timeout).await
    }

    /// Forwards a membership change to the leader at `url`; the ID of an added member.
    pub async fn change_members(
        &self,
        url: &str,
        change: &MemberChange,
        timeout: Duration,
    ) -> Result<Result<Option<u64>, String>, PeerError> {
        self.call(url, PeerMethod::MemberChange, change, timeout)
            .await
    }

    /// Asks the member at `url` to campaign for leadership after `wait`.
    pub async fn campaign(&self, url: &str, wait: Duration) -> Result<(), PeerError> {
        self.call(
            url,
            PeerMethod::Campaign,
            &(wait.as_millis() as u64),
            Duration::from_secs(2),
        )
        .await
    }

    /// Asks the member at `url` whether it would vote for this one now (pre-vote).
    pub async fn pre_vote(
        &self,
        url: &str,
        req: &PreVoteRequest,
        timeout: Duration,
    ) -> Result<bool, PeerError> {
        self.call(url, PeerMethod::PreVote, req, timeout).await
    }

    /// Asks the member at `url` for the cluster's ID and members.
    pub async fn members(&self, url: &str, timeout: Duration) -> Result<MembersReply, PeerError> {
        self.call(url, PeerMethod::Members, &(), timeout).await
    }

    /// Asks the leader at `url` to renew lease `id` (or, with `renew` false, for its TTL).
    pub async fn lease(
        &self,
        url: &str,
        id: i64,
        renew: bool,
        timeout: Duration,
    ) -> Result<Result<LeaseTtl, String>, PeerError> {
        self.call(url, PeerMethod::Lease, &LeaseQuery { id, renew }, timeout)
            .await
    }
}

#[derive(Clone, Copy)]
enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Propose,
    ReadIndex,
    Lease,
    MemberChange,
    Members,
    Campaign,
    PreVote,
}

/// openraft's view of one peer.
pub struct PeerConnection {
    network: PeerNetwork,
    target: u64,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
        }
    }
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        method: PeerMethod,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MemberNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<u64, E>> = self
            .network
            .call(&self.url, method, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        let started = std::time::Instant::now();
        let result = self.rpc(PeerMethod::AppendEntries, &rpc, &option).await;
        if result.is_ok() {
            let now = std::time::Instant::now();
            self.network
                .last_answer
                .lock()
                .unwrap()
                .insert(self.target, now);
            if let Some(h) = &self.network.round_trip {
                h.with_label_values(&[&format!("{:x}", self.target)])
                    .observe(now.duration_since(started).as_secs_f64());
            }
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(PeerMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        self.rpc(PeerMethod::Vote, &rpc, &option).await
    }
}
