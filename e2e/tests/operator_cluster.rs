//! The operator's scenarios, end to end: the `ferrokv-operator` binary manages clusters whose
//! members are real `ferrokv` processes — on the hermetic Kubernetes (its API server,
//! StatefulSet controller, scheduler and kubelets, pods in network namespaces), or on a real
//! cluster when `E2E_KUBECONFIG` names one (`scripts/e2e-real-cluster`).
//!
//! Each test prints the times it measured (`--nocapture` shows them); docs/operator.md keeps
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions};
use serde_json::{json, Value};

use ferrokv_e2e::kube_env::{
    conditions_say, member_name, EnvOptions, Kind, KubeEnv, CLAIMS, CONFIG_MAPS,
    DISRUPTION_BUDGETS, EVENTS, KVCLUSTERS, PODS, SERVICES, STATEFUL_SETS,
};

/// From `kubectl apply` to Available, on a loaded 2-core machine.
const FORMING: Duration = Duration::from_secs(120);

/// One scaling step of the operator (learner added and promoted, or member removed) each.
const SCALING: Duration = Duration::from_secs(180);

async fn start(test: &str, options: EnvOptions) -> KubeEnv {
    KubeEnv::start(test, options)
        .await
        .expect("the test's cluster starts")
}

/// Applies the example with `edit`, waits for 3 available members; returns how long that took.
async fn apply_example(env: &KubeEnv, edit: impl FnOnce(&mut Value)) -> Duration {
    let applied = Instant::now();
    env.apply_example(edit).await.unwrap();
    env.wait_available(3, FORMING).await;
    applied.elapsed()
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn etcdctl_get(env: &KubeEnv, key: &str) -> String {
    let get = env
        .etcdctl(&["get", key, "--print-value-only"])
        .await
        .unwrap();
    assert_success("etcdctl get", &get);
    String::from_utf8_lossy(&get.stdout).trim().to_string()
}

/// The operator's events about the KVCluster, oldest first.
async fn cluster_events(env: &KubeEnv) -> Vec<Value> {
    let mut events: Vec<Value> = env
        .list(EVENTS)
        .await
        .into_iter()
        .filter(|e| {
            e["involvedObject"]["kind"] == "KVCluster" || e["regarding"]["kind"] == "KVCluster"
        })
        .collect();
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    });
    events
}

/// The reasons of the operator's events about the KVCluster, oldest first.
async fn event_reasons(env: &KubeEnv) -> Vec<String> {
    cluster_events(env)
        .await
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_kvcluster_becomes_available_and_serves_etcdctl_through_its_client_service() {
    let env = start("apply", EnvOptions::default()).await;
    let took = apply_example(&env, |_| {}).await;
    println!(
        "kubectl apply to Available with 3 members: {:.1}s",
        took.as_secs_f64()
    );

    assert_success(
        "etcdctl put",
        &env.etcdctl(&["put", "greeting", "hello"]).await.unwrap(),
    );
    assert_eq!(etcdctl_get(&env, "greeting").await, "hello");

    for ordinal in 0..3 {
        let pod = env.pod(ordinal).await.unwrap();
        let status = &pod["status"];
        assert_eq!(status["phase"], "Running", "{status}");
        assert_eq!(status["containerStatuses"][0]["ready"], true, "{status}");
        assert!(status["containerStatuses"][0]["state"]["running"].is_object());
    }
    let ids = env.member_ids().await;
    assert_eq!(
        ids.keys().cloned().collect::<Vec<_>>(),
        ["example-0", "example-1", "example-2"]
    );
    let status = env.kvcluster().await["status"].clone();
    assert!(
        status["leader"]
            .as_str()
            .is_some_and(|l| ids.contains_key(l)),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_even_replica_count_is_refused_with_the_reason() {
    let env = start("even", EnvOptions::default()).await;
    let refused = env
        .apply_example(|kvc| kvc["spec"]["replicas"] = json!(4))
        .await
        .expect_err("4 replicas are refused");
    let message = refused.to_string();
    assert!(
        message.contains("replicas must be odd (1, 3, 5, 7 or 9)"),
        "{message}"
    );
    assert!(env.names(STATEFUL_SETS).await.is_empty());
}

/// Puts `key-N` for N = 0, 1, ... through `endpoint` until `stop`; returns the keys the
/// cluster acknowledged and how many puts failed.
async fn write_until(endpoint: String, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut client = Client::connect([endpoint], Some(options)).await.unwrap();
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("key-{n:06}");
        match client.put(key.as_str(), "v", None).await {
            Ok(_) => acknowledged.push(key),
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (acknowledged, failed)
}

/// Every acknowledged key is stored.
async fn assert_none_lost(endpoint: String, acknowledged: &[String]) {
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let stored: BTreeSet<String> = client
        .get(
            "key-",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// `kubectl scale` to `replicas`; waits until Available with them and only their pods and
/// claims are left. Returns how long it took.
async fn scale(env: &KubeEnv, replicas: u32) -> Duration {
    let started = Instant::now();
    let scaled = env
        .kubectl_in_namespace(&["scale", "kvc/example", &format!("--replicas={replicas}")])
        .await
        .unwrap();
    assert_eq!(scaled.trim(), "kvcluster.ferrokv.io/example scaled");
    env.wait_available(replicas as usize, SCALING).await;
    let expected: Vec<String> = (0..replicas).map(member_name).collect();
    assert_eq!(
        env.member_ids().await.into_keys().collect::<Vec<_>>(),
        expected
    );
    // Sorted, as `names` lists them.
    let mut claims: Vec<String> = (0..replicas)
        .flat_map(|o| {
            [
                format!("data-{}", member_name(o)),
                format!("wal-{}", member_name(o)),
            ]
        })
        .collect();
    claims.sort();
    env.eventually(
        "removed members' pods and claims to go",
        SCALING,
        || async {
            let pods = env.names(PODS).await;
            let left = env.names(CLAIMS).await;
            (pods == expected && left == claims).then_some(())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_adds_and_removes_members_while_writes_continue() {
    let env = start("scale", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;

    // Member 0 stays throughout: scaling down removes the highest ordinals.
    let endpoint = env.member_endpoint(0).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(endpoint.clone(), stop.clone()));

    for (from, to) in [(3, 5), (5, 3), (3, 1), (1, 3)] {
        let took = scale(&env, to).await;
        println!("scaled {from} -> {to}: {:.1}s", took.as_secs_f64());
    }

    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failed) = writer.await.unwrap();
    println!(
        "{} writes acknowledged, {failed} failed",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 100, "{} writes", acknowledged.len());
    assert_none_lost(endpoint, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_member_pod_comes_back_with_its_claims_as_the_same_member() {
    let env = start("pod-deleted", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;
    assert_success("put", &env.etcdctl(&["put", "kept", "yes"]).await.unwrap());
    let ids = env.member_ids().await;
    let uid = env.pod(1).await.unwrap()["metadata"]["uid"].clone();

    // kubectl waits until the kubelet has stopped the process and removed the pod.
    env.kubectl_in_namespace(&["delete", "pod", "example-1"])
        .await
        .unwrap();
    env.eventually("example-1 to come back", FORMING, || async {
        let back = env
            .pod(1)
            .await
            .is_some_and(|pod| pod["metadata"]["uid"] != uid);
        (back && env.available_with(3).await).then_some(())
    })
    .await;
    assert_eq!(
        env.member_ids().await,
        ids,
        "the same members, from their own data"
    );
    assert_eq!(etcdctl_get(&env, "kept").await, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_on_a_failed_node_moves_to_another_node_as_the_same_member() {
    // Four nodes, two pods each: members spread over three, one is free.
    let options = EnvOptions {
        nodes: 4,
        pods_per_node: 2,
        ..EnvOptions::default()
    };
    let env = start("node-failure", options).await;
    const LOST_NODE_TIMEOUT: u64 = 5;
    apply_example(&env, |kvc| {
        kvc["spec"]["replacement"]["nodeLostTimeoutSeconds"] = json!(LOST_NODE_TIMEOUT)
    })
    .await;
    assert_success("put", &env.etcdctl(&["put", "kept", "yes"]).await.unwrap());
    let ids = env.member_ids().await;
    let mut nodes = BTreeSet::new();
    for ordinal in 0..3 {
        nodes.insert(env.node_of(ordinal).await.unwrap());
    }
    assert_eq!(nodes.len(), 3, "members prefer distinct nodes: {nodes:?}");

    // The leader's node fails: the hardest case, an election and a move at once.
    let leader = env.kvcluster().await["status"]["leader"]
        .as_str()
        .expect("a leader")
        .to_string();
    let ordinal: u32 = leader.rsplit('-').next().unwrap().parse().unwrap();
    let node = env.node_of(ordinal).await.unwrap();
    let reasons_before = event_reasons(&env).await.len();
    let failed = Instant::now();
    env.fail_node(&node).await.unwrap();

    let moved_to = env
        .eventually(
            "the member's pod to run on another node",
            SCALING,
            || async {
                let node_now = env.node_of(ordinal).await?;
                (node_now != node && env.available_with(3).await).then_some(node_now)
            },
        )
        .await;
    println!(
        "member {leader} on failed node {node} replaced on {moved_to} ({LOST_NODE_TIMEOUT}s policy): {:.1}s",
        failed.elapsed().as_secs_f64()
    );
    env.restore_node(&node).await.unwrap();

    assert_eq!(env.member_ids().await, ids, "same member IDs");
    let steps: Vec<String> = event_reasons(&env).await[reasons_before..].to_vec();
    assert!(
        steps.iter().any(|r| r == "PodMovedOffLostNode"),
        "{steps:?}"
    );
    assert!(
        !steps
            .iter()
            .any(|r| r == "MemberRemoved" || r == "MemberAdded"),
        "no membership change: {steps:?}"
    );
    assert_eq!(etcdctl_get(&env, "kept").await, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_whose_data_volume_is_lost_is_replaced_under_a_new_id() {
    let env = start("data-lost", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;
    assert_success("put", &env.etcdctl(&["put", "kept", "yes"]).await.unwrap());
    let before = env.member_ids().await;
    let lost = Instant::now();
    env.lose_data_volume(1).await.unwrap();

    let after = env
        .eventually("example-1 to be replaced", SCALING, || async {
            let ids = env.member_ids().await;
            let replaced = ids
                .get("example-1")
                .is_some_and(|id| Some(id) != before.get("example-1"));
            (replaced && env.available_with(3).await).then_some(ids)
        })
        .await;
    println!(
        "member with a lost data volume replaced: {:.1}s",
        lost.elapsed().as_secs_f64()
    );
    for name in ["example-0", "example-2"] {
        assert_eq!(after.get(name), before.get(name), "{name} kept its ID");
    }
    let reasons = event_reasons(&env).await;
    for step in [
        "MemberRemoved",
        "MemberAdded",
        "MemberDataDiscarded",
        "MemberPromoted",
    ] {
        assert!(reasons.iter().any(|r| r == step), "{step} in {reasons:?}");
    }
    assert_eq!(etcdctl_get(&env, "kept").await, "yes");
    // The replaced member has the data too: its own endpoint answers a serializable read.
    let endpoint = env.member_endpoint(1).await.unwrap();
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let got = client
        .get("kept", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_in_the_middle_of_scale_steps_converges_after_restart() {
    let env = start("operator-killed", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;

    // Up: killed once the learner is registered, before it is promoted.
    env.kubectl_in_namespace(&["scale", "kvc/example", "--replicas=5"])
        .await
        .unwrap();
    env.eventually("a learner", SCALING, || async {
        let status = env.kvcluster().await["status"].clone();
        let learner = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["learner"] == true);
        learner.then_some(())
    })
    .await;
    env.kill_operator().await.unwrap();
    let took = env.wait_available(5, SCALING).await;
    println!(
        "3 -> 5 converged {:.1}s after the operator was killed",
        took.as_secs_f64()
    );

    // Down: killed once a member has left, before its pod and claims are gone.
    env.kubectl_in_namespace(&["scale", "kvc/example", "--replicas=3"])
        .await
        .unwrap();
    env.eventually("a member removed", SCALING, || async {
        (env.member_ids().await.len() == 4).then_some(())
    })
    .await;
    env.kill_operator().await.unwrap();
    let took = scale(&env, 3).await;
    println!(
        "5 -> 3 converged {:.1}s after the operator was killed",
        took.as_secs_f64()
    );
}

/// Deletes the KVCluster and waits until it and every child of the kinds in `gone` are gone.
async fn delete_kvcluster(env: &KubeEnv, gone: &[Kind]) {
    env.kubectl_in_namespace(&["delete", "kvc/example"])
        .await
        .unwrap();
    for &kind in gone {
        env.eventually(kind.plural, SCALING, || async {
            let left: Vec<String> = env
                .names(kind)
                .await
                .into_iter()
                .filter(|n| n.contains("example"))
                .collect();
            left.is_empty().then_some(())
        })
        .await;
    }
    assert!(env.get(KVCLUSTERS, "example").await.is_none());
}

const CHILDREN: [Kind; 5] = [
    STATEFUL_SETS,
    SERVICES,
    CONFIG_MAPS,
    DISRUPTION_BUDGETS,
    PODS,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_kvcluster_removes_its_children_and_volumes() {
    let env = start("delete", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;
    assert_eq!(env.names(CLAIMS).await.len(), 6);
    let mut gone = CHILDREN.to_vec();
    gone.push(CLAIMS);
    delete_kvcluster(&env, &gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_kvcluster_that_retains_its_volumes_keeps_the_claims() {
    let env = start("retain", EnvOptions::default()).await;
    apply_example(&env, |kvc| {
        kvc["spec"]["volumeClaimRetentionPolicy"] = json!({"whenDeleted": "Retain"})
    })
    .await;
    let claims = env.names(CLAIMS).await;
    assert_eq!(claims.len(), 6);
    delete_kvcluster(&env, &CHILDREN).await;
    assert_eq!(env.names(CLAIMS).await, claims);
    assert!(event_reasons(&env)
        .await
        .iter()
        .any(|r| r == "VolumesRetained"));
}

/// Writes 24 MiB of values through `endpoint`, deletes them and compacts them away: free
/// space for a defragmentation to give back. Returns the revision compacted to.
async fn make_free_space(endpoint: String, prefix: &str) -> i64 {
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let value = vec![b'x'; 256 * 1024];
    for n in 0..96 {
        client
            .put(format!("{prefix}{n:03}"), value.clone(), None)
            .await
            .unwrap();
    }
    let deleted = client
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = deleted.header().unwrap().revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    revision
}

/// The members named by the operator's defragmentation Events, oldest first.
async fn defragmented_members(env: &KubeEnv) -> Vec<(String, bool)> {
    cluster_events(env)
        .await
        .iter()
        .filter(|e| e["reason"] == "MemberDefragmented")
        .filter_map(|e| {
            let note = e["note"].as_str().or(e["message"].as_str())?;
            let member = note
                .strip_prefix("defragmented member ")?
                .split(' ')
                .next()?;
            Some((member.to_string(), note.ends_with(", as the leader")))
        })
        .collect()
}

/// The Raft term members report: unchanged between two readings means no election between.
async fn raft_term(env: &KubeEnv) -> u64 {
    let endpoint = env.member_endpoint(0).await.unwrap();
    let mut client = Client::connect([endpoint], None).await.unwrap();
    client.status().await.unwrap().raft_term()
}

/// Every member's status once each has a defragmentation after `since` recorded.
async fn wait_defragmented(env: &KubeEnv, since: &str) -> Vec<Value> {
    env.eventually("every member defragmented", SCALING, || async {
        let members = env.kvcluster().await["status"]["members"]
            .as_array()
            .cloned()?;
        members
            .iter()
            .all(|m| {
                m["lastDefragmentationTime"]
                    .as_str()
                    .is_some_and(|t| t > since)
            })
            .then_some(members)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_by_threshold_and_by_schedule_gives_space_back_followers_first_leader_last() {
    let env = start("defrag", EnvOptions::default()).await;
    apply_example(&env, |_| {}).await;
    make_free_space(env.member_endpoint(0).await.unwrap(), "big-").await;
    // Every member has applied the compaction and measured its free space: members over the
    // threshold at the same time go followers first. (A member measures its space in use
    // lazily; one that had not yet would become due only after the others.)
    env.eventually("every member reports the free space", SCALING, || async {
        let members = env.kvcluster().await["status"]["members"]
            .as_array()
            .cloned()?;
        members
            .iter()
            .all(|m| {
                let size = m["dbSize"].as_i64().unwrap_or(0);
                let in_use = m["dbSizeInUse"].as_i64().unwrap_or(size);
                size - in_use >= 8 << 20
            })
            .then_some(())
    })
    .await;

    let threshold = json!({"freeToInUseRatio": 1.0, "minFreeBytes": 8 << 20});
    let started = Instant::now();
    env.apply_example(|kvc| {
        kvc["spec"]["maintenance"] = json!({"defragmentation": {"threshold": threshold}})
    })
    .await
    .unwrap();
    let members = wait_defragmented(&env, "").await;
    println!(
        "threshold: every member defragmented {:.1}s after it was set",
        started.elapsed().as_secs_f64()
    );
    for m in &members {
        let reclaimed = m["lastDefragmentationReclaimedBytes"].as_i64().unwrap();
        assert!(
            reclaimed >= 8 << 20,
            "{} gave back only {reclaimed} bytes: {m}",
            m["name"]
        );
        let (size, in_use) = (
            m["dbSize"].as_i64().unwrap(),
            m["dbSizeInUse"].as_i64().unwrap(),
        );
        assert!(size - in_use < 8 << 20, "{m}");
    }
    // Each Event says whether its member led when it was defragmented. The leader goes last;
    // a leader change in between can make a member defragmented as a follower lead later, so
    // the order is judged by who led at the time, not by who leads now.
    let order = defragmented_members(&env).await;
    let distinct: BTreeSet<_> = order.iter().map(|(member, _)| member).collect();
    assert_eq!(
        (order.len(), distinct.len()),
        (3, 3),
        "each member once: {order:?}"
    );
    assert!(
        order.iter().rev().skip(1).all(|(_, led)| !led),
        "the leader last: {order:?}"
    );

    // A schedule of every minute: each member again, whatever its free space.
    let first_round = members
        .iter()
        .filter_map(|m| m["lastDefragmentationTime"].as_str())
        .max()
        .unwrap()
        .to_string();
    let term = raft_term(&env).await;
    env.apply_example(|kvc| {
        kvc["spec"]["maintenance"] = json!({"defragmentation": {"schedule": "* * * * *"}})
    })
    .await
    .unwrap();
    let started = Instant::now();
    let members = wait_defragmented(&env, &first_round).await;
    let elections = raft_term(&env).await - term;
    println!(
        "schedule: every member defragmented again {:.1}s after it was set",
        started.elapsed().as_secs_f64()
    );
    // (A member's second Event is counted as a repeat of its first; the status tells the order,
    // to the second, and who leads now: the leader then, unless an election came in between.)
    let time_of = |m: &Value| m["lastDefragmentationTime"].as_str().unwrap().to_string();
    let leader_time = members
        .iter()
        .find(|m| m["leader"] == true)
        .map(time_of)
        .expect("a leader");
    assert!(
        elections > 0 || members.iter().all(|m| time_of(m) <= leader_time),
        "the leader last: {members:?}"
    );
    assert_eq!(
        etcdctl_get(&env, "big-000").await,
        "",
        "deleted keys stay deleted"
    );
}

/// The image the operator runs for `spec.version: VERSION` (its default repository).
fn member_image(version: &str) -> String {
    format!("ghcr.io/ferrokv/ferrokv:v{version}")
}

/// The `ferrokv` image of every member pod, by name, with the pod's UID.
async fn pod_images(env: &KubeEnv) -> BTreeMap<String, (String, String)> {
    env.list(PODS)
        .await
        .iter()
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                (
                    p["spec"]["containers"][0]["image"].as_str()?.to_string(),
                    p["metadata"]["uid"].as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

/// The KVCluster's `Degraded` condition, once its reason is `reason` and its message mentions
/// `mentions`.
async fn wait_degraded(env: &KubeEnv, reason: &str, mentions: &str, within: Duration) -> Value {
    let what = format!("Degraded {reason} about {mentions}");
    env.eventually(&what, within, || async {
        let status = env.kvcluster().await["status"].clone();
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| {
                c["type"] == "Degraded"
                    && c["status"] == "True"
                    && c["reason"] == reason
                    && c["message"].as_str().is_some_and(|m| m.contains(mentions))
            })
            .cloned()
    })
    .await
}

/// Waits until every one of `members` runs `version` and the cluster is Available with them.
async fn wait_rolled_out(env: &KubeEnv, version: &str, members: usize) {
    env.eventually(&format!("every member on {version}"), SCALING, || async {
        let status = env.kvcluster().await["status"].clone();
        (status["version"] == version && status["updatedReplicas"] == members).then_some(())
    })
    .await;
    env.wait_available(members, FORMING).await;
}

/// Puts `up-N` through the client Service with etcdctl until `stop`; returns the acknowledged
/// keys and the number of failed puts.
async fn put_through_service_until(env: &KubeEnv, stop: &AtomicBool) -> (Vec<String>, usize) {
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("up-{n:05}");
        match env.etcdctl(&["put", &key, "v"]).await {
            Ok(output) if output.status.success() => acknowledged.push(key),
            _ => failed += 1,
        }
    }
    (acknowledged, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_upgrade_rolls_followers_first_refuses_skips_and_downgrades_and_pauses_on_a_bad_image(
) {
    let missing = member_image("0.2.9");
    let options = EnvOptions {
        unavailable_images: [missing.clone()].into(),
        ..EnvOptions::default()
    };
    let env = start("upgrade", options).await;
    if env.is_real() {
        println!("skipped: the versions it rolls between exist only in the hermetic registry");
        return;
    }
    apply_example(&env, |kvc| kvc["spec"]["version"] = json!("0.1.0")).await;
    wait_rolled_out(&env, "0.1.0", 3).await;
    let ids = env.member_ids().await;

    // 0.1.0 -> 0.2.0 under a writer: followers first, the leader last after handing off.
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let roll = async {
        env.apply_example(|kvc| kvc["spec"]["version"] = json!("0.2.0"))
            .await
            .unwrap();
        wait_rolled_out(&env, "0.2.0", 3).await;
        stop.store(true, Ordering::Relaxed);
    };
    let ((), (acknowledged, failed)) = tokio::join!(roll, put_through_service_until(&env, &stop));
    println!(
        "0.1.0 -> 0.2.0 rolled out in {:.1}s; {} puts acknowledged, {failed} failed",
        started.elapsed().as_secs_f64(),
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty());
    assert_none_lost_through_service(&env, &acknowledged).await;
    assert_eq!(env.member_ids().await, ids, "every member keeps its ID");
    let images = pod_images(&env).await;
    assert!(
        images
            .values()
            .all(|(image, _)| *image == member_image("0.2.0")),
        "{images:?}"
    );
    // The member restarted last is the one that handed off (the leader when the roll-out
    // began, unless an election came between).
    assert_followers_then_the_leader(&ids, &roll_out_steps(&env).await, 3);
    let table = env
        .kubectl_in_namespace(&["get", "kvc", "example"])
        .await
        .unwrap();
    assert!(table.lines().next().unwrap().contains("VERSION"), "{table}");
    assert!(table.contains("0.2.0"), "{table}");

    // A skip of a minor version and a downgrade are refused; no member is touched.
    for (version, says) in [
        ("0.4.0", "one minor version at a time"),
        ("0.1.0", "downgrade"),
    ] {
        env.apply_example(|kvc| kvc["spec"]["version"] = json!(version))
            .await
            .unwrap();
        let degraded =
            wait_degraded(&env, "UpgradeRefused", version, Duration::from_secs(60)).await;
        let message = degraded["message"].as_str().unwrap();
        assert!(message.contains(says), "{version}: {message}");
        assert!(message.contains("spec.upgrade.force"), "{message}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(pod_images(&env).await, images, "{version}: pods untouched");
        assert_eq!(env.kvcluster().await["status"]["version"], "0.2.0");
    }

    // An image the registry lacks: the first follower restarted onto it never becomes ready,
    // the roll-out pauses naming it, and nothing else is touched.
    env.apply_example(|kvc| {
        kvc["spec"]["version"] = json!("0.2.9");
        kvc["spec"]["upgrade"] = json!({"memberReadyTimeoutSeconds": 10});
    })
    .await
    .unwrap();
    let paused = wait_degraded(&env, "RolloutPaused", &missing, SCALING).await;
    let message = paused["message"].as_str().unwrap().to_string();
    println!("paused: {message}");
    assert!(message.contains(&missing), "{message}");
    let now = pod_images(&env).await;
    let stuck: Vec<&String> = now
        .iter()
        .filter(|(_, (image, _))| *image == missing)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(stuck.len(), 1, "one member tried the bad image: {now:?}");
    let leader = env.kvcluster().await["status"]["leader"].clone();
    assert_ne!(leader, json!(stuck[0]), "a follower goes first");
    assert!(message.contains(stuck[0].as_str()), "{message}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = pod_images(&env).await;
    for (name, pod) in &images {
        if name != stuck[0] {
            assert_eq!(later.get(name), Some(pod), "{name} untouched while paused");
        }
    }
    assert_success(
        "put while paused",
        &env.etcdctl(&["put", "paused", "yes"]).await.unwrap(),
    );

    // Setting the version back restarts the stuck member onto it, and the cluster is whole.
    env.apply_example(|kvc| kvc["spec"]["version"] = json!("0.2.0"))
        .await
        .unwrap();
    env.eventually("the stuck member back on 0.2.0", SCALING, || async {
        let images = pod_images(&env).await;
        images
            .values()
            .all(|(image, _)| *image == member_image("0.2.0"))
            .then_some(())
    })
    .await;
    env.wait_available(3, SCALING).await;
    env.eventually("Degraded cleared", FORMING, || async {
        let status = env.kvcluster().await["status"].clone();
        conditions_say(&status, "Degraded", "False").then_some(())
    })
    .await;
    assert_eq!(env.member_ids().await, ids);
    assert_eq!(etcdctl_get(&env, "paused").await, "yes");
}

/// Every key `put_through_service_until` had acknowledged is stored.
async fn assert_none_lost_through_service(env: &KubeEnv, acknowledged: &[String]) {
    let stored = env
        .etcdctl(&["get", "up-", "--prefix", "--keys-only"])
        .await
        .unwrap();
    let stored = String::from_utf8_lossy(&stored.stdout).to_string();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.lines().any(|line| line == k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
}

/// The notes of the roll-out's steps, oldest first: pod restarts and leader hand-offs.
async fn roll_out_steps(env: &KubeEnv) -> Vec<String> {
    cluster_events(env)
        .await
        .iter()
        .filter(|e| matches!(e["reason"].as_str(), Some("PodRestarted" | "LeaderMoved")))
        .filter_map(|e| {
            e["note"]
                .as_str()
                .or(e["message"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// A roll-out of `members` restarted each member once, followers first, then handed off
/// leadership, then restarted the member it moved leadership from (`ids`: name to member ID).
fn assert_followers_then_the_leader(
    ids: &BTreeMap<String, String>,
    steps: &[String],
    members: usize,
) {
    assert_eq!(steps.len(), members + 1, "{steps:?}");
    let moved_from = steps[members - 1]
        .strip_prefix("moved leadership from ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("the hand-off before the last restart: {steps:?}"));
    let restarted: Vec<&str> = steps
        .iter()
        .filter_map(|note| note.strip_prefix("restarted pod "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let last = *restarted.last().expect("restarts");
    assert_eq!(
        ids[last].trim_start_matches('0'),
        moved_from.trim_start_matches('0'),
        "the member that led is restarted last: {steps:?}"
    );
    let distinct: BTreeSet<&str> = restarted.iter().copied().collect();
    assert_eq!(
        (restarted.len(), distinct.len()),
        (members, members),
        "each member once: {steps:?}"
    );
}

/// Member pods that are not ready (or missing) out of `members`.
async fn members_down(env: &KubeEnv, members: usize) -> usize {
    let ready = env
        .list(PODS)
        .await
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count();
    members.saturating_sub(ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_upgrade_of_five_members_restarts_one_at_a_time_and_the_leader_last() {
    let env = start("upgrade-five", EnvOptions::default()).await;
    if env.is_real() {
        println!("skipped: the versions it rolls between exist only in the hermetic registry");
        return;
    }
    env.apply_example(|kvc| {
        kvc["spec"]["replicas"] = json!(5);
        kvc["spec"]["version"] = json!("0.1.0");
    })
    .await
    .unwrap();
    wait_rolled_out(&env, "0.1.0", 5).await;
    let ids = env.member_ids().await;

    // 0.1.0 -> 0.2.0 under a writer, counting the members down at every look.
    let stop = AtomicBool::new(false);
    let most_down = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let roll = async {
        // (The example is applied whole: it says 3 replicas.)
        env.apply_example(|kvc| {
            kvc["spec"]["replicas"] = json!(5);
            kvc["spec"]["version"] = json!("0.2.0");
        })
        .await
        .unwrap();
        wait_rolled_out(&env, "0.2.0", 5).await;
        stop.store(true, Ordering::Relaxed);
    };
    let watch_down = async {
        while !stop.load(Ordering::Relaxed) {
            let down = members_down(&env, 5).await;
            most_down.fetch_max(down, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((), (acknowledged, failed), ()) =
        tokio::join!(roll, put_through_service_until(&env, &stop), watch_down);
    println!(
        "5 members, 0.1.0 -> 0.2.0 rolled out in {:.1}s; {} puts acknowledged, {failed} failed; \
         at most {} member(s) down at once",
        started.elapsed().as_secs_f64(),
        acknowledged.len(),
        most_down.load(Ordering::Relaxed)
    );
    assert!(!acknowledged.is_empty());
    assert_none_lost_through_service(&env, &acknowledged).await;
    assert_eq!(env.member_ids().await, ids, "every member keeps its ID");
    assert!(
        most_down.load(Ordering::Relaxed) <= 1,
        "one member down at most"
    );

    // Four followers, then the hand-off, then the member that led before it.
    assert_followers_then_the_leader(&ids, &roll_out_steps(&env).await, 5);
}
