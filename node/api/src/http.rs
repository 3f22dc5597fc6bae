//! Plain HTTP on the client port: `/health` (etcd's JSON shape), `/livez`, `/readyz`,
//! `/version` and `/metrics` (Prometheus text with etcd's metric names).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};

use ferrokv_server::{Server, ETCD_API_VERSION};

pub fn router(server: Server) -> Router {
    endpoints()
        .merge(super::v2keys::router())
        .with_state(server)
}

/// What `--listen-metrics-urls` serve: the health and metrics endpoints, nothing of the keyspace.
pub fn metrics_router(server: Server) -> Router {
    endpoints().with_state(server)
}

fn endpoints() -> Router<Server> {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
}

/// etcd's /health: healthy when a leader is known and a linearizable read completes.
async fn health(State(server): State<Server>) -> impl IntoResponse {
    let (status, body) = if !server.leader_alive() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#,
        )
    } else {
        match tokio::time::timeout(Duration::from_secs(1), server.read_barrier()).await {
            Ok(Ok(())) => (StatusCode::OK, r#"{"health":"true","reason":""}"#),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"health":"false","reason":"QGET ERROR"}"#,
            ),
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// The process is alive and serving HTTP.
async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

/// Ready to serve clients: a leader is known and this member is a voter.
async fn readyz(State(server): State<Server>) -> impl IntoResponse {
    if !server.leader_alive() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]leader: no leader\n".to_string(),
        );
    }
    let learner = server
        .members()
        .map(|ms| {
            ms.iter()
                .any(|m| m.id == server.member_id() && m.is_learner)
        })
        .unwrap_or(true);
    if learner {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]learner: not yet a voting member\n".to_string(),
        );
    }
    (StatusCode::OK, "ok".to_string())
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"{ETCD_API_VERSION}","ferrokv":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    )
}

async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let m = server.metrics();
    let raft = server.raft_summary();
    m.has_leader.set(server.leader_alive() as i64);
    m.is_leader.set(server.is_leader() as i64);
    m.proposals_committed.set(raft.commit as i64);
    m.proposals_applied.set(server.applied_index() as i64);
    let size = server.db_size_bytes() as i64;
    m.db_total_size.set(size);
    m.db_total_size_in_use.set(server.db_size_in_use() as i64);
    m.current_revision
        .set(server.current_revision().unwrap_or(0));
    m.compact_revision
        .set(server.compact_revision().unwrap_or(-1));
    m.server_id
        .with_label_values(&[&format!("{:x}", server.member_id())])
        .set(1);
    m.server_version
        .with_label_values(&[ETCD_API_VERSION])
        .set(1);
    let learner = server
        .members()
        .map(|ms| {
            ms.iter()
                .any(|x| x.id == server.member_id() && x.is_learner)
        })
        .unwrap_or(false);
    m.is_learner.set(learner as i64);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .expect("text encoding");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
