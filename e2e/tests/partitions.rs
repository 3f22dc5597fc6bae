//! Network partitions between members on separate hosts (network namespaces, nftables rules).
//!
//! For every way of splitting a 3- and a 5-member cluster — the leader alone, a follower alone,
//! and for 5 members 2/3 with the leader on either side — the majority keeps serving writes and
//! linearizable reads (electing a new leader if it lost the old one); the minority refuses writes
//! and linearizable reads with an error from the server, while serializable reads answer from its
//! stale copy; after healing the minority catches up, no acknowledged write is lost, and the
//! members that return do not depose the majority's leader. A 4-member cluster split 2/2
//! accepts writes on neither side.
//!
//! Each test prints how long the cluster took to react (`cargo test -- --nocapture` shows it);
//! docs/partitions.md records a run. Members run with `--heartbeat-interval 100
//! --election-timeout 1000`, etcd's defaults.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use ferrokv_e2e::keyspace::read_prefix;
use ferrokv_e2e::HostCluster;

const PREFIX: &str = "partition/";
/// Client-side deadline for requests that should be refused: long enough that the refusal
/// always comes from the server, never from the client giving up.
const PATIENT: Duration = Duration::from_secs(30);
/// The minority must refuse within this long: etcd's request timeout with these settings is
/// 5 s + 2 election timeouts = 7 s; the rest is slack for a loaded machine.
const REFUSAL_BOUND: Duration = Duration::from_secs(12);
/// How long the majority may take to serve writes again after losing its leader.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// How long the leader must stay in office after the partition heals.
const STABILITY_WINDOW: Duration = Duration::from_secs(5);
/// Writes the majority makes while the partition lasts.
const MAJORITY_WRITES: usize = 20;

/// Where the leader is when the network splits.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// The minority is the leader and `minority - 1` followers.
    LeaderInMinority { minority: usize },
    /// The minority is `minority` followers.
    LeaderInMajority { minority: usize },
}

impl Split {
    /// (minority, majority) member indices, given the leader.
    fn sides(self, members: usize, leader: usize) -> (Vec<usize>, Vec<usize>) {
        let followers: Vec<usize> = (0..members).filter(|&i| i != leader).collect();
        let mut minority = match self {
            Split::LeaderInMinority { minority } => {
                let mut side = vec![leader];
                side.extend(&followers[..minority - 1]);
                side
            }
            Split::LeaderInMajority { minority } => followers[..minority].to_vec(),
        };
        minority.sort_unstable();
        let majority = (0..members).filter(|i| !minority.contains(i)).collect();
        (minority, majority)
    }
}

/// How a refused request ended.
#[derive(Debug)]
struct Refusal {
    after: Duration,
    error: String,
}

/// Sends `request` and expects the server to refuse it (not the client to time out).
async fn expect_refusal<T: std::fmt::Debug>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Refusal {
    let started = Instant::now();
    let outcome = request.await;
    let after = started.elapsed();
    match outcome {
        Ok(answer) => panic!("{what} succeeded on the minority after {after:?}: {answer:?}"),
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert!(
                after < REFUSAL_BOUND,
                "{what} on the minority was refused only after {after:?}: {status:?}"
            );
            // The gRPC code by name: tonic is no direct dependency of these tests.
            let code = format!("{:?}", status.code());
            assert!(
                ["Unavailable", "DeadlineExceeded", "Unknown"].contains(&code.as_str())
                    && !status.message().contains("Timeout expired"),
                "{what} on the minority ended with {status:?}, not a refusal from the server"
            );
            Refusal {
                after,
                error: format!("{code}: {}", status.message()),
            }
        }
        Err(error) => panic!("{what} on the minority failed on the client side: {error:?}"),
    }
}

/// Writes through `member` until one write succeeds; how long that took. Each attempt gives up
/// after a second, so a write stuck on the lost leader does not hide the new one.
async fn first_write(cluster: &HostCluster, member: usize, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut client) = cluster.member_client(member, Duration::from_secs(1)).await {
            if client.put(key, "first", None).await.is_ok() {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "the majority accepted no write through {} for {RECOVERY_BOUND:?}",
            cluster.name(member)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A serializable Get of `key` on member `i`: its local, possibly stale, copy.
async fn local_value(client: &mut Client, key: &str) -> Option<String> {
    let response = client
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable read");
    response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Watches the majority's view of the leader for [`STABILITY_WINDOW`] after healing: its members
/// must keep naming `leader`, and at the end every member must. Returns the highest term the
/// majority reported, or how the leader was deposed.
async fn leader_stays(
    cluster: &HostCluster,
    leader: usize,
    majority: &[usize],
) -> Result<u64, String> {
    let leader_status = cluster.status(leader).await.expect("leader status");
    let (leader_id, term) = (leader_status.member_id, leader_status.raft_term);
    let mut highest_term = term;
    let started = Instant::now();
    while started.elapsed() < STABILITY_WINDOW {
        for &i in majority {
            if let Ok(status) = cluster.status(i).await {
                if status.leader != leader_id {
                    return Err(format!(
                        "{:?} after healing, {} names leader {:x} (term {}) instead of {} \
                         ({leader_id:x}, term {term}): a returning member deposed the leader",
                        started.elapsed(),
                        cluster.name(i),
                        status.leader,
                        status.raft_term,
                        cluster.name(leader)
                    ));
                }
                highest_term = highest_term.max(status.raft_term);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<usize> = (0..cluster.len()).collect();
    let agreed = cluster
        .leader_among(&all, Duration::from_secs(10))
        .await
        .map_err(|e| format!("no agreed leader after healing: {e:#}"))?;
    if agreed != leader {
        return Err(format!(
            "after healing every member names {}, not {}",
            cluster.name(agreed),
            cluster.name(leader)
        ));
    }
    Ok(highest_term)
}

async fn split_and_heal(members: usize, split: Split) {
    let label = format!("{members} members, {split:?}");
    let mut cluster = HostCluster::builder(members)
        .timing(100, 1000)
        .start()
        .await
        .expect("start the cluster");
    let old_leader = cluster.leader().await.expect("leader");
    let (minority, majority) = split.sides(members, old_leader);
    let mut client = cluster
        .member_client(old_leader, Duration::from_secs(5))
        .await
        .expect("client");
    let before_key = format!("{PREFIX}before");
    client
        .put(before_key.as_str(), "before", None)
        .await
        .expect("write before the partition");
    // Every member holds the write before the partition, so stale reads have something to show.
    for i in 0..members {
        let mut member = cluster
            .member_client(i, Duration::from_secs(5))
            .await
            .unwrap();
        member.get(before_key.as_str(), None).await.expect("read");
    }

    let groups: [&[usize]; 2] = [&minority, &majority];
    cluster.partition(&groups).expect("partition");
    let cut = Instant::now();

    let majority_side = async {
        let writer = majority[0];
        let new_leader = cluster
            .leader_among(&majority, RECOVERY_BOUND)
            .await
            .expect("the majority agrees on a leader");
        let elected = cut.elapsed();
        let first = first_write(&cluster, writer, &format!("{PREFIX}first")).await + elected;
        let mut client = cluster
            .member_client(writer, Duration::from_secs(5))
            .await
            .unwrap();
        let mut acknowledged = vec![(format!("{PREFIX}first"), "first".to_string())];
        for n in 0..MAJORITY_WRITES {
            let (key, value) = (format!("{PREFIX}majority/{n:03}"), format!("value {n}"));
            client
                .put(key.as_str(), value.as_str(), None)
                .await
                .unwrap_or_else(|e| panic!("majority write {n}: {e}"));
            acknowledged.push((key, value));
        }
        let last = acknowledged.last().cloned().unwrap();
        for &i in &majority {
            let mut member = cluster
                .member_client(i, Duration::from_secs(5))
                .await
                .unwrap();
            let got = member
                .get(last.0.as_str(), None)
                .await
                .unwrap_or_else(|e| panic!("linearizable read on {}: {e}", cluster.name(i)));
            assert_eq!(
                got.kvs().first().map(|kv| kv.value()),
                Some(last.1.as_bytes()),
                "linearizable read on {} misses the majority's last write",
                cluster.name(i)
            );
        }
        (first, elected, new_leader, acknowledged)
    };

    let probe = minority[0];
    let minority_side = async {
        let mut writer = cluster.member_client(probe, PATIENT).await.unwrap();
        let mut reader = cluster.member_client(probe, PATIENT).await.unwrap();
        let key = format!("{PREFIX}minority");
        let (write, read) = tokio::join!(
            expect_refusal("a write", writer.put(key.as_str(), "minority", None)),
            expect_refusal("a linearizable read", reader.get(before_key.as_str(), None)),
        );
        // etcdctl on the minority's own host, as an operator there would type it.
        let etcdctl = cluster
            .etcdctl_on(
                probe,
                probe,
                &["get", "--consistency=s", "--print-value-only", &before_key],
            )
            .await;
        assert_eq!(etcdctl.expect_stdout(), "before\n");
        // Its status says why, as etcd's does (the last column of `endpoint status`).
        let status = cluster
            .etcdctl_on(probe, probe, &["endpoint", "status"])
            .await;
        assert!(
            status.expect_stdout().contains("etcdserver: no leader"),
            "{label}: status of a member without a leader: {}",
            status.stdout
        );
        (write, read)
    };

    let ((first, elected, new_leader, acknowledged), (write, read)) =
        tokio::join!(majority_side, minority_side);
    assert!(
        majority.contains(&new_leader),
        "{label}: the leader {} is not on the majority side",
        cluster.name(new_leader)
    );
    // Serializable reads on the minority answer, from data that may be stale.
    let mut stale = Vec::new();
    for &i in &minority {
        let mut member = cluster
            .member_client(i, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            local_value(&mut member, &before_key).await.as_deref(),
            Some("before")
        );
        stale.push(
            local_value(&mut member, &acknowledged.last().unwrap().0)
                .await
                .is_none(),
        );
    }
    let mut minority_terms = Vec::new();
    for &i in &minority {
        minority_terms.push(cluster.status(i).await.map(|s| s.raft_term).ok());
    }
    let majority_term = cluster.status(new_leader).await.map(|s| s.raft_term).ok();
    // The leader as the majority has it now: on a loaded machine it may have changed within the
    // majority since the split (a slow member stalls the leader's quorum check); what must hold
    // is that the returning members do not depose it.
    let leader_at_heal = cluster
        .leader_among(&majority, RECOVERY_BOUND)
        .await
        .expect("the majority has a leader at healing time");

    cluster.heal().expect("heal");
    let healed = Instant::now();
    let last_key = &acknowledged.last().unwrap().0;
    let catch_up = async {
        for &i in &minority {
            let mut member = cluster
                .member_client(i, Duration::from_secs(5))
                .await
                .unwrap();
            while local_value(&mut member, last_key).await.is_none() {
                assert!(
                    healed.elapsed() < RECOVERY_BOUND,
                    "{label}: {} has not caught up {RECOVERY_BOUND:?} after healing",
                    cluster.name(i)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        healed.elapsed()
    };
    let (caught_up, leadership) =
        tokio::join!(catch_up, leader_stays(&cluster, leader_at_heal, &majority));

    eprintln!(
        "{label}: minority {:?} majority {:?}; old leader {}, new leader {}; \
         majority agreed on a leader after {elected:?}, first write accepted after {first:?}; \
         minority refused a write after {:?} ({}), a linearizable read after {:?} ({}); \
         serializable reads on the minority stale: {stale:?}; terms at heal: minority \
         {minority_terms:?}, majority {majority_term:?} (leader {}), majority after healing \
         {leadership:?}; minority caught up {caught_up:?} after healing",
        names(&cluster, &minority),
        names(&cluster, &majority),
        cluster.name(old_leader),
        cluster.name(new_leader),
        write.after,
        write.error,
        read.after,
        read.error,
        cluster.name(leader_at_heal),
    );
    if let Err(deposed) = leadership {
        panic!("{label}: {deposed}");
    }

    for i in 0..members {
        let mut member = cluster
            .member_client(i, Duration::from_secs(5))
            .await
            .unwrap();
        let view = read_prefix(&mut member, PREFIX)
            .await
            .unwrap_or_else(|e| panic!("{label}: reading {}: {e:#}", cluster.name(i)));
        for (key, value) in &acknowledged {
            assert_eq!(
                view.pairs.get(key),
                Some(value),
                "{label}: {} lost the acknowledged write {key}",
                cluster.name(i)
            );
        }
    }
}

fn names(cluster: &HostCluster, members: &[usize]) -> Vec<String> {
    members
        .iter()
        .map(|&i| cluster.name(i).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_leader_cut_off_alone() {
    split_and_heal(3, Split::LeaderInMinority { minority: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_follower_cut_off_alone_does_not_depose_the_leader() {
    split_and_heal(3, Split::LeaderInMajority { minority: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_leader_cut_off_alone() {
    split_and_heal(5, Split::LeaderInMinority { minority: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_follower_cut_off_alone_does_not_depose_the_leader() {
    split_and_heal(5, Split::LeaderInMajority { minority: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_split_two_three_with_the_leader_in_the_two() {
    split_and_heal(5, Split::LeaderInMinority { minority: 2 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_split_two_three_with_the_leader_in_the_three() {
    split_and_heal(5, Split::LeaderInMajority { minority: 2 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_split_two_two_accept_writes_on_neither_side() {
    let mut cluster = HostCluster::builder(4)
        .timing(100, 1000)
        .start()
        .await
        .expect("start the cluster");
    let leader = cluster.leader().await.expect("leader");
    let with_leader: Vec<usize> = std::iter::once(leader)
        .chain((0..4).filter(|&i| i != leader).take(1))
        .collect();
    let without: Vec<usize> = (0..4).filter(|i| !with_leader.contains(i)).collect();
    let groups: [&[usize]; 2] = [&with_leader, &without];
    cluster.partition(&groups).expect("partition");

    let mut a = cluster
        .member_client(with_leader[0], PATIENT)
        .await
        .unwrap();
    let mut b = cluster
        .member_client(with_leader[1], PATIENT)
        .await
        .unwrap();
    let mut c = cluster.member_client(without[0], PATIENT).await.unwrap();
    let mut d = cluster.member_client(without[1], PATIENT).await.unwrap();
    let refusals = tokio::join!(
        expect_refusal("a write to the old leader", a.put("split/a", "a", None)),
        expect_refusal(
            "a write to the old leader's follower",
            b.put("split/b", "b", None)
        ),
        expect_refusal(
            "a write to the leaderless half",
            c.put("split/c", "c", None)
        ),
        expect_refusal(
            "a linearizable read in the leaderless half",
            d.get("split/d", None)
        ),
    );
    eprintln!(
        "4 members split 2/2 ({:?} | {:?}): refusals {refusals:?}",
        names(&cluster, &with_leader),
        names(&cluster, &without)
    );

    cluster.heal().expect("heal");
    cluster.wait_healthy().await.expect("healthy after healing");
    let mut client = cluster
        .member_client(without[0], Duration::from_secs(5))
        .await
        .unwrap();
    client
        .put("split/healed", "yes", None)
        .await
        .expect("a write after healing");
}
