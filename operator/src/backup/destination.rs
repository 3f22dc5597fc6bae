//! The bucket backups go to: an `object_store` S3 client built from a destination and the
//! credentials Secret it names.
//!
//! Retries are few and short: a backup that cannot reach its bucket fails and says so, and
//! the next scheduled run tries again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::BackupError;
use crate::crd::S3Destination;

/// Keys of the credentials Secret.
pub const ACCESS_KEY_ID_KEY: &str = "accessKeyID";
pub const SECRET_ACCESS_KEY_KEY: &str = "secretAccessKey";
pub const SESSION_TOKEN_KEY: &str = "sessionToken";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials read from the Secret.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

async fn read_credentials(
    client: &Client,
    namespace: &str,
    secret: &str,
) -> Result<Credentials, BackupError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = secrets.get_opt(secret).await?.ok_or_else(|| {
        BackupError::Credentials(format!("Secret {namespace}/{secret} not found"))
    })?;
    let data = found.data.unwrap_or_default();
    let value = |key: &str| {
        data.get(key)
            .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let required = |key: &str| {
        value(key).ok_or_else(|| {
            BackupError::Credentials(format!("Secret {namespace}/{secret} has no key {key:?}"))
        })
    };
    Ok(Credentials {
        access_key_id: required(ACCESS_KEY_ID_KEY)?,
        secret_access_key: required(SECRET_ACCESS_KEY_KEY)?,
        session_token: value(SESSION_TOKEN_KEY),
    })
}

/// An S3 client for `destination`, with the credentials of its Secret in `namespace`.
pub async fn open_bucket(
    client: &Client,
    namespace: &str,
    destination: &S3Destination,
) -> Result<Arc<dyn ObjectStore>, BackupError> {
    let mut builder = match &destination.credentials_secret {
        Some(secret) => {
            let credentials = read_credentials(client, namespace, secret).await?;
            let builder = AmazonS3Builder::new()
                .with_access_key_id(credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key);
            match credentials.session_token {
                Some(token) => builder.with_token(token),
                None => builder,
            }
        }
        // The operator's own: environment, web identity, instance metadata.
        None => AmazonS3Builder::from_env(),
    };
    builder = builder
        .with_bucket_name(&destination.bucket)
        .with_region(destination.region.as_deref().unwrap_or("us-east-1"))
        .with_virtual_hosted_style_request(!destination.force_path_style)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
        })
        .with_client_options(
            ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(CONNECT_TIMEOUT),
        );
    if let Some(endpoint) = &destination.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = builder
        .build()
        .map_err(|e| BackupError::Destination(e.to_string()))?;
    Ok(Arc::new(store))
}
