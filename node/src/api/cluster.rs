//! `etcdserverpb.Cluster`: MemberList (what `etcdctl member list` shows).
//!
//! Membership changes (MemberAdd, MemberRemove, MemberUpdate, MemberPromote) answer
//! `Unimplemented` until they are built.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::server::Server;

pub struct ClusterService {
    server: Server,
}

impl ClusterService {
    pub fn new(server: Server) -> ClusterService {
        ClusterService { server }
    }
}

fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!("ferrokv: Cluster.{call} is not implemented yet"))
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        _: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.server.read_barrier().await.map_err(to_status)?;
        }
        let members = self
            .server
            .members()
            .map_err(to_status)?
            .into_iter()
            .map(|m| PbMember {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect();
        let revision = self.server.store().current_revision().map_err(to_status)?;
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.server.header(revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
