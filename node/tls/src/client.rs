//! The rustls client configuration a member dials other members' https:// peer URLs with: its
//! `--peer-cert-file`/`--peer-key-file` as the client certificate, and the other member's
//! certificate verified against `--peer-trusted-ca-file` for the URL's host. As in etcd, a
//! member with a self-signed certificate of `--peer-auto-tls` and no trusted CA does not verify
//! the others' (self-signed) certificates. Files are re-read when they change.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use crate::files;
use crate::reload::Watched;
use crate::server::WatchedCertificate;
use crate::{TlsError, TlsFiles, TlsOptions};

/// The client configuration for dialing with `files`' side.
pub fn client_config(
    files: &TlsFiles,
    options: &TlsOptions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = options.provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(options.versions())
        .map_err(|e| TlsError::InvalidFlag {
            flag: "--cipher-suites",
            message: e.to_string(),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = match &files.trusted_ca_file {
        Some(_) => Arc::new(ServerVerifier::new(files, provider.clone())?),
        None if files.auto_tls => Arc::new(SelfSignedPeers(provider.clone())),
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| {
                    TlsError::Missing(format!(
                        "{} is not given and the system has no usable CA certificates: {e}",
                        files.side.flags().trusted_ca
                    ))
                })?
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = if files.cert_and_key().is_some() {
        builder.with_client_cert_resolver(Arc::new(ClientCertificate(WatchedCertificate::new(
            files, provider,
        )?)))
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct ClientCertificate(WatchedCertificate);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies servers' certificates against the trusted CA bundle as it is on disk now.
struct ServerVerifier {
    chain: Watched<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    fn new(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<ServerVerifier, TlsError> {
        let flag = files.side.flags().trusted_ca;
        let ca = files
            .trusted_ca_file
            .clone()
            .ok_or_else(|| TlsError::Missing(format!("{flag} is needed")))?;
        let build_provider = provider.clone();
        let path = ca.clone();
        let chain = Watched::new(
            format!(
                "{} trusted CA bundle ({flag} {})",
                files.side.name(),
                ca.display()
            ),
            vec![ca],
            move || {
                let roots = files::roots(flag, &path)?;
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), build_provider.clone())
                    .build()
                    .map_err(|e| TlsError::Malformed {
                        flag,
                        path: path.clone(),
                        message: e.to_string(),
                    })
            },
        )?;
        Ok(ServerVerifier { chain, provider })
    }
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerVerifier")
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.chain.get().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signature12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signature13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `--peer-auto-tls` without a trusted CA: every member's certificate is self-signed, so there
/// is no chain to verify (etcd skips verification the same way). The handshake's signatures
/// are still checked.
#[derive(Debug)]
struct SelfSignedPeers(Arc<CryptoProvider>);

impl ServerCertVerifier for SelfSignedPeers {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signature12(&self.0, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        signature13(&self.0, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.2 handshake signature checked with `provider`'s algorithms; the client and server
/// verifiers both use it.
pub(crate) fn signature12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// A TLS 1.3 handshake signature checked with `provider`'s algorithms.
pub(crate) fn signature13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}
