//! etcd's JWT tokens (`--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`):
//! loading the keys at startup, signing a token for a user at an auth revision, and verifying
//! one. A token carries etcd's claims — `username`, `revision` (the auth revision it was issued
//! at) and `exp` — and is checked by its signature alone, so every member that has the key
//! accepts it, across restarts, until it expires. A member given only `pub-key` verifies tokens
//! but cannot issue them (etcd's verify-only member).
//!
//! Not here: parsing the flag's text (the binary's config) and what a token's revision means
//! for a request (the server's auth checks).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{self as ring_sig, KeyPair};
use serde::{Deserialize, Serialize};

/// etcd's default `ttl` of a JWT token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// The `jwt` options of `--auth-token`, as etcd names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// `sign-method`: RS256, ES256, ... (required).
    pub sign_method: String,
    /// `pub-key`: the PEM file of the public key (or a certificate carrying it).
    pub pub_key: Option<PathBuf>,
    /// `priv-key`: the PEM file of the private key (the secret itself for HS256/384/512).
    pub priv_key: Option<PathBuf>,
    /// `ttl`: how long a token is valid after it is issued.
    pub ttl: Duration,
}

/// The kind of key a sign method takes.
#[derive(Clone, Copy)]
enum KeyKind {
    Rsa,
    /// An ECDSA key on the curve of the method.
    Ec(&'static ring_sig::EcdsaSigningAlgorithm, &'static [u8]),
    Ed25519,
    Hmac,
}

/// The sign methods etcd accepts, with the key each takes. ES512 (P-521) is etcd's too, but
/// the signing library here has no P-521; it is refused with a message saying so.
fn sign_method(name: &str) -> Result<(Algorithm, KeyKind), String> {
    let method = match name {
        "RS256" => (Algorithm::RS256, KeyKind::Rsa),
        "RS384" => (Algorithm::RS384, KeyKind::Rsa),
        "RS512" => (Algorithm::RS512, KeyKind::Rsa),
        "PS256" => (Algorithm::PS256, KeyKind::Rsa),
        "PS384" => (Algorithm::PS384, KeyKind::Rsa),
        "PS512" => (Algorithm::PS512, KeyKind::Rsa),
        "ES256" => (
            Algorithm::ES256,
            KeyKind::Ec(&ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING, P256_OID),
        ),
        "ES384" => (
            Algorithm::ES384,
            KeyKind::Ec(&ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING, P384_OID),
        ),
        "EdDSA" => (Algorithm::EdDSA, KeyKind::Ed25519),
        "HS256" => (Algorithm::HS256, KeyKind::Hmac),
        "HS384" => (Algorithm::HS384, KeyKind::Hmac),
        "HS512" => (Algorithm::HS512, KeyKind::Hmac),
        "ES512" => return Err("sign-method ES512 (P-521) is not supported by ferrokv; use ES256, ES384, RS256 or EdDSA".into()),
        "" => return Err("sign-method is required (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512)".into()),
        other => return Err(format!("invalid sign-method {other:?} (expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512)")),
    };
    Ok(method)
}

/// The DER of the OIDs a SEC1 EC key is wrapped in to read it as PKCS#8.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The claims of etcd's tokens.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    username: &'a str,
    revision: u64,
    exp: u64,
}

/// The claims read back: etcd reads `revision` as a JSON number of any form.
#[derive(Deserialize)]
struct VerifiedClaims {
    username: String,
    revision: f64,
}

/// The keys of a member's JWT tokens.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// None on a verify-only member (`pub-key` alone).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignFailure {
    /// The member has only the public key (etcd's ErrVerifyOnly).
    VerifyOnly,
    /// The signing library failed.
    Signing(String),
}

impl JwtTokens {
    /// Reads and checks the keys, as a member does once at startup: the files must be readable
    /// PEM keys of the sign method's kind, and a public key given with the private one must be
    /// its pair. The error says what is wrong with which option.
    pub fn load(options: &JwtOptions) -> Result<JwtTokens, String> {
        let (algorithm, kind) = sign_method(&options.sign_method)?;
        if options.ttl.is_zero() {
            return Err("ttl must be greater than 0".into());
        }
        let private = options
            .priv_key
            .as_deref()
            .map(|path| read("priv-key", path))
            .transpose()?;
        let public = options
            .pub_key
            .as_deref()
            .map(|path| read("pub-key", path))
            .transpose()?;
        let (signing, derived) = match (&private, kind) {
            (Some(secret), KeyKind::Hmac) => (
                Some(EncodingKey::from_secret(secret)),
                Some(DecodingKey::from_secret(secret)),
            ),
            (None, KeyKind::Hmac) => {
                return Err(format!(
                    "sign-method {} takes the secret in priv-key, which is missing",
                    options.sign_method
                ))
            }
            (Some(pem), kind) => {
                let (signing, verifying) = private_key(pem, kind).map_err(|e| {
                    format!(
                        "priv-key {}: {e}",
                        options
                            .priv_key
                            .as_deref()
                            .unwrap_or(Path::new(""))
                            .display()
                    )
                })?;
                (Some(signing), Some(verifying))
            }
            (None, _) => (None, None),
        };
        let given = match (&public, kind) {
            // etcd reads only priv-key for HMAC.
            (_, KeyKind::Hmac) | (None, _) => None,
            (Some(pem), kind) => Some(public_key(pem, kind).map_err(|e| {
                format!(
                    "pub-key {}: {e}",
                    options
                        .pub_key
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                )
            })?),
        };
        // The given public key, checked against the private one below; else the private
        // key's own public half.
        let verifying = given
            .or(derived)
            .ok_or("neither pub-key nor priv-key is given (auth: missing key data)".to_string())?;
        let tokens = JwtTokens {
            algorithm,
            signing,
            verifying,
            ttl: options.ttl,
        };
        if tokens.signing.is_some() {
            let probe = tokens
                .sign("ferrokv-key-check", 0)
                .map_err(|e| format!("priv-key cannot sign with {}: {e:?}", options.sign_method))?;
            if tokens.verify(&probe).is_none() {
                return Err(
                    "pub-key and priv-key do not match (auth: public and private keys don't match)"
                        .into(),
                );
            }
        }
        Ok(tokens)
    }

    /// Whether this member can only verify tokens.
    pub fn verify_only(&self) -> bool {
        self.signing.is_none()
    }

    /// A token naming `username`, issued at auth revision `revision`, expiring after the ttl.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, SignFailure> {
        let key = self.signing.as_ref().ok_or(SignFailure::VerifyOnly)?;
        let exp = (SystemTime::now() + self.ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = IssuedClaims {
            username,
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| SignFailure::Signing(e.to_string()))
    }

    /// The user and auth revision a token names, if its signature is this member's key's, it
    /// was signed with the configured method and it has not expired; None otherwise (etcd's
    /// "invalid auth token").
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        // etcd (golang-jwt) checks `exp` when present, to the second, and requires no claim.
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = false;
        match jsonwebtoken::decode::<VerifiedClaims>(token, &self.verifying, &validation) {
            Ok(data) if data.claims.revision >= 0.0 => {
                Some((data.claims.username, data.claims.revision as u64))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "failed to parse a JWT token");
                None
            }
        }
    }
}

fn read(option: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))
}

fn parse_pem(bytes: &[u8]) -> Result<pem::Pem, String> {
    pem::parse(bytes).map_err(|e| format!("not a PEM file ({e})"))
}

/// The signing key of a private key PEM, and the verifying key of its public half.
fn private_key(bytes: &[u8], kind: KeyKind) -> Result<(EncodingKey, DecodingKey), String> {
    let pem = parse_pem(bytes)?;
    let der = pem.contents();
    let rejected = |e: ring::error::KeyRejected| format!("not a usable key ({e})");
    match (kind, pem.tag()) {
        (KeyKind::Rsa, "RSA PRIVATE KEY" | "PRIVATE KEY") => {
            let pair = if pem.tag() == "PRIVATE KEY" {
                ring_sig::RsaKeyPair::from_pkcs8(der)
            } else {
                ring_sig::RsaKeyPair::from_der(der)
            }
            .map_err(rejected)?;
            let signing = EncodingKey::from_rsa_pem(bytes).map_err(|e| e.to_string())?;
            Ok((
                signing,
                DecodingKey::from_rsa_der(pair.public_key().as_ref()),
            ))
        }
        (KeyKind::Ec(algorithm, curve), "EC PRIVATE KEY" | "PRIVATE KEY") => {
            let pkcs8 = if pem.tag() == "EC PRIVATE KEY" {
                sec1_to_pkcs8(der, curve)
            } else {
                der.to_vec()
            };
            let rng = ring::rand::SystemRandom::new();
            let pair = ring_sig::EcdsaKeyPair::from_pkcs8(algorithm, &pkcs8, &rng)
                .map_err(|e| format!("not a private key on the sign method's curve ({e})"))?;
            Ok((
                EncodingKey::from_ec_der(&pkcs8),
                DecodingKey::from_ec_der(pair.public_key().as_ref()),
            ))
        }
        (KeyKind::Ed25519, "PRIVATE KEY") => {
            let pair =
                ring_sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?;
            Ok((
                EncodingKey::from_ed_der(der),
                DecodingKey::from_ed_der(pair.public_key().as_ref()),
            ))
        }
        (kind, tag) => Err(format!(
            "a {tag:?} PEM block is not a private key for {}",
            kind_name(kind)
        )),
    }
}

/// The verifying key of a public key (or certificate) PEM.
fn public_key(bytes: &[u8], kind: KeyKind) -> Result<DecodingKey, String> {
    let pem = parse_pem(bytes)?;
    let tag = pem.tag();
    let wrong = || {
        format!(
            "a {tag:?} PEM block is not a public key for {}",
            kind_name(kind)
        )
    };
    if !matches!(tag, "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE") {
        return Err(wrong());
    }
    match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_pem(bytes),
        KeyKind::Ec(..) => DecodingKey::from_ec_pem(bytes),
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(bytes),
        KeyKind::Hmac => return Err(wrong()),
    }
    .map_err(|_| wrong())
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Rsa => "an RSA sign method",
        KeyKind::Ec(..) => "an ECDSA sign method",
        KeyKind::Ed25519 => "EdDSA",
        KeyKind::Hmac => "an HMAC sign method",
    }
}

/// Wraps a SEC1 `EC PRIVATE KEY` (what `openssl ecparam -genkey` writes, and etcd reads) into
/// the PKCS#8 envelope the signing library reads.
fn sec1_to_pkcs8(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
    let algorithm = der(
        0x30,
        &[der(0x06, EC_PUBLIC_KEY_OID), der(0x06, curve)].concat(),
    );
    der(
        0x30,
        &[der(0x02, &[0]), algorithm, der(0x04, sec1)].concat(),
    )
}

/// One DER element: tag, definite length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(contents);
    out
}

#[cfg(test)]
mod tests;
