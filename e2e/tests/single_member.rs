//! A member started with only its directories and URLs — no `--name`, no `--initial-cluster*`,
//! no `--initial-advertise-peer-urls` — forms a one-member cluster from the server's defaults (as
//! etcd does), and keeps its identity and data across SIGKILL and SIGTERM.

use ferrokv_e2e::keyspace::read_prefix;
use ferrokv_e2e::TestCluster;

const KEYS: usize = 200;

#[tokio::test]
async fn member_without_cluster_flags_is_a_one_member_cluster_that_keeps_its_data() {
    let mut cluster = TestCluster::builder(1)
        .without_cluster_flags()
        .start()
        .await
        .expect("start a single member");
    let member_id = cluster.member_id(0).await.expect("member id");
    // Without --initial-advertise-peer-urls the member advertises etcd's default peer URL.
    let member_line = format!(
        "{member_id:x}, started, default, http://localhost:2380, {}, false\n",
        cluster.endpoint(0)
    );
    assert_eq!(
        cluster.etcdctl(&["member", "list"]).await.expect_stdout(),
        member_line
    );

    let mut client = cluster.client().await.expect("client");
    let mut expected = std::collections::BTreeMap::new();
    for n in 0..KEYS {
        let (key, value) = (format!("single/{n:04}"), format!("value {n}"));
        client
            .put(key.clone(), value.clone(), None)
            .await
            .expect("put");
        expected.insert(key, value);
    }
    // A new cluster starts at revision 1; each put adds one.
    let last_revision = 1 + KEYS as i64;

    cluster.kill(0).expect("SIGKILL");
    cluster.restart(0).expect("restart");
    cluster.wait_healthy().await.expect("healthy after SIGKILL");
    let mut client = cluster.client().await.expect("client");
    let view = read_prefix(&mut client, "single/")
        .await
        .expect("read back");
    assert_eq!(
        view.pairs, expected,
        "every acknowledged put survives SIGKILL"
    );
    assert_eq!(view.revision, last_revision, "the revision survives too");
    assert_eq!(
        cluster.member_id(0).await.expect("member id"),
        member_id,
        "the data dir keeps the member's identity"
    );

    let put = client
        .put("single/after-kill", "x", None)
        .await
        .expect("put");
    assert_eq!(
        put.header().map(|h| h.revision()),
        Some(last_revision + 1),
        "revisions continue where they stopped"
    );
    expected.insert("single/after-kill".into(), "x".into());

    cluster.stop(0).await.expect("SIGTERM");
    cluster.restart(0).expect("restart");
    cluster.wait_healthy().await.expect("healthy after SIGTERM");
    let mut client = cluster.client().await.expect("client");
    let view = read_prefix(&mut client, "single/")
        .await
        .expect("read back");
    assert_eq!(view.pairs, expected, "every put survives a graceful stop");
    assert_eq!(
        cluster.etcdctl(&["member", "list"]).await.expect_stdout(),
        member_line,
        "still one member, same ID, same URLs"
    );
}
