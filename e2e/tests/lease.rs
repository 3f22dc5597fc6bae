//! The Lease service: etcdctl's `lease grant`, `keep-alive`, `timetolive --keys`, `list` and
//! `revoke` printed exactly as against etcd; an expired lease deletes every key attached to it in
//! one revision; and a lease kept alive through a follower survives the SIGKILL of the leader.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use ferrokv_e2e::cluster::ELECTION_TIMEOUT;
use ferrokv_e2e::TestCluster;

async fn revision(client: &mut Client) -> i64 {
    client
        .get("lease-test/revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// The lease ID in etcdctl's "lease <16 hex digits> granted with TTL(<ttl>s)".
fn granted_lease_id(stdout: &str, ttl: i64) -> String {
    let id = stdout
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(&format!(" granted with TTL({ttl}s)\n")))
        .unwrap_or_else(|| panic!("unexpected lease grant output {stdout:?}"));
    assert_eq!(id.len(), 16, "etcdctl prints lease IDs as 16 hex digits");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    id.to_string()
}

/// The remaining TTL in etcdctl's "lease <id> granted with TTL(<ttl>s), remaining(<n>s)...".
fn remaining_ttl(line: &str, id: &str, ttl: i64) -> (i64, String) {
    let rest = line
        .strip_prefix(&format!("lease {id} granted with TTL({ttl}s), remaining("))
        .unwrap_or_else(|| panic!("unexpected timetolive output {line:?}"));
    let (remaining, tail) = rest.split_once("s)").expect("remaining(...s)");
    (
        remaining.parse().expect("remaining seconds"),
        tail.to_string(),
    )
}

#[tokio::test]
async fn etcdctl_lease_commands_print_as_etcd() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    assert_eq!(
        cluster.etcdctl(&["lease", "list"]).await.expect_stdout(),
        "found 0 leases\n"
    );

    let id = granted_lease_id(
        cluster
            .etcdctl(&["lease", "grant", "60"])
            .await
            .expect_stdout(),
        60,
    );
    for (key, value) in [("lk/a", "1"), ("lk/b", "2")] {
        let output = cluster
            .etcdctl(&["put", &format!("--lease={id}"), key, value])
            .await;
        assert_eq!(output.expect_stdout(), "OK\n");
    }

    let output = cluster.etcdctl(&["lease", "timetolive", &id]).await;
    let (remaining, tail) = remaining_ttl(output.expect_stdout(), &id, 60);
    assert!((50..=60).contains(&remaining), "remaining {remaining}");
    assert_eq!(tail, "\n");
    let output = cluster
        .etcdctl(&["lease", "timetolive", "--keys", &id])
        .await;
    let (_, tail) = remaining_ttl(output.expect_stdout(), &id, 60);
    assert_eq!(tail, ", attached keys([lk/a lk/b])\n");

    assert_eq!(
        cluster.etcdctl(&["lease", "list"]).await.expect_stdout(),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        cluster
            .etcdctl(&["lease", "keep-alive", "--once", &id])
            .await
            .expect_stdout(),
        format!("lease {id} keepalived with TTL(60)\n")
    );

    // A short lease kept alive by a running `etcdctl lease keep-alive` outlives its TTL.
    let short = granted_lease_id(
        cluster
            .etcdctl(&["lease", "grant", "3"])
            .await
            .expect_stdout(),
        3,
    );
    let output = cluster
        .etcdctl(&["put", &format!("--lease={short}"), "lk/short", "s"])
        .await;
    assert_eq!(output.expect_stdout(), "OK\n");
    let mut keeper = cluster.etcdctl_process(&["lease", "keep-alive", &short]);
    let renewals = keeper
        .lines(6, Duration::from_secs(20))
        .await
        .expect("keep-alive output");
    assert!(
        renewals
            .iter()
            .all(|line| *line == format!("lease {short} keepalived with TTL(3)")),
        "{renewals:?}"
    );
    assert_eq!(
        cluster.etcdctl(&["get", "lk/short"]).await.expect_stdout(),
        "lk/short\ns\n",
        "a lease kept alive keeps its key"
    );

    // Still kept alive, so the short lease cannot expire in the middle of what follows.
    let mut client = cluster.client().await.expect("client");
    let before = revision(&mut client).await;
    assert_eq!(
        cluster
            .etcdctl(&["lease", "revoke", &id])
            .await
            .expect_stdout(),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        revision(&mut client).await,
        before + 1,
        "revoking deletes both keys in one revision"
    );
    assert_eq!(
        cluster
            .etcdctl(&["get", "--prefix", "lk/"])
            .await
            .expect_stdout(),
        "lk/short\ns\n"
    );
    assert_eq!(
        cluster
            .etcdctl(&["lease", "timetolive", &id])
            .await
            .expect_stdout(),
        format!("lease {id} already expired\n")
    );
    // Revoking again: the lease is gone.
    let output = cluster.etcdctl(&["lease", "revoke", &id]).await;
    assert!(
        output
            .expect_failure()
            .contains("etcdserver: requested lease not found"),
        "{}",
        output.stderr
    );

    // The short lease, no longer kept alive, expires with its key.
    drop(keeper);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster
        .etcdctl(&["get", "lk/short"])
        .await
        .expect_stdout()
        .contains("lk/short")
    {
        assert!(Instant::now() < deadline, "lk/short outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.etcdctl(&["lease", "list"]).await.expect_stdout(),
        "found 0 leases\n"
    );
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_in_one_revision_on_every_member() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    let lease = client.lease_grant(2, None).await.expect("grant");
    assert_eq!(lease.ttl(), 2);
    for n in 0..3 {
        client
            .put(
                format!("expiring/{n}"),
                "v",
                Some(PutOptions::new().with_lease(lease.id())),
            )
            .await
            .expect("put with lease");
    }
    client
        .put("expiring/unleased", "stays", None)
        .await
        .expect("put");
    let attached_until = revision(&mut client).await;
    let mut stream = client
        .watch(
            "expiring/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(attached_until + 1),
            ),
        )
        .await
        .expect("watch");

    let mut deletes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while deletes.len() < 3 {
            let response = stream.message().await.expect("watch").expect("open");
            for event in response.events() {
                let kv = event.kv().expect("kv");
                assert_eq!(event.event_type(), EventType::Delete, "{kv:?}");
                deletes.push((
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                ));
            }
        }
    })
    .await
    .expect("the lease expires and its keys are deleted");
    assert_eq!(
        deletes,
        [
            (attached_until + 1, "expiring/0".to_string()),
            (attached_until + 1, "expiring/1".to_string()),
            (attached_until + 1, "expiring/2".to_string()),
        ],
        "all attached keys deleted in the one revision after the last write"
    );

    for i in 0..cluster.len() {
        let mut member = cluster.member_client(i).await.expect("member client");
        let left = member
            .get("expiring/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get");
        let keys: Vec<&[u8]> = left.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(
            keys,
            [b"expiring/unleased".as_slice()],
            "{}",
            cluster.name(i)
        );
        let ttl = member
            .lease_time_to_live(lease.id(), None)
            .await
            .expect("timetolive");
        assert_eq!(ttl.ttl(), -1, "{} still knows the lease", cluster.name(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_kept_alive_through_a_follower_survives_leader_sigkill() {
    const TTL: i64 = 6;
    // The new leader gives every lease a whole TTL when it takes office, so renewals may pause
    // for the election and then a TTL. An election after a SIGKILL takes up to 2 election
    // timeouts per round, a split vote makes a second round, and one more election timeout is
    // slack, as storage_failures allows a failover.
    const RENEWAL_GAP_LIMIT: Duration =
        Duration::from_secs(TTL as u64).saturating_add(ELECTION_TIMEOUT.saturating_mul(5));
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let follower = (leader + 1) % cluster.len();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let follower_endpoint = cluster.endpoint(follower);
    let connect = || async {
        Client::connect([follower_endpoint.clone()], Some(options.clone()))
            .await
            .expect("connect to the follower")
    };
    let mut client = connect().await;
    let lease = client.lease_grant(TTL, None).await.expect("grant").id();
    client
        .put(
            "kept/key",
            "alive",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");

    // Renew once a second through the follower, reconnecting when a renewal fails, for three
    // TTLs; the leader dies after the first second.
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.expect("keep-alive");
    let started = Instant::now();
    let mut killed = false;
    let mut last_renewal = Instant::now();
    let mut renewals_after_kill = 0;
    while started.elapsed() < Duration::from_secs(3 * TTL as u64) {
        if !killed && started.elapsed() > Duration::from_secs(1) {
            cluster.kill(leader).expect("SIGKILL the leader");
            killed = true;
        }
        let renewed = tokio::time::timeout(Duration::from_secs(2), async {
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(response))) => {
                assert_eq!(response.id(), lease);
                assert!(
                    response.ttl() > 0,
                    "keep-alive answered TTL {} after the leader change: the lease was lost",
                    response.ttl()
                );
                last_renewal = Instant::now();
                if killed {
                    renewals_after_kill += 1;
                }
            }
            _ => {
                assert!(
                    last_renewal.elapsed() < RENEWAL_GAP_LIMIT,
                    "no successful renewal for {RENEWAL_GAP_LIMIT:?}"
                );
                client = connect().await;
                match client.lease_keep_alive(lease).await {
                    Ok(stream) => (keeper, responses) = stream,
                    Err(_) => continue,
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        renewals_after_kill >= TTL,
        "only {renewals_after_kill} renewals after the kill"
    );

    let got = client.get("kept/key", None).await.expect("get");
    assert_eq!(
        got.kvs().first().map(|kv| kv.value()),
        Some(b"alive".as_slice()),
        "the key of a lease kept alive is still there"
    );
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("timetolive");
    assert!(ttl.ttl() > 0, "remaining TTL {}", ttl.ttl());
    assert_eq!(ttl.granted_ttl(), TTL);
    assert_eq!(ttl.keys(), [b"kept/key".to_vec()]);

    // Left alone, the lease now expires under the new leader.
    drop((keeper, responses));
    let deadline = Instant::now() + Duration::from_secs(TTL as u64 + 15);
    loop {
        let got = client.get("kept/key", None).await.expect("get");
        if got.kvs().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader never expired the lease"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
