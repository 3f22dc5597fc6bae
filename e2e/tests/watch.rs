//! The Watch service: etcdctl's `watch` (prefix, `--rev` history, `--prev-kv`) printed exactly as
//! against etcd, and with the `etcd-client` crate every event delivered once, in revision order —
//! across many concurrent writes, from history, and across the SIGKILL of the member a watcher is
//! connected to, resuming elsewhere from the last revision seen + 1. A watch from a compacted
//! revision is canceled with the compaction revision, so the client knows what it missed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, KvClient, Txn, TxnOp, WatchOptions, WatchStream,
};
use ferrokv_e2e::TestCluster;

/// How long a watcher waits for the events it expects.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

async fn put(cluster: &TestCluster, key: &str, value: &str) {
    let output = cluster.etcdctl(&["put", key, value]).await;
    assert_eq!(output.expect_stdout(), "OK\n");
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("watch-test/revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// A connection for watching: a connect timeout only, since a watch stream is open-ended.
async fn watch_connection(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    Client::connect([endpoint], Some(options)).await
}

/// One event as a watcher saw it: (mod revision, type, key, value).
type SeenEvent = (i64, EventType, String, String);

/// Reads from `stream` until `until` returns true for the events seen so far; fails on a
/// cancellation, an error or a stall.
async fn collect_events(
    stream: &mut WatchStream,
    mut until: impl FnMut(&[SeenEvent]) -> bool,
) -> Vec<SeenEvent> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !until(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let response = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no further events after {} events", seen.len()))
            .expect("watch stream error")
            .expect("watch stream ended");
        assert!(
            !response.canceled(),
            "watch canceled: {:?}",
            response.cancel_reason()
        );
        for event in response.events() {
            let kv = event.kv().expect("event kv");
            seen.push((
                kv.mod_revision(),
                event.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
    }
    seen
}

#[tokio::test]
async fn etcdctl_watch_prints_prefix_history_and_prev_kv() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    put(&cluster, "foo", "1").await; // revision 2
    put(&cluster, "foo", "2").await; // 3
    put(&cluster, "bar", "b").await; // 4
    assert_eq!(
        cluster.etcdctl(&["del", "foo"]).await.expect_stdout(),
        "1\n"
    ); // 5
    put(&cluster, "foo/child", "c").await; // 6

    let timeout = Duration::from_secs(10);
    // History of one key from revision 2: both puts, then the delete (a key with no value).
    let mut watch = cluster.etcdctl_process(&["watch", "foo", "--rev=2"]);
    assert_eq!(
        watch.lines(9, timeout).await.expect("history of foo"),
        ["PUT", "foo", "1", "PUT", "foo", "2", "DELETE", "foo", ""]
    );
    drop(watch);

    // A prefix from revision 3: foo's second put and delete and the child, not bar.
    let mut watch = cluster.etcdctl_process(&["watch", "--prefix", "foo", "--rev=3"]);
    assert_eq!(
        watch
            .lines(9, timeout)
            .await
            .expect("history of prefix foo"),
        [
            "PUT",
            "foo",
            "2",
            "DELETE",
            "foo",
            "",
            "PUT",
            "foo/child",
            "c"
        ]
    );
    // The same watch goes on with live events.
    put(&cluster, "bar", "not watched").await; // 7
    put(&cluster, "foo/live", "l").await; // 8
    assert_eq!(
        watch.lines(3, timeout).await.expect("live event"),
        ["PUT", "foo/live", "l"]
    );
    drop(watch);

    // --prev-kv prints the previous pair before the new one.
    let mut watch = cluster.etcdctl_process(&["watch", "foo", "--prev-kv", "--rev=3"]);
    assert_eq!(
        watch
            .lines(10, timeout)
            .await
            .expect("history with prev kv"),
        ["PUT", "foo", "1", "foo", "2", "DELETE", "foo", "2", "foo", ""]
    );
    drop(watch);

    // JSON output carries the revisions.
    let mut watch = cluster.etcdctl_process(&["watch", "foo/child", "--rev=1", "-w=json"]);
    let line = watch.lines(1, timeout).await.expect("json event").remove(0);
    let json: serde_json::Value = serde_json::from_str(&line).expect("json");
    let event = &json["Events"][0];
    assert_eq!(event["kv"]["key"], "Zm9vL2NoaWxk", "base64 of foo/child");
    assert_eq!(event["kv"]["create_revision"], 6);
    assert_eq!(event["kv"]["mod_revision"], 6);
    assert_eq!(event["kv"]["version"], 1);
}

#[tokio::test]
async fn watch_delivers_every_event_once_in_revision_order() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    let start = current_revision(&mut client).await + 1;
    let mut watcher = watch_connection(&cluster.endpoint(1))
        .await
        .expect("connect watcher");
    let mut live = watcher
        .watch(
            "many/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .expect("watch");

    // Four writers, each through its own member, mixing puts, deletes and two-key transactions.
    const WRITERS: usize = 4;
    const ROUNDS: usize = 60;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut kv: KvClient = cluster
            .member_client(writer % cluster.len())
            .await
            .expect("member client")
            .kv_client();
        tasks.push(tokio::spawn(async move {
            // (revision, type, key, value) of every event this writer caused.
            let mut caused: Vec<SeenEvent> = Vec::new();
            for round in 0..ROUNDS {
                let key = format!("many/{writer}/{:03}", round % 20);
                let value = format!("{writer}.{round}");
                match round % 6 {
                    5 => {
                        let response = kv.delete(key.clone(), None).await.expect("delete");
                        if response.deleted() == 1 {
                            let revision = response.header().expect("header").revision();
                            caused.push((revision, EventType::Delete, key, String::new()));
                        }
                    }
                    4 => {
                        let other = format!("many/{writer}/txn{round:03}");
                        let response = kv
                            .txn(Txn::new().and_then([
                                TxnOp::put(key.clone(), value.clone(), None),
                                TxnOp::put(other.clone(), value.clone(), None),
                            ]))
                            .await
                            .expect("txn");
                        let revision = response.header().expect("header").revision();
                        caused.push((revision, EventType::Put, key, value.clone()));
                        caused.push((revision, EventType::Put, other, value));
                    }
                    _ => {
                        let response = kv.put(key.clone(), value.clone(), None).await.expect("put");
                        let revision = response.header().expect("header").revision();
                        caused.push((revision, EventType::Put, key, value));
                    }
                }
            }
            caused
        }));
    }
    let mut expected = Vec::new();
    for task in tasks {
        expected.extend(task.await.expect("writer"));
    }
    // Events of one revision (a transaction) come in the order of its operations, which is also
    // the order of keys here.
    expected.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    let last = expected.last().expect("events").0;

    let seen = collect_events(&mut live, |seen| seen.last().is_some_and(|e| e.0 >= last)).await;
    assert_eq!(seen.len(), expected.len(), "every event exactly once");
    assert_eq!(seen, expected, "events in revision order, as written");
    assert_eq!(seen.first().map(|e| e.0), Some(start));

    // A watch created afterwards from the same start revision replays the same history.
    let mut history = watcher
        .watch(
            "many/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .expect("history watch");
    let replayed = collect_events(&mut history, |seen| seen.len() >= expected.len()).await;
    assert_eq!(replayed, expected, "history replay equals the live events");
    // And nothing more arrives for either: no duplicates trailing behind.
    for stream in [&mut live, &mut history] {
        let extra = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        if let Ok(message) = extra {
            let response = message.expect("watch stream").expect("stream open");
            assert!(
                response.events().is_empty(),
                "unexpected events after the last write: {:?}",
                response.events()
            );
        }
    }
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_canceled_with_the_compact_revision() {
    let cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let mut client = cluster.client().await.expect("client");
    for n in 0..10 {
        client
            .put("compacted/key", format!("v{n}"), None)
            .await
            .expect("put");
    }
    let current = current_revision(&mut client).await;
    let compact_at = current - 3;
    client.compact(compact_at, None).await.expect("compact");

    let mut watcher = watch_connection(&cluster.endpoint(2))
        .await
        .expect("connect watcher");
    let mut stream = watcher
        .watch(
            "compacted/key",
            Some(WatchOptions::new().with_start_revision(compact_at - 2)),
        )
        .await
        .expect("watch");
    let response = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let response = stream
                .message()
                .await
                .expect("watch stream")
                .expect("stream open");
            // etcd may first confirm the creation, then cancel.
            if response.canceled() || !response.events().is_empty() {
                return response;
            }
        }
    })
    .await
    .expect("a cancellation");
    assert!(
        response.canceled(),
        "watch from a compacted revision delivered events: {:?}",
        response.events()
    );
    assert_eq!(response.compact_revision(), compact_at);
    assert!(response.events().is_empty());

    // From the compaction revision itself history is still there.
    let mut stream = watcher
        .watch(
            "compacted/key",
            Some(WatchOptions::new().with_start_revision(compact_at)),
        )
        .await
        .expect("watch");
    let seen = collect_events(&mut stream, |seen| seen.len() >= 4).await;
    let revisions: Vec<i64> = seen.iter().map(|e| e.0).collect();
    assert_eq!(revisions, (compact_at..=current).collect::<Vec<_>>());
    assert_eq!(seen.last().map(|e| e.3.as_str()), Some("v9"));
}

/// Puts `w/<writer>/<n>` through the members in turn, moving on when one fails, until stopped.
/// Returns acknowledged puts by revision, and every attempted (key, value).
async fn write_until_stopped(
    writer: usize,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    acknowledged_total: Arc<AtomicU64>,
) -> (BTreeMap<i64, (String, String)>, BTreeMap<String, String>) {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(3));
    let mut members = Vec::new();
    for endpoint in &endpoints {
        let client = Client::connect([endpoint], Some(options.clone()))
            .await
            .expect("connect");
        members.push(client.kv_client());
    }
    let mut acknowledged = BTreeMap::new();
    let mut attempted = BTreeMap::new();
    let mut target = writer % members.len();
    for n in 0..2000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, value) = (format!("w/{writer}/{n:05}"), format!("{writer}:{n}"));
        attempted.insert(key.clone(), value.clone());
        match members[target].put(key.clone(), value.clone(), None).await {
            Ok(response) => {
                let revision = response.header().expect("header").revision();
                acknowledged.insert(revision, (key, value));
                acknowledged_total.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                target = (target + 1) % members.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    (acknowledged, attempted)
}

/// Watches `w/` from `start` on member `first`, and whenever the stream breaks or falls silent
/// resumes on the next member from the revision after the last event seen — what a client
/// library does — until it has seen revision `until` (which is `i64::MAX` until the test knows
/// the final revision). Returns the events seen and how many times it resumed.
async fn watch_with_resume(
    endpoints: Vec<String>,
    first: usize,
    start: i64,
    until: Arc<AtomicI64>,
) -> (Vec<SeenEvent>, usize) {
    let mut seen: Vec<SeenEvent> = Vec::new();
    let mut resumes = 0;
    let mut member = first;
    let mut next = start;
    while next <= until.load(Ordering::Relaxed) {
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let stream = match watch_connection(&endpoints[member]).await {
            Ok(mut client) => client.watch("w/", Some(options)).await,
            Err(error) => Err(error),
        };
        if let Ok(mut stream) = stream {
            while next <= until.load(Ordering::Relaxed) {
                // Writes go on all the time, so a silent stream means a dead member.
                let message = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
                let Ok(Ok(Some(response))) = message else {
                    break;
                };
                assert!(
                    !response.canceled(),
                    "watch canceled: {}",
                    response.cancel_reason()
                );
                for event in response.events() {
                    let kv = event.kv().expect("kv");
                    seen.push((
                        kv.mod_revision(),
                        event.event_type(),
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    ));
                    next = kv.mod_revision() + 1;
                }
            }
        }
        if next <= until.load(Ordering::Relaxed) {
            member = (member + 1) % endpoints.len();
            resumes += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (seen, resumes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_on_another_member_after_leader_sigkill_without_gap_or_duplicate() {
    let mut cluster = TestCluster::start(3)
        .await
        .expect("start a 3-member cluster");
    let leader = cluster.leader().await.expect("leader");
    let mut client = cluster.client().await.expect("client");
    let start = current_revision(&mut client).await + 1;

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            tokio::spawn(write_until_stopped(
                writer,
                cluster.endpoints(),
                stop.clone(),
                acknowledged_total.clone(),
            ))
        })
        .collect();
    let until = Arc::new(AtomicI64::new(i64::MAX));
    let watcher = tokio::spawn(watch_with_resume(
        cluster.endpoints(),
        leader,
        start,
        until.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged_before_kill = acknowledged_total.load(Ordering::Relaxed);
    cluster.kill(leader).expect("SIGKILL the leader");
    // Writes resume once the others elect a leader (how soon is storage_failures' concern), and
    // go on for a while after that.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged_total.load(Ordering::Relaxed) < acknowledged_before_kill + 50 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume within 30 s after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acknowledged = BTreeMap::new();
    let mut attempted = BTreeMap::new();
    for writer in writers {
        let (acks, attempts) = writer.await.expect("writer");
        acknowledged.extend(acks);
        attempted.extend(attempts);
    }
    assert!(
        acknowledged_before_kill > 20,
        "only {acknowledged_before_kill} writes acknowledged before the kill"
    );

    // Writes have stopped; the survivors' revision is final.
    let survivor = (leader + 1) % cluster.len();
    let mut client = cluster.member_client(survivor).await.expect("client");
    let final_revision = current_revision(&mut client).await;
    until.store(final_revision, Ordering::Relaxed);
    let (seen, resumes) = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the watcher catches up with the final revision")
        .expect("watcher task");
    assert!(resumes >= 1, "the watcher never had to resume");

    // Every write had its own revision, so the events are exactly revisions start..=final.
    let revisions: Vec<i64> = seen.iter().map(|e| e.0).collect();
    assert_eq!(
        revisions,
        (start..=final_revision).collect::<Vec<_>>(),
        "events out of order, missing or doubled (after {resumes} resumes)"
    );
    for (revision, event_type, key, value) in &seen {
        assert_eq!(*event_type, EventType::Put);
        assert_eq!(
            attempted.get(key),
            Some(value),
            "event at {revision} is no write a client attempted"
        );
        if let Some(written) = acknowledged.get(revision) {
            assert_eq!(
                written,
                &(key.clone(), value.clone()),
                "event at {revision} differs from the write acknowledged at that revision"
            );
        }
    }
    assert!(
        acknowledged
            .keys()
            .all(|revision| revisions.binary_search(revision).is_ok()),
        "an acknowledged write has no event"
    );
}
