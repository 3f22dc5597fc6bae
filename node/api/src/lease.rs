//! `etcdserverpb.Lease`: Grant, Revoke, KeepAlive (a stream), TimeToLive, Leases.

use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status::to_status;
use crate::traits::LeaseServer;
use ferrokv_server::lease::LeaseTtl;
use ferrokv_server::Server;

pub struct LeaseService<S = Server> {
    server: S,
}

impl<S: LeaseServer> LeaseService<S> {
    pub fn new(server: S) -> LeaseService<S> {
        LeaseService { server }
    }
}

fn current_revision(server: &impl LeaseServer) -> i64 {
    server.current_revision().unwrap_or(0)
}

#[tonic::async_trait]
impl<S: LeaseServer> PbLeaseService for LeaseService<S> {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let req = request.into_inner();
        self.server.check_quota().await.map_err(to_status)?;
        let (id, ttl) = self
            .server
            .lease_grant(req.id, req.ttl)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: Some(self.server.header(current_revision(&self.server))),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let info = super::auth::request_auth(&self.server, &request).await?;
        let revision = self
            .server
            .lease_revoke(&info, request.into_inner().id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: Some(self.server.header(revision)),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = incoming.next().await {
                let reply = match server.lease_keep_alive(req.id).await {
                    // etcd answers a keep-alive of an unknown lease with TTL 0, not an error.
                    Ok(LeaseTtl::Alive { remaining, .. }) => Ok((remaining, req.id)),
                    Ok(LeaseTtl::NotFound) => Ok((0, req.id)),
                    Err(e) => Err(to_status(e)),
                };
                let msg = reply.map(|(ttl, id)| PbLeaseKeepAliveResponse {
                    header: Some(server.header(current_revision(&server))),
                    id,
                    ttl,
                });
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let info = super::auth::request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        let ttl = self
            .server
            .lease_time_to_live(req.id)
            .await
            .map_err(to_status)?;
        let header = Some(self.server.header(current_revision(&self.server)));
        let resp = match ttl {
            // etcd reports an unknown (or expired) lease as TTL -1.
            LeaseTtl::NotFound => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            LeaseTtl::Alive { remaining, granted } => {
                let keys = if req.keys {
                    let keys = self.server.lease_keys(req.id).map_err(to_status)?;
                    // Listing the keys needs read permission on each, as in etcd.
                    for key in &keys {
                        self.server.check_read(&info, key, &[]).map_err(to_status)?;
                    }
                    keys
                } else {
                    Vec::new()
                };
                PbLeaseTimeToLiveResponse {
                    header,
                    id: req.id,
                    ttl: remaining,
                    granted_ttl: granted,
                    keys,
                }
            }
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let leases = self
            .server
            .lease_ids()
            .map_err(to_status)?
            .into_iter()
            .map(|id| PbLeaseStatus { id })
            .collect();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(self.server.header(current_revision(&self.server))),
            leases,
        }))
    }
}
