//! Discovery bootstrap: a new member learns the founding members of its cluster from a
//! discovery service instead of `--initial-cluster`, with either of etcd's protocols:
//!
//! - v2 (`--discovery <url>`, [`v2`]): etcd's v2 keys HTTP API under the URL — any etcd with the
//!   v2 API, or ferrokv, which serves the part discovery needs;
//! - v3 (`--discovery-endpoints` + `--discovery-token`, [`v3`]): etcd's v3 API, with etcd's key
//!   layout under `/_etcd/registry/<token>/`.
//!
//! Both run the same steps as etcd: read the expected size; refuse to join a cluster that is
//! already full; register `<member-id-hex>` = `name=peer-url,...`; wait until `size` members
//! have registered; the first `size` registrations (by creation index or revision) are the
//! founding members. The result then bootstraps the member exactly as a static
//! `--initial-cluster` would, with the discovery URL (v2) or token (v3) as the cluster token —
//! as etcd does — so each member's ID, computed from its own peer URLs, is the ID every other
//! founding member computes for it.
//!
//! This module is not for running members: a member whose data dir is initialised never
//! consults discovery again.

pub mod v2;
pub mod v3;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;

use crate::config::{parse_initial_cluster, parse_url, NodeConfig};
use crate::storage::identity;
use crate::{Error, Result};

// etcd's discovery errors, word for word.
pub const ERR_FULL_CLUSTER: &str = "discovery: cluster is full";
pub const ERR_SIZE_NOT_FOUND: &str = "discovery: size key not found";
pub const ERR_BAD_SIZE_KEY: &str = "discovery: size key is bad";
pub const ERR_DUPLICATE_ID: &str = "discovery: found duplicate id";
pub const ERR_DUPLICATE_NAME: &str = "discovery: found duplicate name";
pub const ERR_INVALID_URL: &str = "discovery: invalid URL";
pub const ERR_BAD_ENDPOINT: &str = "discovery: bad discovery endpoint";

/// etcd's backoff between retries of an unreachable discovery service: 2^n seconds, n capped.
const MAX_BACKOFF_EXPONENT: u32 = 8;

/// The discovery flags, as etcd names them (flattened into `config::Config`).
#[derive(Debug, Clone, Default, Args)]
pub struct DiscoveryFlags {
    /// Discovery URL used to bootstrap the cluster (etcd's v2 discovery protocol), e.g.
    /// http://host:2379/v2/keys/discovery/<token>.
    #[arg(long, env = "ETCD_DISCOVERY")]
    pub discovery: Option<String>,

    /// V3 discovery: comma-separated client URLs of the etcd-v3-API cluster serving discovery.
    #[arg(long, env = "ETCD_DISCOVERY_ENDPOINTS")]
    pub discovery_endpoints: Option<String>,

    /// V3 discovery: the token naming this cluster in the discovery service.
    #[arg(long, env = "ETCD_DISCOVERY_TOKEN")]
    pub discovery_token: Option<String>,

    /// V3 discovery: dial timeout for the client (a Go duration such as 2s or 500ms).
    #[arg(long, env = "ETCD_DISCOVERY_DIAL_TIMEOUT", default_value = "2s")]
    pub discovery_dial_timeout: String,

    /// V3 discovery: timeout of each request.
    #[arg(long, env = "ETCD_DISCOVERY_REQUEST_TIMEOUT", default_value = "5s")]
    pub discovery_request_timeout: String,

    /// V3 discovery: keep-alive time of the client.
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIME", default_value = "2s")]
    pub discovery_keepalive_time: String,

    /// V3 discovery: keep-alive timeout of the client.
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIMEOUT", default_value = "6s")]
    pub discovery_keepalive_timeout: String,

    /// V3 discovery: username[:password] for authentication.
    #[arg(long, env = "ETCD_DISCOVERY_USER")]
    pub discovery_user: Option<String>,

    /// V3 discovery: password, when --discovery-user has none.
    #[arg(long, env = "ETCD_DISCOVERY_PASSWORD")]
    pub discovery_password: Option<String>,
}

/// How this member discovers its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    V2 { url: String },
    V3(V3Config),
}

/// The v3 discovery client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Config {
    pub endpoints: Vec<String>,
    pub token: String,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    pub user: Option<(String, String)>,
}

impl Discovery {
    /// The cluster token a discovered cluster uses, as etcd chooses it: the discovery URL, or
    /// the v3 discovery token.
    pub fn cluster_token(&self) -> &str {
        match self {
            Discovery::V2 { url } => url,
            Discovery::V3(c) => &c.token,
        }
    }
}

impl DiscoveryFlags {
    /// Checks the flags; `None` when no discovery is asked for.
    pub fn check(&self) -> std::result::Result<Option<Discovery>, String> {
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let (url, endpoints, token) = (
            given(&self.discovery),
            given(&self.discovery_endpoints),
            given(&self.discovery_token),
        );
        match (url, endpoints) {
            (None, None) => {
                if token.is_some() {
                    return Err("--discovery-token needs --discovery-endpoints".into());
                }
                Ok(None)
            }
            (Some(_), Some(_)) => Err(
                "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\""
                    .into(),
            ),
            (Some(url), None) => {
                v2::DiscoveryUrl::parse(&url).map_err(|e| format!("--discovery: {e}"))?;
                Ok(Some(Discovery::V2 { url }))
            }
            (None, Some(endpoints)) => {
                let token = token.ok_or("--discovery-endpoints needs --discovery-token")?;
                let endpoints: Vec<String> = endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for e in &endpoints {
                    // etcd takes host:port as well as URLs; TLS to the discovery service is
                    // not supported.
                    if e.starts_with("https://") {
                        return Err(format!("--discovery-endpoints: {e}: TLS to the discovery service is not supported by ferrokv"));
                    }
                    if e.contains("://") {
                        parse_url(e).map_err(|err| format!("--discovery-endpoints: {err}"))?;
                    }
                }
                let duration = |flag: &str, text: &str| {
                    parse_go_duration(text).ok_or_else(|| {
                        format!("--{flag}: invalid duration {text:?} (expected e.g. 2s or 500ms)")
                    })
                };
                let user = given(&self.discovery_user).map(|u| match u.split_once(':') {
                    Some((name, password)) => (name.to_string(), password.to_string()),
                    None => (u, self.discovery_password.clone().unwrap_or_default()),
                });
                Ok(Some(Discovery::V3(V3Config {
                    endpoints,
                    token,
                    dial_timeout: duration("discovery-dial-timeout", &self.discovery_dial_timeout)?,
                    request_timeout: duration(
                        "discovery-request-timeout",
                        &self.discovery_request_timeout,
                    )?,
                    keepalive_time: duration(
                        "discovery-keepalive-time",
                        &self.discovery_keepalive_time,
                    )?,
                    keepalive_timeout: duration(
                        "discovery-keepalive-timeout",
                        &self.discovery_keepalive_timeout,
                    )?,
                    user,
                })))
            }
        }
    }
}

/// Parses a Go duration: a sequence of decimal numbers with units (ns, us, µs, ms, s, m, h).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Some(Duration::from_secs_f64(total))
}

/// One member's registration as a discovery service lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The member ID in hex, the last segment of its key.
    pub id: String,
    /// `name=peer-url,...`.
    pub value: String,
    /// Its creation index (v2) or create revision (v3): the order of registration.
    pub created: u64,
}

/// What this member registers: its ID in hex (etcd's `types.ID.String()`) and
/// `name=peer-url,...` as etcd's `URLsMap.String()` writes it.
pub fn registration_of(config: &NodeConfig) -> (String, String) {
    let id = identity::member_id(
        &config.advertise_peer_urls,
        &config.initial_cluster_token,
        None,
    );
    let mut pairs: Vec<String> = config
        .advertise_peer_urls
        .iter()
        .map(|url| format!("{}={url}", config.name))
        .collect();
    pairs.sort();
    (format!("{id:x}"), pairs.join(","))
}

/// etcd's check of a registration list (sorted by creation): `Err(full)` when `size` members
/// that are not `self_id` registered before it (or before it would).
pub fn check_not_full(
    registrations: &[Registration],
    self_id: &str,
    size: usize,
) -> std::result::Result<(), String> {
    for (i, r) in registrations.iter().enumerate() {
        if r.id == self_id {
            return Ok(());
        }
        if i + 1 >= size {
            return Err(ERR_FULL_CLUSTER.to_string());
        }
    }
    Ok(())
}

/// The founding members: the first `size` registrations by creation, as an initial cluster
/// that must hold this member under its own name and peer URLs.
pub fn founding_members(
    mut registrations: Vec<Registration>,
    size: usize,
    config: &NodeConfig,
) -> Result<BTreeMap<String, Vec<String>>> {
    registrations.sort_by_key(|r| r.created);
    registrations.truncate(size);
    let text = registrations
        .iter()
        .map(|r| r.value.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let cluster = parse_initial_cluster(&text)
        .map_err(|e| Error::Discovery(format!("{ERR_INVALID_URL}: {text:?}: {e}")))?;
    if cluster.len() != size {
        return Err(Error::Discovery(format!("{ERR_DUPLICATE_NAME}: {text:?}")));
    }
    let mut mine = config.advertise_peer_urls.clone();
    mine.sort();
    let listed = cluster.get(&config.name).map(|urls| {
        let mut urls = urls.clone();
        urls.sort();
        urls
    });
    if listed.as_ref() != Some(&mine) {
        return Err(Error::Discovery(format!(
            "discovery: the founding members {text:?} do not include {}={}",
            config.name,
            mine.join(",")
        )));
    }
    Ok(cluster)
}

/// Runs discovery and returns the founding members (name → peer URLs) to bootstrap with.
pub async fn initial_cluster(
    config: &NodeConfig,
    discovery: &Discovery,
) -> Result<BTreeMap<String, Vec<String>>> {
    let (id, value) = registration_of(config);
    tracing::info!(member_id = %id, registration = %value, "bootstrapping through discovery");
    let (registrations, size) = match discovery {
        Discovery::V2 { url } => v2::join(url, &id, &value).await?,
        Discovery::V3(v3) => v3::join(v3, &id, &value).await?,
    };
    let cluster = founding_members(registrations, size, config)?;
    tracing::info!(
        initial_cluster = %cluster
            .iter()
            .map(|(name, urls)| format!("{name}={}", urls.join(",")))
            .collect::<Vec<_>>()
            .join(","),
        "discovered the founding members"
    );
    Ok(cluster)
}

/// Sleeps etcd's backoff before retry number `retries` (from 1) of an unreachable service.
async fn back_off(retries: &mut u32, step: &str, error: &str) {
    *retries += 1;
    let wait = Duration::from_secs(1 << (*retries).min(MAX_BACKOFF_EXPONENT));
    tracing::warn!(reason = step, error, backoff = ?wait, "retry connecting to discovery service");
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn registration(id: &str, value: &str, created: u64) -> Registration {
        Registration {
            id: id.into(),
            value: value.into(),
            created,
        }
    }

    fn node_config(args: &[&str]) -> std::result::Result<NodeConfig, String> {
        let mut argv = vec!["ferrokv"];
        argv.extend_from_slice(args);
        let config = crate::config::Config::try_parse_from(argv).map_err(|e| e.to_string())?;
        NodeConfig::check(config, false)
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn the_first_size_registrations_found_the_cluster_and_later_ones_are_refused() {
        let regs = vec![
            registration("a1", "a=http://a:2380", 5),
            registration("b2", "b=http://b:2380", 6),
            registration("c3", "c=http://c:2380", 7),
        ];
        assert_eq!(check_not_full(&regs, "b2", 3), Ok(()));
        assert_eq!(check_not_full(&regs[..2], "d4", 3), Ok(()));
        assert_eq!(
            check_not_full(&regs, "d4", 3),
            Err(ERR_FULL_CLUSTER.to_string())
        );
        let config = node_config(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://b:2380",
            "--discovery",
            "http://d:2379/v2/keys/discovery/t",
        ])
        .unwrap();
        let mut more = regs.clone();
        more.insert(0, registration("d4", "d=http://d:2380", 8));
        let cluster = founding_members(more, 3, &config).unwrap();
        assert_eq!(cluster.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        let dup = vec![
            registration("a1", "a=http://a:2380", 5),
            registration("b2", "b=http://b:2380", 6),
            registration("x9", "a=http://x:2380", 7),
        ];
        let e = founding_members(dup, 3, &config).unwrap_err().to_string();
        assert!(e.contains(ERR_DUPLICATE_NAME), "{e}");
    }

    #[test]
    fn a_member_registers_the_id_founding_members_compute_for_it() {
        let config = node_config(&[
            "--name",
            "b",
            "--initial-advertise-peer-urls",
            "http://b:2380",
            "--discovery",
            "http://d:2379/v2/keys/discovery/t",
        ])
        .unwrap();
        assert_eq!(
            config.initial_cluster_token,
            "http://d:2379/v2/keys/discovery/t"
        );
        let (id, value) = registration_of(&config);
        assert_eq!(value, "b=http://b:2380");
        let mut founded = config.clone();
        founded.initial_cluster = parse_initial_cluster("a=http://a:2380,b=http://b:2380").unwrap();
        let identity = crate::run::founding_identity(&founded);
        assert_eq!(format!("{:x}", identity.member_id), id);
    }

    #[test]
    fn discovery_flags_are_checked() {
        let e = node_config(&[
            "--discovery",
            "http://d:2379/v2/keys/x",
            "--initial-cluster",
            "default=http://localhost:2380",
        ])
        .unwrap_err();
        assert!(e.contains("multiple discovery or bootstrap flags"), "{e}");
        let e = node_config(&["--discovery-endpoints", "http://d:2379"]).unwrap_err();
        assert!(e.contains("--discovery-token"), "{e}");
        let c = node_config(&[
            "--discovery-endpoints",
            "http://d:2379,d2:2379",
            "--discovery-token",
            "tok",
            "--discovery-dial-timeout",
            "500ms",
            "--discovery-user",
            "root:pw",
        ])
        .unwrap();
        let Some(Discovery::V3(v3)) = c.discovery else {
            panic!("v3 discovery expected")
        };
        assert_eq!(v3.endpoints, ["http://d:2379", "d2:2379"]);
        assert_eq!(v3.dial_timeout, Duration::from_millis(500));
        assert_eq!(v3.user, Some(("root".into(), "pw".into())));
        assert_eq!(c.initial_cluster_token, "tok");
        assert!(node_config(&[
            "--discovery-endpoints",
            "d:1",
            "--discovery-token",
            "t",
            "--discovery-request-timeout",
            "5"
        ])
        .is_err());
    }
}
