//! A TLS listener: accepted connections come out with their handshakes done, for tonic's
//! server to serve (gRPC and plain HTTP alike, as on etcd's TLS ports).
//!
//! Handshakes run in tasks of their own, so a slow or silent client does not hold up the
//! others. A client that sends plain text — an `http://` client on an `https://` port — gets
//! the answer Go's TLS servers give (`400 Bad Request`, "Client sent an HTTP request to an HTTPS
//! server.") and a warning naming it is logged; so is every other refused handshake (no
//! certificate, a certificate of another CA, a wrong CN), as etcd logs "rejected connection".

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::Side;

/// A handshake not finished within this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What Go's TLS servers (so etcd's) answer a plain-HTTP request with.
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// A client connection whose TLS handshake is done.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl TlsConnection {
    /// The certificate chain the client presented, leaf first (empty without client auth).
    pub fn peer_certificates(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.0.get_ref().1.peer_certificates().unwrap_or(&[])
    }
}

/// Why a connection was not handed on.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("client sent plain text, not a TLS handshake (an http:// client on this https:// port?); answered 400 Bad Request")]
    PlainText,
    #[error("closed before a TLS handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("TLS handshake not done within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
}

/// Serves `listener`'s connections through TLS with `config`: the stream tonic serves.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    side: Side,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (handed, connections) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = handed.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, from) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(side = side.name(), error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without TCP_NODELAY, Nagle delays small replies and Raft messages.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handed = handed.clone();
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, stream))
                    .await
                    .unwrap_or(Err(Refused::TimedOut));
                match outcome {
                    Ok(connection) => {
                        let _ = handed.send(Ok(connection)).await;
                    }
                    Err(reason) => tracing::warn!(
                        side = side.name(),
                        %from,
                        "rejected connection: {reason}"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(connections)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
) -> Result<TlsConnection, Refused> {
    let mut first = [0u8; 1];
    let read = stream.peek(&mut first).await.map_err(Refused::Handshake)?;
    if read == 0 {
        return Err(Refused::Closed);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let _ = stream.write_all(PLAIN_HTTP_REPLY).await;
        let _ = stream.shutdown().await;
        return Err(Refused::PlainText);
    }
    acceptor
        .accept(stream)
        .await
        .map(TlsConnection)
        .map_err(Refused::Handshake)
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// What tonic hands each request of a TLS connection: its TCP addresses, and the CommonName of
/// the client certificate the handshake verified (with `--client-cert-auth`), which names the
/// user of a request that carries no token, as in etcd.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub tcp: TcpConnectInfo,
    pub common_name: Option<String>,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        TlsConnectInfo {
            tcp: self.0.get_ref().0.connect_info(),
            common_name: self
                .peer_certificates()
                .first()
                .and_then(crate::files::common_name),
        }
    }
}
