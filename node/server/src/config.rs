//! What the server needs of the member's configuration, and the peer and client URLs it
//! checks. The flags themselves are parsed by the `ferrokv` binary.

use std::sync::Arc;
use std::time::Duration;

use crate::jwt::JwtTokens;

/// The settings the server and the client API run with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--name`.
    pub name: String,
    /// `--advertise-client-urls`, published as this member's client URLs.
    pub advertise_client_urls: Vec<String>,
    pub election_timeout: Duration,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--bcrypt-cost`: the cost of the password hashes UserAdd and ChangePassword make.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: the CommonName of a verified client certificate names the user of
    /// a request without a token (not with `--trusted-ca-file` alone, as in etcd).
    pub client_cert_auth: bool,
    /// `--auth-token`: the kind of token Authenticate issues.
    pub auth_token: AuthToken,
}

/// etcd's token providers (`--auth-token`).
#[derive(Debug, Clone)]
pub enum AuthToken {
    /// Random strings recorded on every member by the Authenticate that issues them.
    Simple,
    /// Signed tokens any member with the key verifies (`ferrokv_server::jwt`).
    Jwt(Arc<JwtTokens>),
}

/// A `host:port` to listen on, from an `http://host:port` or `https://host:port` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Whether the URL is `https://`: the port speaks TLS.
    pub tls: bool,
}

/// Parses `http://host:port` or `https://host:port`.
pub fn parse_url(url: &str) -> Result<HostPort, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else if url.starts_with("unix://") || url.starts_with("unixs://") {
        return Err(format!(
            "{url:?}: unix socket URLs are not supported by ferrokv"
        ));
    } else {
        return Err(format!(
            "{url:?} is not a valid URL (expected http://host:port or https://host:port)"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port (expected http://host:port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?} has an invalid port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(HostPort {
        url: url.to_string(),
        host: host.to_string(),
        port,
        tls,
    })
}
