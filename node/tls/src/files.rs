//! Reading the PEM files etcd's TLS flags name, and checking them as a member must before it
//! serves with them: a certificate that has expired or is not yet valid, or a key that is not the
//! certificate's, is refused naming the flag.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::TlsError;

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(flag: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Malformed {
        flag,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The certificates of a PEM file, in order: a chain (leaf first) or a CA bundle.
pub fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Refuses a certificate outside its validity period.
pub fn check_validity(
    flag: &'static str,
    path: &Path,
    cert: &CertificateDer<'_>,
) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| malformed(flag, path, format!("not an X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(TlsError::Expired {
            flag,
            path: path.to_path_buf(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            flag,
            path: path.to_path_buf(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// The subject common name of a certificate, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// A certificate chain and its private key, checked: the leaf within its validity period and
/// the key the leaf's.
pub fn certified_key(
    (cert_flag, cert_path): (&'static str, &Path),
    (key_flag, key_path): (&'static str, &Path),
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(cert_flag, cert_path)?;
    check_validity(cert_flag, cert_path, &chain[0])?;
    let pem = read(key_flag, key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        flag: key_flag,
        path: key_path.to_path_buf(),
        message: e.to_string(),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::NoKey {
            flag: key_flag,
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert_flag,
        cert_path: cert_path.to_path_buf(),
        key_flag,
        key_path: key_path.to_path_buf(),
    })?;
    Ok(Arc::new(certified))
}

/// A trusted CA bundle.
pub fn roots(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| malformed(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The revocation lists of a CRL file.
pub fn crls(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(flag, path, format!("not a PEM CRL file: {e}")))?;
    if crls.is_empty() {
        return Err(malformed(flag, path, "no PEM X509 CRL in it"));
    }
    Ok(crls)
}
