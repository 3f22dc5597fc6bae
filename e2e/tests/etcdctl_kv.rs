//! A 3-member cluster driven by Debian's etcdctl: the KV commands and the cluster-inspection
//! commands an operator types, with their output asserted exactly as etcdctl prints it.
//!
//! Each test starts its own fresh cluster, so revisions are predictable: a new cluster is at
//! revision 1 and every write adds one.

use etcd_client::GetOptions;
use ferrokv_e2e::TestCluster;
use serde_json::Value;

async fn three_members() -> TestCluster {
    TestCluster::start(3)
        .await
        .expect("start a 3-member cluster")
}

async fn put(cluster: &TestCluster, key: &str, value: &str) {
    let output = cluster.etcdctl(&["put", key, value]).await;
    assert_eq!(output.expect_stdout(), "OK\n");
}

#[tokio::test]
async fn get_prints_keys_and_values_with_range_options() {
    let cluster = three_members().await;
    put(&cluster, "foo", "bar").await; // revision 2
    put(&cluster, "foo1", "b1").await; // 3
    put(&cluster, "foo2", "b2").await; // 4
    put(&cluster, "zoo", "z").await; // 5

    let get = |args: &'static [&'static str]| {
        let cluster = &cluster;
        async move { cluster.etcdctl(args).await.expect_stdout().to_string() }
    };
    assert_eq!(get(&["get", "foo"]).await, "foo\nbar\n");
    assert_eq!(get(&["get", "nothing"]).await, "");
    assert_eq!(
        get(&["get", "--prefix", "foo"]).await,
        "foo\nbar\nfoo1\nb1\nfoo2\nb2\n"
    );
    assert_eq!(
        get(&["get", "--prefix", "foo", "--limit", "2"]).await,
        "foo\nbar\nfoo1\nb1\n"
    );
    assert_eq!(
        get(&[
            "get",
            "--prefix",
            "foo",
            "--sort-by=VALUE",
            "--order=DESCEND"
        ])
        .await,
        "foo\nbar\nfoo2\nb2\nfoo1\nb1\n"
    );
    assert_eq!(
        get(&[
            "get",
            "--prefix",
            "foo",
            "--sort-by=MODIFY",
            "--order=DESCEND"
        ])
        .await,
        "foo2\nb2\nfoo1\nb1\nfoo\nbar\n"
    );
    // A range end makes a half-open interval: [foo1, zoo).
    assert_eq!(get(&["get", "foo1", "zoo"]).await, "foo1\nb1\nfoo2\nb2\n");
    assert_eq!(
        get(&["get", "--prefix", "--keys-only", "foo"]).await,
        "foo\n\nfoo1\n\nfoo2\n\n"
    );
    assert_eq!(
        get(&["get", "--prefix", "--print-value-only", "foo"]).await,
        "bar\nb1\nb2\n"
    );

    put(&cluster, "foo", "baz").await; // 6
    assert_eq!(get(&["get", "foo"]).await, "foo\nbaz\n");
    assert_eq!(get(&["get", "foo", "--rev", "2"]).await, "foo\nbar\n");
    assert_eq!(get(&["get", "foo", "--rev", "5"]).await, "foo\nbar\n");
    assert_eq!(get(&["get", "foo", "--rev", "1"]).await, "");
    assert_eq!(
        get(&["get", "--prefix", "foo", "--rev", "3"]).await,
        "foo\nbar\nfoo1\nb1\n"
    );

    let json: Value =
        serde_json::from_str(get(&["get", "foo", "-w", "json"]).await.trim()).expect("json");
    assert_eq!(json["header"]["revision"], 6);
    assert_eq!(json["count"], 1);
    let kv = &json["kvs"][0];
    assert_eq!(kv["key"], "Zm9v", "base64 of foo");
    assert_eq!(kv["value"], "YmF6", "base64 of baz");
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 6);
    assert_eq!(kv["version"], 2);

    // etcdctl 3.4 has no --count-only flag (3.5 added it), so count-only goes through the
    // etcd-client crate, which sends the same RangeRequest field.
    let mut client = cluster.client().await.expect("client");
    let counted = client
        .get(
            "foo",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count-only get");
    assert_eq!(counted.count(), 3);
    assert!(counted.kvs().is_empty(), "count-only returns no pairs");
}

#[tokio::test]
async fn del_prints_deleted_count_and_previous_pairs() {
    let cluster = three_members().await;
    for (key, value) in [
        ("a", "1"),
        ("b", "2"),
        ("p/1", "x"),
        ("p/2", "y"),
        ("p/3", "z"),
    ] {
        put(&cluster, key, value).await;
    }

    assert_eq!(cluster.etcdctl(&["del", "a"]).await.expect_stdout(), "1\n");
    assert_eq!(
        cluster.etcdctl(&["del", "nothing"]).await.expect_stdout(),
        "0\n"
    );
    assert_eq!(
        cluster
            .etcdctl(&["del", "--prev-kv", "b"])
            .await
            .expect_stdout(),
        "1\nb\n2\n"
    );
    assert_eq!(
        cluster
            .etcdctl(&["del", "--prefix", "p/"])
            .await
            .expect_stdout(),
        "3\n"
    );
    assert_eq!(
        cluster
            .etcdctl(&["get", "--prefix", ""])
            .await
            .expect_stdout(),
        "",
        "every key is gone"
    );
}

/// The prompts etcdctl's interactive `txn` prints while it reads the three sections.
const TXN_PROMPTS: &str =
    "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

#[tokio::test]
async fn interactive_txn_runs_the_branch_its_compares_select() {
    let cluster = three_members().await;
    put(&cluster, "a", "1").await;
    put(&cluster, "b", "2").await;

    let succeeding = "value(\"a\") = \"1\"\n\nput res yes\nget a\n\nput res no\n\n";
    let output = cluster
        .etcdctl_with_stdin(&["txn", "--interactive"], succeeding)
        .await;
    assert_eq!(
        output.expect_stdout(),
        format!("{TXN_PROMPTS}SUCCESS\n\nOK\n\na\n1\n")
    );
    assert_eq!(
        cluster.etcdctl(&["get", "res"]).await.expect_stdout(),
        "res\nyes\n"
    );

    // One failing compare is enough to take the failure branch.
    let failing =
        "value(\"a\") = \"9\"\nmod(\"b\") > \"0\"\n\nput res yes\n\nput res no\ndel b\n\n";
    let output = cluster.etcdctl_with_stdin(&["txn", "-i"], failing).await;
    assert_eq!(
        output.expect_stdout(),
        format!("{TXN_PROMPTS}FAILURE\n\nOK\n\n1\n")
    );
    assert_eq!(
        cluster.etcdctl(&["get", "res"]).await.expect_stdout(),
        "res\nno\n"
    );
    assert_eq!(cluster.etcdctl(&["get", "b"]).await.expect_stdout(), "");
}

#[tokio::test]
async fn get_at_a_compacted_revision_fails() {
    let cluster = three_members().await;
    put(&cluster, "c", "v1").await; // revision 2
    put(&cluster, "c", "v2").await; // 3
    put(&cluster, "c", "v3").await; // 4

    assert_eq!(
        cluster.etcdctl(&["compact", "3"]).await.expect_stdout(),
        "compacted revision 3\n"
    );
    let compacted = cluster.etcdctl(&["get", "c", "--rev", "2"]).await;
    assert!(
        compacted
            .expect_failure()
            .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{compacted:?}"
    );
    // The compaction revision itself stays readable.
    assert_eq!(
        cluster
            .etcdctl(&["get", "c", "--rev", "3"])
            .await
            .expect_stdout(),
        "c\nv2\n"
    );
    assert_eq!(
        cluster.etcdctl(&["get", "c"]).await.expect_stdout(),
        "c\nv3\n"
    );
    let again = cluster.etcdctl(&["compact", "2"]).await;
    assert!(
        again
            .expect_failure()
            .contains("required revision has been compacted"),
        "{again:?}"
    );
    let future = cluster.etcdctl(&["get", "c", "--rev", "100"]).await;
    assert!(
        future
            .expect_failure()
            .contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{future:?}"
    );
}

#[tokio::test]
async fn endpoint_status_json_names_one_leader_and_the_raft_index() {
    let mut cluster = three_members().await;
    let leader = cluster.leader().await.expect("leader");
    let leader_id = cluster.member_id(leader).await.expect("leader id");

    let statuses = |output: &str| -> Vec<Value> {
        let json: Value = serde_json::from_str(output.trim()).expect("status json");
        json.as_array().expect("an array of endpoints").clone()
    };
    let before = statuses(
        cluster
            .etcdctl(&["endpoint", "status", "-w", "json"])
            .await
            .expect_stdout(),
    );
    assert_eq!(before.len(), 3);
    let cluster_id = &before[0]["Status"]["header"]["cluster_id"];
    for (i, entry) in before.iter().enumerate() {
        assert_eq!(entry["Endpoint"], cluster.endpoint(i));
        let status = &entry["Status"];
        assert_eq!(status["leader"].as_u64(), Some(leader_id), "{status}");
        assert_eq!(&status["header"]["cluster_id"], cluster_id);
        let member_id = cluster.member_id(i).await.expect("member id");
        assert_eq!(status["header"]["member_id"].as_u64(), Some(member_id));
        assert!(status["raftTerm"].as_u64() >= Some(1), "{status}");
        assert!(status["raftIndex"].as_u64() >= Some(1), "{status}");
        assert!(!status["version"].as_str().unwrap_or("").is_empty());
    }

    put(&cluster, "k", "v").await;
    let after = statuses(
        cluster
            .member_etcdctl(leader, &["endpoint", "status", "-w", "json"])
            .await
            .expect_stdout(),
    );
    assert_eq!(after.len(), 1, "one endpoint asked");
    let raft_index_before = before[leader]["Status"]["raftIndex"].as_u64().unwrap();
    let raft_index_after = after[0]["Status"]["raftIndex"].as_u64().unwrap();
    assert!(
        raft_index_after > raft_index_before,
        "a put advances the leader's raft index: {raft_index_before} -> {raft_index_after}"
    );
    assert_eq!(after[0]["Status"]["header"]["revision"], 2);
}

#[tokio::test]
async fn member_list_shows_every_member_with_its_urls() {
    let cluster = three_members().await;
    let mut expected = Vec::new();
    for i in 0..cluster.len() {
        let id = cluster.member_id(i).await.expect("member id");
        expected.push(format!(
            "{id:x}, started, {}, {}, {}, false",
            cluster.name(i),
            cluster.peer_url(i),
            cluster.endpoint(i)
        ));
    }
    expected.sort();

    let output = cluster.etcdctl(&["member", "list"]).await;
    let mut lines: Vec<String> = output.expect_stdout().lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, expected);

    let json: Value = serde_json::from_str(
        cluster
            .etcdctl(&["member", "list", "-w", "json"])
            .await
            .expect_stdout()
            .trim(),
    )
    .expect("member list json");
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for i in 0..cluster.len() {
        let id = cluster.member_id(i).await.expect("member id");
        let member = members
            .iter()
            .find(|m| m["ID"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("member {id:x} missing from {json}"));
        assert_eq!(member["name"], cluster.name(i));
        assert_eq!(member["peerURLs"], serde_json::json!([cluster.peer_url(i)]));
        assert_eq!(
            member["clientURLs"],
            serde_json::json!([cluster.endpoint(i)])
        );
    }
}
