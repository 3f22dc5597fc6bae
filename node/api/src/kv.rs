//! `etcdserverpb.KV`: Range, RangeStream, Put, DeleteRange, Txn, Compact.

use std::pin::Pin;

use etcd_client::proto::PbRangeStreamResponse;
use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbTxnOpResponse, PbTxnRequest,
    PbTxnResponse,
};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use super::auth::request_auth;
use super::status::to_status;
use super::validate;
use crate::traits::KvServer;
use ferrokv_server::Server;
use ferrokv_server::ServerError as Error;
use ferrokv_server::{Request as Proposal, Response as Applied};

/// How many keys one RangeStream message carries.
const RANGE_STREAM_CHUNK: usize = 1000;

pub struct KvService<S = Server> {
    server: S,
}

impl<S: KvServer> KvService<S> {
    pub fn new(server: S) -> KvService<S> {
        KvService { server }
    }

    fn check_size<M: Message>(&self, msg: &M) -> Result<(), Status> {
        if msg.encoded_len() > self.server.max_request_bytes() {
            return Err(to_status(Error::RequestTooLarge));
        }
        Ok(())
    }

    async fn propose(&self, p: Proposal) -> Result<Applied, Status> {
        match self.server.propose(p).await.map_err(to_status)? {
            Applied::Rejected(e) => Err(to_status(e.into())),
            other => Ok(other),
        }
    }

    /// Fills the cluster fields of every header in a txn response, nested ones included.
    fn fill_txn_headers(&self, resp: &mut PbTxnResponse) {
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        resp.header = Some(self.server.header(revision));
        for op in &mut resp.responses {
            match &mut op.response {
                Some(PbTxnOpResponse::ResponseRange(r)) => {
                    let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(revision);
                    r.header = Some(self.server.header(rev));
                }
                Some(PbTxnOpResponse::ResponsePut(r)) => {
                    let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(revision);
                    r.header = Some(self.server.header(rev));
                }
                Some(PbTxnOpResponse::ResponseDeleteRange(r)) => {
                    let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(revision);
                    r.header = Some(self.server.header(rev));
                }
                Some(PbTxnOpResponse::ResponseTxn(t)) => self.fill_txn_headers(t),
                None => {}
            }
        }
    }
}

fn unexpected(what: &str, got: &Applied) -> Status {
    Status::internal(format!("applying a {what} returned {got:?}"))
}

#[tonic::async_trait]
impl<S: KvServer> PbKvService for KvService<S> {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        validate::check_range(&req).map_err(to_status)?;
        // As etcd: the read barrier, then the permission check against the auth store it caught
        // up to, and only then the read.
        self.server.range_barrier(&req).await.map_err(to_status)?;
        self.server
            .check_read(&info, &req.key, &req.range_end)
            .map_err(to_status)?;
        let resp = self.server.range_read(&req).await.map_err(to_status)?;
        Ok(Response::new(resp))
    }

    type RangeStreamStream =
        Pin<Box<dyn Stream<Item = Result<PbRangeStreamResponse, Status>> + Send + 'static>>;

    async fn range_stream(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        validate::check_range(&req).map_err(to_status)?;
        self.server.range_barrier(&req).await.map_err(to_status)?;
        self.server
            .check_read(&info, &req.key, &req.range_end)
            .map_err(to_status)?;
        let full = self.server.range_read(&req).await.map_err(to_status)?;
        // Disjoint slices of the keys in order; header, more and count on the last chunk.
        let mut chunks: Vec<PbRangeResponse> = full
            .kvs
            .chunks(RANGE_STREAM_CHUNK)
            .map(|kvs| PbRangeResponse {
                kvs: kvs.to_vec(),
                ..Default::default()
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(PbRangeResponse::default());
        }
        let last = chunks.last_mut().expect("at least one chunk");
        last.header = full.header;
        last.more = full.more;
        last.count = full.count;
        let messages: Vec<Result<PbRangeStreamResponse, Status>> = chunks
            .into_iter()
            .map(|r| {
                Ok(PbRangeStreamResponse {
                    range_response: Some(r),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        validate::check_put(&req).map_err(to_status)?;
        self.server.check_quota().await.map_err(to_status)?;
        match self
            .propose(self.server.authorized(&info, Proposal::Put(req)))
            .await?
        {
            Applied::Put(mut resp) => {
                let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                resp.header = Some(self.server.header(revision));
                Ok(Response::new(resp))
            }
            other => Err(unexpected("put", &other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        validate::check_delete(&req).map_err(to_status)?;
        match self
            .propose(self.server.authorized(&info, Proposal::DeleteRange(req)))
            .await?
        {
            Applied::DeleteRange(mut resp) => {
                let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                resp.header = Some(self.server.header(revision));
                Ok(Response::new(resp))
            }
            other => Err(unexpected("delete", &other)),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        validate::check_txn(&req, self.server.max_txn_ops()).map_err(to_status)?;
        if validate::txn_writes(&req) {
            self.server.check_quota().await.map_err(to_status)?;
        }
        match self
            .propose(self.server.authorized(&info, Proposal::Txn(req)))
            .await?
        {
            Applied::Txn(mut resp) => {
                self.fill_txn_headers(&mut resp);
                Ok(Response::new(resp))
            }
            other => Err(unexpected("txn", &other)),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        // etcd checks no permission for a compaction, only that a token given is valid.
        request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        match self.propose(Proposal::Compact(req)).await? {
            Applied::Compact(mut resp) => {
                let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                resp.header = Some(self.server.header(revision));
                Ok(Response::new(resp))
            }
            other => Err(unexpected("compaction", &other)),
        }
    }
}
