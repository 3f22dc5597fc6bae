//! How the operator reaches a cluster's members through the etcd v3 API: the TLS identity it
//! presents on the client port, and the root credentials once etcd's auth is on. Every etcd
//! client the operator makes (status, membership, defragmentation, backups) is made from an
//! [`EtcdAccess`], so TLS and auth are never forgotten on one path.
//!
//! [`ensure_auth`] turns auth on when `spec.auth` asks for it: it adds the `root` role and user
//! with the password of the Secret, grants the role, and enables auth, as `etcdctl user add
//! root` and `etcdctl auth enable` do.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::crd::{KVCluster, SecretKeyRef};
use crate::error::Error;
use crate::tls::ClientIdentity;

/// The user the operator creates and authenticates as.
pub const ROOT: &str = "root";

/// The credentials of the operator's etcd clients for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    identity: Option<ClientIdentity>,
    user: Option<(String, String)>,
}

impl EtcdAccess {
    /// Plain text, or TLS with `identity` when the client port has TLS.
    pub fn new(identity: Option<ClientIdentity>) -> Self {
        Self {
            identity,
            user: None,
        }
    }

    /// The same access, authenticating as `user` with `password`.
    pub fn with_user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// Whether requests are authenticated (auth is on and the operator knows the password).
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// The TLS identity presented on the client port, when it has TLS.
    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_ref()
    }

    /// The user and password requests authenticate with.
    pub fn user(&self) -> Option<(&str, &str)> {
        self.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Connects to `endpoints`, each request limited to `timeout`.
    pub async fn connect(
        &self,
        endpoints: &[String],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_timeout(timeout);
        if let Some(identity) = &self.identity {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&identity.ca_bundle))
                    .identity(Identity::from_pem(&identity.cert, &identity.key)),
            );
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user, password);
        }
        Client::connect(endpoints, Some(options)).await
    }
}

/// What [`ensure_auth`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// `spec.auth` does not ask for auth: the access is unchanged.
    NotAsked,
    /// Auth was already on and the password authenticates.
    On,
    /// Auth was off; the operator turned it on.
    Enabled,
    /// No member answered; the access authenticates, as auth is on from a cluster's first
    /// moments on.
    Unreachable,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The root password of `spec.auth`, from its Secret.
async fn root_password(
    client: &kube::Client,
    namespace: &str,
    key_ref: &SecretKeyRef,
) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let missing = |what: &str| {
        Error::AuthSecret(format!(
            "auth.rootPasswordSecret: Secret {:?} {what}",
            key_ref.name
        ))
    };
    let secret = secrets
        .get_opt(&key_ref.name)
        .await?
        .ok_or_else(|| missing("does not exist"))?;
    let value = secret
        .data
        .unwrap_or_default()
        .remove(&key_ref.key)
        .ok_or_else(|| missing(&format!("has no key {:?}", key_ref.key)))?;
    let password = String::from_utf8(value.0)
        .map_err(|_| missing(&format!("key {:?} is not UTF-8", key_ref.key)))?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(missing(&format!("key {:?} is empty", key_ref.key)));
    }
    Ok(password)
}

/// The access of paths that do not reconcile (backups): the identity the Secrets hold now, and
/// root's credentials when the spec asks for auth (which the reconcile has turned on).
pub async fn current(
    client: &kube::Client,
    kvc: &KVCluster,
    namespace: &str,
) -> Result<EtcdAccess, Error> {
    let access = EtcdAccess::new(crate::tls::identity(client, kvc).await?);
    match kvc.spec.root_password() {
        Some(key_ref) => {
            let password = root_password(client, namespace, key_ref).await?;
            Ok(access.with_user(ROOT, &password))
        }
        None => Ok(access),
    }
}

/// Turns auth on when the spec asks for it, and returns the access the operator uses from now
/// on: `access` authenticating as root.
pub async fn ensure_auth(
    client: &kube::Client,
    kvc: &KVCluster,
    namespace: &str,
    endpoints: &[String],
    access: EtcdAccess,
) -> Result<(EtcdAccess, AuthOutcome), Error> {
    let Some(key_ref) = kvc.spec.root_password() else {
        return Ok((access, AuthOutcome::NotAsked));
    };
    let password = root_password(client, namespace, key_ref).await?;
    let root = access.clone().with_user(ROOT, &password);
    match root
        .connect(endpoints, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .await
    {
        Ok(_) => Ok((root, AuthOutcome::On)),
        Err(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::FailedPrecondition =>
        {
            enable(&access, endpoints, &password).await?;
            Ok((root, AuthOutcome::Enabled))
        }
        Err(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::InvalidArgument =>
        {
            Err(Error::AuthSecret(format!(
                "the password of auth.rootPasswordSecret {:?} does not authenticate user root: {}",
                key_ref.name,
                status.message()
            )))
        }
        Err(_) => Ok((root, AuthOutcome::Unreachable)),
    }
}

/// `etcdctl role add root; user add root; user grant-role root root; auth enable`, each step
/// skipped when already done, so a pass cut short is finished by the next.
async fn enable(access: &EtcdAccess, endpoints: &[String], password: &str) -> Result<(), Error> {
    let mut etcd = access
        .connect(endpoints, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .await?;
    if etcd.role_get(ROOT).await.is_err() {
        etcd.role_add(ROOT).await?;
    }
    if etcd.user_get(ROOT).await.is_err() {
        etcd.user_add(ROOT, password, None).await?;
    } else {
        etcd.user_change_password(ROOT, password).await?;
    }
    etcd.user_grant_role(ROOT, ROOT).await?;
    etcd.auth_enable().await?;
    Ok(())
}
