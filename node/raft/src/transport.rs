//! The peer transport: Raft messages between members on `--listen-peer-urls`.
//!
//! Each member keeps one long-lived gRPC stream to each other member and sends Raft messages
//! on it in batches, as soon as the Ready loop hands them out; a stream that breaks is
//! reopened, and what was queued meanwhile is dropped (Raft resends what matters). Snapshots go
//! on a stream of their own, in chunks, and their outcome is reported back to Raft. Followers
//! forward proposals to the leader as Raft messages on the same streams (`MsgPropose`).
//!
//! The few requests only the leader answers that are not Raft messages — lease keep-alives and
//! membership changes, which need the leader's clocks and progress — are unary calls
//! (`PeerNetwork`), with typed payloads and typed errors (`WireError`).
//!
//! `https://` peer URLs are dialed through TLS with the member's peer client certificate
//! ([`ferrokv_tls::connect`]); the peer server's side of TLS is the listener's.
//!
//! Every envelope carries the cluster ID and the sender's member ID: a member of another
//! cluster, or one removed from this one, is refused with a typed `Refusal`, and a member
//! refused as removed stops.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferrokv_tls::connect::PeerConnector;
use ferrokv_tls::ClientConfig;
use prost_011::Message as _;
use raft::prelude::{Message, MessageType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use super::members::Members;
use super::node::Command;
pub use super::types::LeaseQuery;
use super::types::{codec, LeaseTtl, MemberChange, MemberNode, WireError};

pub mod pb {
    tonic::include_proto!("ferrokv.peerpb");
}

use pb::peer_client::PeerClient;
use pb::peer_server::Peer;
use pb::{PeerReply, PeerRequest, RaftAck, RaftBatch, Refusal, Sender, SnapshotChunk};

/// Largest message between members: a batch of Raft messages or a snapshot chunk. Raft's
/// `max_size_per_msg` keeps appends far below it; one entry may reach `--max-request-bytes`.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// A batch stops growing at this size.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Snapshot data per chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Batches buffered per stream before the sender waits for the stream to take them.
const STREAM_BUFFER: usize = 8;
/// HTTP/2 flow-control windows of peer connections: large enough that a stream of large
/// entries is not held to one small window per round trip.
pub const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// What went wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("peer {url} refused the request: {refusal:?} {detail}")]
    Refused {
        url: String,
        refusal: Refusal,
        detail: String,
    },
    #[error("peer {url} sent an undecodable reply: {message}")]
    Garbled { url: String, message: String },
}

/// The cluster as a member describes it to a member that joins.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembersReply {
    pub cluster_id: u64,
    pub members: Vec<(u64, MemberNode)>,
    /// Members that have run (published their client URLs): a founding member with an empty
    /// data dir that finds itself here has lost its data and must not bootstrap again.
    pub published: Vec<u64>,
}

/// The leader's side of requests followers forward, served by the layer above Raft.
#[tonic::async_trait]
pub trait LeaderDuties: Send + Sync + 'static {
    async fn lease(&self, query: LeaseQuery) -> Result<LeaseTtl, WireError>;
    async fn change_members(&self, change: MemberChange) -> Result<Option<u64>, WireError>;
    /// The members that have run: they published their client URLs.
    fn published_members(&self) -> Vec<u64>;
}

/// Unary calls to other members, and the connections every call and stream share.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: Arc<Mutex<u64>>,
    member_id: u64,
    peer_url: String,
    clients: Arc<Mutex<HashMap<String, PeerClient<Channel>>>>,
    /// How `https://` peer URLs are dialed; `None` when the member has no peer TLS flags.
    tls: Option<Arc<ClientConfig>>,
    /// Set when another member refuses this one as removed from the cluster.
    removed: Arc<watch::Sender<bool>>,
    /// When each member was last heard from, on any stream or call.
    last_heard: Arc<Mutex<HashMap<u64, Instant>>>,
    /// Members whose stream from this one broke and who have not been heard from since.
    broken: Arc<Mutex<HashSet<u64>>>,
}

impl PeerNetwork {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        peer_url: String,
        tls: Option<Arc<ClientConfig>>,
    ) -> PeerNetwork {
        PeerNetwork {
            cluster_id: Arc::new(Mutex::new(cluster_id)),
            member_id,
            peer_url,
            clients: Arc::new(Mutex::new(HashMap::new())),
            tls,
            removed: Arc::new(watch::channel(false).0),
            last_heard: Arc::new(Mutex::new(HashMap::new())),
            broken: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Whether member `id` was heard from within `window` and its stream is not known broken:
    /// whether a message sent to it now is likely to arrive.
    pub fn reachable(&self, id: u64, window: Duration) -> bool {
        self.heard_from_within(id, window)
            && !self
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
    }

    fn stream_broke(&self, id: u64) {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Whether member `id` was heard from within `window`.
    pub fn heard_from_within(&self, id: u64, window: Duration) -> bool {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|at| at.elapsed() < window)
    }

    fn heard_from(&self, id: u64) {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn cluster_id(&self) -> u64 {
        *self.cluster_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sender(&self) -> Sender {
        Sender {
            cluster_id: self.cluster_id(),
            member_id: self.member_id,
            peer_url: self.peer_url.clone(),
        }
    }

    /// Resolves when another member has refused this one as removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|removed| *removed).await;
    }

    fn note_refusal(&self, refusal: Refusal) {
        if refusal == Refusal::MemberRemoved {
            self.removed.send_replace(true);
        }
    }

    fn client(&self, url: &str) -> Result<PeerClient<Channel>, PeerError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let unreachable = |message: String| PeerError::Unreachable {
            url: url.into(),
            message,
        };
        let (plain, connector) =
            PeerConnector::for_url(url, self.tls.as_ref()).map_err(unreachable)?;
        let endpoint = Endpoint::from_shared(plain)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            // A peer cut off without a reset is noticed within seconds, not at TCP's pace.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let client = PeerClient::new(endpoint.connect_with_connector_lazy(connector))
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Sends one unary request to the member at `url` and decodes its reply.
    async fn call<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        url: &str,
        method: UnaryMethod,
        req: &Req,
        timeout: Duration,
    ) -> Result<Reply, PeerError> {
        let mut client = self.client(url)?;
        let mut request = GrpcRequest::new(PeerRequest {
            sender: Some(self.sender()),
            payload: codec::encode(req),
        });
        request.set_timeout(timeout);
        let result = match method {
            UnaryMethod::Lease => client.lease(request).await,
            UnaryMethod::MemberChange => client.member_change(request).await,
            UnaryMethod::Members => client.members(request).await,
        };
        let reply = result
            .map_err(|status| PeerError::Unreachable {
                url: url.into(),
                message: status.message().to_string(),
            })?
            .into_inner();
        let refusal = reply.refusal();
        if refusal != Refusal::None {
            self.note_refusal(refusal);
            return Err(PeerError::Refused {
                url: url.into(),
                refusal,
                detail: reply.detail,
            });
        }
        codec::decode(&reply.payload).map_err(|message| PeerError::Garbled {
            url: url.into(),
            message,
        })
    }

    /// Forwards a membership change to the leader at `url`; the ID of an added member.
    pub async fn change_members(
        &self,
        url: &str,
        change: &MemberChange,
        timeout: Duration,
    ) -> Result<Result<Option<u64>, WireError>, PeerError> {
        self.call(url, UnaryMethod::MemberChange, change, timeout)
            .await
    }

    /// Asks the member at `url` for the cluster's ID and members.
    pub async fn members(&self, url: &str, timeout: Duration) -> Result<MembersReply, PeerError> {
        self.call(url, UnaryMethod::Members, &(), timeout).await
    }

    /// Asks the leader at `url` to renew lease `id` (or, with `renew` false, for its TTL).
    pub async fn lease(
        &self,
        url: &str,
        id: i64,
        renew: bool,
        timeout: Duration,
    ) -> Result<Result<LeaseTtl, WireError>, PeerError> {
        self.call(url, UnaryMethod::Lease, &LeaseQuery { id, renew }, timeout)
            .await
    }
}

#[derive(Clone, Copy)]
enum UnaryMethod {
    Lease,
    MemberChange,
    Members,
}

/// Raft messages out to the other members.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    network: PeerNetwork,
    members: Members,
    commands: std_mpsc::Sender<Command>,
    runtime: tokio::runtime::Handle,
    streams: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    /// When the last unanswered heartbeat went to each member, for the round-trip metric.
    heartbeats: Mutex<HashMap<u64, Instant>>,
    round_trip: prometheus::HistogramVec,
}

impl Transport {
    pub fn new(
        network: PeerNetwork,
        members: Members,
        commands: std_mpsc::Sender<Command>,
        runtime: tokio::runtime::Handle,
        round_trip: prometheus::HistogramVec,
    ) -> Transport {
        Transport {
            inner: Arc::new(TransportInner {
                network,
                members,
                commands,
                runtime,
                streams: Mutex::new(HashMap::new()),
                heartbeats: Mutex::new(HashMap::new()),
                round_trip,
            }),
        }
    }

    /// The Ready loop's command channel (the WAL's completions use it).
    pub fn commands(&self) -> std_mpsc::Sender<Command> {
        self.inner.commands.clone()
    }

    /// Queues messages for their members; never blocks.
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            match message.get_msg_type() {
                MessageType::MsgSnapshot => {
                    let inner = self.inner.clone();
                    self.inner
                        .runtime
                        .spawn(async move { send_snapshot(inner, message).await });
                    continue;
                }
                MessageType::MsgHeartbeat => {
                    let mut sent = self
                        .inner
                        .heartbeats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    sent.entry(to).or_insert_with(Instant::now);
                }
                _ => {}
            }
            let mut streams = self.inner.streams.lock().unwrap_or_else(|p| p.into_inner());
            let stream = streams.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let inner = self.inner.clone();
                self.inner
                    .runtime
                    .spawn(async move { stream_to(inner, to, rx).await });
                tx
            });
            let _ = stream.send(message);
        }
    }
}

impl TransportInner {
    fn unreachable(&self, to: u64) {
        let _ = self.commands.send(Command::Unreachable(to));
    }

    /// Records a heartbeat's round trip when its response arrives.
    fn heartbeat_answered(&self, from: u64) {
        let sent = self
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&from);
        if let Some(sent) = sent {
            self.round_trip
                .with_label_values(&[&format!("{from:x}")])
                .observe(sent.elapsed().as_secs_f64());
        }
    }
}

/// Keeps a stream open to member `to` and sends it what is queued, in batches.
async fn stream_to(
    inner: Arc<TransportInner>,
    to: u64,
    mut queue: mpsc::UnboundedReceiver<Message>,
) {
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        let Some(url) = inner.members.peer_url(to) else {
            inner.unreachable(to);
            continue;
        };
        let mut client = match inner.network.client(&url) {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "no connection to a peer");
                inner.unreachable(to);
                continue;
            }
        };
        let (batches, outgoing) = mpsc::channel::<RaftBatch>(STREAM_BUFFER);
        let mut call =
            tokio::spawn(async move { client.raft(ReceiverStream::new(outgoing)).await });
        let mut ended = None;
        let mut next = Some(first);
        loop {
            let message = match next.take() {
                Some(message) => message,
                // A stream that ends while idle (the peer died) is noticed at once.
                None => tokio::select! {
                    biased;
                    result = &mut call => {
                        ended = Some(result);
                        break;
                    }
                    message = queue.recv() => match message {
                        Some(message) => message,
                        None => return,
                    },
                },
            };
            let mut encoded = vec![message.encode_to_vec()];
            let mut bytes = encoded[0].len();
            while bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(message) => {
                        let m = message.encode_to_vec();
                        bytes += m.len();
                        encoded.push(m);
                    }
                    Err(_) => break,
                }
            }
            let batch = RaftBatch {
                sender: Some(inner.network.sender()),
                messages: encoded,
            };
            // A slow peer holds this task up rather than losing messages: Raft's own flow
            // control (`max_inflight_msgs`) bounds what waits here, and a dead peer's stream
            // ends within the HTTP/2 keep-alive timeout, which ends the wait.
            if batches.send(batch).await.is_err() {
                break;
            }
        }
        drop(batches);
        inner.network.stream_broke(to);
        let result = match ended {
            Some(result) => result,
            None => call.await,
        };
        match result {
            Ok(Ok(ack)) => {
                let ack = ack.into_inner();
                let refusal = ack.refusal();
                if refusal != Refusal::None {
                    tracing::warn!(peer = format!("{to:x}"), ?refusal, detail = %ack.detail, "a peer refused this member's messages");
                    inner.network.note_refusal(refusal);
                }
            }
            Ok(Err(status)) => {
                tracing::debug!(peer = format!("{to:x}"), %url, error = %status.message(), "stream to a peer broke")
            }
            Err(e) => tracing::debug!(error = %e, "stream task failed"),
        }
        inner.unreachable(to);
        while queue.try_recv().is_ok() {}
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// Sends a snapshot message to its member in chunks and reports the outcome to Raft.
async fn send_snapshot(inner: Arc<TransportInner>, mut message: Message) {
    let to = message.to;
    let data = std::mem::take(&mut message.mut_snapshot().data);
    let header = message.encode_to_vec();
    let sender = inner.network.sender();
    let total = data.len();
    let sent = async {
        let url = inner
            .members
            .peer_url(to)
            .ok_or_else(|| PeerError::Unreachable {
                url: String::new(),
                message: format!("no peer URL for member {to:x}"),
            })?;
        let mut client = inner.network.client(&url)?;
        let data = bytes::Bytes::from(data);
        let chunk_count = total.div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
        let chunks = (0..chunk_count).map(move |i| {
            let start = i * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(total);
            SnapshotChunk {
                sender: (i == 0).then(|| sender.clone()),
                message: if i == 0 { header.clone() } else { Vec::new() },
                total_bytes: total as u64,
                data: data.slice(start..end).to_vec(),
            }
        });
        let ack = client
            .snapshot(tokio_stream::iter(chunks))
            .await
            .map_err(|status| PeerError::Unreachable {
                url: url.clone(),
                message: status.message().to_string(),
            })?
            .into_inner();
        match ack.refusal() {
            Refusal::None => Ok(()),
            refusal => {
                inner.network.note_refusal(refusal);
                Err(PeerError::Refused {
                    url,
                    refusal,
                    detail: ack.detail,
                })
            }
        }
    }
    .await;
    match &sent {
        Ok(()) => tracing::info!(peer = format!("{to:x}"), bytes = total, "sent a snapshot"),
        Err(e) => tracing::warn!(peer = format!("{to:x}"), error = %e, "sending a snapshot failed"),
    }
    let _ = inner.commands.send(Command::SnapshotSent {
        to,
        ok: sent.is_ok(),
    });
}

/// The peer gRPC service: Raft streams, snapshots, and the leader's unary duties.
pub struct PeerService {
    network: PeerNetwork,
    members: Members,
    commands: std_mpsc::Sender<Command>,
    transport: Transport,
    duties: Arc<OnceLock<Arc<dyn LeaderDuties>>>,
}

impl PeerService {
    pub fn new(transport: Transport, duties: Arc<OnceLock<Arc<dyn LeaderDuties>>>) -> PeerService {
        PeerService {
            network: transport.inner.network.clone(),
            members: transport.inner.members.clone(),
            commands: transport.inner.commands.clone(),
            transport,
            duties,
        }
    }

    /// Whether a sender may talk to this member; remembers where it listens.
    fn admit(&self, sender: Option<&Sender>) -> Result<(), (Refusal, String)> {
        let Some(sender) = sender else {
            return Err((Refusal::Garbled, "no sender".into()));
        };
        let ours = self.network.cluster_id();
        if sender.cluster_id != ours {
            return Err((
                Refusal::ClusterMismatch,
                format!(
                    "member {:x} belongs to cluster {:x}, this member to cluster {:x}",
                    sender.member_id, sender.cluster_id, ours
                ),
            ));
        }
        if self.members.is_removed(sender.member_id) {
            return Err((
                Refusal::MemberRemoved,
                format!(
                    "member {:x} has been removed from cluster {ours:x}",
                    sender.member_id
                ),
            ));
        }
        self.members.announce(sender.member_id, &sender.peer_url);
        self.network.heard_from(sender.member_id);
        Ok(())
    }

    fn duties(&self) -> Result<&Arc<dyn LeaderDuties>, Status> {
        self.duties
            .get()
            .ok_or_else(|| Status::unavailable("the member is starting"))
    }

    /// Serves one unary request of a leader duty: admits the sender, decodes the payload and
    /// answers with what `duty` makes of it.
    async fn serve<Req, Answer, Duty, Fut>(
        &self,
        request: PeerRequest,
        duty: Duty,
    ) -> Result<GrpcResponse<PeerReply>, Status>
    where
        Req: DeserializeOwned,
        Answer: Serialize,
        Duty: FnOnce(Req) -> Fut,
        Fut: std::future::Future<Output = Answer>,
    {
        let admitted = self
            .admit(request.sender.as_ref())
            .and_then(|()| open::<Req>(&request.payload));
        match admitted {
            Ok(req) => {
                let answer = duty(req).await;
                reply(Ok(()), || answer)
            }
            Err(refused) => reply::<()>(Err(refused), || ()),
        }
    }

    fn step(&self, bytes: &[u8]) -> Result<(), (Refusal, String)> {
        let message =
            Message::decode(bytes).map_err(|e| (Refusal::Garbled, format!("raft message: {e}")))?;
        if message.get_msg_type() == MessageType::MsgHeartbeatResponse {
            self.transport.inner.heartbeat_answered(message.from);
        }
        let _ = self.commands.send(Command::Step(Box::new(message)));
        Ok(())
    }
}

fn ack(refusal: Result<(), (Refusal, String)>) -> Result<GrpcResponse<RaftAck>, Status> {
    let (refusal, detail) = match refusal {
        Ok(()) => (Refusal::None, String::new()),
        Err(pair) => pair,
    };
    Ok(GrpcResponse::new(RaftAck {
        refusal: refusal as i32,
        detail,
    }))
}

fn reply<T: Serialize>(
    admitted: Result<(), (Refusal, String)>,
    value: impl FnOnce() -> T,
) -> Result<GrpcResponse<PeerReply>, Status> {
    Ok(GrpcResponse::new(match admitted {
        Ok(()) => PeerReply {
            refusal: Refusal::None as i32,
            detail: String::new(),
            payload: codec::encode(&value()),
        },
        Err((refusal, detail)) => PeerReply {
            refusal: refusal as i32,
            detail,
            payload: Vec::new(),
        },
    }))
}

fn open<T: DeserializeOwned>(payload: &[u8]) -> Result<T, (Refusal, String)> {
    codec::decode(payload).map_err(|e| (Refusal::Garbled, format!("payload: {e}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: GrpcRequest<Streaming<RaftBatch>>,
    ) -> Result<GrpcResponse<RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            if let Err(refused) = self.admit(batch.sender.as_ref()) {
                return ack(Err(refused));
            }
            for message in &batch.messages {
                if let Err(refused) = self.step(message) {
                    return ack(Err(refused));
                }
            }
        }
        ack(Ok(()))
    }

    async fn snapshot(
        &self,
        request: GrpcRequest<Streaming<SnapshotChunk>>,
    ) -> Result<GrpcResponse<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return ack(Err((Refusal::Garbled, "empty snapshot stream".into())));
        };
        if let Err(refused) = self.admit(first.sender.as_ref()) {
            return ack(Err(refused));
        }
        let mut message = match Message::decode(first.message.as_slice()) {
            Ok(message) => message,
            Err(e) => return ack(Err((Refusal::Garbled, format!("snapshot message: {e}")))),
        };
        let total = first.total_bytes as usize;
        let mut data = Vec::with_capacity(total.min(MAX_PEER_MESSAGE_BYTES * 16));
        data.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != total {
            return ack(Err((
                Refusal::Garbled,
                format!("snapshot of {total} bytes arrived with {}", data.len()),
            )));
        }
        message.mut_snapshot().data = data;
        let _ = self.commands.send(Command::Step(Box::new(message)));
        ack(Ok(()))
    }

    async fn lease(
        &self,
        request: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let duties = self.duties()?.clone();
        self.serve(request.into_inner(), |query: LeaseQuery| async move {
            duties.lease(query).await
        })
        .await
    }

    async fn member_change(
        &self,
        request: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let duties = self.duties()?.clone();
        self.serve(request.into_inner(), |change: MemberChange| async move {
            duties.change_members(change).await
        })
        .await
    }

    async fn members(
        &self,
        _request: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let published = self.duties()?.published_members();
        let members = self.members.nodes().into_iter().collect();
        reply(Ok(()), || MembersReply {
            cluster_id: self.network.cluster_id(),
            members,
            published,
        })
    }
}
