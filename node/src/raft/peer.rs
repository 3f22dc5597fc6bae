//! The peer gRPC service: receives openraft's RPCs and forwarded client requests from other
//! members. Messages from another cluster are refused.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::election::{would_vote, LeaderContact, PreVoteRequest};
use super::log_store::LogStore;
use super::network::PeerNetwork;
use super::types::{codec, MemberNode, Raft, Request, Response, WriteGate};
use crate::server::lease::LeaseTtl;
use crate::server::membership::MemberChange;

pub mod pb {
    tonic::include_proto!("ferrokv.peerpb");
}

use pb::peer_server::Peer;
use pb::{PeerReply, PeerRequest};

/// The leader's answer to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    /// Committed and applied on the leader at log `index`.
    Applied {
        index: u64,
        response: Response,
    },
    NotLeader {
        leader: Option<u64>,
    },
    Failed(String),
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    Index(u64),
    NotLeader { leader: Option<u64> },
    Failed(String),
}

/// A lease request forwarded to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseQuery {
    pub id: i64,
    /// Renew the lease (keep-alive), or only report its TTL.
    pub renew: bool,
}

/// The leader's side of requests followers forward, served by the layer above Raft.
#[tonic::async_trait]
pub trait LeaderDuties: Send + Sync + 'static {
    async fn lease(&self, query: LeaseQuery) -> Result<LeaseTtl, String>;
    async fn change_members(&self, change: MemberChange) -> Result<Option<u64>, String>;
    /// The members that have run: they published their client URLs.
    fn published_members(&self) -> Vec<u64>;
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

pub struct PeerService {
    raft: Raft,
    network: PeerNetwork,
    duties: Arc<dyn LeaderDuties>,
    write_gate: WriteGate,
    log_store: LogStore,
    contact: LeaderContact,
    election_timeout: Duration,
    /// How long a forwarded write may wait for its commit.
    request_timeout: Duration,
}

impl PeerService {
    pub fn new(
        raft: Raft,
        network: PeerNetwork,
        duties: Arc<dyn LeaderDuties>,
        write_gate: WriteGate,
        elections: (LogStore, LeaderContact, Duration),
        request_timeout: Duration,
    ) -> PeerService {
        let (log_store, contact, election_timeout) = elections;
        PeerService {
            raft,
            network,
            duties,
            write_gate,
            log_store,
            contact,
            election_timeout,
            request_timeout,
        }
    }

    fn open<T: DeserializeOwned>(&self, req: GrpcRequest<PeerRequest>) -> Result<T, Status> {
        let req = req.into_inner();
        let ours = self.network.cluster_id();
        if req.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {:x} belongs to cluster {:x}, this member to cluster {:x}",
                req.from, req.cluster_id, ours
            )));
        }
        // A member that was removed while it was down learns it here, and stops.
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let knows_members = membership.nodes().next().is_some();
        if knows_members && membership.get_node(&req.from).is_none() {
            return Err(Status::failed_precondition(format!(
                "{REMOVED_MARK}: member {:x} has been removed from cluster {:x}",
                req.from, ours
            )));
        }
        codec::decode(&req.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer message: {e}")))
    }
}

/// Marks a refusal that tells the sender it is no longer a member.
pub const REMOVED_MARK: &str = "member removed";

fn reply<T: Serialize>(value: &T) -> Result<GrpcResponse<PeerReply>, Status> {
    Ok(GrpcResponse::new(PeerReply {
        payload: codec::encode(value),
    }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let rpc = self.open(req)?;
        let result = self.raft.append_entries(rpc).await;
        // Anything but a refusal for a stale term came from the current leader.
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn vote(&self, req: GrpcRequest<PeerRequest>) -> Result<GrpcResponse<PeerReply>, Status> {
        let rpc = self.open(req)?;
        let result = self.raft.vote(rpc).await;
        // Having voted, wait a full election timeout before campaigning oneself, as etcd does.
        if matches!(&result, Ok(resp) if resp.vote_granted) {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn install_snapshot(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let rpc = self.open(req)?;
        let result = self.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.contact.touch();
        }
        reply(&result)
    }

    async fn pre_vote(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let req: PreVoteRequest = self.open(req)?;
        let granted = would_vote(
            &self.raft,
            &self.log_store,
            &self.contact,
            self.election_timeout,
            &req,
        );
        reply(&granted)
    }

    async fn propose(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let request: Request = self.open(req)?;
        let write = async {
            let _gate = self.write_gate.read().await;
            self.raft.client_write(request).await
        };
        let outcome = tokio::time::timeout(self.request_timeout, write).await;
        let answer = match outcome {
            Err(_) => ProposeReply::Failed("etcdserver: request timed out".into()),
            Ok(Ok(written)) => ProposeReply::Applied {
                index: written.log_id.index,
                response: written.data,
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                ProposeReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Ok(Err(e)) => ProposeReply::Failed(e.to_string()),
        };
        reply(&answer)
    }

    async fn read_index(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let () = self.open(req)?;
        let outcome = tokio::time::timeout(self.request_timeout, self.raft.get_read_log_id()).await;
        let answer = match outcome {
            Err(_) => ReadIndexReply::Failed("etcdserver: request timed out".into()),
            Ok(Ok((read_log_id, _applied))) => {
                ReadIndexReply::Index(read_log_id.map(|l| l.index).unwrap_or(0))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                ReadIndexReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            // A leader cut off from its quorum: the same answer the leader gives its own
            // clients (`Server::read_barrier_once`), not openraft's dump of the membership.
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                ReadIndexReply::Failed("etcdserver: request timed out".into())
            }
            Ok(Err(e)) => ReadIndexReply::Failed(e.to_string()),
        };
        reply(&answer)
    }

    async fn lease(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let query: LeaseQuery = self.open(req)?;
        reply(&self.duties.lease(query).await)
    }

    async fn member_change(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let change: MemberChange = self.open(req)?;
        reply(&self.duties.change_members(change).await)
    }

    async fn campaign(
        &self,
        req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let wait_ms: u64 = self.open(req)?;
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaigning for leadership failed");
            }
        });
        reply(&())
    }

    async fn members(
        &self,
        _req: GrpcRequest<PeerRequest>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        reply(&MembersReply {
            cluster_id: self.network.cluster_id(),
            members,
            published: self.duties.published_members(),
        })
    }
}
