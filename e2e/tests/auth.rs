//! etcd's Auth service, driven by Debian's `etcdctl` against a 3-member cluster: enabling auth,
//! the lifecycle of users and roles, every permission rule (key, range, prefix, read-only,
//! txn compares and ops, watch), the admin-only calls, etcd's exact error messages, and auth
//! state across a restart of every member and through a snapshot. The same suite passes
//! against etcd (`FERROKV_E2E_SERVER=/usr/bin/etcd`).

use std::path::Path;
use std::process::Command;

use etcd_client::{Client, ConnectOptions, GetOptions, Permission};
use ferrokv_e2e::TestCluster;

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// etcdctl's own limit on one call: every call authenticates first (bcrypt, then a Raft
/// round), and debug builds of three members on a loaded machine can take longer than its 5 s.
const COMMAND_TIMEOUT: &str = "--command-timeout=20s";

/// Runs etcdctl as `user` (none: anonymous) and returns its output.
async fn ctl(
    cluster: &TestCluster,
    user: Option<&str>,
    args: &[&str],
) -> ferrokv_e2e::etcdctl::EtcdctlOutput {
    let flag;
    let mut all: Vec<&str> = vec![COMMAND_TIMEOUT];
    if let Some(user) = user {
        flag = format!("--user={user}");
        all.push(&flag);
    }
    all.extend_from_slice(args);
    cluster.etcdctl(&all).await
}

async fn ok(cluster: &TestCluster, user: Option<&str>, args: &[&str]) -> String {
    ctl(cluster, user, args).await.expect_stdout().to_string()
}

/// Runs a command that must fail and returns what etcdctl printed on stderr.
async fn refused(cluster: &TestCluster, user: Option<&str>, args: &[&str]) -> String {
    ctl(cluster, user, args).await.expect_failure().to_string()
}

fn assert_denied(stderr: &str) {
    assert!(
        stderr.contains("etcdserver: permission denied"),
        "expected a permission denial: {stderr}"
    );
}

/// A Maintenance call refused for want of the root role. etcd 3.4 passes the auth store's own
/// error through untranslated there (code Unknown, "auth: permission denied"); later etcd, and
/// ferrokv, answer etcd's `etcdserver: permission denied` as everywhere else.
fn assert_maintenance_denied(cluster: &TestCluster, stderr: &str) {
    if cluster.server_is_etcd() {
        assert!(stderr.contains("auth: permission denied"), "{stderr}");
    } else {
        assert_denied(stderr);
    }
}

/// A GET (or a PUT of `value=v`) of a v2 key with curl: the HTTP status and the body.
async fn curl_v2(url: &str, put: bool) -> (String, String) {
    let mut command = tokio::process::Command::new("curl");
    command.args([
        "--silent",
        "--max-time",
        "10",
        "--write-out",
        "\n%{http_code}",
    ]);
    if put {
        command.args(["-X", "PUT", "-d", "value=v"]);
    }
    let output = command.arg(url).output().await.expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl wrote the status");
    (status.to_string(), body.to_string())
}

/// root (with the root role), auth enabled; alice with role `reader`, which may read `app/`.
async fn enable_auth_with_alice(cluster: &TestCluster) {
    ok(cluster, None, &["user", "add", ROOT]).await;
    // etcdctl creates the root role and grants it to root when AuthEnable says it is missing.
    let enabled = ok(cluster, None, &["auth", "enable"]).await;
    assert_eq!(enabled.trim(), "Authentication Enabled");
    ok(cluster, Some(ROOT), &["user", "add", ALICE]).await;
    ok(cluster, Some(ROOT), &["role", "add", "reader"]).await;
    ok(
        cluster,
        Some(ROOT),
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix",
        ],
    )
    .await;
    ok(
        cluster,
        Some(ROOT),
        &["user", "grant-role", "alice", "reader"],
    )
    .await;
    ok(cluster, Some(ROOT), &["put", "app/x", "1"]).await;
}

#[tokio::test]
async fn auth_enable_users_roles_and_every_permission_rule() {
    let cluster = TestCluster::start(3).await.expect("start cluster");
    let refused_enable = refused(&cluster, None, &["auth", "enable"]).await;
    assert!(
        refused_enable.contains("etcdserver: root user does not exist"),
        "{refused_enable}"
    );
    enable_auth_with_alice(&cluster).await;

    // Who may do anything at all.
    assert!(refused(&cluster, None, &["get", "app/x"])
        .await
        .contains("etcdserver: user name is empty"));
    assert!(refused(&cluster, Some("alice:wrong"), &["get", "app/x"])
        .await
        .contains("etcdserver: authentication failed, invalid user ID or password"));
    assert!(refused(&cluster, Some("nobody:pw"), &["get", "app/x"])
        .await
        .contains("etcdserver: authentication failed, invalid user ID or password"));
    if !cluster.server_is_etcd() {
        // The v2 keys API (etcd 3.4 serves it only with --enable-v2) knows no v3 users: while
        // auth is enabled it refuses every request, reads and writes alike, as etcd answers a
        // v2 request without sufficient credentials.
        let url = format!("{}/v2/keys/app/x", cluster.endpoint(0));
        for put in [false, true] {
            let (status, body) = curl_v2(&url, put).await;
            assert_eq!(status, "401", "{body}");
            assert_eq!(
                body.trim(),
                r#"{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}"#
            );
        }
    }

    // Read-only on a prefix: get inside, not put, nothing outside.
    assert_eq!(
        ok(&cluster, Some(ALICE), &["get", "app/x"]).await,
        "app/x\n1\n"
    );
    assert!(ok(&cluster, Some(ALICE), &["get", "app/", "--prefix"])
        .await
        .contains("app/x"));
    assert_denied(&refused(&cluster, Some(ALICE), &["put", "app/x", "2"]).await);
    assert_denied(&refused(&cluster, Some(ALICE), &["get", "other"]).await);
    assert_denied(&refused(&cluster, Some(ALICE), &["get", "", "--from-key"]).await);

    // A key, a range, a prefix, a from-key.
    ok(&cluster, Some(ROOT), &["role", "add", "writer"]).await;
    for grant in [
        &["role", "grant-permission", "writer", "readwrite", "k1"][..],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "r/a",
            "r/c",
        ],
        &[
            "role",
            "grant-permission",
            "writer",
            "write",
            "w/",
            "--prefix",
        ],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "z",
            "--from-key",
        ],
    ] {
        ok(&cluster, Some(ROOT), grant).await;
    }
    ok(
        &cluster,
        Some(ROOT),
        &["user", "grant-role", "alice", "writer"],
    )
    .await;
    let role = ok(&cluster, Some(ROOT), &["role", "get", "writer"]).await;
    assert!(role.contains("[r/a, r/c)"), "{role}");
    assert!(role.contains("[w/, w0) (prefix w/)"), "{role}");
    ok(&cluster, Some(ALICE), &["put", "k1", "v"]).await;
    assert_denied(&refused(&cluster, Some(ALICE), &["put", "k10", "v"]).await);
    ok(&cluster, Some(ALICE), &["put", "r/b", "v"]).await;
    assert_denied(&refused(&cluster, Some(ALICE), &["put", "r/c", "v"]).await);
    ok(&cluster, Some(ALICE), &["get", "r/a", "r/c"]).await;
    assert_denied(&refused(&cluster, Some(ALICE), &["get", "r/a", "r/d"]).await);
    ok(&cluster, Some(ALICE), &["put", "w/1", "v"]).await;
    assert_denied(&refused(&cluster, Some(ALICE), &["get", "w/1"]).await);
    ok(&cluster, Some(ALICE), &["put", "zz", "v"]).await;
    ok(&cluster, Some(ALICE), &["del", "z", "--from-key"]).await;
    assert_denied(&refused(&cluster, Some(ALICE), &["del", "y", "--from-key"]).await);

    // Txn: every compare and every op of both branches.
    let txn = |body: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .etcdctl_with_stdin(&[COMMAND_TIMEOUT, "--user", ALICE, "txn", "-i"], body)
                .await
        }
    };
    let allowed = txn("value(\"app/x\") = \"1\"\n\nput r/b 2\n\nput k1 3\n\n").await;
    assert!(allowed.expect_stdout().contains("SUCCESS"), "{allowed:?}");
    assert_denied(
        txn("value(\"secret\") = \"1\"\n\nput r/b 2\n\n\n")
            .await
            .expect_failure(),
    );
    assert_denied(
        txn("value(\"app/x\") = \"1\"\n\nput r/b 2\n\nput secret 1\n\n")
            .await
            .expect_failure(),
    );

    // A watch outside the permitted ranges is refused; inside, it is served.
    let watch = refused(&cluster, Some(ALICE), &["watch", "secret"]).await;
    assert_denied(&watch);

    // Admin-only calls.
    let member_id = format!("{:x}", cluster.member_id(1).await.expect("member id"));
    for admin in [
        &["user", "list"][..],
        &["role", "list"],
        &["user", "add", "mallory:pw"],
        &["role", "add", "mallory"],
        &["user", "grant-role", "alice", "root"],
        &["role", "revoke-permission", "reader", "app/", "--prefix"],
        &["auth", "disable"],
        &[
            "member",
            "add",
            "m4",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
        &["member", "remove", "1234"],
    ] {
        assert_denied(&refused(&cluster, Some(ALICE), admin).await);
    }
    assert_maintenance_denied(&cluster, &refused(&cluster, Some(ALICE), &["defrag"]).await);
    // etcd 3.4 lets any user move the leader; later etcd, like ferrokv, asks for root.
    if !cluster.server_is_etcd() {
        assert_denied(&refused(&cluster, Some(ALICE), &["move-leader", &member_id]).await);
    }
    let dir = tempfile::Builder::new()
        .prefix("ferrokv-e2e-auth-")
        .tempdir()
        .expect("temp dir");
    let file = dir.path().join("alice.db");
    let path = file.to_str().expect("utf-8 path");
    let snapshot = cluster
        .member_etcdctl(0, &["--user", ALICE, "snapshot", "save", path])
        .await;
    assert_maintenance_denied(&cluster, snapshot.expect_failure());

    // Users and roles, and etcd's rules about root.
    assert!(refused(&cluster, Some(ROOT), &["user", "add", ALICE])
        .await
        .contains("etcdserver: user name already exists"));
    assert!(refused(&cluster, Some(ROOT), &["user", "get", "ghost"])
        .await
        .contains("etcdserver: user name not found"));
    assert!(refused(&cluster, Some(ROOT), &["role", "get", "ghost"])
        .await
        .contains("etcdserver: role name not found"));
    assert!(refused(
        &cluster,
        Some(ROOT),
        &["user", "grant-role", "alice", "ghost"]
    )
    .await
    .contains("etcdserver: role name not found"));
    assert!(refused(&cluster, Some(ROOT), &["role", "delete", "root"])
        .await
        .contains("etcdserver: invalid auth management"));
    assert!(refused(
        &cluster,
        Some(ROOT),
        &["user", "revoke-role", "root", "root"]
    )
    .await
    .contains("etcdserver: invalid auth management"));
    let users = ok(&cluster, Some(ROOT), &["user", "list"]).await;
    assert_eq!(users, "alice\nroot\n");
    let alice = ok(&cluster, Some(ROOT), &["user", "get", "alice"]).await;
    assert!(
        alice.contains("reader") && alice.contains("writer"),
        "{alice}"
    );
    ok(
        &cluster,
        Some(ROOT),
        &["user", "revoke-role", "alice", "writer"],
    )
    .await;
    assert_denied(&refused(&cluster, Some(ALICE), &["put", "k1", "v"]).await);
    let passwd = cluster
        .etcdctl_with_stdin(
            &[
                "--user",
                ROOT,
                "user",
                "passwd",
                "alice",
                "--interactive=false",
            ],
            "alicepw2\n",
        )
        .await;
    passwd.expect_stdout();
    assert!(refused(&cluster, Some(ALICE), &["get", "app/x"])
        .await
        .contains("etcdserver: authentication failed, invalid user ID or password"));
    ok(&cluster, Some("alice:alicepw2"), &["get", "app/x"]).await;
    ok(&cluster, Some(ROOT), &["role", "delete", "writer"]).await;
    let roles = ok(&cluster, Some(ROOT), &["role", "list"]).await;
    assert_eq!(roles, "reader\nroot\n");

    // Disabled, anyone may do anything again.
    assert_eq!(
        ok(&cluster, Some(ROOT), &["auth", "disable"]).await.trim(),
        "Authentication Disabled"
    );
    ok(&cluster, None, &["put", "secret", "open"]).await;
    assert!(refused(&cluster, None, &["user", "get", "ghost"])
        .await
        .contains("etcdserver: user name not found"));
}

#[tokio::test]
async fn a_permission_revoked_while_a_client_holds_a_token_takes_effect() {
    let cluster = TestCluster::start(3).await.expect("start cluster");
    enable_auth_with_alice(&cluster).await;
    ok(
        &cluster,
        Some(ROOT),
        &[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "app/",
            "--prefix",
        ],
    )
    .await;
    let options = ConnectOptions::new().with_user("alice", "alicepw");
    let mut alice = Client::connect([cluster.endpoint(0)], Some(options))
        .await
        .expect("alice connects");
    alice
        .put("app/y", "1", None)
        .await
        .expect("alice may write");
    ok(
        &cluster,
        Some(ROOT),
        &["role", "revoke-permission", "reader", "app/", "--prefix"],
    )
    .await;
    let error = alice
        .put("app/y", "2", None)
        .await
        .expect_err("the revoked permission is honoured");
    assert!(
        error.to_string().contains("etcdserver: permission denied"),
        "{error}"
    );
    let error = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect_err("reads too");
    assert!(
        error.to_string().contains("etcdserver: permission denied"),
        "{error}"
    );
    // The grant takes effect for the same token too.
    let mut root = Client::connect(
        [cluster.endpoint(0)],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root connects");
    root.role_grant_permission("reader", Permission::read("app/").with_prefix())
        .await
        .expect("grant");
    alice
        .get("app/x", None)
        .await
        .expect("alice reads with the grant");
}

/// The users and roles a client can observe, through etcdctl as root.
async fn auth_observed(cluster: &TestCluster) -> (String, String, String) {
    (
        ok(cluster, Some(ROOT), &["user", "list"]).await,
        ok(cluster, Some(ROOT), &["role", "get", "reader"]).await,
        ok(cluster, Some(ROOT), &["user", "get", "alice"]).await,
    )
}

async fn assert_alice_still_bound(cluster: &TestCluster) {
    assert_eq!(
        ok(cluster, Some(ALICE), &["get", "app/x"]).await,
        "app/x\n1\n"
    );
    assert_denied(&refused(cluster, Some(ALICE), &["put", "app/x", "2"]).await);
    assert!(refused(cluster, None, &["get", "app/x"])
        .await
        .contains("etcdserver: user name is empty"));
}

#[tokio::test]
async fn auth_survives_a_restart_of_every_member_and_travels_in_a_snapshot() {
    let mut cluster = TestCluster::start(3).await.expect("start cluster");
    enable_auth_with_alice(&cluster).await;
    let before = auth_observed(&cluster).await;

    cluster.kill_all().expect("kill every member");
    for i in 0..cluster.len() {
        cluster.restart(i).expect("restart");
    }
    cluster.wait_healthy().await.expect("healthy after restart");
    assert_eq!(auth_observed(&cluster).await, before);
    assert_alice_still_bound(&cluster).await;

    let dir = tempfile::Builder::new()
        .prefix("ferrokv-e2e-auth-")
        .tempdir()
        .expect("temp dir");
    let file = dir.path().join("auth.db");
    let path = file.to_str().expect("utf-8 path");
    cluster
        .member_etcdctl(
            0,
            &[COMMAND_TIMEOUT, "--user", ROOT, "snapshot", "save", path],
        )
        .await
        .expect_stdout();

    // Restored by the server under test (ferrokv's own restore, or etcdctl's for etcd).
    let mut restored = TestCluster::builder(1).create().expect("lay out a member");
    restore(&restored, &file);
    restored.restart(0).expect("start the restored member");
    restored
        .wait_healthy()
        .await
        .expect("restored member healthy");
    assert_eq!(auth_observed(&restored).await, before);
    assert_alice_still_bound(&restored).await;
}

fn restore(restored: &TestCluster, file: &Path) {
    let flags = [
        format!("--name={}", restored.name(0)),
        format!("--data-dir={}", restored.data_dir(0).display()),
        format!("--initial-cluster={}", restored.initial_cluster()),
        format!("--initial-cluster-token={}", restored.token()),
        format!("--initial-advertise-peer-urls={}", restored.peer_url(0)),
    ];
    let output = if restored.server_is_etcd() {
        Command::new(restored.etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(file)
            .args(&flags)
            .output()
    } else {
        Command::new(restored.server())
            .args(["snapshot", "restore"])
            .arg(file)
            .args(&flags)
            .output()
    }
    .expect("run the restore");
    assert!(
        output.status.success(),
        "restore failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
