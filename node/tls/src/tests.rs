//! Handshakes between this crate's server and client configurations, in memory: who is let in,
//! who is refused, and what a change of the files on disk changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::client::client_config;
use crate::reload::CHECK_INTERVAL;
use crate::server::server_config;
use crate::{ClientConfig, ServerConfig, Side, TlsError, TlsFiles, TlsOptions};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

fn issue(ca: &Ca, cn: &str, expired: bool) -> (String, String) {
    issue_numbered(ca, cn, expired, None)
}

fn issue_numbered(ca: &Ca, cn: &str, expired: bool, serial: Option<u64>) -> (String, String) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.serial_number = serial.map(rcgen::SerialNumber::from);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca.params, &ca.key))
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let next = dir.join(format!(".{name}.next"));
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, &path).unwrap();
    path
}

/// Peer-side files: `name.pem`/`name-key.pem` issued by `ca` with CN `cn`, trusting `ca.pem`.
fn member(dir: &Path, ca: &Ca, name: &str, cn: &str) -> TlsFiles {
    let (cert, key) = issue(ca, cn, false);
    TlsFiles {
        cert_file: Some(write(dir, &format!("{name}.pem"), &cert)),
        key_file: Some(write(dir, &format!("{name}-key.pem"), &key)),
        trusted_ca_file: Some(dir.join("ca.pem")),
        client_cert_auth: true,
        ..TlsFiles::new(Side::Peer)
    }
}

/// The server's outcome of one handshake.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<(), String> {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let client = tokio::spawn(async move { TlsConnector::from(client).connect(name, near).await });
    let served = TlsAcceptor::from(server).accept(far).await;
    let _ = client.await;
    served.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn clients_without_a_certificate_of_the_trusted_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (good_ca, other_ca) = (ca("good"), ca("other"));
    write(dir.path(), "ca.pem", &good_ca.pem);
    let options = TlsOptions::default();
    let server =
        server_config(&member(dir.path(), &good_ca, "server", "member"), &options).unwrap();

    let member_client = client_config(&member(dir.path(), &good_ca, "client", "member"), &options);
    handshake(server.clone(), member_client.unwrap())
        .await
        .unwrap();

    let mut anonymous = member(dir.path(), &good_ca, "anonymous", "member");
    anonymous.cert_file = None;
    anonymous.key_file = None;
    let refused = handshake(server.clone(), client_config(&anonymous, &options).unwrap()).await;
    assert!(refused.unwrap_err().contains("certificate"));

    let foreign = client_config(
        &member(dir.path(), &other_ca, "foreign", "member"),
        &options,
    );
    assert!(handshake(server, foreign.unwrap()).await.is_err());
}

#[tokio::test]
async fn peer_cert_allowed_cn_and_hostname_refuse_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("good");
    write(dir.path(), "ca.pem", &good_ca.pem);
    let options = TlsOptions::default();
    let mut files = member(dir.path(), &good_ca, "server", "member");
    files.allowed_cn = Some("member".into());
    let by_cn = server_config(&files, &options).unwrap();
    files.allowed_cn = None;
    files.allowed_hostname = Some("127.0.0.1".into());
    let by_host = server_config(&files, &options).unwrap();
    files.allowed_hostname = Some("elsewhere.example".into());
    let by_other_host = server_config(&files, &options).unwrap();

    let member_client =
        client_config(&member(dir.path(), &good_ca, "m", "member"), &options).unwrap();
    let intruder = client_config(&member(dir.path(), &good_ca, "i", "intruder"), &options).unwrap();
    handshake(by_cn.clone(), member_client.clone())
        .await
        .unwrap();
    assert!(handshake(by_cn, intruder).await.is_err());
    handshake(by_host, member_client.clone()).await.unwrap();
    assert!(handshake(by_other_host, member_client).await.is_err());
}

#[tokio::test]
async fn changed_certificates_and_bundles_are_used_by_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (ca("old"), ca("new"));
    write(dir.path(), "ca.pem", &old_ca.pem);
    let options = TlsOptions::default();
    let server_files = member(dir.path(), &old_ca, "server", "member");
    let server = server_config(&server_files, &options).unwrap();
    let client_files = member(dir.path(), &old_ca, "client", "member");
    let client = client_config(&client_files, &options).unwrap();
    handshake(server.clone(), client.clone()).await.unwrap();

    // A client of the new CA is refused until the bundle has the new CA.
    let newcomer = client_config(&member(dir.path(), &new_ca, "newcomer", "member"), &options);
    let newcomer = newcomer.unwrap();
    assert!(handshake(server.clone(), newcomer.clone()).await.is_err());
    write(
        dir.path(),
        "ca.pem",
        &format!("{}{}", old_ca.pem, new_ca.pem),
    );
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(100)).await;
    handshake(server.clone(), newcomer.clone()).await.unwrap();
    handshake(server.clone(), client.clone()).await.unwrap();

    // The old CA leaves: its certificates are refused, on both ends.
    write(dir.path(), "ca.pem", &new_ca.pem);
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(100)).await;
    assert!(handshake(server.clone(), client.clone()).await.is_err());
    let (cert, key) = issue(&new_ca, "member", false);
    write(dir.path(), "server.pem", &cert);
    write(dir.path(), "server-key.pem", &key);
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(100)).await;
    handshake(server.clone(), newcomer).await.unwrap();

    // A key that does not match keeps the last good pair in use.
    let (_, other_key) = issue(&new_ca, "member", false);
    write(dir.path(), "server-key.pem", &other_key);
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(100)).await;
    let fresh = client_config(&member(dir.path(), &new_ca, "fresh", "member"), &options);
    handshake(server, fresh.unwrap()).await.unwrap();
}

#[test]
fn unusable_files_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("good");
    write(dir.path(), "ca.pem", &good_ca.pem);
    let options = TlsOptions::default();
    let files = member(dir.path(), &good_ca, "server", "member");

    let (expired, expired_key) = issue(&good_ca, "member", true);
    let expired = TlsFiles {
        cert_file: Some(write(dir.path(), "expired.pem", &expired)),
        key_file: Some(write(dir.path(), "expired-key.pem", &expired_key)),
        ..files.clone()
    };
    let error = server_config(&expired, &options).unwrap_err();
    assert!(
        matches!(
            error,
            TlsError::Expired {
                flag: "--peer-cert-file",
                ..
            }
        ),
        "{error}"
    );

    let (_, other_key) = issue(&good_ca, "member", false);
    let mismatched = TlsFiles {
        key_file: Some(write(dir.path(), "other-key.pem", &other_key)),
        ..files.clone()
    };
    let error = server_config(&mismatched, &options).unwrap_err();
    assert!(
        error.to_string().starts_with("--peer-key-file ")
            && error
                .to_string()
                .contains("does not match the certificate in --peer-cert-file"),
        "{error}"
    );

    let missing_ca = TlsFiles {
        trusted_ca_file: Some(dir.path().join("nope.pem")),
        ..files.clone()
    };
    let error = server_config(&missing_ca, &options)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("--peer-trusted-ca-file ") && error.contains("cannot read it"),
        "{error}"
    );

    let key_as_cert = TlsFiles {
        cert_file: files.key_file.clone(),
        ..files
    };
    let error = server_config(&key_as_cert, &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("no PEM certificate in it"), "{error}");
}

#[tokio::test]
async fn a_certificate_in_the_crl_is_refused_and_a_changed_crl_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("good");
    write(dir.path(), "ca.pem", &good_ca.pem);
    let crl = |revoked: &[u64]| {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(revoked.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&Issuer::from_params(&good_ca.params, &good_ca.key))
            .unwrap()
            .pem()
            .unwrap()
    };
    let crl_file = write(dir.path(), "crl.pem", &crl(&[]));
    let options = TlsOptions::default();
    let server_files = TlsFiles {
        crl_file: Some(crl_file),
        ..member(dir.path(), &good_ca, "server", "member")
    };
    let server = server_config(&server_files, &options).unwrap();
    let client_files = |name: &str, serial: u64| {
        let (cert, key) = issue_numbered(&good_ca, "member", false, Some(serial));
        TlsFiles {
            cert_file: Some(write(dir.path(), &format!("{name}.pem"), &cert)),
            key_file: Some(write(dir.path(), &format!("{name}-key.pem"), &key)),
            ..member(dir.path(), &good_ca, "unused", "member")
        }
    };
    let kept = client_config(&client_files("kept", 1001), &options).unwrap();
    let revoked = client_config(&client_files("revoked", 1002), &options).unwrap();
    handshake(server.clone(), revoked.clone()).await.unwrap();

    write(dir.path(), "crl.pem", &crl(&[1002]));
    tokio::time::sleep(CHECK_INTERVAL + Duration::from_millis(100)).await;
    let refused = handshake(server.clone(), revoked).await.unwrap_err();
    assert!(refused.contains("Revoked"), "{refused}");
    handshake(server, kept).await.unwrap();
}
