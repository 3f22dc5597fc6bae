//! The `portforward` subresource of pods, as the API server and kubelet serve it over a
//! WebSocket (the `v4.channel.k8s.io` protocol kube-rs' `Api::<Pod>::portforward` and kubectl
//! speak): `GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P1,P2` upgraded to a
//! WebSocket, in which port `i` of the list has the data channel `2i` and the error channel
//! `2i+1`. Every binary message starts with its channel's byte; each channel's first message
//! from the server is the port number (two bytes, little-endian). The pod's port is reached at
//! its `status.podIP`, as the kubelet would reach it from the node.
//!
//! Not here: SPDY (`kubectl port-forward` of kubectl before 1.31 without websockets), the `v5`
//! protocol's close signals.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::kube::http::Server;

/// The one sub-protocol served: binary channels, errors as text on the odd channels.
const PROTOCOL: &str = "v4.channel.k8s.io";

fn refusal(status: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": status.as_u16(),
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

/// Upgrades the request to a WebSocket and relays each requested port of the pod through it.
pub async fn handle(
    State(server): State<Arc<Server>>,
    Path((namespace, name)): Path<(String, String)>,
    mut request: Request,
) -> Response {
    let ports: Result<Vec<u16>, _> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ports="))
        .flat_map(|list| list.split("%2C").flat_map(|p| p.split(',')))
        .map(str::parse::<u16>)
        .collect();
    let ports = match ports {
        Ok(ports) if !ports.is_empty() => ports,
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "query parameter \"ports\" must name one or more ports".to_string(),
            )
        }
    };
    let Some(pods) = server.store.resource_type("", "v1", "pods") else {
        return refusal(StatusCode::NOT_FOUND, "NotFound", "no pods".to_string());
    };
    let pod = match server.store.get(&pods, &namespace, &name) {
        Ok(pod) => pod,
        Err(error) => return refusal(StatusCode::NOT_FOUND, "NotFound", error.to_string()),
    };
    let Some(ip) = pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("pod {name} has no IP: it is not running"),
        );
    };
    let headers = request.headers();
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return refusal(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "port-forward needs the WebSocket sub-protocol {PROTOCOL} (offered: {offered:?})"
            ),
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward is served only as a WebSocket upgrade".to_string(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    let targets: Vec<(u16, SocketAddr)> = ports
        .iter()
        .map(|&port| (port, SocketAddr::new(ip, port)))
        .collect();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                relay(socket, &name, targets).await;
            }
            Err(error) => eprintln!("port-forward to {name}: upgrade failed: {error}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        )
        .header(header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL)
        .body(Body::empty())
        .expect("static headers are valid")
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(payload);
    Message::binary(bytes)
}

/// Connects each port and copies bytes both ways until either side closes.
async fn relay<S>(socket: WebSocketStream<S>, pod: &str, targets: Vec<(u16, SocketAddr)>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (outgoing, mut queued) = mpsc::channel::<Message>(16);
    let mut writers = Vec::with_capacity(targets.len());
    let mut readers = Vec::with_capacity(targets.len());
    for (index, (port, address)) in targets.into_iter().enumerate() {
        let data = (2 * index) as u8;
        let error = data + 1;
        for channel in [data, error] {
            let _ = outgoing.send(frame(channel, &port.to_le_bytes())).await;
        }
        match TcpStream::connect(address).await {
            Ok(connection) => {
                let (mut from_pod, to_pod) = connection.into_split();
                writers.push(Some(to_pod));
                let outgoing = outgoing.clone();
                readers.push(tokio::spawn(async move {
                    let mut buffer = vec![0u8; 32 * 1024];
                    while let Ok(read @ 1..) = from_pod.read(&mut buffer).await {
                        if outgoing.send(frame(data, &buffer[..read])).await.is_err() {
                            return;
                        }
                    }
                    let _ = outgoing.send(Message::Close(None)).await;
                }));
            }
            Err(e) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod {pod}: {e}");
                let _ = outgoing.send(frame(error, message.as_bytes())).await;
            }
        }
    }
    drop(outgoing);
    let sender = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            let close = message.is_close();
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) if bytes.len() > 1 => {
                let channel = bytes[0] as usize;
                if !channel.is_multiple_of(2) {
                    continue;
                }
                if let Some(Some(writer)) = writers.get_mut(channel / 2) {
                    if writer.write_all(&bytes[1..]).await.is_err() {
                        break;
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    // The client is gone: so is everything it was relaying.
    for writer in writers.iter_mut().flatten() {
        let _ = writer.shutdown().await;
    }
    for reader in readers {
        reader.abort();
    }
    sender.abort();
}
