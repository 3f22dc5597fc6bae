//! Starting a member: decides who it is (from its data dir, or from `--initial-cluster` when
//! the data dir is new), opens storage, starts Raft, the peer server and the client servers,
//! and runs until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::config::{ClusterState, HostPort, NodeConfig};
use crate::metrics::Metrics;
use crate::raft::election::{run_elections, LeaderContact};
use crate::raft::log_store::LogStore;
use crate::raft::network::{PeerNetwork, MAX_PEER_MESSAGE_BYTES};
use crate::raft::peer::pb::peer_server::PeerServer;
use crate::raft::peer::PeerService;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{MemberNode, Raft, WriteGate};
use crate::server::{Server, ServerParts};
use crate::storage::identity::{self, Identity};
use crate::storage::mvcc::MvccStore;
use crate::{api, Error, Result};

/// The MVCC store's file inside `<data-dir>/member`.
pub const DB_FILE: &str = "db.redb";
/// Written into `<data-dir>/member` when the cluster removes this member; its text says why.
const REMOVED_FILE: &str = "removed";

/// Works out this member's identity: the one kept in its data dir, or, for a new data dir,
/// the one `--initial-cluster` and `--initial-cluster-token` define.
async fn resolve_identity(config: &NodeConfig) -> Result<(Identity, bool)> {
    let member_dir = identity::member_dir(&config.data_dir);
    if let Ok(reason) = std::fs::read_to_string(member_dir.join(REMOVED_FILE)) {
        return Err(Error::DataDir(format!(
            "{}; this data dir can not rejoin: remove it, `etcdctl member add` the member again and start it with --initial-cluster-state=existing",
            reason.trim()
        )));
    }
    let in_data_dir = Identity::load(&member_dir)?;
    let in_wal_dir = Identity::load(&config.wal_dir)?;
    match (in_data_dir, in_wal_dir) {
        (Some(id), wal) => {
            if let Some(w) = wal {
                if w != id {
                    return Err(Error::DataDir(format!(
                        "--wal-dir {} belongs to member {:x} of cluster {:x}, but --data-dir {} to member {:x} of cluster {:x}",
                        config.wal_dir.display(), w.member_id, w.cluster_id,
                        config.data_dir.display(), id.member_id, id.cluster_id
                    )));
                }
            }
            if config.token_given && config.initial_cluster_token != id.cluster_token {
                return Err(Error::DataDir(format!(
                    "--data-dir {} belongs to the cluster with token {:?} (cluster ID {:x}), not to {:?} given by --initial-cluster-token",
                    config.data_dir.display(), id.cluster_token, id.cluster_id, config.initial_cluster_token
                )));
            }
            if id.name != config.name {
                tracing::warn!(stored = %id.name, flag = %config.name, "--name differs from the name this data dir was created with; keeping member ID {:x}", id.member_id);
            }
            Ok((id, false))
        }
        (None, Some(w)) => Err(Error::WalWithoutData {
            name: w.name,
            member_id: w.member_id,
            cluster_id: w.cluster_id,
            data_dir: config.data_dir.clone(),
            wal_dir: config.wal_dir.clone(),
            peer_urls: config.advertise_peer_urls.join(","),
        }),
        (None, None) => {
            if config.initial_cluster_state == ClusterState::Existing {
                return joining_identity(config).await.map(|id| (id, true));
            }
            if let Some(discovery) = &config.discovery {
                let mut discovered = config.clone();
                discovered.initial_cluster =
                    crate::discovery::initial_cluster(config, discovery).await?;
                return Ok((founding_identity(&discovered), true));
            }
            config.check_bootstrap_urls().map_err(Error::Config)?;
            let identity = founding_identity(config);
            refuse_if_already_bootstrapped(config, &identity).await?;
            Ok((identity, true))
        }
    }
}

/// The identity of a member joining a running cluster (`--initial-cluster-state=existing`):
/// the members of `--initial-cluster` tell the cluster ID and the member ID that `etcdctl member
/// add` gave to this member's peer URLs. A member with those peer URLs that has already run is
/// this member after it lost its data: it refuses, as a founding member does.
async fn joining_identity(config: &NodeConfig) -> Result<Identity> {
    let network = PeerNetwork::new(0, 0);
    let mine: Vec<&String> = config.advertise_peer_urls.iter().collect();
    let others: Vec<&String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    if others.is_empty() {
        return Err(Error::DataDir(
            "--initial-cluster-state=existing needs the running members in --initial-cluster"
                .into(),
        ));
    }
    let mut last_error = String::new();
    for attempt in 0..30 {
        for url in &others {
            match network.members(url, Duration::from_secs(2)).await {
                Ok(reply) => {
                    let found = reply
                        .members
                        .iter()
                        .find(|(_, node)| node.peer_urls.iter().any(|u| mine.contains(&u)));
                    return match found {
                        // A member that has run, and now starts on empty dirs, lost its data:
                        // joining under its old ID would give it a fresh log and vote.
                        Some((id, _)) if reply.published.contains(id) => {
                            Err(Error::AlreadyBootstrapped {
                                name: config.name.clone(),
                                member_id: *id,
                                cluster_id: reply.cluster_id,
                            })
                        }
                        Some((id, _)) => Ok(Identity {
                            name: config.name.clone(),
                            member_id: *id,
                            cluster_id: reply.cluster_id,
                            cluster_token: config.initial_cluster_token.clone(),
                            initial_cluster: BTreeMap::new(),
                        }),
                        None => Err(Error::DataDir(format!(
                            "the cluster at {url} has no member with peer URLs {}; add this member first with `etcdctl member add {} --peer-urls={}`",
                            config.advertise_peer_urls.join(","),
                            config.name,
                            config.advertise_peer_urls.join(",")
                        ))),
                    };
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        if attempt < 29 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(Error::DataDir(format!(
        "no member of --initial-cluster answered: {last_error}"
    )))
}

/// A founding member whose data dir is empty, but whom the running cluster knows as a member
/// that has run, has lost its data: bootstrapping again would give it a fresh log and vote under
/// its old ID, which Raft cannot allow. It refuses, in words an operator can act on (etcd:
/// "member has already been bootstrapped"). Peers that do not answer (a cluster that is only
/// forming) are no evidence either way.
async fn refuse_if_already_bootstrapped(config: &NodeConfig, identity: &Identity) -> Result<()> {
    let network = PeerNetwork::new(0, 0);
    for (name, urls) in &config.initial_cluster {
        if *name == config.name {
            continue;
        }
        for url in urls {
            let Ok(reply) = network.members(url, Duration::from_secs(1)).await else {
                continue;
            };
            if reply.cluster_id == identity.cluster_id
                && reply.published.contains(&identity.member_id)
            {
                return Err(Error::AlreadyBootstrapped {
                    name: config.name.clone(),
                    member_id: identity.member_id,
                    cluster_id: identity.cluster_id,
                });
            }
        }
    }
    Ok(())
}

/// The identity of a founding member of the cluster `--initial-cluster` describes.
pub fn founding_identity(config: &NodeConfig) -> Identity {
    let ids: BTreeMap<String, u64> = config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            (
                name.clone(),
                identity::member_id(urls, &config.initial_cluster_token, None),
            )
        })
        .collect();
    let all: Vec<u64> = ids.values().copied().collect();
    Identity {
        name: config.name.clone(),
        member_id: ids[&config.name],
        cluster_id: identity::cluster_id(&all),
        cluster_token: config.initial_cluster_token.clone(),
        initial_cluster: config.initial_cluster.clone(),
    }
}

fn raft_config(config: &NodeConfig) -> Result<openraft::Config> {
    let election = config.election_timeout.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        // Elections are timed by raft/election.rs ([1, 2) × --election-timeout, as etcd);
        // openraft still uses election_timeout_max as the leader's lease: a member refuses to
        // vote for another while it has heard from a leader within it.
        election_timeout_min: election / 2,
        election_timeout_max: election,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 1000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: 5000.min(config.snapshot_count),
        // Elections start from ferrokv's own timer, after a pre-vote (raft/election.rs).
        enable_elect: false,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| Error::Raft(format!("invalid raft configuration: {e}")))
}

async fn bind(url: &HostPort, flag: &str) -> Result<TcpListener> {
    TcpListener::bind((url.host.as_str(), url.port))
        .await
        .map_err(|e| Error::DataDir(format!("{flag}: cannot listen on {}: {e}", url.url)))
}

pub async fn run(config: NodeConfig) -> Result<()> {
    let config = Arc::new(config);
    let (identity, fresh) = resolve_identity(&config).await?;
    let member_dir = identity::member_dir(&config.data_dir);
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", member_dir.display())))?;
    std::fs::create_dir_all(&config.wal_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", config.wal_dir.display())))?;

    let log_store = LogStore::open(&config.wal_dir)?;
    // Shares the log cache: pre-vote compares logs with it.
    let elections_log = log_store.clone();
    if fresh && !log_store.is_empty() {
        return Err(Error::DataDir(format!(
            "--wal-dir {} holds a Raft log but no member identity; refusing to start",
            config.wal_dir.display()
        )));
    }
    let needs_bootstrap = log_store.is_empty();
    let store = MvccStore::open(&member_dir.join(DB_FILE))?;
    if fresh {
        identity.store(&member_dir)?;
        identity.store(&config.wal_dir)?;
    }
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", identity.member_id),
        cluster_id = format!("{:x}", identity.cluster_id),
        data_dir = %config.data_dir.display(),
        wal_dir = %config.wal_dir.display(),
        "starting member"
    );

    let metrics = Arc::new(Metrics::new(log_store.fsync_histogram()));
    let network = PeerNetwork::new(identity.cluster_id, identity.member_id)
        .with_round_trip_metric(metrics.peer_round_trip.clone());
    let state_machine = StateMachine::new(store.clone(), metrics.backend_commit_duration.clone());
    state_machine.measure_size_in_use()?;
    let raft = Raft::new(
        identity.member_id,
        Arc::new(raft_config(&config)?),
        network.clone(),
        log_store,
        state_machine.clone(),
    )
    .await
    .map_err(|e| Error::Raft(e.to_string()))?;

    // A founding member bootstraps until its log shows it has: a fresh data dir, a restored
    // snapshot, or a first start that died before the bootstrap reached the WAL.
    if needs_bootstrap && !identity.initial_cluster.is_empty() {
        let members: BTreeMap<u64, MemberNode> = identity
            .initial_cluster
            .iter()
            .map(|(name, urls)| {
                (
                    identity::member_id(urls, &identity.cluster_token, None),
                    MemberNode {
                        name: name.clone(),
                        peer_urls: urls.clone(),
                    },
                )
            })
            .collect();
        // Every founding member proposes the same initial membership at log index 0.
        raft.initialize(members)
            .await
            .map_err(|e| Error::Raft(format!("bootstrapping the cluster: {e}")))?;
    }

    let write_gate = WriteGate::default();
    let contact = LeaderContact::default();
    let (server, proposals, reads) = Server::new(ServerParts {
        raft: raft.clone(),
        store,
        state_machine,
        network: network.clone(),
        identity: identity.clone(),
        config: config.clone(),
        metrics,
        write_gate: write_gate.clone(),
        leader_contact: contact.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut tasks = tokio::task::JoinSet::new();
    let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;
    for url in &config.listen_peer_urls {
        let listener = bind(url, "--listen-peer-urls").await?;
        let peer = PeerServer::new(PeerService::new(
            raft.clone(),
            network.clone(),
            Arc::new(server.clone()),
            write_gate.clone(),
            (
                elections_log.clone(),
                contact.clone(),
                config.election_timeout,
            ),
            request_timeout,
        ))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            // As on the client port: without TCP_NODELAY, Nagle delays Raft's small messages.
            let incoming = TcpListenerStream::new(listener)
                .map(|conn| conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream)));
            tonic::transport::Server::builder()
                .add_service(peer)
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .map_err(|e| Error::Raft(format!("peer server: {e}")))
        });
    }
    for url in &config.listen_client_urls {
        let listener = bind(url, "--listen-client-urls").await?;
        let stop = stopped(stop_rx.clone());
        let server = server.clone();
        tasks.spawn(async move {
            api::serve_clients(server, listener, stop)
                .await
                .map_err(|e| Error::Raft(format!("client server: {e}")))
        });
    }
    tracing::info!(
        clients = %config.advertise_client_urls.join(","),
        peers = %config.advertise_peer_urls.join(","),
        "serving"
    );
    {
        let server = server.clone();
        tokio::spawn(async move { server.publish_self().await });
    }
    tokio::spawn(run_elections(
        raft.clone(),
        network.clone(),
        elections_log,
        contact,
        identity.member_id,
        config.election_timeout,
    ));
    tokio::spawn(server.clone().run_proposer(proposals));
    tokio::spawn(server.clone().run_read_barrier(reads));
    tokio::spawn(server.clone().run_lease_expiry());
    if let Some(policy) = config.auto_compaction {
        tokio::spawn(server.clone().run_auto_compaction(policy));
    }
    tokio::spawn(server.clone().count_leader_changes());

    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        reason = removed_from_cluster(raft.clone(), network.clone(), identity.member_id) => {
            let marker = member_dir.join(REMOVED_FILE);
            if let Err(e) = std::fs::write(&marker, &reason) {
                tracing::error!(error = %e, "cannot record the removal in {}", marker.display());
            }
            Err(Error::DataDir(reason))
        }
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Raft(format!("server task failed: {e}"))),
        },
    };
    tracing::info!("stopping member");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), raft.shutdown()).await;
    outcome
}

/// Resolves, with the reason, once this member learns it was removed from the cluster: from an
/// applied membership without it, or from a member that refuses it as removed.
async fn removed_from_cluster(raft: Raft, network: PeerNetwork, member_id: u64) -> String {
    let reason = format!("member {member_id:x} has been removed from the cluster");
    let mut metrics = raft.metrics();
    let by_membership = async {
        // A joining member first sees memberships from before it was added (a snapshot taken
        // earlier, old log entries): only leaving a membership it was in is a removal.
        let mut was_member = false;
        loop {
            {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                if membership.get_node(&member_id).is_some() {
                    was_member = true;
                } else if was_member {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = by_membership => {}
        _ = network.removed() => {}
    }
    tracing::error!("{reason}; stopping");
    reason
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn node_config(data_dir: &std::path::Path, wal_dir: &std::path::Path) -> NodeConfig {
        let args = [
            "ferrokv".to_string(),
            "--name=kv-1".into(),
            format!("--data-dir={}", data_dir.display()),
            format!("--wal-dir={}", wal_dir.display()),
            "--initial-advertise-peer-urls=http://kv-1.kv-peer:2380".into(),
            "--initial-cluster=kv-0=http://kv-0.kv-peer:2380,kv-1=http://kv-1.kv-peer:2380,kv-2=http://kv-2.kv-peer:2380".into(),
            "--initial-cluster-token=kv".into(),
        ];
        let config = crate::config::Config::try_parse_from(args).expect("flags parse");
        NodeConfig::check(config, true).expect("flags check")
    }

    #[tokio::test]
    async fn lost_data_dir_with_the_wal_of_the_member_refuses_saying_how_to_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = node_config(&dir.path().join("data"), &dir.path().join("wal"));
        let identity = founding_identity(&config);
        identity.store(&config.wal_dir).unwrap();

        let error = resolve_identity(&config).await.unwrap_err();
        assert!(
            matches!(&error, Error::WalWithoutData { member_id, .. } if *member_id == identity.member_id),
            "{error:?}"
        );
        let message = error.to_string();
        let (id, cluster, wal) = (
            format!("{:x}", identity.member_id),
            format!("{:x}", identity.cluster_id),
            config.wal_dir.display().to_string(),
        );
        assert!(
            message.starts_with(&format!(
                "data dir empty but --wal-dir {wal} holds the log of member kv-1 (ID {id}) of cluster {cluster}"
            )),
            "{message}"
        );
        for step in [
            format!("`etcdctl member remove {id}`"),
            "`etcdctl member add kv-1 --peer-urls=http://kv-1.kv-peer:2380`".to_string(),
            format!("empty {wal}"),
            "--initial-cluster-state=existing".to_string(),
        ] {
            assert!(message.contains(&step), "{step} missing from: {message}");
        }
        assert!(!message.contains('\n'), "one line: {message}");
    }
}
