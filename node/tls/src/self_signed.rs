//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate for the hosts of the side's
//! listen URLs, valid for `--self-signed-cert-validity` years, kept as etcd keeps it in
//! `<data-dir>/fixtures/client` or `<data-dir>/fixtures/peer` (`cert.pem`, `key.pem`) and reused
//! on the next start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};

use crate::{Side, TlsError};

/// The certificate and key files of `side`'s self-signed certificate in `data_dir`, made now
/// unless an earlier start made them.
pub fn self_signed(
    side: Side,
    data_dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let flag = side.flags().auto_tls;
    let fail = |message: String| TlsError::SelfSigned { flag, message };
    let dir = data_dir.join("fixtures").join(side.name());
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    if validity_years == 0 {
        return Err(fail(
            "--self-signed-cert-validity must be at least 1 year".into(),
        ));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(fail)?;
    write(&cert_path, cert.pem().as_bytes(), 0o644).map_err(fail)?;
    tracing::info!(
        side = side.name(),
        cert = %cert_path.display(),
        "made a self-signed certificate for {}",
        hosts.join(",")
    );
    Ok((cert_path, key_path))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
