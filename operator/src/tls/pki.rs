//! Certificates of `tls.*.auto`: making the operator's CA, issuing member and operator
//! certificates from it, and reading back what a PEM certificate says (validity, names,
//! issuer), which the renewal decisions work on.
//!
//! Keys are ECDSA P-256 (rcgen's default): small, fast to make, and accepted by rustls, Go and
//! OpenSSL clients alike.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// What went wrong making or reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what} is not a PEM certificate: {reason}")]
    Unreadable { what: String, reason: String },
    #[error("a validity date is out of range: {0}")]
    Date(#[from] time::error::ComponentRange),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCertificate {
    pub cert: String,
    pub key: String,
}

/// What a certificate says, as far as renewing it is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS names and IP addresses of its subject alternative names.
    pub names: BTreeSet<String>,
    /// DER of its subject and issuer names: a certificate was issued by a CA when its issuer
    /// is the CA's subject (every CA the operator makes has a name of its own).
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
}

impl CertFacts {
    /// Reads the first certificate of `pem`.
    pub fn read(what: &str, pem: &str) -> Result<CertFacts, PkiError> {
        let unreadable = |reason: String| PkiError::Unreadable {
            what: what.to_string(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| unreadable(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| unreadable(e.to_string()))?;
        let timestamp = |t: i64| Timestamp::from_second(t).map_err(|e| unreadable(e.to_string()));
        let mut names = BTreeSet::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        names.insert(dns.to_string());
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_of(bytes) {
                            names.insert(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertFacts {
            not_before: timestamp(cert.validity().not_before.timestamp())?,
            not_after: timestamp(cert.validity().not_after.timestamp())?,
            names,
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}

fn offset(t: Timestamp) -> Result<OffsetDateTime, PkiError> {
    Ok(OffsetDateTime::from_unix_timestamp(t.as_second())?)
}

/// A new self-signed CA named after the cluster and the time it was made, valid from a minute
/// before `now` (clocks differ) for `lifetime`.
pub fn make_ca(
    cluster: &str,
    now: Timestamp,
    lifetime: std::time::Duration,
) -> Result<KeyedCertificate, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ferrokv-operator");
    name.push(DnType::CommonName, format!("{cluster} CA {now}"));
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, lifetime, None)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(KeyedCertificate {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate of `ca` with subject CN `common_name` and the given names, usable to serve
/// and to authenticate as a client (peers do both), valid for `lifetime` but never beyond the
/// CA's own end.
pub fn issue(
    ca: &KeyedCertificate,
    common_name: &str,
    names: &BTreeSet<String>,
    now: Timestamp,
    lifetime: std::time::Duration,
) -> Result<KeyedCertificate, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let ca_end = CertFacts::read("the CA certificate", &ca.cert)?.not_after;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let mut params = CertificateParams::new(names.iter().cloned().collect::<Vec<_>>())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, now, lifetime, Some(ca_end))?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCertificate {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn set_validity(
    params: &mut CertificateParams,
    now: Timestamp,
    lifetime: std::time::Duration,
    cap: Option<Timestamp>,
) -> Result<(), PkiError> {
    let start = Timestamp::from_second(now.as_second() - 60).unwrap_or(now);
    let mut end = Timestamp::from_second(now.as_second() + lifetime.as_secs() as i64)
        .unwrap_or(Timestamp::MAX);
    if let Some(cap) = cap {
        end = end.min(cap);
    }
    params.not_before = offset(start)?;
    params.not_after = offset(end)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn issued_certificate_names_the_member_and_is_issued_by_the_ca() {
        let ca = make_ca("kv", now(), 365 * DAY).unwrap();
        let names: BTreeSet<String> = ["kv-0.kv-peer.ns.svc", "localhost", "127.0.0.1"]
            .map(String::from)
            .into();
        let cert = issue(&ca, "kv-0", &names, now(), 90 * DAY).unwrap();
        let facts = CertFacts::read("kv-0", &cert.cert).unwrap();
        let ca_facts = CertFacts::read("ca", &ca.cert).unwrap();
        assert_eq!(facts.names, names);
        assert_eq!(facts.issuer, ca_facts.subject);
        assert_eq!(facts.not_after.as_second(), now().as_second() + 90 * 86_400);
        assert!(facts.not_before < now());
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca = make_ca("kv", now(), 10 * DAY).unwrap();
        let cert = issue(&ca, "kv-0", &BTreeSet::new(), now(), 90 * DAY).unwrap();
        let facts = CertFacts::read("kv-0", &cert.cert).unwrap();
        let ca_facts = CertFacts::read("ca", &ca.cert).unwrap();
        assert_eq!(facts.not_after, ca_facts.not_after);
    }

    #[test]
    fn two_cas_of_one_cluster_have_different_names() {
        let first = make_ca("kv", now(), DAY).unwrap();
        let later = Timestamp::from_second(now().as_second() + 1).unwrap();
        let second = make_ca("kv", later, DAY).unwrap();
        assert_ne!(
            CertFacts::read("a", &first.cert).unwrap().subject,
            CertFacts::read("b", &second.cert).unwrap().subject
        );
    }

    #[test]
    fn garbage_is_refused_with_what_it_was() {
        let error = CertFacts::read("Secret kv-ca key ca.crt", "not a certificate").unwrap_err();
        assert!(
            error.to_string().contains("Secret kv-ca key ca.crt"),
            "{error}"
        );
    }
}
