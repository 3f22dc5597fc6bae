//! `etcdserverpb.Watch`: the bidirectional watch stream, translated to and from the server's
//! watch engine (`server::watch`).

use std::pin::Pin;

use etcd_client::proto::{PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{request_auth, RequestCredentials};
use super::status::to_status;
use ferrokv_server::watch::{serve_stream, WatchCommand, WatchSpec};
use ferrokv_server::Server;

/// Responses buffered per stream before the stream's task waits for the client.
const RESPONSE_BUFFER: usize = 256;

pub struct WatchService {
    server: Server,
}

impl WatchService {
    pub fn new(server: Server) -> WatchService {
        WatchService { server }
    }
}

fn command(req: PbWatchRequest) -> Option<WatchCommand> {
    Some(match req.request_union? {
        PbWatchRequestUnion::CreateRequest(c) => WatchCommand::Create(WatchSpec {
            key: c.key,
            range_end: c.range_end,
            start_revision: c.start_revision,
            progress_notify: c.progress_notify,
            filters: c.filters,
            prev_kv: c.prev_kv,
            watch_id: c.watch_id,
        }),
        PbWatchRequestUnion::CancelRequest(c) => WatchCommand::Cancel(c.watch_id),
        PbWatchRequestUnion::ProgressRequest(_) => WatchCommand::Progress,
    })
}

/// The reason of a refused watch, as etcd words it: the whole gRPC error of its refusal.
fn cancel_reason(e: ferrokv_server::ServerError) -> String {
    let status = to_status(e);
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        request_auth(&self.server, &request).await?;
        // etcd's isWatchPermitted resolves the stream's credentials again on every create
        // request: a token that expired, or a user whose roles changed, since the stream opened
        // is seen as it is now.
        let credentials = RequestCredentials::of(&request);
        let mut incoming = request.into_inner();
        let (command_tx, command_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(RESPONSE_BUFFER);
        let refusals = out_tx.clone();
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = incoming.next().await {
                if let Some(cmd) = command(req) {
                    // A watch outside the user's permitted ranges is refused, as etcd refuses
                    // it: a created-and-canceled response naming the reason.
                    if let WatchCommand::Create(spec) = &cmd {
                        let permitted = match credentials.auth_info(&server).await {
                            Ok(info) => server.check_read(&info, &spec.key, &spec.range_end),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = permitted {
                            let refusal = PbWatchResponse {
                                header: Some(server.header(server.current_revision().unwrap_or(0))),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: cancel_reason(e),
                                ..Default::default()
                            };
                            if refusals.send(Ok(refusal)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                    if command_tx.send(cmd).await.is_err() {
                        break;
                    }
                }
            }
        });
        tokio::spawn(serve_stream(self.server.clone(), command_rx, out_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
