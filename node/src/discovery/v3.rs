//! etcd's v3 discovery protocol (`--discovery-endpoints` + `--discovery-token`), through the
//! `etcd-client` crate against any etcd-v3-API cluster, with etcd's key layout:
//!
//! ```text
//! /_etcd/registry/<token>/_config/size              the expected cluster size
//! /_etcd/registry/<token>/members/<member-id-hex>   name=peer-url,...  (one per member)
//! ```
//!
//! Members are listed with a prefix Range over `.../members`, ordered by create revision, and
//! waited for with a prefix Watch from the revision after the listing.

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};

use super::{
    back_off, check_not_full, Registration, V3Config, ERR_BAD_SIZE_KEY, ERR_SIZE_NOT_FOUND,
};
use crate::{Error, Result};

/// etcd's v3 discovery key prefix.
const REGISTRY_PREFIX: &str = "/_etcd/registry";

fn size_key(token: &str) -> String {
    format!("{REGISTRY_PREFIX}/{token}/_config/size")
}

fn members_prefix(token: &str) -> String {
    format!("{REGISTRY_PREFIX}/{token}/members")
}

fn member_key(token: &str, id: &str) -> String {
    format!("{}/{id}", members_prefix(token))
}

/// Registers `id` = `value` under the token and waits for the cluster to fill; returns every
/// registration seen and the expected size.
pub async fn join(config: &V3Config, id: &str, value: &str) -> Result<(Vec<Registration>, usize)> {
    let mut retries = 0;
    let mut client = loop {
        match connect(config).await {
            Ok(client) => break client,
            Err(e) => back_off(&mut retries, "connecting", &e).await,
        }
    };
    // Fast path: a full cluster is refused before registering.
    check_cluster(&mut client, config, id, &mut retries).await?;
    let key = member_key(&config.token, id);
    loop {
        match timed(config, client.put(key.clone(), value, None)).await {
            Ok(_) => break,
            Err(e) => back_off(&mut retries, "register member itself", &e).await,
        }
    }
    tracing::info!(member_key = %key, member_info = value, "registered this member");
    loop {
        let (registrations, size, revision) =
            check_cluster(&mut client, config, id, &mut retries).await?;
        match wait_for_members(&mut client, config, registrations, size, revision).await {
            Ok(all) => return Ok((all, size)),
            Err(e) => back_off(&mut retries, "waiting for peers", &e).await,
        }
    }
}

async fn connect(config: &V3Config) -> std::result::Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_keep_alive(config.keepalive_time, config.keepalive_timeout);
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.clone());
    }
    Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(|e| format!("connecting to {}: {e}", config.endpoints.join(",")))
}

async fn timed<T>(
    config: &V3Config,
    call: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(config.request_timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "request timed out after {:?} (--discovery-request-timeout)",
            config.request_timeout
        )),
    }
}

/// Reads the size and the registrations so far (sorted by create revision), and the revision
/// they were read at; refuses with etcd's error when the cluster is full without this member.
async fn check_cluster(
    client: &mut Client,
    config: &V3Config,
    id: &str,
    retries: &mut u32,
) -> Result<(Vec<Registration>, usize, i64)> {
    loop {
        let size = match timed(config, client.get(size_key(&config.token), None)).await {
            Err(e) => {
                back_off(retries, "cluster status check", &e).await;
                continue;
            }
            Ok(resp) => {
                let Some(kv) = resp.kvs().first() else {
                    return Err(Error::Discovery(ERR_SIZE_NOT_FOUND.into()));
                };
                String::from_utf8_lossy(kv.value())
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|size| *size > 0)
                    .ok_or_else(|| Error::Discovery(ERR_BAD_SIZE_KEY.into()))?
            }
        };
        let prefix = members_prefix(&config.token);
        let listed = timed(
            config,
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let resp = match listed {
            Err(e) => {
                back_off(retries, "cluster status check", &e).await;
                continue;
            }
            Ok(resp) => resp,
        };
        *retries = 0;
        let mut registrations: Vec<Registration> = resp
            .kvs()
            .iter()
            .filter_map(|kv| registration(&prefix, kv.key(), kv.value(), kv.create_revision()))
            .collect();
        registrations.sort_by_key(|r| r.created);
        check_not_full(&registrations, id, size).map_err(Error::Discovery)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        return Ok((registrations, size, revision));
    }
}

/// A member key as a registration; etcd skips values that are not `name=url`.
fn registration(prefix: &str, key: &[u8], value: &[u8], created: i64) -> Option<Registration> {
    let key = String::from_utf8_lossy(key);
    let value = String::from_utf8_lossy(value).trim().to_string();
    if !key.starts_with(prefix) || !value.contains('=') {
        tracing::warn!(member_key = %key, member_info = %value, "invalid peer registration; ignored");
        return None;
    }
    Some(Registration {
        id: key.rsplit('/').next().unwrap_or_default().to_string(),
        value,
        created: created.max(0) as u64,
    })
}

/// Watches the members prefix from `revision + 1` until `size` members have registered.
async fn wait_for_members(
    client: &mut Client,
    config: &V3Config,
    mut all: Vec<Registration>,
    size: usize,
    revision: i64,
) -> std::result::Result<Vec<Registration>, String> {
    if all.len() >= size {
        return Ok(all);
    }
    let prefix = members_prefix(&config.token);
    tracing::info!(
        cluster_size = size,
        found_peers = all.len(),
        "waiting for peers from discovery service"
    );
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = timed(config, client.watch(prefix.clone(), Some(options))).await?;
    while all.len() < size {
        let Some(resp) = stream.message().await.map_err(|e| e.to_string())? else {
            return Err("the discovery watch ended".into());
        };
        if resp.canceled() {
            return Err(format!(
                "the discovery watch was canceled: {}",
                resp.cancel_reason()
            ));
        }
        for event in resp.events() {
            let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) else {
                continue;
            };
            if let Some(r) = registration(&prefix, kv.key(), kv.value(), kv.create_revision()) {
                if !all.iter().any(|seen| seen.id == r.id) {
                    tracing::info!(peer = %r.id, member_info = %r.value, "found peer from discovery service");
                    all.push(r);
                }
            }
        }
        all.sort_by_key(|r| r.created);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_registry_layout() {
        assert_eq!(size_key("tok"), "/_etcd/registry/tok/_config/size");
        assert_eq!(
            member_key("tok", "8e9e05c52164694d"),
            "/_etcd/registry/tok/members/8e9e05c52164694d"
        );
        let prefix = members_prefix("tok");
        let r = registration(
            &prefix,
            b"/_etcd/registry/tok/members/8e9e05c52164694d",
            b"infra1=http://10.0.1.10:2380 ",
            42,
        )
        .unwrap();
        assert_eq!(
            (r.id.as_str(), r.value.as_str(), r.created),
            ("8e9e05c52164694d", "infra1=http://10.0.1.10:2380", 42)
        );
        assert!(registration(&prefix, b"/_etcd/registry/tok/members/x", b"garbage", 1).is_none());
    }
}
