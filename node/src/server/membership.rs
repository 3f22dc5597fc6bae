//! Membership changes: MemberAdd, MemberRemove, MemberUpdate, MemberPromote — the Cluster
//! service's writes — mapped onto openraft's learners and joint-consensus changes.
//!
//! Only the leader changes membership; a follower forwards the request. One change runs at a
//! time (openraft refuses a second while one is in flight), and a change that would leave the
//! cluster without a quorum of healthy voters is refused before it is proposed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::{MemberInfo, Server};
use crate::raft::types::{MemberNode, Raft};
use crate::storage::identity;
use crate::{Error, Result};

/// A membership change, as the leader receives it (from its own client or a follower).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

/// A learner may be promoted once it has this share of the leader's log (etcd's rule).
const LEARNER_READY_PERCENT: u64 = 90;

impl Server {
    /// Applies a membership change on the leader, forwarding it there from a follower; returns
    /// the member list after the change (and the added member, for MemberAdd).
    pub async fn change_members(
        &self,
        change: MemberChange,
    ) -> Result<(Option<MemberInfo>, Vec<MemberInfo>)> {
        let deadline = Instant::now() + self.inner.request_timeout;
        loop {
            if self.is_leader() {
                let added = self.change_members_as_leader(change.clone()).await?;
                let members = self.members()?;
                let added = added.and_then(|id| members.iter().find(|m| m.id == id).cloned());
                return Ok((added, members));
            }
            let leader = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            if leader != self.member_id() {
                if let Some(url) = self.peer_url_of(leader) {
                    match self
                        .inner
                        .network
                        .change_members(&url, &change, remaining)
                        .await
                    {
                        Ok(Ok(added)) => {
                            // Answer once this member knows of the change too.
                            self.read_barrier().await?;
                            let members = self.members()?;
                            let added =
                                added.and_then(|id| members.iter().find(|m| m.id == id).cloned());
                            return Ok((added, members));
                        }
                        Ok(Err(message)) if message == NOT_LEADER => {}
                        Ok(Err(message)) => return Err(membership_error(&message)),
                        Err(e) => {
                            tracing::debug!(error = %e, "forwarding a membership change failed; retrying")
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the leader: carries out the change; returns the ID of an added member.
    pub async fn change_members_as_leader(&self, change: MemberChange) -> Result<Option<u64>> {
        let metrics = self.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, MemberNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        if membership.get_joint_config().len() > 1 {
            return Err(Error::MembershipInProgress);
        }
        let raft = self.raft();
        let outcome = match change {
            MemberChange::Add { peer_urls, learner } => {
                for url in &peer_urls {
                    crate::config::parse_url(url).map_err(Error::BadPeerUrl)?;
                }
                if nodes
                    .values()
                    .any(|n| n.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(Error::PeerUrlExists);
                }
                let salt = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let id =
                    identity::member_id(&peer_urls, &self.inner.identity.cluster_token, Some(salt));
                let node = MemberNode {
                    name: String::new(),
                    peer_urls,
                };
                if !learner {
                    self.check_quorum_after(&voters, Some(id), None)?;
                }
                raft.add_learner(id, node, false)
                    .await
                    .map_err(raft_error)?;
                if !learner {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await
                        .map_err(raft_error)?;
                }
                return Ok(Some(id));
            }
            MemberChange::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(Error::MemberNotFound);
                }
                if voters.contains(&id) {
                    self.check_quorum_after(&voters, None, Some(id))?;
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                }
            }
            MemberChange::Update { id, peer_urls } => {
                let Some(node) = nodes.get(&id) else {
                    return Err(Error::MemberNotFound);
                };
                for url in &peer_urls {
                    crate::config::parse_url(url).map_err(Error::BadPeerUrl)?;
                }
                if nodes.iter().any(|(other, n)| {
                    *other != id && n.peer_urls.iter().any(|u| peer_urls.contains(u))
                }) {
                    return Err(Error::PeerUrlExists);
                }
                let updated = MemberNode {
                    name: node.name.clone(),
                    peer_urls,
                };
                raft.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, updated)])),
                    true,
                )
                .await
            }
            MemberChange::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(Error::MemberNotFound);
                }
                if voters.contains(&id) {
                    return Err(Error::MemberNotLearner);
                }
                let leader_index = metrics.last_log_index.unwrap_or(0);
                let learner_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
                    .unwrap_or(0);
                if learner_index * 100 < leader_index * LEARNER_READY_PERCENT {
                    return Err(Error::LearnerNotReady);
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                    .await
            }
        };
        outcome.map(|_| None).map_err(raft_error)
    }

    /// Refuses a change of voters after which fewer than a quorum of voters would be healthy:
    /// answering this leader within an election timeout, and caught up to within a few entries.
    fn check_quorum_after(
        &self,
        voters: &BTreeSet<u64>,
        adding: Option<u64>,
        removing: Option<u64>,
    ) -> Result<()> {
        let metrics = self.raft().metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let healthy = |id: &u64| -> bool {
            if *id == self.member_id() {
                return true;
            }
            let answering = self
                .inner
                .network
                .since_last_answer(*id)
                .is_some_and(|ago| ago < self.config().election_timeout);
            answering
                && metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .is_some_and(|matched| matched.index + 1000 >= last)
        };
        let mut after: BTreeSet<u64> = voters.clone();
        if let Some(id) = adding {
            after.insert(id);
        }
        if let Some(id) = removing {
            after.remove(&id);
        }
        let healthy_after = after.iter().filter(|id| healthy(id)).count();
        if after.is_empty() || healthy_after < after.len() / 2 + 1 {
            let why = format!(
                "{healthy_after} of {} voters would be healthy after the change, fewer than a quorum",
                after.len()
            );
            tracing::warn!("refusing a membership change: {why}");
            return Err(Error::Unhealthy(why));
        }
        Ok(())
    }
}

/// What a follower hears back when the member it forwarded to is no longer the leader.
pub const NOT_LEADER: &str = "not the leader";

fn raft_error(e: RaftError<u64, ClientWriteError<u64, MemberNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Error::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => Error::MembershipInProgress,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Unhealthy(e.to_string())
        }
        other => Error::Raft(other.to_string()),
    }
}

/// Turns an error message from the leader back into the error it names.
pub fn membership_error(message: &str) -> Error {
    let known = [
        Error::MemberNotFound,
        Error::MemberNotLearner,
        Error::LearnerNotReady,
        Error::PeerUrlExists,
        Error::MembershipInProgress,
        Error::NoLeader,
        Error::Timeout,
        Error::Unhealthy(String::new()),
    ];
    known
        .into_iter()
        .find(|e| e.to_string() == message)
        .unwrap_or_else(|| Error::Raft(message.to_string()))
}

impl Server {
    /// Hands leadership to `target` (etcd's MoveLeader). openraft 0.9 has no leadership
    /// transfer, so the leader stops writing and heartbeating until the followers' lease on it
    /// has run out, and asks the target to campaign at that moment — before any other follower's
    /// election timer fires. Writes wait meanwhile, about one election timeout.
    ///
    /// A target that cannot catch up within one election timeout (it is down, or cut off) ends
    /// the attempt, as etcd's raft abandons a transfer after one election timeout: writes must
    /// not wait longer than that. The future may be dropped at any await (its client gave up);
    /// heartbeats are switched back on however it ends.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        if target == self.member_id() {
            return Ok(());
        }
        let metrics = self.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(Error::BadLeaderTransferee);
        }
        let url = self.peer_url_of(target).ok_or(Error::BadLeaderTransferee)?;
        let deadline = Instant::now() + self.inner.request_timeout;
        let _writes = self.inner.write_gate.write().await;
        let catch_up_deadline = Instant::now() + self.config().election_timeout;
        // The target must hold everything, or it cannot win the election.
        loop {
            let m = self.raft().metrics().borrow().clone();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if matched >= last {
                break;
            }
            if Instant::now() >= catch_up_deadline {
                return Err(Error::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lease = self.config().election_timeout;
        let _paused = PausedHeartbeats::pause(self.raft());
        let campaign = self
            .inner
            .network
            .campaign(&url, lease + Duration::from_millis(50))
            .await;
        let moved = async {
            campaign.map_err(|e| Error::Raft(e.to_string()))?;
            loop {
                if self.leader() == Some(target) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(Error::LeaderTransferTimeout);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        .await;
        moved
    }
}

/// The leader's heartbeats, switched off while leadership is handed over and back on when this
/// is dropped — also when the MoveLeader future is dropped half-way, which would otherwise leave
/// a member that never heartbeats when it leads again. openraft's own election timer is not
/// touched: it stays off, as ferrokv times elections itself with a pre-vote (`raft::election`).
struct PausedHeartbeats<'a>(&'a Raft);

impl<'a> PausedHeartbeats<'a> {
    fn pause(raft: &'a Raft) -> Self {
        raft.runtime_config().heartbeat(false);
        PausedHeartbeats(raft)
    }
}

impl Drop for PausedHeartbeats<'_> {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}
