//! The member's TLS, built from its flags once its data dir exists: the self-signed
//! certificates of `--auto-tls` / `--peer-auto-tls` made (in `<data-dir>/fixtures`), then the
//! rustls configurations of the client port, the peer port and the connections to other
//! members. A file that is missing, unreadable, expired or does not match its key stops the
//! member here, with one line naming the flag.

use std::sync::Arc;

use crate::config::{HostPort, NodeConfig};
use crate::tls::{client::client_config, self_signed::self_signed, server::server_config};
use crate::tls::{ClientConfig, ServerConfig, Side, TlsFiles};
use crate::Result;

/// What the member serves and dials with.
pub struct MemberTls {
    /// For `https://` client URLs; `None` when no client URL is https.
    pub client_server: Option<Arc<ServerConfig>>,
    /// For `https://` peer URLs; `None` when no peer URL is https.
    pub peer_server: Option<Arc<ServerConfig>>,
    /// For dialing other members' `https://` peer URLs; `None` without peer TLS flags.
    pub peer_client: Option<Arc<ClientConfig>>,
}

impl MemberTls {
    pub fn build(config: &NodeConfig) -> Result<MemberTls> {
        let client = with_self_signed(config, &config.client_tls, &config.listen_client_urls)?;
        let peer = with_self_signed(config, &config.peer_tls, &config.listen_peer_urls)?;
        let serves = |urls: &[HostPort], files: &TlsFiles| {
            let https = urls.iter().any(|u| u.tls);
            if !https && files.cert_and_key().is_some() {
                tracing::warn!(
                    "{} are given but no {} URL is https://; ignoring them on that port",
                    files.side.flags().cert,
                    files.side.name()
                );
            }
            https
        };
        let client_server = match serves(&config.listen_client_urls, &client) {
            true => Some(server_config(&client, &config.tls_options)?),
            false => None,
        };
        let peer_server = match serves(&config.listen_peer_urls, &peer) {
            true => Some(server_config(&peer, &config.tls_options)?),
            false => None,
        };
        let peer_client = match peer.can_serve() || peer.trusted_ca_file.is_some() {
            true => Some(client_config(&peer, &config.tls_options)?),
            false => None,
        };
        Ok(MemberTls {
            client_server,
            peer_server,
            peer_client,
        })
    }
}

/// `files` with the certificate of `--auto-tls` (or `--peer-auto-tls`) when that is asked for
/// and no certificate is given — as in etcd, given files win over auto TLS.
fn with_self_signed(config: &NodeConfig, files: &TlsFiles, urls: &[HostPort]) -> Result<TlsFiles> {
    if !files.auto_tls || files.cert_and_key().is_some() {
        if files.auto_tls {
            tracing::warn!(
                "ignoring {} since {} and {} are given",
                files.side.flags().auto_tls,
                files.side.flags().cert,
                files.side.flags().key
            );
        }
        return Ok(files.clone());
    }
    let mut hosts: Vec<String> = urls.iter().map(|u| u.host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    let side: Side = files.side;
    let (cert, key) = self_signed(
        side,
        &config.data_dir,
        &hosts,
        config.self_signed_cert_validity,
    )?;
    Ok(TlsFiles {
        cert_file: Some(cert),
        key_file: Some(key),
        ..files.clone()
    })
}
