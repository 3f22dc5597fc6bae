//! The rustls server configuration of one side (client port or peer port): its certificate
//! from `--cert-file`/`--key-file`, and — with `--client-cert-auth` or `--trusted-ca-file` —
//! clients' certificates verified against `--trusted-ca-file` and `--client-crl-file`, plus the
//! peer side's `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`. Every file is re-read
//! when it changes ([`crate::reload`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};

use crate::files;
use crate::reload::Watched;
use crate::{TlsError, TlsFiles, TlsOptions};

/// The server configuration for `files`' side. `files` must have passed
/// [`TlsFiles::check`] and name a certificate and key (the self-signed ones of `--auto-tls`
/// included).
pub fn server_config(
    files: &TlsFiles,
    options: &TlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = options.provider();
    let certificate = WatchedCertificate::new(files, provider.clone())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(options.versions())
        .map_err(|e| TlsError::InvalidFlag {
            flag: "--cipher-suites",
            message: e.to_string(),
        })?;
    let builder = if files.verifies_clients() {
        builder.with_client_cert_verifier(Arc::new(ClientVerifier::new(files, provider)?))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(certificate));
    // gRPC clients insist on h2; curl and etcdctl's HTTP calls use HTTP/1.1 on the same port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificate and key a side presents, re-read when their files change.
pub struct WatchedCertificate(Watched<Arc<CertifiedKey>>);

impl WatchedCertificate {
    pub fn new(
        files: &TlsFiles,
        provider: Arc<CryptoProvider>,
    ) -> Result<WatchedCertificate, TlsError> {
        let flags = files.side.flags();
        let (cert, key) = files.cert_and_key().ok_or_else(|| {
            TlsError::Missing(format!("{} and {} are needed", flags.cert, flags.key))
        })?;
        let (cert, key) = (cert.clone(), key.clone());
        let watched = Watched::new(
            format!(
                "{} certificate ({} {}, {} {})",
                files.side.name(),
                flags.cert,
                cert.display(),
                flags.key,
                key.display()
            ),
            vec![cert.clone(), key.clone()],
            move || files::certified_key((flags.cert, &cert), (flags.key, &key), &provider),
        )?;
        Ok(WatchedCertificate(watched))
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.get()
    }
}

impl fmt::Debug for WatchedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchedCertificate")
    }
}

impl ResolvesServerCert for WatchedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a client certificate must be beyond its chain, on the peer side.
#[derive(Debug, Clone)]
enum Identity {
    Any,
    CommonName(String),
    Hostname(String),
}

/// Verifies clients' certificates against the trusted CA bundle and the CRL as they are on
/// disk now.
struct ClientVerifier {
    chain: Watched<Arc<dyn ClientCertVerifier>>,
    identity: Identity,
    provider: Arc<CryptoProvider>,
    side: &'static str,
}

impl ClientVerifier {
    fn new(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<ClientVerifier, TlsError> {
        let flags = files.side.flags();
        let ca: PathBuf = files.trusted_ca_file.clone().ok_or_else(|| {
            TlsError::Missing(format!(
                "{} needs {}",
                flags.client_cert_auth, flags.trusted_ca
            ))
        })?;
        let crl = files.crl_file.clone();
        let mut watched_files = vec![ca.clone()];
        watched_files.extend(crl.clone());
        let build_provider = provider.clone();
        let chain = Watched::new(
            format!(
                "{} trusted CA bundle ({} {})",
                files.side.name(),
                flags.trusted_ca,
                ca.display()
            ),
            watched_files,
            move || {
                let roots = files::roots(flags.trusted_ca, &ca)?;
                let crls = match &crl {
                    Some(path) => files::crls(flags.crl, path)?,
                    None => Vec::new(),
                };
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), build_provider.clone())
                    .with_crls(crls)
                    // A CRL covers the CAs that issued it; certificates of other CAs in the
                    // bundle are not thereby unknown.
                    .allow_unknown_revocation_status()
                    .build()
                    .map_err(|e| TlsError::Malformed {
                        flag: if crl.is_some() {
                            flags.crl
                        } else {
                            flags.trusted_ca
                        },
                        path: crl.clone().unwrap_or_else(|| ca.clone()),
                        message: e.to_string(),
                    })
            },
        )?;
        let identity = match (&files.allowed_cn, &files.allowed_hostname) {
            (Some(cn), _) => Identity::CommonName(cn.clone()),
            (None, Some(host)) => Identity::Hostname(host.clone()),
            (None, None) => Identity::Any,
        };
        Ok(ClientVerifier {
            chain,
            identity,
            provider,
            side: files.side.name(),
        })
    }

    /// Refuses a certificate whose CN or hostname is not the allowed one.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), String> {
        match &self.identity {
            Identity::Any => Ok(()),
            Identity::CommonName(allowed) => match files::common_name(end_entity) {
                Some(cn) if cn == *allowed => Ok(()),
                cn => Err(format!(
                    "certificate CN {} is not the one --peer-cert-allowed-cn allows ({allowed:?})",
                    cn.map_or_else(|| "(none)".to_string(), |cn| format!("{cn:?}"))
                )),
            },
            Identity::Hostname(allowed) => {
                let name = ServerName::try_from(allowed.as_str())
                    .map_err(|e| format!("--peer-cert-allowed-hostname {allowed:?}: {e}"))?;
                let cert = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|e| format!("unparsable certificate: {e}"))?;
                cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
                    format!(
                        "certificate is not valid for {allowed:?} (--peer-cert-allowed-hostname)"
                    )
                })
            }
        }
    }
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("identity", &self.identity)
            .finish()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the bundle changes under rotation, and a hint list that names only the old CA
    /// would make some clients withhold a certificate of the new one. Clients then send the
    /// certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .chain
            .get()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verified {
            tracing::warn!(side = self.side, "refused a client certificate: {e}");
        }
        let verified = verified?;
        if let Err(reason) = self.check_identity(end_entity) {
            tracing::warn!(side = self.side, "refused a client certificate: {reason}");
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crate::client::signature12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crate::client::signature13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
