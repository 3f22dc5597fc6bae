//! The KV service's refusals, driven through the `etcd-client` crate: each invalid request gets
//! exactly etcd's gRPC status code and message (clients match on them), and a refused request
//! changes nothing — neither a key nor the store's revision. Also: a 3-member cluster is one
//! store, whichever member a client writes through or reads from.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ferrokv_e2e::keyspace::read_prefix;
use ferrokv_e2e::TestCluster;
use tonic::Code;

/// `--max-txn-ops` the refusal tests run with: small, so a refused transaction is small too.
const MAX_TXN_OPS: usize = 4;
/// `--max-request-bytes` the refusal tests run with. etcd's gRPC server accepts messages up to
/// this plus 512 KiB and refuses the excess itself, so a request a little over this size reaches
/// the limit check that answers "request is too large".
const MAX_REQUEST_BYTES: usize = 16 * 1024;

const PREFIX: &str = "err/";

async fn cluster_with_limits() -> TestCluster {
    TestCluster::builder(3)
        .flag(format!("--max-txn-ops={MAX_TXN_OPS}"))
        .flag(format!("--max-request-bytes={MAX_REQUEST_BYTES}"))
        .start()
        .await
        .expect("start a 3-member cluster")
}

/// Asserts that `result` is the gRPC error `code` with exactly `message`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "wrong status for a request etcd refuses with {code:?} {message:?}"
            );
        }
        other => panic!("expected {code:?} {message:?}, got {other:?}"),
    }
}

/// Everything under [`PREFIX`] and the store's revision: what a refused request must not change.
async fn stored_state(client: &mut Client) -> (i64, BTreeMap<String, String>) {
    let view = read_prefix(client, PREFIX).await.expect("read the keys");
    (view.revision, view.pairs)
}

#[tokio::test]
async fn invalid_kv_requests_get_etcds_status_and_change_nothing() {
    let cluster = cluster_with_limits().await;
    let mut client = cluster.client().await.expect("client");
    client.put("err/a", "1", None).await.expect("put err/a");
    client.put("err/b", "2", None).await.expect("put err/b");
    let before = stored_state(&mut client).await;
    assert_eq!(before.1.len(), 2);

    assert_refused(
        client.put("", "value", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_refused(
        client.get("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_refused(
        client.delete("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_eq!(stored_state(&mut client).await, before, "after empty keys");

    // One operation over the limit, all on distinct new keys.
    let puts: Vec<TxnOp> = (0..=MAX_TXN_OPS)
        .map(|n| TxnOp::put(format!("err/txn{n}"), "x", None))
        .collect();
    assert_refused(
        client.txn(Txn::new().and_then(puts)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_eq!(
        stored_state(&mut client).await,
        before,
        "after too many ops"
    );

    // Exactly the limit is allowed: the boundary is "more than", as in etcd.
    let puts: Vec<TxnOp> = (0..MAX_TXN_OPS)
        .map(|n| TxnOp::put(format!("other/txn{n}"), "x", None))
        .collect();
    client
        .txn(Txn::new().and_then(puts))
        .await
        .expect("a txn of exactly --max-txn-ops operations");
    let before = stored_state(&mut client).await;

    assert_refused(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("err/dup", "1", None),
                TxnOp::put("err/dup", "2", None),
            ]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // A put inside a deleted range is the same conflict.
    assert_refused(
        client
            .txn(Txn::new().and_then([
                TxnOp::delete(
                    "err/",
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
                TxnOp::put("err/a", "3", None),
            ]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_eq!(
        stored_state(&mut client).await,
        before,
        "after duplicate keys"
    );

    let too_large = "v".repeat(MAX_REQUEST_BYTES + 1024);
    assert_refused(
        client.put("err/large", too_large.clone(), None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_refused(
        client
            .txn(Txn::new().and_then([TxnOp::put("err/large", too_large, None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_eq!(
        stored_state(&mut client).await,
        before,
        "after large requests"
    );

    let future = before.0 + 1;
    assert_refused(
        client
            .get("err/a", Some(GetOptions::new().with_revision(future)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    assert_refused(
        client
            .put(
                "err/missing",
                "",
                Some(PutOptions::new().with_ignore_value()),
            )
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_refused(
        client
            .put(
                "err/a",
                "9",
                Some(PutOptions::new().with_lease(0x1234_5678)),
            )
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // The same refusals inside a transaction leave the whole transaction undone.
    assert_refused(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("err/c", "new", None),
                TxnOp::put(
                    "err/a",
                    "9",
                    Some(PutOptions::new().with_lease(0x1234_5678)),
                ),
            ]))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(
        stored_state(&mut client).await,
        before,
        "after future revision, ignore_value and unknown lease"
    );

    // The refusals left the store writable, and the next write gets the next revision.
    let put = client.put("err/after", "ok", None).await.expect("put");
    assert_eq!(put.header().map(|h| h.revision()), Some(before.0 + 1));
}

#[tokio::test]
async fn refused_compare_leaves_the_txn_else_branch_and_no_revision() {
    let cluster = cluster_with_limits().await;
    let mut client = cluster.client().await.expect("client");
    client.put("err/k", "v1", None).await.expect("put");
    let before = stored_state(&mut client).await;

    // A transaction whose compare fails and whose else branch is empty is a read: no revision.
    let txn = Txn::new()
        .when([Compare::value("err/k", CompareOp::Equal, "other")])
        .and_then([TxnOp::put("err/k", "v2", None)]);
    let response = client.txn(txn).await.expect("txn");
    assert!(!response.succeeded());
    assert_eq!(response.header().map(|h| h.revision()), Some(before.0));
    assert_eq!(stored_state(&mut client).await, before);

    // The else branch runs, in one revision.
    let txn = Txn::new()
        .when([Compare::version("err/k", CompareOp::Greater, 5)])
        .and_then([TxnOp::put("err/k", "then", None)])
        .or_else([
            TxnOp::put("err/k", "else", None),
            TxnOp::put("err/k2", "else", None),
        ]);
    let response = client.txn(txn).await.expect("txn");
    assert!(!response.succeeded());
    let (revision, pairs) = stored_state(&mut client).await;
    assert_eq!(revision, before.0 + 1, "both puts share one revision");
    assert_eq!(pairs.get("err/k").map(String::as_str), Some("else"));
    assert_eq!(pairs.get("err/k2").map(String::as_str), Some("else"));
}

#[tokio::test]
async fn writes_through_any_member_are_read_linearizably_on_every_member() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let mut members = Vec::new();
    for i in 0..cluster.len() {
        members.push(cluster.member_client(i).await.expect("member client"));
    }

    // Writers in turn: the leader and both followers; after every write, every member must
    // already return it from a linearizable read, without waiting.
    for round in 0..20 {
        let writer = round % cluster.len();
        let key = format!("lin/{round:02}");
        let value = format!("written through member {writer} (leader {leader})");
        let put = members[writer]
            .put(key.clone(), value.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("put through {}: {e}", cluster.name(writer)));
        let revision = put.header().expect("header").revision();
        for (reader, client) in members.iter_mut().enumerate() {
            let got = client
                .get(key.clone(), None)
                .await
                .unwrap_or_else(|e| panic!("get from {}: {e}", cluster.name(reader)));
            assert_eq!(
                got.kvs().first().map(|kv| kv.value()),
                Some(value.as_bytes()),
                "{} does not see {key} right after it was written through {}",
                cluster.name(reader),
                cluster.name(writer)
            );
            assert!(
                got.header().expect("header").revision() >= revision,
                "{} answered at an older revision than the write",
                cluster.name(reader)
            );
        }
        // A delete through the next member is seen at once everywhere, too.
        let deleter = (writer + 1) % cluster.len();
        if round % 4 == 3 {
            members[deleter]
                .delete(key.clone(), None)
                .await
                .expect("delete");
            for client in &mut members {
                let got = client.get(key.clone(), None).await.expect("get");
                assert!(got.kvs().is_empty(), "{key} still visible after delete");
            }
        }
    }
    let mut client = cluster.client().await.expect("client");
    let view = read_prefix(&mut client, "lin/").await.expect("read back");
    assert_eq!(view.pairs.len(), 15, "20 puts minus 5 deletes");
}
