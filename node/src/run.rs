//! Starting a member: decides who it is (from its data dir, or from `--initial-cluster` when
//! the data dir is new), opens storage, starts Raft, the peer server and the client servers,
//! and runs until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use prost_011::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};
use raft::RawNode;

use crate::config::{ClusterState, HostPort, NodeConfig};
use crate::raft::apply::{applied_state, ApplyParts, StateMachine, Waiters};
use crate::raft::log::RaftLog;
use crate::raft::members::Members;
use crate::raft::node::{self, Command, LoopOptions};
use crate::raft::stages::Stages;
use crate::raft::transport::pb::peer_server::PeerServer;
use crate::raft::transport::{
    LeaderDuties, PeerNetwork, PeerService, Transport, CONNECTION_WINDOW_BYTES,
    MAX_PEER_MESSAGE_BYTES, STREAM_WINDOW_BYTES,
};
use crate::raft::types::{codec, ConfChangeContext, MemberNode};
use crate::server::metrics::Metrics;
use crate::server::{Server, ServerParts};
use crate::storage::identity::{self, Identity};
use crate::storage::mvcc::MvccStore;
use crate::tls::{ClientConfig, Side};
use crate::tls_setup::MemberTls;
use crate::{api, Error, Result};

/// The MVCC store's file inside `<data-dir>/member`.
pub const DB_FILE: &str = "db.redb";
/// How long a removed member keeps serving after it learns of its removal.
const REMOVAL_GRACE: Duration = Duration::from_millis(500);
/// Written into `<data-dir>/member` when the cluster removes this member; its text says why.
const REMOVED_FILE: &str = "removed";

/// Works out this member's identity: the one kept in its data dir, or, for a new data dir,
/// the one `--initial-cluster` and `--initial-cluster-token` define.
async fn resolve_identity(
    config: &NodeConfig,
    peer_tls: Option<&Arc<ClientConfig>>,
) -> Result<(Identity, bool)> {
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
                return joining_identity(config, peer_tls)
                    .await
                    .map(|id| (id, true));
            }
            if let Some(discovery) = &config.discovery {
                let mut discovered = config.clone();
                discovered.initial_cluster =
                    crate::discovery::initial_cluster(config, discovery).await?;
                return Ok((founding_identity(&discovered), true));
            }
            config.check_bootstrap_urls().map_err(Error::Config)?;
            let identity = founding_identity(config);
            refuse_if_already_bootstrapped(config, &identity, peer_tls).await?;
            Ok((identity, true))
        }
    }
}

/// The identity of a member joining a running cluster (`--initial-cluster-state=existing`):
/// the members of `--initial-cluster` tell the cluster ID and the member ID that `etcdctl member
/// add` gave to this member's peer URLs. A member with those peer URLs that has already run is
/// this member after it lost its data: it refuses, as a founding member does.
async fn joining_identity(
    config: &NodeConfig,
    peer_tls: Option<&Arc<ClientConfig>>,
) -> Result<Identity> {
    let network = PeerNetwork::new(0, 0, String::new(), peer_tls.cloned());
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
async fn refuse_if_already_bootstrapped(
    config: &NodeConfig,
    identity: &Identity,
    peer_tls: Option<&Arc<ClientConfig>>,
) -> Result<()> {
    let network = PeerNetwork::new(0, 0, String::new(), peer_tls.cloned());
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

/// tikv's Raft configured from etcd's flags: a tick per heartbeat interval, elections after
/// `--election-timeout` (randomised up to twice that, as etcd), check-quorum and pre-vote on, and
/// appends bounded so that no message nears the peer limit and a slow member is flow-controlled.
fn raft_config(config: &NodeConfig, id: u64, applied: u64) -> Result<raft::Config> {
    let heartbeat = config.heartbeat.as_millis().max(1) as u64;
    let election_ticks = (config.election_timeout.as_millis() as u64 / heartbeat).max(2) as usize;
    let raft_config = raft::Config {
        id,
        election_tick: election_ticks,
        heartbeat_tick: 1,
        applied,
        // etcd's maxSizePerMsg and maxInflightMsgs.
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 512,
        check_quorum: true,
        pre_vote: true,
        read_only_option: raft::ReadOnlyOption::Safe,
        ..Default::default()
    };
    raft_config
        .validate()
        .map_err(|e| Error::raft(format!("invalid raft configuration: {e}")))?;
    Ok(raft_config)
}

/// The founding members of the cluster `identity` belongs to, by member ID.
fn founding_members(identity: &Identity) -> BTreeMap<u64, MemberNode> {
    identity
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
        .collect()
}

/// The founding members' configuration changes: the first entries of a new cluster's log, the
/// same on every founding member (etcd's bootstrap does the same).
fn founding_entries(identity: &Identity) -> Vec<Entry> {
    founding_members(identity)
        .into_iter()
        .enumerate()
        .map(|(i, (id, member))| {
            let mut single = ConfChangeSingle {
                node_id: id,
                ..Default::default()
            };
            single.set_change_type(ConfChangeType::AddNode);
            let change = ConfChangeV2 {
                changes: vec![single],
                context: codec::encode(&ConfChangeContext {
                    proposer: 0,
                    id: 0,
                    member: Some(member),
                }),
                ..Default::default()
            };
            let mut entry = Entry {
                index: i as u64 + 1,
                term: 1,
                data: change.encode_to_vec(),
                ..Default::default()
            };
            entry.set_entry_type(EntryType::EntryConfChangeV2);
            entry
        })
        .collect()
}

async fn bind(url: &HostPort, flag: &str) -> Result<TcpListener> {
    TcpListener::bind((url.host.as_str(), url.port))
        .await
        .map_err(|e| Error::DataDir(format!("{flag}: cannot listen on {}: {e}", url.url)))
}

/// Runs blocking storage work (opening files, replaying the WAL) off the async runtime.
async fn blocking<T: Send + 'static, E: Into<Error> + Send + 'static>(
    work: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::raft(format!("storage task failed: {e}")))?
        .map_err(Into::into)
}

pub async fn run(config: NodeConfig) -> Result<()> {
    let config = Arc::new(config);
    // Before anything else: a member whose certificates cannot be used refuses to start, and
    // joining a cluster already dials other members.
    let tls = MemberTls::build(&config)?;
    let (identity, fresh) = resolve_identity(&config, tls.peer_client.as_ref()).await?;
    let member_dir = identity::member_dir(&config.data_dir);
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", member_dir.display())))?;
    std::fs::create_dir_all(&config.wal_dir)
        .map_err(|e| Error::DataDir(format!("cannot create {}: {e}", config.wal_dir.display())))?;

    // The WAL first: a damaged one is refused before anything is written to the store.
    let wal_dir = config.wal_dir.clone();
    let log = blocking(move || RaftLog::open(&wal_dir)).await?;
    if fresh && !log.is_empty() {
        return Err(Error::DataDir(format!(
            "--wal-dir {} holds a Raft log but no member identity; refusing to start",
            config.wal_dir.display()
        )));
    }
    let db = member_dir.join(DB_FILE);
    let cache_bytes = config.backend_cache_bytes;
    let store = blocking(move || MvccStore::open_with_cache(&db, cache_bytes)).await?;
    let applied = applied_state(&store)?;
    // A founding member bootstraps until its log shows it has: a fresh data dir, a restored
    // snapshot, or a first start that died before the bootstrap reached the WAL.
    if log.is_empty() && applied.index == 0 && !identity.initial_cluster.is_empty() {
        let entries = founding_entries(&identity);
        let bootstrap_log = log.clone();
        blocking(move || bootstrap_log.bootstrap(entries)).await?;
    }
    log.catch_up_with_store(applied.index, applied.term)?;
    let conf_state = if applied.index == 0 && !identity.initial_cluster.is_empty() {
        // As etcd's bootstrap: the founding configuration holds from the start, so the first
        // election need not wait for the founding entries to be applied.
        ConfState {
            voters: founding_members(&identity).into_keys().collect(),
            ..Default::default()
        }
    } else {
        applied.conf_state.clone()
    };
    log.set_conf_state(conf_state);
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
        applied = applied.index,
        "starting member"
    );

    let stages = Stages::new();
    let metrics = Arc::new(Metrics::new(log.fsync_histogram(), stages.clone()));
    let network = PeerNetwork::new(
        identity.cluster_id,
        identity.member_id,
        config
            .advertise_peer_urls
            .first()
            .cloned()
            .unwrap_or_default(),
        tls.peer_client.clone(),
    );
    let members = Members::default();
    let waiters = Waiters::default();
    let (commands, command_queue) = std::sync::mpsc::channel();
    let (state_machine, removed_by_apply) = StateMachine::start(ApplyParts {
        store: store.clone(),
        member_id: identity.member_id,
        members: members.clone(),
        waiters: waiters.clone(),
        log: log.clone(),
        commands: commands.clone(),
        commit_duration: metrics.backend_commit_duration.clone(),
        stages: stages.clone(),
        snapshot_count: config.snapshot_count,
        token_ttl: config.auth_token_ttl,
    })?;
    let transport = Transport::new(
        network.clone(),
        members.clone(),
        commands.clone(),
        tokio::runtime::Handle::current(),
        metrics.peer_round_trip.clone(),
    );
    let raft_config = raft_config(&config, identity.member_id, applied.index)?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let node = RawNode::new(&raft_config, log.clone(), &logger)
        .map_err(|e| Error::raft(format!("starting raft: {e}")))?;
    let sole_voter = node
        .raft
        .prs()
        .conf()
        .voters()
        .ids()
        .iter()
        .eq([identity.member_id]);
    let raft = node::spawn(
        node,
        (commands, command_queue),
        state_machine.clone(),
        transport.clone(),
        LoopOptions {
            tick: config.heartbeat,
            stages,
        },
    )?;
    if sole_voter {
        // A one-member cluster need not wait out an election timeout to lead; Raft campaigns
        // only once the committed configuration changes are applied.
        let raft = raft.clone();
        let state_machine = state_machine.clone();
        let committed = log.hard_state().commit;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            if state_machine
                .wait_applied(committed, deadline)
                .await
                .is_ok()
                && raft.status().leader().is_none()
            {
                raft.send(Command::Campaign);
            }
        });
    }

    let (server, proposals, reads) = Server::new(ServerParts {
        raft: raft.clone(),
        store,
        state_machine: state_machine.clone(),
        network: network.clone(),
        members,
        waiters,
        identity: identity.clone(),
        config: Arc::new(config.server_config()),
        metrics,
    });
    let duties: Arc<OnceLock<Arc<dyn LeaderDuties>>> = Arc::new(OnceLock::new());
    let _ = duties.set(Arc::new(server.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut tasks = tokio::task::JoinSet::new();
    for url in &config.listen_peer_urls {
        let listener = bind(url, "--listen-peer-urls").await?;
        let peer = PeerServer::new(PeerService::new(transport.clone(), duties.clone()))
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let stop = stopped(stop_rx.clone());
        let mut builder = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        let tls = url.tls.then(|| tls.peer_server.clone()).flatten();
        tasks.spawn(async move {
            let served = match tls {
                Some(config) => {
                    let incoming = crate::tls::accept::incoming(listener, config, Side::Peer);
                    builder
                        .add_service(peer)
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                }
                None => {
                    // As on the client port: without TCP_NODELAY, Nagle delays Raft's small
                    // messages.
                    let incoming = TcpListenerStream::new(listener).map(|conn| {
                        conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream))
                    });
                    builder
                        .add_service(peer)
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                }
            };
            served.map_err(|e| Error::raft(format!("peer server: {e}")))
        });
    }
    for url in &config.listen_client_urls {
        let listener = bind(url, "--listen-client-urls").await?;
        let stop = stopped(stop_rx.clone());
        let server = server.clone();
        let tls = url.tls.then(|| tls.client_server.clone()).flatten();
        tasks.spawn(async move {
            api::serve_clients(server, listener, tls, stop)
                .await
                .map_err(|e| Error::raft(format!("client server: {e}")))
        });
    }
    for url in &config.listen_metrics_urls {
        let listener = bind(url, "--listen-metrics-urls").await?;
        let stop = stopped(stop_rx.clone());
        let server = server.clone();
        tasks.spawn(async move {
            api::serve_metrics(server, listener, stop)
                .await
                .map_err(|e| Error::raft(format!("metrics server: {e}")))
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
    tokio::spawn(server.clone().run_proposer(proposals));
    tokio::spawn(server.clone().run_read_barrier(reads));
    tokio::spawn(server.clone().run_lease_expiry());
    if let Some(policy) = config.auto_compaction {
        tokio::spawn(server.clone().run_auto_compaction(policy));
    }
    tokio::spawn(server.clone().count_leader_changes());

    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        reason = removed_from_cluster(removed_by_apply, network.clone(), identity.member_id) => {
            let marker = member_dir.join(REMOVED_FILE);
            if let Err(e) = std::fs::write(&marker, &reason) {
                tracing::error!(error = %e, "cannot record the removal in {}", marker.display());
            }
            Err(Error::DataDir(reason))
        }
        reason = raft.failed() => Err(Error::raft(reason)),
        reason = state_machine.failed() => Err(Error::Server(crate::server::ServerError::Backend(reason))),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::raft(format!("server task failed: {e}"))),
        },
    };
    tracing::info!("stopping member");
    let _ = stop_tx.send(true);
    outcome
}

/// Resolves, with the reason, once this member learns it was removed from the cluster: it
/// applied its own removal, or a member refused it as removed.
async fn removed_from_cluster(
    mut applied_removal: watch::Receiver<bool>,
    network: PeerNetwork,
    member_id: u64,
) -> String {
    let reason = format!("member {member_id:x} has been removed from the cluster");
    tokio::select! {
        // Only a removal: the apply stage stopping (its sender dropped) is not one.
        Ok(_) = applied_removal.wait_for(|removed| *removed) => {}
        _ = network.removed() => {}
    }
    tracing::error!("{reason}; stopping");
    // Long enough to answer the request that removed this member, and for a leader to tell the
    // others that its removal is committed.
    tokio::time::sleep(REMOVAL_GRACE).await;
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

        let error = resolve_identity(&config, None).await.unwrap_err();
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
