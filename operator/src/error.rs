//! The operator's one error type.

use thiserror::Error;

#[derive(Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("etcd API: {0}")]
    Etcd(#[from] etcd_client::Error),

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("KVCluster has no namespace")]
    NoNamespace,

    #[error("member {0:x} has no client URL")]
    MemberUnreachable(u64),

    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),

    #[error("TLS: {0}")]
    Pki(#[from] crate::tls::pki::PkiError),

    #[error("TLS: {0}")]
    TlsSecret(String),

    #[error("auth: {0}")]
    AuthSecret(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Etcd(_) => "etcd",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "no_namespace",
            Self::MemberUnreachable(_) => "member_unreachable",
            Self::Serialization(_) => "serialization",
            Self::Pki(_) => "pki",
            Self::TlsSecret(_) => "tls_secret",
            Self::AuthSecret(_) => "auth_secret",
        }
    }
}
