//! Managed TLS and auth, end to end on the hermetic Kubernetes (or a real cluster with
//! `E2E_KUBECONFIG`): an `auto` cluster with auth forms over mutual TLS (its peer ports refuse
//! plain text and clients without a certificate), serves etcdctl over https with `--user`
//! (refusing a wrong password and a client without a certificate), and rotates its CA under a
//! running writer without losing an acknowledged write or restarting a pod, after which the new
//! CA alone verifies every member's client and peer port; a cluster whose client certificates
//! cert-manager issues (the test fills the Secrets as cert-manager would, since it cannot run
//! here) and whose peer certificate is the user's own Secret.
//!
//! Certificates the test needs itself are made here with `rcgen`, never checked in.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};

use ferrokv_e2e::kube_env::{member_name, EnvOptions, Kind, KubeEnv, CLUSTER, PODS, SECRETS};

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(150);
/// A CA rotation: three steps, each after the operator's propagation wait (3 s in tests).
const ROTATION: Duration = Duration::from_secs(90);

const PASSWORD_SECRET: &str = "root-password";
const PASSWORD: &str = "e2e-root-secret";

const CERTIFICATES: Kind = Kind {
    group: "cert-manager.io",
    version: "v1",
    plural: "certificates",
    namespaced: true,
};

async fn start(test: &str) -> KubeEnv {
    KubeEnv::start(test, EnvOptions::default())
        .await
        .expect("the test's cluster starts")
}

fn encode(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn apply_secret(env: &KubeEnv, name: &str, data: &[(&str, &str)]) {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| (key.to_string(), json!(encode(value))))
        .collect();
    env.apply(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": env.namespace},
        "data": data,
    }))
    .await
    .unwrap();
}

/// A key of a Secret, decoded; `None` when the Secret or the key is missing.
async fn secret_text(env: &KubeEnv, secret: &str, key: &str) -> Option<String> {
    let secret = env.get(SECRETS, secret).await?;
    let encoded = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// What a client presents: the CA bundle, a client certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pems {
    ca: String,
    cert: String,
    key: String,
}

/// The credentials of an `auto` cluster as they are now: the members' trust bundle, and the
/// operator's client certificate (issued by the same CA, a client certificate like any other).
async fn auto_credentials(env: &KubeEnv) -> Option<Pems> {
    Some(Pems {
        ca: secret_text(env, &format!("{CLUSTER}-client-tls"), "ca.crt").await?,
        cert: secret_text(env, &format!("{CLUSTER}-ca"), "operator.crt").await?,
        key: secret_text(env, &format!("{CLUSTER}-ca"), "operator.key").await?,
    })
}

/// The peer certificate of member `ordinal` of an `auto` cluster, and the peers' trust bundle, as
/// the Secret the members mount holds them now.
async fn auto_peer_credentials(env: &KubeEnv, ordinal: u32) -> Option<Pems> {
    let secret = format!("{CLUSTER}-peer-tls");
    let member = member_name(ordinal);
    Some(Pems {
        ca: secret_text(env, &secret, "ca.crt").await?,
        cert: secret_text(env, &secret, &format!("{member}.crt")).await?,
        key: secret_text(env, &secret, &format!("{member}.key")).await?,
    })
}

/// A request to member `ordinal`'s peer port (2380) with curl, verifying the member under its
/// peer DNS name (the test process reaches the pod's address itself); `pems` are the trusted CAs
/// and the certificate to present. The HTTP status of the answer (whatever it is: the port
/// speaks gRPC), or curl's error when the connection or the TLS handshake was refused.
async fn peer_port_answers(
    env: &KubeEnv,
    ordinal: u32,
    scheme: &str,
    pems: Option<(&Pems, bool)>,
) -> Result<u16, String> {
    let pod = env.pod(ordinal).await.expect("the member's pod exists");
    let ip = pod["status"]["podIP"].as_str().expect("the pod has an IP");
    let host = format!(
        "{}.{CLUSTER}-peer.{}.svc",
        member_name(ordinal),
        env.namespace
    );
    let files = PemFiles::new();
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg("--connect-to")
        .arg(format!("{host}:2380:{ip}:2380"));
    if let Some((pems, with_certificate)) = pems {
        command.arg("--cacert").arg(files.write("ca.crt", &pems.ca));
        if with_certificate {
            command
                .arg("--cert")
                .arg(files.write("peer.crt", &pems.cert));
            command.arg("--key").arg(files.write("peer.key", &pems.key));
        }
    }
    let output = command
        .arg(format!("{scheme}://{host}:2380/"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("running curl");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_default()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_string()),
    }
}

/// PEM files for etcdctl, in a directory of the test.
struct PemFiles {
    dir: tempfile::TempDir,
}

impl PemFiles {
    fn new() -> PemFiles {
        PemFiles {
            dir: tempfile::Builder::new()
                .prefix("ferrokv-e2e-tls-")
                .tempdir()
                .unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// etcdctl's `--cacert`, and `--cert`/`--key` unless `with_certificate` is false.
    fn flags(&self, pems: &Pems, with_certificate: bool) -> Vec<String> {
        let mut flags = vec![format!(
            "--cacert={}",
            self.write("ca.crt", &pems.ca).display()
        )];
        if with_certificate {
            flags.push(format!(
                "--cert={}",
                self.write("client.crt", &pems.cert).display()
            ));
            flags.push(format!(
                "--key={}",
                self.write("client.key", &pems.key).display()
            ));
        }
        flags
    }
}

/// etcdctl over https through the client Service, with `flags`; panics with stderr when it
/// fails and `expect_success`, or when it succeeds and not.
async fn etcdctl(env: &KubeEnv, flags: &[String], args: &[&str], expect_success: bool) -> String {
    let output = env
        .etcdctl_with(CLUSTER, "https", flags, args)
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.success(),
        expect_success,
        "etcdctl {args:?} with {flags:?}: {stderr}"
    );
    if expect_success {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        stderr
    }
}

fn with_user(mut flags: Vec<String>, password: &str) -> Vec<String> {
    flags.push(format!("--user=root:{password}"));
    flags
}

/// An etcd client of the test process, at the pod addresses of members `ordinals`, verifying
/// them under the client Service's name (which every member certificate holds).
async fn connect(
    env: &KubeEnv,
    pems: &Pems,
    ordinals: std::ops::Range<u32>,
) -> anyhow::Result<Client> {
    let mut endpoints = Vec::new();
    for ordinal in ordinals {
        let pod = env.pod(ordinal).await.unwrap_or(Value::Null);
        if let Some(ip) = pod["status"]["podIP"].as_str() {
            endpoints.push(format!("https://{ip}:2379"));
        }
    }
    let tls = TlsOptions::new()
        .domain_name(format!("{CLUSTER}-client.{}.svc", env.namespace))
        .ca_certificate(Certificate::from_pem(&pems.ca))
        .identity(Identity::from_pem(&pems.cert, &pems.key));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_user("root", PASSWORD)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// What the writer did.
struct Writes {
    acknowledged: BTreeSet<u64>,
    failed: u64,
}

/// Puts `w/N` until `stop`, reconnecting every second with the credentials of that moment (as
/// a client that follows the rotation does), and after any error.
async fn write_until(env: &KubeEnv, stop: &AtomicBool) -> Writes {
    let mut writes = Writes {
        acknowledged: BTreeSet::new(),
        failed: 0,
    };
    let mut client: Option<(Client, Instant)> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if client
            .as_ref()
            .is_none_or(|(_, since)| since.elapsed() > Duration::from_secs(1))
        {
            client = match auto_credentials(env).await {
                Some(pems) => connect(env, &pems, 0..3)
                    .await
                    .ok()
                    .map(|c| (c, Instant::now())),
                None => None,
            };
        }
        let Some((etcd, _)) = client.as_mut() else {
            writes.failed += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        n += 1;
        match etcd.put(format!("w/{n:06}"), n.to_string(), None).await {
            Ok(_) => {
                writes.acknowledged.insert(n);
            }
            Err(error) => {
                eprintln!("write {n}: {error}");
                writes.failed += 1;
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writes
}

fn auto_tls_with_auth(kvc: &mut Value) {
    kvc["spec"]["tls"] = json!({"client": {"auto": {}}, "peer": {"auto": {}}});
    kvc["spec"]["auth"] = json!({
        "enabled": true,
        "rootPasswordSecret": {"name": PASSWORD_SECRET, "key": "password"},
    });
}

/// The pods' UIDs and restart counts.
async fn pod_incarnations(env: &KubeEnv) -> Vec<(String, u64)> {
    let mut incarnations = Vec::new();
    for ordinal in 0..3 {
        let pod = env.pod(ordinal).await.unwrap_or(Value::Null);
        incarnations.push((
            pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            pod["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0),
        ));
    }
    incarnations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_auto_cluster_with_auth_serves_etcdctl_and_rotates_its_ca_under_a_writer() {
    let env = start("tls-auto").await;
    apply_secret(&env, PASSWORD_SECRET, &[("password", PASSWORD)]).await;
    let applied = Instant::now();
    env.apply_example(auto_tls_with_auth).await.unwrap();
    env.wait_available(3, FORMING).await;
    println!(
        "kubectl apply to Available with auto TLS and auth: {:.1}s",
        applied.elapsed().as_secs_f64()
    );

    // Members advertise https:// URLs and mount their certificates from Secrets.
    let status = env.kvcluster().await["status"].clone();
    for member in status["members"].as_array().unwrap() {
        assert!(
            member["peerUrl"].as_str().unwrap().starts_with("https://")
                && member["clientUrl"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://"),
            "{member}"
        );
    }
    let pod = env.pod(0).await.unwrap();
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--client-cert-auth") && args.contains(&"--peer-client-cert-auth"));

    // Auth is on: the operator turned it on with the Secret's password.
    let pems = env
        .eventually("auto TLS credentials", FORMING, || auto_credentials(&env))
        .await;
    let files = PemFiles::new();
    let flags = files.flags(&pems, true);
    // etcdctl 3.4 has no `auth status`: auth is on once root, with the Secret's password, lists
    // itself and a client without a user is refused a read.
    let root = with_user(flags.clone(), PASSWORD);
    env.eventually("auth enabled", FORMING, || async {
        let listed = env
            .etcdctl_with(CLUSTER, "https", &root, &["user", "list"])
            .await
            .ok()?;
        let users = String::from_utf8_lossy(&listed.stdout);
        let root_listed = listed.status.success() && users.lines().any(|user| user == "root");
        let anonymous = env
            .etcdctl_with(CLUSTER, "https", &flags, &["get", "greeting"])
            .await
            .ok()?;
        (root_listed && !anonymous.status.success()).then_some(())
    })
    .await;
    let unauthenticated = etcdctl(&env, &flags, &["put", "greeting", "anonymous"], false).await;
    assert!(!unauthenticated.is_empty());
    etcdctl(&env, &root, &["put", "greeting", "hello"], true).await;
    assert_eq!(
        etcdctl(
            &env,
            &root,
            &["get", "greeting", "--print-value-only"],
            true
        )
        .await,
        "hello"
    );
    let refused = etcdctl(
        &env,
        &with_user(flags.clone(), "wrong"),
        &["get", "greeting"],
        false,
    )
    .await;
    assert!(refused.contains("authentication failed"), "{refused}");
    let no_certificate = with_user(files.flags(&pems, false), PASSWORD);
    let refused = etcdctl(&env, &no_certificate, &["get", "greeting"], false).await;
    println!("etcdctl without a client certificate: {refused}");

    // Raft goes over mutual TLS: every member's peer port answers a client holding a peer
    // certificate of the cluster's CA (and is verified under its DNS name), and refuses plain
    // text and a client without a certificate. Three voters of one cluster therefore talk to
    // each other over it.
    let peer = auto_peer_credentials(&env, 1).await.unwrap();
    for ordinal in 0..3 {
        peer_port_answers(&env, ordinal, "https", Some((&peer, true)))
            .await
            .unwrap_or_else(|e| {
                panic!("member {ordinal}'s peer port with a peer certificate: {e}")
            });
    }
    // Plain text gets what Go's TLS servers answer it, 400 Bad Request, and nothing else.
    let plain = peer_port_answers(&env, 0, "http", None).await;
    assert!(
        matches!(plain, Ok(400) | Err(_)),
        "the peer port serves plain HTTP: {plain:?}"
    );
    let anonymous = peer_port_answers(&env, 0, "https", Some((&peer, false))).await;
    assert!(
        anonymous.is_err(),
        "the peer port answers a client without a certificate"
    );
    println!(
        "peer port: plain HTTP refused ({plain:?}), no certificate refused ({})",
        anonymous.unwrap_err()
    );

    // The CA rotates under a writer: no pod restarts, no acknowledged write lost.
    let before = pod_incarnations(&env).await;
    let old_ca = secret_text(&env, &format!("{CLUSTER}-ca"), "ca.crt")
        .await
        .unwrap();
    let stop = AtomicBool::new(false);
    let rotated = Instant::now();
    let (writes, ()) = tokio::join!(write_until(&env, &stop), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.apply_example(|kvc| {
            auto_tls_with_auth(kvc);
            kvc["metadata"]["annotations"] = json!({"ferrokv.io/rotate-ca": "1"});
        })
        .await
        .unwrap();
        env.eventually("the CA rotation to complete", ROTATION, || async {
            let ca = secret_text(&env, &format!("{CLUSTER}-ca"), "ca.crt").await?;
            let previous = secret_text(&env, &format!("{CLUSTER}-ca"), "previous-ca.crt").await;
            let next = secret_text(&env, &format!("{CLUSTER}-ca"), "next-ca.crt").await;
            (ca != old_ca && previous.is_none() && next.is_none()).then_some(())
        })
        .await;
        println!(
            "CA rotation from request to old CA removed: {:.1}s",
            rotated.elapsed().as_secs_f64()
        );
        // Writes go on a little with the new CA alone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
    });
    println!(
        "writer during the rotation: {} acknowledged, {} failed",
        writes.acknowledged.len(),
        writes.failed
    );
    assert!(
        writes.acknowledged.len() > 20,
        "too few writes went through"
    );

    // The bundle now holds the new CA alone: etcdctl verifies every member with it.
    let new_pems = auto_credentials(&env).await.unwrap();
    assert!(
        !new_pems.ca.contains(old_ca.trim()),
        "the old CA is still trusted"
    );
    let new_files = PemFiles::new();
    let new_root = with_user(new_files.flags(&new_pems, true), PASSWORD);
    for ordinal in 0..3 {
        let mut etcd = connect(&env, &new_pems, ordinal..ordinal + 1)
            .await
            .unwrap_or_else(|e| panic!("member {ordinal} with the new CA: {e}"));
        etcd.get("greeting", None)
            .await
            .unwrap_or_else(|e| panic!("member {ordinal} with the new CA: {e}"));
    }
    let listed = etcdctl(
        &env,
        &new_root,
        &["get", "w/", "--prefix", "--keys-only"],
        true,
    )
    .await;
    let stored: BTreeSet<u64> = listed
        .lines()
        .filter_map(|line| line.strip_prefix("w/")?.parse().ok())
        .collect();
    let lost: Vec<&u64> = writes.acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(pod_incarnations(&env).await, before, "a pod was restarted");
    assert!(
        env.available_with(3).await,
        "the cluster is not Available after the rotation"
    );
    // So do the peer ports, with the reissued peer certificates and the new CA alone.
    let new_peer = auto_peer_credentials(&env, 2).await.unwrap();
    assert!(
        !new_peer.ca.contains(old_ca.trim()),
        "the old CA is still trusted by peers"
    );
    for ordinal in 0..3 {
        peer_port_answers(&env, ordinal, "https", Some((&new_peer, true)))
            .await
            .unwrap_or_else(|e| panic!("member {ordinal}'s peer port with the new CA: {e}"));
    }
    let mut etcd = connect(&env, &new_pems, 0..3).await.unwrap();
    let count = etcd
        .get(
            "w/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(count as usize, stored.len());
}

/// A CA of the test: what a user's PKI or a cert-manager CA issuer would sign with.
struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ferrokv e2e user CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    /// A certificate for `names`, to serve and to authenticate, as cert-manager's Secret
    /// layout holds it.
    fn issue(&self, common_name: &str, names: Vec<String>) -> Pems {
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Pems {
            ca: self.pem.clone(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

async fn apply_tls_secret(env: &KubeEnv, name: &str, pems: &Pems) {
    apply_secret(
        env,
        name,
        &[
            ("tls.crt", pems.cert.as_str()),
            ("tls.key", pems.key.as_str()),
            ("ca.crt", pems.ca.as_str()),
        ],
    )
    .await;
}

/// cert-manager's Certificate kind, as far as the API server needs it to store objects.
fn certificate_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "certificates.cert-manager.io"},
        "spec": {
            "group": "cert-manager.io",
            "names": {"kind": "Certificate", "listKind": "CertificateList",
                      "plural": "certificates", "singular": "certificate"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cert_manager_client_and_secret_ref_peer_cluster_forms_once_the_secrets_are_filled() {
    let env = start("tls-cert-manager").await;
    env.apply(&certificate_crd()).await.unwrap();
    let ca = TestCa::new();
    let ns = env.namespace.clone();
    let peer_names = vec![
        format!("*.{CLUSTER}-peer.{ns}.svc"),
        format!("*.{CLUSTER}-peer.{ns}.svc.cluster.local"),
    ];
    apply_tls_secret(&env, "peer-tls", &ca.issue("peer", peer_names)).await;
    env.apply_example(|kvc| {
        kvc["spec"]["tls"] = json!({
            "client": {"certManager": {"issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}}},
            "peer": {"secretRef": {"name": "peer-tls"}},
        });
    })
    .await
    .unwrap();

    // The operator asks cert-manager for the members' and its own certificates.
    let members = env
        .eventually("the members' Certificate", FORMING, || async {
            env.get(CERTIFICATES, &format!("{CLUSTER}-client")).await
        })
        .await;
    let operator = env
        .eventually("the operator's Certificate", FORMING, || async {
            env.get(CERTIFICATES, &format!("{CLUSTER}-operator")).await
        })
        .await;
    let spec = &members["spec"];
    assert_eq!(spec["secretName"], format!("{CLUSTER}-client-tls"));
    assert_eq!(
        spec["issuerRef"],
        json!({"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let dns = strings(&spec["dnsNames"]);
    for name in [
        format!("*.{CLUSTER}-peer.{ns}.svc"),
        format!("{CLUSTER}-client.{ns}.svc"),
        "localhost".to_string(),
    ] {
        assert!(dns.contains(&name), "{name} missing in {dns:?}");
    }
    assert_eq!(strings(&spec["ipAddresses"]), ["127.0.0.1"]);
    let usages = strings(&spec["usages"]);
    assert!(
        usages.contains(&"server auth".to_string()) && usages.contains(&"client auth".to_string())
    );
    assert_eq!(
        operator["spec"]["secretName"],
        format!("{CLUSTER}-operator-tls")
    );
    assert_eq!(
        strings(&operator["spec"]["usages"]).last().unwrap(),
        "client auth"
    );
    assert_eq!(
        members["metadata"]["ownerReferences"][0]["kind"],
        "KVCluster"
    );

    // No pod runs before its certificate exists.
    let pod = env.pod(0).await;
    assert!(
        pod.as_ref()
            .is_none_or(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_null()),
        "a member runs without its certificate: {pod:?}"
    );

    // cert-manager would now fill the Secrets; the test does, with the Certificates' names.
    let mut names = dns.clone();
    names.extend(strings(&spec["ipAddresses"]));
    apply_tls_secret(
        &env,
        &format!("{CLUSTER}-client-tls"),
        &ca.issue("members", names),
    )
    .await;
    apply_tls_secret(
        &env,
        &format!("{CLUSTER}-operator-tls"),
        &ca.issue(operator["spec"]["commonName"].as_str().unwrap(), vec![]),
    )
    .await;
    env.wait_available(3, FORMING).await;

    let client = ca.issue("e2e-client", vec![]);
    let files = PemFiles::new();
    let flags = files.flags(&client, true);
    etcdctl(&env, &flags, &["put", "greeting", "hello"], true).await;
    assert_eq!(
        etcdctl(
            &env,
            &flags,
            &["get", "greeting", "--print-value-only"],
            true
        )
        .await,
        "hello"
    );
    let members = etcdctl(&env, &flags, &["member", "list"], true).await;
    assert_eq!(
        members.matches("https://").count(),
        6,
        "every peer and client URL is https: {members}"
    );
    let pods = env.list(PODS).await;
    let volumes: Vec<String> = pods[0]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        volumes,
        [format!("{CLUSTER}-client-tls"), "peer-tls".to_string()]
    );
}
