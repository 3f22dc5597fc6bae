//! `etcdserverpb.Cluster`: MemberAdd, MemberRemove, MemberUpdate, MemberPromote, MemberList.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use etcd_client::proto::PbResponseHeader;

use super::status::to_status;
use crate::traits::ClusterServer;
use ferrokv_server::membership::MemberChange;
use ferrokv_server::ServerError as Error;
use ferrokv_server::{MemberInfo, Server};

pub struct ClusterService<S = Server> {
    server: S,
}

impl<S: ClusterServer> ClusterService<S> {
    pub fn new(server: S) -> ClusterService<S> {
        ClusterService { server }
    }
}

fn to_pb(m: MemberInfo) -> PbMember {
    PbMember {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

impl<S: ClusterServer> ClusterService<S> {
    async fn change(
        &self,
        change: MemberChange,
    ) -> Result<(Option<PbMember>, Vec<PbMember>, PbResponseHeader), Status> {
        let (added, members) = self
            .server
            .change_members(change)
            .await
            .map_err(to_status)?;
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok((
            added.map(to_pb),
            members.into_iter().map(to_pb).collect(),
            self.server.header(revision),
        ))
    }
}

#[tonic::async_trait]
impl<S: ClusterServer> PbClusterService for ClusterService<S> {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        super::auth::require_admin(&self.server, &request).await?;
        let req = request.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(to_status(Error::BadPeerUrl("no peer URL given".into())));
        }
        let (member, members, header) = self
            .change(MemberChange::Add {
                peer_urls: req.peer_ur_ls,
                learner: req.is_learner,
            })
            .await?;
        Ok(Response::new(PbMemberAddResponse {
            header: Some(header),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        super::auth::require_admin(&self.server, &request).await?;
        let id = request.into_inner().id;
        let (_, members, header) = self.change(MemberChange::Remove { id }).await?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: Some(header),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        super::auth::require_admin(&self.server, &request).await?;
        let req = request.into_inner();
        let (_, members, header) = self
            .change(MemberChange::Update {
                id: req.id,
                peer_urls: req.peer_ur_ls,
            })
            .await?;
        Ok(Response::new(PbMemberUpdateResponse {
            header: Some(header),
            members,
        }))
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
            .map(to_pb)
            .collect();
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.server.header(revision)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        super::auth::require_admin(&self.server, &request).await?;
        let id = request.into_inner().id;
        let (_, members, header) = self.change(MemberChange::Promote { id }).await?;
        Ok(Response::new(PbMemberPromoteResponse {
            header: Some(header),
            members,
        }))
    }
}
