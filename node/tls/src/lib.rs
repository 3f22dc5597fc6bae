//! ferrokv-tls: etcd's TLS flags made into rustls configurations, for the client port (served
//! by `ferrokv-api`) and the peer port and peer connections (`ferrokv-raft`).
//!
//! - [`config`]: one side's flags (`--cert-file`, ... or `--peer-cert-file`, ...), checked;
//! - [`options`]: `--cipher-suites`, `--tls-min-version`, `--tls-max-version`;
//! - [`server`] and [`client`]: the rustls configurations, whose certificates, keys, trusted
//!   CA bundles and CRLs are re-read when their files change ([`reload`]), so certificates and
//!   CAs rotate without a restart;
//! - [`accept`]: a TLS listener for tonic's server; [`connect`]: the peer connector;
//! - [`self_signed`]: the certificates of `--auto-tls` and `--peer-auto-tls`.
//!
//! It is no place for authentication by certificate name (etcd's auth), which belongs above.

pub mod accept;
pub mod client;
pub mod config;
pub mod connect;
pub mod error;
pub mod files;
pub mod options;
pub mod reload;
pub mod self_signed;
pub mod server;

pub use config::{Side, TlsFiles};
pub use error::TlsError;
pub use options::TlsOptions;
pub use rustls::{ClientConfig, ServerConfig};

#[cfg(test)]
mod tests;
