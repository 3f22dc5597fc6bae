//! Auto-compaction flags, as etcd takes them. `--auto-compaction-mode=periodic
//! --auto-compaction-retention=2s` compacts history older than two seconds on every member: an
//! old revision then reads as "required revision has been compacted", a watch from it is
//! canceled with the compaction revision, which keeps advancing while writes go on and is never
//! newer than the retention allows. Revision mode is only checked as far as accepting its flags: etcd looks at the
//! revision every five minutes, too slowly for a test. Bad values make the member exit with a
//! message naming the flag.
//!
//! etcd 3.4's `endpoint status` shows nothing about compaction (no compact revision field), so
//! the compaction is observed through reads and watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, WatchOptions};
use ferrokv_e2e::TestCluster;

/// The retention under test, and the flag that sets it.
const RETENTION: Duration = Duration::from_secs(2);
const RETENTION_FLAG: &str = "--auto-compaction-retention=2s";
/// Slack for what the retention check allows: a revision the server sampled at time `t` was
/// acknowledged to its writer no later than this after `t`.
const ACK_SLACK: Duration = Duration::from_secs(1);
/// How long the first compaction may take to show: etcd's first periodic compaction comes one
/// retention after start, then one every retention; a loaded machine adds some.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the background writer's puts.
const WRITE_PACING: Duration = Duration::from_millis(20);
/// Bounds the background writer.
const MAX_WRITES: usize = 5000;
/// How long a member with bad flags may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// Acknowledged revisions with the time each acknowledgement arrived.
type AckLog = Arc<Mutex<Vec<(Instant, i64)>>>;

/// Puts to one key every [`WRITE_PACING`] until stopped, logging each acknowledged revision.
async fn write_until_stopped(mut client: Client, stop: Arc<AtomicBool>, acks: AckLog) {
    for n in 0..MAX_WRITES {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let response = client
            .put("compaction/busy", format!("write {n}"), None)
            .await
            .expect("put");
        let revision = response.header().expect("header").revision();
        acks.lock().unwrap().push((Instant::now(), revision));
        tokio::time::sleep(WRITE_PACING).await;
    }
}

/// The compaction revision a watch from revision 1 is canceled with, or 0 when it is not
/// canceled (nothing compacted yet).
async fn compact_revision(endpoint: &str) -> i64 {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    let client = Client::connect([endpoint], Some(options))
        .await
        .expect("connect");
    let mut stream = client
        .watch_client()
        .watch(
            "compaction/",
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await
        .expect("watch");
    // The create response, then either the cancellation or (nothing compacted) history events.
    loop {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watch response within 10 s")
            .expect("watch stream")
            .expect("watch stream open");
        if response.canceled() {
            return response.compact_revision();
        }
        if !response.events().is_empty() {
            return 0;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_with_two_second_retention_compacts_old_revisions_on_every_member() {
    let cluster = TestCluster::builder(3)
        .flag("--auto-compaction-mode=periodic")
        .flag(RETENTION_FLAG)
        .start()
        .await
        .expect("start 3 members");
    let mut client = cluster.client().await.expect("client");
    let first = client
        .put("compaction/first", "old", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client
        .put("compaction/first", "new", None)
        .await
        .expect("put");
    let old_read = cluster
        .etcdctl(&["get", "compaction/first", "--rev", &first.to_string()])
        .await;
    assert_eq!(old_read.expect_stdout(), "compaction/first\nold\n");

    let stop = Arc::new(AtomicBool::new(false));
    let acks: AckLog = Arc::default();
    let writer = tokio::spawn(write_until_stopped(
        cluster.client().await.expect("client"),
        stop.clone(),
        acks.clone(),
    ));

    // Writes go on until the old revision is gone.
    let deadline = Instant::now() + COMPACTION_TIMEOUT;
    loop {
        let read = cluster
            .etcdctl(&["get", "compaction/first", "--rev", &first.to_string()])
            .await;
        if !read.success() {
            assert!(read.stderr.contains(COMPACTED), "{read:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revision {first} still readable {COMPACTION_TIMEOUT:?} after writes began"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every member applied the compaction, and none compacted history younger than the
    // retention: the compaction revision was current at least RETENTION before now, so it was
    // acknowledged at least RETENTION - ACK_SLACK before now.
    for i in 0..cluster.len() {
        let compacted = compact_revision(&cluster.endpoint(i)).await;
        let observed = Instant::now();
        assert!(
            compacted > first,
            "member {i}: compact revision {compacted}"
        );
        let newest_allowed = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at + RETENTION <= observed + ACK_SLACK)
            .map(|&(_, revision)| revision)
            .max()
            .unwrap_or(first + 1);
        assert!(
            compacted <= newest_allowed,
            "member {i} compacted to {compacted}, newer than revision {newest_allowed} acknowledged \
             {RETENTION:?} - {ACK_SLACK:?} ago"
        );
        let read = cluster
            .member_etcdctl(i, &["get", "compaction/first", "--rev", &first.to_string()])
            .await;
        assert!(read.expect_failure().contains(COMPACTED), "{read:?}");
    }

    // Periodic means again and again: while writes go on, the compaction revision advances.
    let first_compaction = compact_revision(&cluster.endpoint(0)).await;
    let deadline = Instant::now() + COMPACTION_TIMEOUT;
    while compact_revision(&cluster.endpoint(0)).await <= first_compaction {
        assert!(
            Instant::now() < deadline,
            "no compaction beyond revision {first_compaction} within {COMPACTION_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    // The present is untouched.
    assert_eq!(
        cluster
            .etcdctl(&["get", "compaction/first", "--print-value-only"])
            .await
            .expect_stdout(),
        "new\n"
    );
    let status = cluster.etcdctl(&["endpoint", "status"]).await;
    assert_eq!(status.expect_stdout().lines().count(), cluster.len());
}

#[tokio::test]
async fn revision_mode_flags_are_accepted_and_history_stays_until_the_five_minute_check() {
    let cluster = TestCluster::builder(1)
        .flag("--auto-compaction-mode=revision")
        .flag("--auto-compaction-retention=10")
        .start()
        .await
        .expect("start a member in revision mode");
    let mut client = cluster.client().await.expect("client");
    for n in 0..50 {
        client
            .put("compaction/rev", format!("value {n}"), None)
            .await
            .expect("put");
    }
    // Revision 2 is the first put, 50 revisions back: kept until the compactor's first check.
    let read = cluster
        .etcdctl(&["get", "compaction/rev", "--rev", "2", "--print-value-only"])
        .await;
    assert_eq!(read.expect_stdout(), "value 0\n");
}

/// Starts one member with `flags` and returns its log once it has exited, asserting it failed.
async fn log_of_refused_start(flags: &[&str]) -> String {
    let mut builder = TestCluster::builder(1);
    for flag in flags {
        builder = builder.flag(*flag);
    }
    let mut cluster = builder.spawn().expect("spawn");
    let status = cluster.wait_exit(0, EXIT_TIMEOUT).await.expect("exit");
    assert!(
        !status.success(),
        "started with {flags:?} and exited {status}"
    );
    std::fs::read_to_string(cluster.log_path(0)).expect("member log")
}

#[tokio::test]
async fn bad_auto_compaction_flags_make_the_member_exit_naming_the_flag() {
    let log = log_of_refused_start(&["--auto-compaction-mode", "daily"]).await;
    assert!(
        log.contains("auto-compaction-mode") && log.contains("daily"),
        "{log}"
    );

    let cluster_is_etcd = ferrokv_e2e::binaries::server_is_etcd();
    let log = log_of_refused_start(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=soon",
    ])
    .await;
    // etcd 3.4 names the setting rather than the flag: "error parsing CompactionRetention".
    let flag = if cluster_is_etcd {
        "CompactionRetention"
    } else {
        "--auto-compaction-retention"
    };
    assert!(log.contains(flag) && log.contains("soon"), "{log}");
}
