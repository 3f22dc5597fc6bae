//! ferrokv-api, the client API: etcd's v3 gRPC services and plain HTTP endpoints, both on
//! every `--listen-client-urls` address, in plain text or, for an `https://` URL, through TLS. This layer translates and validates; it sees the
//! server only through its public methods (and each gRPC service through a trait naming what
//! it uses), never Raft or storage.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod http;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod status;
pub mod traits;
pub mod v2keys;
pub mod validate;
pub mod watch;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
use std::sync::Arc;

use ferrokv_tls::{ServerConfig, Side};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::Routes;

use ferrokv_server::Server;

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much, so that an oversized
/// request is answered with etcd's "request is too large" rather than a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Serves `/health`, `/livez`, `/readyz`, `/version` and `/metrics` as plain HTTP on
/// `listener` (a `--listen-metrics-urls` URL) until `shutdown`.
pub async fn serve_metrics(
    server: Server,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::metrics_router(server))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves clients on `listener` until `shutdown` resolves: through TLS with `tls` (an
/// `https://` client URL), else in plain text. gRPC and plain HTTP share the port either way.
pub async fn serve_clients(
    server: Server,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = server.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let routes = Routes::from(http::router(server.clone()))
        .add_service(
            PbKvServer::new(kv::KvService::new(server.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            PbMaintenanceServer::new(maintenance::MaintenanceService::new(server.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            PbClusterServer::new(cluster::ClusterService::new(server.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            PbLeaseServer::new(lease::LeaseService::new(server.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(auth::AuthRoutes::new(server.clone(), max))
        .add_service(
            PbWatchServer::new(watch::WatchService::new(server.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        );
    let mut builder = tonic::transport::Server::builder().accept_http1(true);
    match tls {
        Some(config) => {
            let incoming = ferrokv_tls::accept::incoming(listener, config, Side::Client)
                .map(|conn| conn.map(authority::AuthorityFix::new));
            builder
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            // tonic applies its own TCP_NODELAY setting only to listeners it binds itself;
            // without it, Nagle's algorithm holds small replies back for tens of milliseconds.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream))
                    .map(authority::AuthorityFix::new)
            });
            builder
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}
