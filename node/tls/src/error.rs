//! The errors of reading etcd's TLS flags and files. Each names the flag it is about, so that a
//! member that cannot start says in one line which flag to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file a flag names is missing or unreadable.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A certificate file (or CA bundle) with no PEM certificate in it.
    #[error("{flag} {}: no PEM certificate in it", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    /// A file whose PEM or DER content cannot be parsed.
    #[error("{flag} {}: {message}", path.display())]
    Malformed {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A key file with no private key, or with a key of a type rustls cannot sign with.
    #[error("{flag} {}: no usable private key in it: {message}", path.display())]
    NoKey {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A certificate past its notAfter.
    #[error("{flag} {}: the certificate expired at {not_after}", path.display())]
    Expired {
        flag: &'static str,
        path: PathBuf,
        not_after: String,
    },
    /// A certificate before its notBefore.
    #[error("{flag} {}: the certificate is not valid before {not_before}", path.display())]
    NotYetValid {
        flag: &'static str,
        path: PathBuf,
        not_before: String,
    },
    /// A key that is not the one the certificate was issued for.
    #[error("{key_flag} {} does not match the certificate in {cert_flag} {}", key_path.display(), cert_path.display())]
    KeyMismatch {
        cert_flag: &'static str,
        cert_path: PathBuf,
        key_flag: &'static str,
        key_path: PathBuf,
    },
    /// An https:// URL, or a flag that needs certificates, without them.
    #[error("{0}")]
    Missing(String),
    /// A flag value that is not one of the accepted ones (cipher suite, TLS version, ...).
    #[error("{flag}: {message}")]
    InvalidFlag { flag: &'static str, message: String },
    /// Making the self-signed certificate of --auto-tls or --peer-auto-tls failed.
    #[error("{flag}: cannot make a self-signed certificate: {message}")]
    SelfSigned { flag: &'static str, message: String },
}
