//! One side's TLS flags — the client side (`--cert-file`, ...) or the peer side
//! (`--peer-cert-file`, ...) — checked for consistency before anything is read.

use std::path::PathBuf;

use crate::TlsError;

/// Which of a member's two ports the flags are for; it names the flags in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

/// The names of one side's flags.
#[derive(Debug, Clone, Copy)]
pub struct FlagNames {
    pub cert: &'static str,
    pub key: &'static str,
    pub trusted_ca: &'static str,
    pub client_cert_auth: &'static str,
    pub crl: &'static str,
    pub auto_tls: &'static str,
    pub urls: &'static str,
}

impl Side {
    pub fn flags(self) -> FlagNames {
        match self {
            Side::Client => FlagNames {
                cert: "--cert-file",
                key: "--key-file",
                trusted_ca: "--trusted-ca-file",
                client_cert_auth: "--client-cert-auth",
                crl: "--client-crl-file",
                auto_tls: "--auto-tls",
                urls: "--listen-client-urls",
            },
            Side::Peer => FlagNames {
                cert: "--peer-cert-file",
                key: "--peer-key-file",
                trusted_ca: "--peer-trusted-ca-file",
                client_cert_auth: "--peer-client-cert-auth",
                crl: "--peer-crl-file",
                auto_tls: "--peer-auto-tls",
                urls: "--listen-peer-urls",
            },
        }
    }

    /// "client" or "peer", for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Peer => "peer",
        }
    }
}

/// One side's TLS flags as given.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub side: Side,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    pub auto_tls: bool,
    /// `--peer-cert-allowed-cn` (peer side only).
    pub allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname` (peer side only).
    pub allowed_hostname: Option<String>,
}

impl TlsFiles {
    /// No TLS flag of this side given.
    pub fn new(side: Side) -> TlsFiles {
        TlsFiles {
            side,
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            crl_file: None,
            auto_tls: false,
            allowed_cn: None,
            allowed_hostname: None,
        }
    }

    /// The certificate and key files, when both are given.
    pub fn cert_and_key(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert_file.as_ref().zip(self.key_file.as_ref())
    }

    /// Whether this side can serve TLS: a certificate and key, or one to make (`--auto-tls`).
    pub fn can_serve(&self) -> bool {
        self.cert_and_key().is_some() || self.auto_tls
    }

    /// Whether incoming connections must present a certificate the trusted CA signed. As in
    /// etcd, a trusted CA file alone asks for client certificates too.
    pub fn verifies_clients(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    /// Checks that the flags fit together; `https_urls` are this side's https:// listen URLs.
    pub fn check(&self, https_urls: &[String]) -> Result<(), TlsError> {
        let flags = self.side.flags();
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(TlsError::Missing(format!(
                "{} and {} must be given together",
                flags.cert, flags.key
            )));
        }
        if let Some(url) = https_urls.first() {
            if !self.can_serve() {
                return Err(TlsError::Missing(format!(
                    "TLS key/cert ({}, {}) must be provided for {} url {url} with HTTPS scheme (or use {})",
                    flags.cert,
                    flags.key,
                    self.side.name(),
                    flags.auto_tls
                )));
            }
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(TlsError::Missing(format!(
                "{} needs {} to verify certificates with",
                flags.client_cert_auth, flags.trusted_ca
            )));
        }
        if self.crl_file.is_some() && !self.verifies_clients() {
            return Err(TlsError::Missing(format!(
                "{} needs {} (and {}): without them no certificate is asked for",
                flags.crl, flags.client_cert_auth, flags.trusted_ca
            )));
        }
        if self.allowed_cn.is_some() && self.allowed_hostname.is_some() {
            return Err(TlsError::Missing(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname cannot be both set".into(),
            ));
        }
        if (self.allowed_cn.is_some() || self.allowed_hostname.is_some())
            && !self.verifies_clients()
        {
            return Err(TlsError::Missing(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth and --peer-trusted-ca-file".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_without_certificates_names_the_flags() {
        let files = TlsFiles::new(Side::Peer);
        let err = files
            .check(&["https://127.0.0.1:2380".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url https://127.0.0.1:2380 with HTTPS scheme (or use --peer-auto-tls)");
    }

    #[test]
    fn contradictions_are_refused() {
        let mut files = TlsFiles::new(Side::Client);
        files.cert_file = Some("c".into());
        assert!(files
            .check(&[])
            .unwrap_err()
            .to_string()
            .contains("--key-file"));
        files.key_file = Some("k".into());
        files.client_cert_auth = true;
        assert!(files
            .check(&[])
            .unwrap_err()
            .to_string()
            .starts_with("--client-cert-auth needs --trusted-ca-file"));
        files.trusted_ca_file = Some("ca".into());
        assert!(files.check(&["https://x:1".into()]).is_ok());
    }
}
