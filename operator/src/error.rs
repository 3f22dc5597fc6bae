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

    #[error("KVCluster {namespace}/{name} not found")]
    ClusterNotFound { namespace: String, name: String },

    #[error("KVCluster {cluster} has no member pod {member} (its members: {})", known.join(", "))]
    NoSuchMember {
        cluster: String,
        member: String,
        known: Vec<String>,
    },

    #[error("no member of KVCluster {cluster} answers")]
    NoMemberAnswers { cluster: String },

    #[error("member {member} does not answer: {why}")]
    MemberNotAnswering { member: String, why: String },

    #[error("KVClusterBackup {name} failed: {reason}: {message}")]
    BackupFailed {
        name: String,
        reason: String,
        message: String,
    },

    #[error("local port: {0}")]
    Io(#[from] std::io::Error),
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
            Self::ClusterNotFound { .. } => "cluster_not_found",
            Self::NoSuchMember { .. } => "no_such_member",
            Self::NoMemberAnswers { .. } => "no_member_answers",
            Self::MemberNotAnswering { .. } => "member_not_answering",
            Self::BackupFailed { .. } => "backup_failed",
            Self::Io(_) => "io",
        }
    }
}
