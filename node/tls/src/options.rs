//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version`: what every TLS connection of
//! the member, client and peer, may negotiate.
//!
//! Names are etcd's (Go's): IANA cipher suite names, with Go's short spelling of the ChaCha20
//! suites accepted too, and versions `TLS1.2`/`TLS1.3`. rustls speaks only TLS 1.2 and 1.3 and
//! only AEAD suites, so the older versions and suites Go still knows are refused by name rather
//! than silently dropped. As in etcd (and Go), the suites restrict TLS 1.2 only: TLS 1.3's
//! suites are not configurable.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::TlsError;

const CIPHER_SUITES_FLAG: &str = "--cipher-suites";

/// The negotiable versions and suites, checked.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    versions: Vec<&'static SupportedProtocolVersion>,
    /// TLS 1.2 suites chosen by `--cipher-suites`; `None` for rustls's defaults.
    tls12_suites: Option<Vec<SupportedCipherSuite>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions::parse("", "", "").expect("the defaults are valid")
    }
}

/// Cipher suites Go offers that rustls does not implement (CBC, RC4, 3DES, static RSA key
/// exchange): refused with a reason, not as unknown names.
const UNSUPPORTED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

impl TlsOptions {
    /// Checks the three flags' values (empty means the flag was not given).
    pub fn parse(cipher_suites: &str, min: &str, max: &str) -> Result<TlsOptions, TlsError> {
        let min = version("--tls-min-version", min, Version::Tls12)?;
        let max = version("--tls-max-version", max, Version::Tls13)?;
        if min > max {
            return Err(TlsError::InvalidFlag {
                flag: "--tls-min-version",
                message: format!(
                    "{} is higher than --tls-max-version {}",
                    min.name(),
                    max.name()
                ),
            });
        }
        let versions = [Version::Tls12, Version::Tls13]
            .into_iter()
            .filter(|v| (min..=max).contains(v))
            .map(Version::rustls)
            .collect();
        let names: Vec<&str> = cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let tls12_suites = if names.is_empty() {
            None
        } else {
            if min == Version::Tls13 {
                return Err(TlsError::InvalidFlag {
                    flag: CIPHER_SUITES_FLAG,
                    message: "cipher suites cannot be configured when only TLS1.3 is enabled"
                        .into(),
                });
            }
            Some(
                names
                    .iter()
                    .map(|name| suite(name))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(TlsOptions {
            versions,
            tls12_suites,
        })
    }

    /// The protocol versions to offer.
    pub fn versions(&self) -> &[&'static SupportedProtocolVersion] {
        &self.versions
    }

    /// ring's provider with the chosen TLS 1.2 suites (TLS 1.3's always).
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(chosen) = &self.tls12_suites {
            provider.cipher_suites.retain(|s| s.tls13().is_some());
            provider.cipher_suites.extend(chosen.iter().copied());
        }
        Arc::new(provider)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    Tls12,
    Tls13,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::Tls12 => "TLS1.2",
            Version::Tls13 => "TLS1.3",
        }
    }

    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Version::Tls12 => &rustls::version::TLS12,
            Version::Tls13 => &rustls::version::TLS13,
        }
    }
}

fn version(flag: &'static str, value: &str, default: Version) -> Result<Version, TlsError> {
    match value {
        "" => Ok(default),
        "TLS1.2" => Ok(Version::Tls12),
        "TLS1.3" => Ok(Version::Tls13),
        "TLS1.0" | "TLS1.1" => Err(TlsError::InvalidFlag {
            flag,
            message: format!("{value} is not supported: ferrokv speaks TLS1.2 and TLS1.3"),
        }),
        other => Err(TlsError::InvalidFlag {
            flag,
            message: format!("unknown TLS version {other:?} (expected TLS1.2 or TLS1.3)"),
        }),
    }
}

fn suite(name: &str) -> Result<SupportedCipherSuite, TlsError> {
    // Go names the ChaCha20 suites without their hash.
    let iana = match name {
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        other => other,
    };
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    if let Some(found) = all
        .iter()
        .find(|s| s.tls13().is_none() && format!("{:?}", s.suite()) == iana)
    {
        return Ok(*found);
    }
    if all
        .iter()
        .any(|s| s.tls13().is_some() && format!("{:?}", s.suite()) == iana)
    {
        return Err(TlsError::InvalidFlag {
            flag: CIPHER_SUITES_FLAG,
            message: format!("{name} is a TLS1.3 suite; TLS1.3's suites are not configurable"),
        });
    }
    let message = if UNSUPPORTED_SUITES.contains(&name) {
        let offered: Vec<String> = all
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        format!(
            "{name} is not supported (only AEAD suites with ECDHE are: {})",
            offered.join(", ")
        )
    } else {
        format!("unexpected TLS cipher suite {name:?}")
    };
    Err(TlsError::InvalidFlag {
        flag: CIPHER_SUITES_FLAG,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_offer_tls12_and_tls13() {
        let options = TlsOptions::default();
        assert_eq!(options.versions().len(), 2);
        assert!(options.provider().cipher_suites.len() > 3);
    }

    #[test]
    fn go_names_choose_the_tls12_suites_and_keep_tls13() {
        let options = TlsOptions::parse(
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            "",
            "",
        )
        .unwrap();
        let suites = options.provider().cipher_suites.clone();
        let tls12: Vec<String> = suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(suites.iter().any(|s| s.tls13().is_some()));
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        let unknown = TlsOptions::parse("TLS_FOO", "", "")
            .unwrap_err()
            .to_string();
        assert_eq!(
            unknown,
            "--cipher-suites: unexpected TLS cipher suite \"TLS_FOO\""
        );
        let cbc = TlsOptions::parse("TLS_RSA_WITH_AES_128_CBC_SHA", "", "")
            .unwrap_err()
            .to_string();
        assert!(cbc.starts_with("--cipher-suites: TLS_RSA_WITH_AES_128_CBC_SHA is not supported"));
        let old = TlsOptions::parse("", "TLS1.0", "").unwrap_err().to_string();
        assert!(
            old.starts_with("--tls-min-version: TLS1.0 is not supported"),
            "{old}"
        );
        let inverted = TlsOptions::parse("", "TLS1.3", "TLS1.2")
            .unwrap_err()
            .to_string();
        assert!(
            inverted.starts_with("--tls-min-version: TLS1.3 is higher"),
            "{inverted}"
        );
        let tls13_only = TlsOptions::parse("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS1.3", "")
            .unwrap_err()
            .to_string();
        assert!(tls13_only.contains("only TLS1.3"), "{tls13_only}");
    }

    #[test]
    fn tls13_only_offers_one_version() {
        let options = TlsOptions::parse("", "TLS1.3", "").unwrap();
        assert_eq!(options.versions().len(), 1);
    }
}
