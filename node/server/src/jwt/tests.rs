//! Keys are made here with Debian's `openssl`, in a temporary directory, in the forms etcd's
//! documentation makes them.

use std::path::PathBuf;
use std::process::Command;

use super::*;

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `<name>.key` (private) and `<name>.pub` (public) made by `genkey`.
    fn pair(&self, name: &str, genkey: &[&str]) -> (PathBuf, PathBuf) {
        let private = format!("{name}.key");
        let public = format!("{name}.pub");
        let mut args = genkey.to_vec();
        args.extend(["-out", &private]);
        self.openssl(&args);
        self.openssl(&["pkey", "-in", &private, "-pubout", "-out", &public]);
        (self.path(&private), self.path(&public))
    }

    fn rsa(&self, name: &str) -> (PathBuf, PathBuf) {
        self.pair(name, &["genrsa", "-traditional"])
    }

    /// A SEC1 `EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it.
    fn ec_sec1(&self, name: &str, curve: &str) -> (PathBuf, PathBuf) {
        self.pair(name, &["ecparam", "-genkey", "-noout", "-name", curve])
    }

    fn ed25519(&self, name: &str) -> (PathBuf, PathBuf) {
        self.pair(name, &["genpkey", "-algorithm", "ed25519"])
    }
}

fn options(method: &str, private: Option<&PathBuf>, public: Option<&PathBuf>) -> JwtOptions {
    JwtOptions {
        sign_method: method.to_string(),
        pub_key: public.cloned(),
        priv_key: private.cloned(),
        ttl: DEFAULT_TTL,
    }
}

#[test]
fn tokens_signed_by_one_member_verify_on_another_with_the_same_keys() {
    let keys = Keys::new();
    let rsa = keys.rsa("rsa");
    let ec = keys.ec_sec1("ec", "prime256v1");
    let ec384 = keys.ec_sec1("ec384", "secp384r1");
    let ed = keys.ed25519("ed");
    let cases = [
        ("RS256", &rsa),
        ("RS512", &rsa),
        ("PS256", &rsa),
        ("ES256", &ec),
        ("ES384", &ec384),
        ("EdDSA", &ed),
    ];
    for (method, (private, public)) in cases {
        let signer = JwtTokens::load(&options(method, Some(private), Some(public))).unwrap();
        let other = JwtTokens::load(&options(method, Some(private), Some(public))).unwrap();
        let token = signer.sign("alice", 7).unwrap();
        assert_eq!(
            other.verify(&token),
            Some(("alice".to_string(), 7)),
            "{method}"
        );
        // A verify-only member (pub-key alone) accepts it but cannot issue one.
        let verifier = JwtTokens::load(&options(method, None, Some(public))).unwrap();
        assert!(verifier.verify_only());
        assert_eq!(verifier.verify(&token), Some(("alice".to_string(), 7)));
        assert_eq!(verifier.sign("alice", 7), Err(SignFailure::VerifyOnly));
        // priv-key alone verifies with its public half, as etcd does.
        let private_only = JwtTokens::load(&options(method, Some(private), None)).unwrap();
        assert_eq!(private_only.verify(&token), Some(("alice".to_string(), 7)));
    }
}

#[test]
fn tokens_carry_etcds_claims() {
    let keys = Keys::new();
    let (private, public) = keys.ec_sec1("ec", "prime256v1");
    let tokens = JwtTokens::load(&options("ES256", Some(&private), Some(&public))).unwrap();
    let token = tokens.sign("alice", 3).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["revision"], 3);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > now + 290 && exp <= now + 300, "exp {exp}, now {now}");
}

#[test]
fn an_expired_a_tampered_or_a_foreign_token_is_refused() {
    let keys = Keys::new();
    let (private, public) = keys.rsa("rsa");
    let (other_private, _) = keys.rsa("other");
    let mut short = options("RS256", Some(&private), Some(&public));
    short.ttl = Duration::from_secs(1);
    let tokens = JwtTokens::load(&short).unwrap();
    let token = tokens.sign("alice", 1).unwrap();
    assert!(tokens.verify(&token).is_some());
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(tokens.verify(&token), None, "expired");

    let fresh = tokens.sign("alice", 1).unwrap();
    let mut parts: Vec<&str> = fresh.split('.').collect();
    let forged = tokens.sign("root", 1).unwrap();
    parts[1] = forged.split('.').nth(1).unwrap();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        fresh.split('.').nth(2).unwrap()
    );
    assert_eq!(tokens.verify(&tampered), None, "tampered");

    let foreign = JwtTokens::load(&options("RS256", Some(&other_private), None)).unwrap();
    assert_eq!(tokens.verify(&foreign.sign("alice", 1).unwrap()), None);
    // Another method with the same key is refused too (etcd checks the method).
    let ps = JwtTokens::load(&options("PS256", Some(&private), None)).unwrap();
    assert_eq!(tokens.verify(&ps.sign("alice", 1).unwrap()), None);
    assert_eq!(tokens.verify("not-a-token"), None);
}

#[test]
fn hmac_methods_take_the_secret_from_priv_key() {
    let keys = Keys::new();
    let secret = keys.path("secret");
    std::fs::write(&secret, b"a shared secret of some length").unwrap();
    let tokens = JwtTokens::load(&options("HS256", Some(&secret), None)).unwrap();
    let token = tokens.sign("bob", 2).unwrap();
    assert_eq!(tokens.verify(&token), Some(("bob".to_string(), 2)));
    let err = JwtTokens::load(&options("HS256", None, Some(&secret))).unwrap_err();
    assert!(err.contains("priv-key"), "{err}");
}

#[test]
fn unusable_keys_are_refused_naming_the_option() {
    let keys = Keys::new();
    let (rsa_private, rsa_public) = keys.rsa("rsa");
    let (_, other_public) = keys.rsa("other");
    let (ec_private, ec_public) = keys.ec_sec1("ec", "prime256v1");
    let missing = keys.path("missing.pem");
    let garbage = keys.path("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();

    let cases: Vec<(JwtOptions, &str)> = vec![
        (options("RS256", Some(&missing), None), "priv-key"),
        (options("RS256", None, Some(&missing)), "pub-key"),
        (options("RS256", Some(&garbage), None), "priv-key"),
        (options("RS256", None, Some(&garbage)), "pub-key"),
        (options("RS256", None, None), "missing key"),
        (
            options("RS256", Some(&rsa_private), Some(&other_public)),
            "do not match",
        ),
        (options("RS256", Some(&ec_private), None), "priv-key"),
        (options("ES256", None, Some(&rsa_public)), "pub-key"),
        (
            options("ES256", Some(&ec_private), Some(&rsa_public)),
            "pub-key",
        ),
        (options("ES256", None, Some(&ec_private)), "pub-key"),
        (
            options("ES384", Some(&ec_private), Some(&ec_public)),
            "curve",
        ),
        (options("ES512", Some(&ec_private), None), "ES512"),
        (options("XS256", Some(&ec_private), None), "sign-method"),
        (options("", Some(&ec_private), None), "sign-method"),
    ];
    for (options, expected) in cases {
        let err = JwtTokens::load(&options).unwrap_err();
        assert!(err.contains(expected), "{options:?}: {err}");
    }
}
