//! The node's configuration: etcd's command-line flags, parsed and checked in one place.
//!
//! Every flag has etcd's name, meaning and default, and can also be set through the
//! environment variable etcd reads for it (`ETCD_NAME`, `ETCD_DATA_DIR`, ...), so etcd runbooks
//! and manifests work unchanged. A malformed or contradictory flag stops the process with one
//! line naming the flag.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::server::compactor::{parse_auto_compaction, AutoCompaction};
pub use crate::server::config::{parse_url, HostPort};
use crate::server::config::{AuthToken, ServerConfig};
use crate::server::jwt::{JwtOptions, JwtTokens};
use crate::tls::{Side, TlsFiles, TlsOptions};

/// etcd's default for `--quota-backend-bytes` when it is 0: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferrokv",
    version,
    about = "ferrokv: a distributed, reliable key-value store that speaks etcd's v3 API.",
    long_about = "ferrokv: a distributed, reliable key-value store that speaks etcd's v3 API.\n\n\
        Flags are etcd's: each can also be given as --flag=value, -flag value, or through the \
        environment variable etcd reads (ETCD_NAME for --name, and so on). With no flags, \
        ferrokv is a one-member cluster named 'default' serving clients on \
        http://localhost:2379 and peers on http://localhost:2380, with its data in \
        default.ferrokv."
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.ferrokv].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path to the dedicated WAL directory [default: <data-dir>/member/wal].
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,

    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,

    /// List of URLs to listen on for peer traffic (comma-separated).
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// List of additional plain-HTTP URLs to listen on that answer only `/health`, `/livez`,
    /// `/readyz`, `/version` and `/metrics` (comma-separated): health checks and scrapers that
    /// hold no client certificate reach them while the client port requires one.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping, as name=peer-url,... [default:
    /// <name>=<initial-advertise-peer-urls>]. Ignored once the data dir is initialised.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing'). Ignored once the data dir is initialised.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Initial cluster token, which makes the member and cluster IDs of distinct clusters differ.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Raise an alarm when the backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// ferrokv's own (etcd maps its bbolt file and leaves caching to the kernel): the most
    /// memory the backend's page cache may hold, dirty pages included; 0 means the default,
    /// 64 MiB. Pages beyond it are read through the operating system's page cache.
    #[arg(long, env = "ETCD_BACKEND_CACHE_BYTES", default_value_t = 0)]
    pub backend_cache_bytes: u64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// Interpret --auto-compaction-retention as hours or a duration ('periodic') or as a number
    /// of revisions ('revision').
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// Auto compaction retention (0 disables auto compaction).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Specify auth token type and its options: 'simple', or
    /// 'jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|ES256|...>,ttl=<duration>'.
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// Time (in seconds) of the auth-token-ttl.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// Specify bcrypt algorithm cost factor for auth password hashing.
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,

    #[command(flatten)]
    pub discovery: crate::discovery::DiscoveryFlags,

    #[command(flatten)]
    pub tls: TlsFlags,
}

/// etcd's TLS flags, for the client port and for the peer port and peer connections.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA cert file (clients must then present a
    /// certificate it signed).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,

    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,

    /// Client TLS using generated certificates.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_tls: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,

    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,

    /// Peer TLS using generated certificates.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,

    /// Allowed CN for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,

    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,

    /// The validity period of the client and peer certificates that are automatically
    /// generated by etcd when --auto-tls and --peer-auto-tls are given, in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,

    /// Comma-separated list of supported TLS cipher suites between client/server and peers
    /// (empty will be auto-populated).
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,

    /// Minimum TLS version supported: TLS1.2 or TLS1.3.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,

    /// Maximum TLS version supported: TLS1.2 or TLS1.3 (empty for the highest).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
}

impl TlsFlags {
    /// The client side's and the peer side's flags, and what both may negotiate, checked
    /// against the https:// listen URLs of each side.
    fn check(
        &self,
        listen_client_urls: &[HostPort],
        listen_peer_urls: &[HostPort],
    ) -> Result<(TlsFiles, TlsFiles, TlsOptions), String> {
        // etcd treats an empty file flag as not given.
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let client = TlsFiles {
            cert_file: path(&self.cert_file),
            key_file: path(&self.key_file),
            trusted_ca_file: path(&self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth,
            crl_file: path(&self.client_crl_file),
            auto_tls: self.auto_tls,
            ..TlsFiles::new(Side::Client)
        };
        let peer = TlsFiles {
            cert_file: path(&self.peer_cert_file),
            key_file: path(&self.peer_key_file),
            trusted_ca_file: path(&self.peer_trusted_ca_file),
            client_cert_auth: self.peer_client_cert_auth,
            crl_file: path(&self.peer_crl_file),
            auto_tls: self.peer_auto_tls,
            allowed_cn: text(&self.peer_cert_allowed_cn),
            allowed_hostname: text(&self.peer_cert_allowed_hostname),
            ..TlsFiles::new(Side::Peer)
        };
        let https = |urls: &[HostPort]| -> Vec<String> {
            urls.iter()
                .filter(|u| u.tls)
                .map(|u| u.url.clone())
                .collect()
        };
        client
            .check(&https(listen_client_urls))
            .map_err(|e| e.to_string())?;
        peer.check(&https(listen_peer_urls))
            .map_err(|e| e.to_string())?;
        if (self.auto_tls || self.peer_auto_tls) && self.self_signed_cert_validity == 0 {
            return Err("--self-signed-cert-validity must be at least 1 (year)".into());
        }
        let options = TlsOptions::parse(
            &self.cipher_suites,
            &self.tls_min_version,
            &self.tls_max_version,
        )
        .map_err(|e| e.to_string())?;
        Ok((client, peer, options))
    }
}

/// Whether this member founds a new cluster or joins a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// The configuration after checking: every URL parsed, every default resolved.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub listen_client_urls: Vec<HostPort>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<HostPort>,
    /// `--listen-metrics-urls`: plain HTTP, the health and metrics endpoints only.
    pub listen_metrics_urls: Vec<HostPort>,
    pub advertise_peer_urls: Vec<String>,
    /// name → peer URLs, from `--initial-cluster`.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Whether `--initial-cluster-token` was given explicitly (flag or environment).
    pub token_given: bool,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub quota_backend_bytes: u64,
    /// `--backend-cache-bytes`, the default resolved.
    pub backend_cache_bytes: usize,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--auth-token-ttl`: how long a simple token lives without use.
    pub auth_token_ttl: Duration,
    /// `--auth-token`: simple tokens, or JWT tokens with their keys loaded.
    pub auth_token: AuthToken,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    pub auto_compaction: Option<AutoCompaction>,
    pub log_level: String,
    /// `--discovery`, or `--discovery-endpoints` with `--discovery-token`.
    pub discovery: Option<crate::discovery::Discovery>,
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, ...: TLS on the client port.
    pub client_tls: TlsFiles,
    /// `--peer-cert-file`, ...: TLS on the peer port and on connections to other members.
    pub peer_tls: TlsFiles,
    /// `--cipher-suites`, `--tls-min-version`, `--tls-max-version`, for both sides.
    pub tls_options: TlsOptions,
    /// `--self-signed-cert-validity`, in years.
    pub self_signed_cert_validity: u32,
}

impl NodeConfig {
    /// The part of the configuration the server and the client API run with.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            name: self.name.clone(),
            advertise_client_urls: self.advertise_client_urls.clone(),
            election_timeout: self.election_timeout,
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            bcrypt_cost: self.bcrypt_cost,
            client_cert_auth: self.client_tls.client_cert_auth,
            auth_token: self.auth_token.clone(),
        }
    }

    /// Parses the process arguments; prints help/version or a one-line error and exits as clap
    /// does when they are wrong.
    pub fn from_args() -> Result<NodeConfig, String> {
        let args = etcd_style_args(std::env::args_os());
        let token_given = token_given(&args);
        let config = Config::parse_from(args);
        NodeConfig::check(config, token_given)
    }

    /// Checks that `--initial-cluster` names this member with its advertised peer URLs. Only a
    /// member that bootstraps needs this: a member restarted on an initialised data dir ignores
    /// `--initial-cluster`, as etcd does, so that it can be moved to new peer URLs.
    pub fn check_bootstrap_urls(&self) -> Result<(), String> {
        match self.initial_cluster.get(&self.name) {
            None => Err(format!(
                "--initial-cluster has no member named {:?} (--name); it lists {}",
                self.name,
                self.initial_cluster
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(urls) => {
                let mut mine = self.advertise_peer_urls.clone();
                let mut listed = urls.clone();
                mine.sort();
                listed.sort();
                if mine != listed {
                    return Err(format!(
                        "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} \
                         (they must be the same URLs)",
                        self.name,
                        urls.join(","),
                        self.advertise_peer_urls.join(",")
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks the raw flags and resolves their defaults.
    pub fn check(c: Config, token_given: bool) -> Result<NodeConfig, String> {
        if c.name.is_empty() {
            return Err("--name must not be empty".into());
        }
        let data_dir = c
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.ferrokv", c.name)));
        let wal_dir = c
            .wal_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("member").join("wal"));
        let listen_client_urls = parse_listen_urls("--listen-client-urls", &c.listen_client_urls)?;
        let listen_peer_urls = parse_listen_urls("--listen-peer-urls", &c.listen_peer_urls)?;
        let listen_metrics_urls = if c.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            parse_listen_urls("--listen-metrics-urls", &c.listen_metrics_urls)?
        };
        if let Some(url) = listen_metrics_urls.iter().find(|u| u.tls) {
            return Err(format!(
                "--listen-metrics-urls: {} is https; ferrokv serves these endpoints as plain HTTP only",
                url.url
            ));
        }
        let advertise_client_urls =
            parse_url_list("--advertise-client-urls", &c.advertise_client_urls)?;
        let advertise_peer_urls = parse_url_list(
            "--initial-advertise-peer-urls",
            &c.initial_advertise_peer_urls,
        )?;
        let initial_cluster_text = c
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", c.name, advertise_peer_urls.join(",")));
        let initial_cluster = parse_initial_cluster(&initial_cluster_text)?;
        let discovery = c.discovery.check()?;
        if discovery.is_some() && c.initial_cluster.is_some() {
            return Err("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"".into());
        }
        let (client_tls, peer_tls, tls_options) =
            c.tls.check(&listen_client_urls, &listen_peer_urls)?;
        let initial_cluster_state = match c.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(format!(
                "--initial-cluster-state: invalid value {other:?} (expected 'new' or 'existing')"
            ))
            }
        };
        if c.initial_cluster_token.is_empty() {
            return Err("--initial-cluster-token must not be empty".into());
        }
        if c.heartbeat_interval == 0 {
            return Err("--heartbeat-interval must be greater than 0".into());
        }
        if c.election_timeout < 5 * c.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                c.election_timeout, c.heartbeat_interval
            ));
        }
        if c.election_timeout > 50_000 {
            return Err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50 seconds",
                c.election_timeout
            ));
        }
        if c.snapshot_count == 0 {
            return Err("--snapshot-count must be greater than 0".into());
        }
        if c.max_txn_ops == 0 {
            return Err("--max-txn-ops must be greater than 0".into());
        }
        if c.max_request_bytes == 0 {
            return Err("--max-request-bytes must be greater than 0".into());
        }
        let auth_token = parse_auth_token(&c.auth_token)?;
        if c.auth_token_ttl == 0 {
            return Err("--auth-token-ttl must be greater than 0".into());
        }
        // bcrypt's own bounds, as etcd checks them.
        if !(4..=31).contains(&c.bcrypt_cost) {
            return Err(format!(
                "--bcrypt-cost: {} is out of range (4 to 31)",
                c.bcrypt_cost
            ));
        }
        let log_level = match c.log_level.as_str() {
            "debug" | "info" | "warn" | "error" => c.log_level.clone(),
            "panic" | "fatal" | "dpanic" => "error".to_string(),
            other => {
                return Err(format!(
                    "--log-level: invalid value {other:?} (expected debug, info, warn, error, panic or fatal)"
                ))
            }
        };
        Ok(NodeConfig {
            name: c.name,
            data_dir,
            wal_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            listen_metrics_urls,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            // As in etcd, a discovered cluster's token is the discovery URL or token.
            initial_cluster_token: match &discovery {
                Some(d) => d.cluster_token().to_string(),
                None => c.initial_cluster_token,
            },
            token_given,
            heartbeat: Duration::from_millis(c.heartbeat_interval),
            election_timeout: Duration::from_millis(c.election_timeout),
            snapshot_count: c.snapshot_count,
            quota_backend_bytes: if c.quota_backend_bytes == 0 {
                DEFAULT_QUOTA_BYTES
            } else {
                c.quota_backend_bytes
            },
            backend_cache_bytes: match c.backend_cache_bytes {
                0 => crate::storage::mvcc::DEFAULT_CACHE_BYTES,
                bytes => usize::try_from(bytes).unwrap_or(usize::MAX),
            },
            max_request_bytes: c.max_request_bytes as usize,
            max_txn_ops: c.max_txn_ops as usize,
            auth_token_ttl: Duration::from_secs(c.auth_token_ttl),
            auth_token,
            bcrypt_cost: c.bcrypt_cost,
            auto_compaction: parse_auto_compaction(
                &c.auto_compaction_mode,
                &c.auto_compaction_retention,
            )?,
            log_level,
            discovery,
            client_tls,
            peer_tls,
            tls_options,
            self_signed_cert_validity: c.tls.self_signed_cert_validity,
        })
    }
}

/// Parses `--auth-token` as etcd does: a token type, then `name=value` options separated by
/// commas; for `jwt`, reads and checks the key files, so that a member with unusable keys stops
/// at startup naming the flag.
fn parse_auth_token(text: &str) -> Result<AuthToken, String> {
    let mut parts = text.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options = BTreeMap::new();
    for part in parts {
        let (name, value) = match part.split('=').collect::<Vec<_>>()[..] {
            [name, value] => (name, value),
            _ => {
                return Err(format!(
                    "--auth-token: invalid option {part:?} (expected name=value)"
                ))
            }
        };
        if options.insert(name, value).is_some() {
            return Err(format!("--auth-token: option {name:?} is given twice"));
        }
    }
    match kind {
        "simple" => Ok(AuthToken::Simple),
        "jwt" => {
            let unknown: Vec<&str> = options
                .keys()
                .filter(|name| !["sign-method", "pub-key", "priv-key", "ttl"].contains(name))
                .copied()
                .collect();
            if !unknown.is_empty() {
                // etcd warns and goes on.
                eprintln!("ferrokv: warning: --auth-token: unknown JWT options {unknown:?}");
            }
            let ttl = match options.get("ttl").copied().unwrap_or_default() {
                "" => crate::server::jwt::DEFAULT_TTL,
                ttl => crate::discovery::parse_go_duration(ttl).ok_or_else(|| {
                    format!("--auth-token: ttl {ttl:?} is not a duration like 5m or 30s")
                })?,
            };
            let path = |name: &str| {
                options
                    .get(name)
                    .filter(|value| !value.is_empty())
                    .map(PathBuf::from)
            };
            let options = JwtOptions {
                sign_method: options
                    .get("sign-method")
                    .copied()
                    .unwrap_or_default()
                    .into(),
                pub_key: path("pub-key"),
                priv_key: path("priv-key"),
                ttl,
            };
            let tokens = JwtTokens::load(&options).map_err(|e| format!("--auth-token: {e}"))?;
            Ok(AuthToken::Jwt(Arc::new(tokens)))
        }
        other => Err(format!(
            "--auth-token: unknown token type {other:?} (expected 'simple' or 'jwt')"
        )),
    }
}

/// Whether `--initial-cluster-token` was given, on the command line or in the environment.
pub fn token_given(args: &[OsString]) -> bool {
    std::env::var_os("ETCD_INITIAL_CLUSTER_TOKEN").is_some()
        || args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--initial-cluster-token"))
}

/// Go's flag package, which etcd uses, accepts `-name value` as well as `--name value`;
/// clap only knows the double dash, so single-dash long flags are rewritten.
pub fn etcd_style_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|arg| match arg.to_str() {
        Some(s) if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") => {
            OsString::from(format!("-{s}"))
        }
        _ => arg,
    })
    .collect()
}

fn parse_url_list(flag: &str, text: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("{flag} must list at least one URL"));
    }
    for url in &urls {
        parse_url(url).map_err(|e| format!("{flag}: {e}"))?;
    }
    Ok(urls)
}

fn parse_listen_urls(flag: &str, text: &str) -> Result<Vec<HostPort>, String> {
    parse_url_list(flag, text)?
        .iter()
        .map(|u| parse_url(u).map_err(|e| format!("{flag}: {e}")))
        .collect()
}

/// Parses `name1=url1,name1=url2,name2=url3` into name → URLs.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = item.split_once('=').ok_or_else(|| {
            format!("--initial-cluster: {item:?} is not of the form name=http://host:port")
        })?;
        parse_url(url).map_err(|e| format!("--initial-cluster: {e}"))?;
        cluster
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if cluster.is_empty() {
        return Err("--initial-cluster must list at least one member".into());
    }
    let mut seen = BTreeMap::new();
    for (name, urls) in &cluster {
        for url in urls {
            if let Some(other) = seen.insert(url.clone(), name.clone()) {
                return Err(format!(
                    "--initial-cluster: peer URL {url} is given to both {other:?} and {name:?}"
                ));
            }
        }
    }
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<NodeConfig, String> {
        let mut argv = vec!["ferrokv"];
        argv.extend_from_slice(args);
        let args = etcd_style_args(argv.into_iter().map(OsString::from));
        let config = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        let config = NodeConfig::check(config, false)?;
        config.check_bootstrap_urls()?;
        Ok(config)
    }

    #[test]
    fn no_flags_is_a_one_member_cluster_named_default() {
        let c = check(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.ferrokv"));
        assert_eq!(c.wal_dir, PathBuf::from("default.ferrokv/member/wal"));
        assert_eq!(c.listen_client_urls[0].port, 2379);
        assert_eq!(c.listen_peer_urls[0].port, 2380);
        assert_eq!(
            c.initial_cluster,
            BTreeMap::from([("default".into(), vec!["http://localhost:2380".into()])])
        );
        assert_eq!(c.initial_cluster_state, ClusterState::New);
    }

    #[test]
    fn backend_cache_bytes_defaults_to_64_mib_and_takes_a_size() {
        assert_eq!(check(&[]).unwrap().backend_cache_bytes, 64 * 1024 * 1024);
        assert_eq!(
            check(&["--backend-cache-bytes=0"])
                .unwrap()
                .backend_cache_bytes,
            64 * 1024 * 1024
        );
        assert_eq!(
            check(&["--backend-cache-bytes", "268435456"])
                .unwrap()
                .backend_cache_bytes,
            256 * 1024 * 1024
        );
        assert!(check(&["--backend-cache-bytes=lots"]).is_err());
    }

    #[test]
    fn auth_flags_default_as_in_etcd_and_are_checked() {
        let c = check(&[]).unwrap();
        assert_eq!(c.bcrypt_cost, 10);
        assert_eq!(c.auth_token_ttl, Duration::from_secs(300));
        let c = check(&[
            "--auth-token",
            "simple",
            "--auth-token-ttl",
            "30",
            "--bcrypt-cost",
            "4",
        ])
        .unwrap();
        assert_eq!(
            (c.bcrypt_cost, c.auth_token_ttl),
            (4, Duration::from_secs(30))
        );
        let err = check(&["--bcrypt-cost", "3"]).unwrap_err();
        assert!(err.contains("--bcrypt-cost"), "{err}");
        for (flag, expected) in [
            ("jwt,pub-key=a.pem", "sign-method"),
            (
                "jwt,pub-key=/nonexistent/a.pem,sign-method=RS256",
                "pub-key",
            ),
            ("jwt,sign-method=RS256,ttl=5", "ttl"),
            ("jwt,sign-method=RS256,ttl=1m,ttl=2m", "twice"),
            ("jwt,sign-method", "name=value"),
            ("jwt,priv-key=a=b", "name=value"),
            ("paseto", "token type"),
        ] {
            let err = check(&["--auth-token", flag]).unwrap_err();
            assert!(
                err.starts_with("--auth-token") && err.contains(expected),
                "{flag}: {err}"
            );
        }
    }

    #[test]
    fn jwt_auth_token_loads_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "shared secret").unwrap();
        let flag = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display());
        let c = check(&["--auth-token", &flag]).unwrap();
        match c.server_config().auth_token {
            AuthToken::Jwt(tokens) => assert!(!tokens.verify_only()),
            other => panic!("expected jwt tokens, got {other:?}"),
        }
    }

    #[test]
    fn single_dash_flags_work_as_in_etcd() {
        let c = check(&[
            "-name",
            "infra1",
            "-data-dir",
            "/tmp/x",
            "-initial-cluster",
            "infra1=http://localhost:2380",
        ])
        .unwrap();
        assert_eq!(c.name, "infra1");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn member_missing_from_initial_cluster_is_refused_naming_the_flag() {
        let err = check(&[
            "--name",
            "a",
            "--initial-cluster",
            "b=http://127.0.0.1:2380",
        ])
        .unwrap_err();
        assert!(err.contains("--initial-cluster"), "{err}");
    }

    #[test]
    fn advertised_peer_urls_must_match_initial_cluster() {
        let err = check(&[
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--initial-cluster",
            "a=http://127.0.0.1:2",
        ])
        .unwrap_err();
        assert!(err.contains("--initial-advertise-peer-urls"), "{err}");
    }

    #[test]
    fn election_timeout_must_be_five_heartbeats() {
        let err = check(&["--heartbeat-interval", "100", "--election-timeout", "300"]).unwrap_err();
        assert!(err.contains("--election-timeout"), "{err}");
    }

    #[test]
    fn malformed_urls_and_states_name_the_flag() {
        assert!(check(&["--listen-client-urls", "localhost:2379"])
            .unwrap_err()
            .contains("--listen-client-urls"));
        assert!(check(&["--initial-cluster-state", "old"])
            .unwrap_err()
            .contains("--initial-cluster-state"));
        assert!(check(&["--snapshot-count", "abc"])
            .unwrap_err()
            .contains("--snapshot-count"));
    }

    #[test]
    fn https_urls_take_etcds_tls_flags() {
        let err = check(&["--listen-client-urls", "https://127.0.0.1:2379"]).unwrap_err();
        assert!(
            err.contains("(--cert-file, --key-file) must be provided"),
            "{err}"
        );
        let c = check(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--cert-file=c.pem",
            "--key-file=k.pem",
            "--trusted-ca-file=ca.pem",
            "--client-cert-auth",
            "-peer-client-cert-auth=false",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "--tls-max-version=TLS1.3",
        ])
        .unwrap();
        assert!(c.listen_client_urls[0].tls);
        assert!(c.client_tls.client_cert_auth);
        assert!(!c.peer_tls.client_cert_auth);
        assert_eq!(c.client_tls.cert_file, Some(PathBuf::from("c.pem")));
        let err =
            check(&["--peer-cert-allowed-cn=a", "--peer-cert-allowed-hostname=b"]).unwrap_err();
        assert!(err.contains("cannot be both set"), "{err}");
    }

    #[test]
    fn metrics_urls_are_plain_http_only() {
        assert!(check(&[]).unwrap().listen_metrics_urls.is_empty());
        let c = check(&["--listen-metrics-urls=http://0.0.0.0:2381"]).unwrap();
        assert_eq!(c.listen_metrics_urls[0].port, 2381);
        let err = check(&["--listen-metrics-urls=https://0.0.0.0:2381"]).unwrap_err();
        assert!(err.contains("--listen-metrics-urls"), "{err}");
    }

    #[test]
    fn duplicate_peer_urls_are_refused() {
        let err = check(&[
            "--initial-cluster",
            "default=http://localhost:2380,b=http://localhost:2380",
        ])
        .unwrap_err();
        assert!(err.contains("given to both"), "{err}");
    }
}
