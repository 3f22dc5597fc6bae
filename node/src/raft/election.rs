//! When a member campaigns: ferrokv's election timer, with pre-vote.
//!
//! openraft 0.9 campaigns on its own timer without asking anyone first, so a member cut off by
//! a partition raises its term again and again and, when it returns, its higher term makes the
//! healthy leader step down — a needless election. ferrokv turns openraft's timer off and runs
//! its own: a voter that has not heard from a leader for a randomised election timeout first
//! asks the other voters whether they would vote for it (Raft's PreVote, as etcd's `--pre-vote`
//! does), and campaigns only if a majority — itself included — agree: they too have not heard
//! from a leader for an election timeout, and its log is at least as up to date as theirs. A
//! member cut off alone never gets that majority, so its term stays where it was.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::log_store::LogStore;
use super::network::PeerNetwork;
use super::types::{LogId, Raft};

/// When this member last heard from a leader (or granted its vote).
#[derive(Clone)]
pub struct LeaderContact {
    at: Arc<Mutex<Instant>>,
}

impl Default for LeaderContact {
    fn default() -> LeaderContact {
        LeaderContact {
            at: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        *self.at.lock().unwrap() = Instant::now();
    }

    pub fn elapsed(&self) -> Duration {
        self.at.lock().unwrap().elapsed()
    }
}

/// A pre-vote request: would you vote for a candidate with this log?
#[derive(Debug, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: u64,
    pub last_log_id: Option<LogId>,
}

/// Whether this member would vote for `req`'s candidate now.
pub fn would_vote(
    raft: &Raft,
    log_store: &LogStore,
    contact: &LeaderContact,
    election_timeout: Duration,
    req: &PreVoteRequest,
) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let leader_is_alive = match metrics.state {
        // A leader still acknowledged by a quorum refuses to be replaced.
        ServerState::Leader => metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| ms < election_timeout.as_millis() as u64),
        _ => contact.elapsed() < election_timeout,
    };
    !leader_is_alive && req.last_log_id >= log_store.last_log_id()
}

/// Runs the election timer until the process stops.
pub async fn run_elections(
    raft: Raft,
    network: PeerNetwork,
    log_store: LogStore,
    contact: LeaderContact,
    member_id: u64,
    election_timeout: Duration,
) {
    let mut timeout = randomized(election_timeout);
    // The last pre-vote round: rounds are spaced by the timeout too, without pretending to
    // have heard from a leader (health and readiness go by real contact).
    let mut last_round: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            contact.touch();
            continue;
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        if !voters.contains(&member_id)
            || contact.elapsed() < timeout
            || last_round.is_some_and(|at| at.elapsed() < timeout)
        {
            continue;
        }
        let round_started = Instant::now();
        let req = PreVoteRequest {
            candidate: member_id,
            last_log_id: log_store.last_log_id(),
        };
        let mut asks = Vec::new();
        for id in voters.iter().filter(|id| **id != member_id) {
            let Some(url) = membership
                .get_node(id)
                .and_then(|n| n.peer_urls.first().cloned())
            else {
                continue;
            };
            let network = network.clone();
            let req = &req;
            asks.push(async move {
                network
                    .pre_vote(&url, req, election_timeout / 2)
                    .await
                    .unwrap_or(false)
            });
        }
        let granted = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|granted| *granted)
            .count();
        // A leader's message or another candidate's vote request that arrived meanwhile
        // means someone else is already campaigning or leading: stand down.
        let heard_meanwhile = contact.elapsed() < round_started.elapsed();
        // Whatever the round's outcome, wait a fresh randomised timeout before the next one.
        last_round = Some(Instant::now());
        timeout = randomized(election_timeout);
        if heard_meanwhile {
            tracing::debug!("heard from another member during pre-vote; not campaigning");
        } else if granted * 2 > voters.len() {
            tracing::info!(
                granted,
                voters = voters.len(),
                "pre-vote won; campaigning for leadership"
            );
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "campaigning failed");
            }
        } else {
            tracing::debug!(
                granted,
                voters = voters.len(),
                "pre-vote lost; not campaigning"
            );
        }
    }
}

/// etcd's randomised election timeout: in [timeout, 2 × timeout).
fn randomized(timeout: Duration) -> Duration {
    let ms = timeout.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms..2 * ms.max(1)))
}
