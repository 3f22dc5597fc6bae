//! Dialing another member's peer URL: plain TCP for `http://`, TLS with the peer client
//! configuration for `https://`.
//!
//! tonic is handed an `http://` endpoint and this connector, which does the TLS itself: tonic's
//! own TLS takes no custom verifier (so no reloading) and refuses `https://` endpoints whenever
//! another crate in the build enables its TLS features without configuring them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Uri;

/// Connects to one member's peer URL; tonic calls it for every (re)connection.
#[derive(Clone)]
pub struct PeerConnector {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl PeerConnector {
    /// The `http://host:port` endpoint to give tonic for `url`, and the connector that reaches
    /// it as `url` says. `tls` is the peer client configuration, if the member has peer TLS.
    pub fn for_url(
        url: &str,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<(String, PeerConnector), String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let plain = format!("http://{authority}");
        match scheme {
            "http" => Ok((plain, PeerConnector { tls: None })),
            "https" => {
                let config = tls.ok_or_else(|| {
                    format!("{url} is an https:// peer URL, but this member has no peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file or --peer-auto-tls)")
                })?;
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| format!("{url}: host {host:?} is not a TLS server name: {e}"))?;
                Ok((
                    plain,
                    PeerConnector {
                        tls: Some((config.clone(), name)),
                    },
                ))
            }
            other => Err(format!("{url}: unsupported scheme {other:?}")),
        }
    }
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<PeerStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("{uri} has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .ok_or_else(|| io::Error::other(format!("{uri} has no port")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Raft's small messages must not wait for Nagle.
            tcp.set_nodelay(true)?;
            let stream = match tls {
                None => PeerStream::Plain(tcp),
                Some((config, name)) => PeerStream::Tls(Box::new(
                    TlsConnector::from(config).connect(name, tcp).await?,
                )),
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// A connection to a peer, with or without TLS.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
