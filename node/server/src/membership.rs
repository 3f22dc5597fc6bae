//! Membership changes: MemberAdd, MemberRemove, MemberUpdate, MemberPromote — the Cluster
//! service's writes — as Raft configuration changes (ConfChangeV2), and MoveLeader as a Raft
//! leader transfer.
//!
//! Only the leader changes membership; a follower forwards the request. One change runs at a
//! time, and a change that would leave the cluster without a quorum of healthy voters is
//! refused before it is proposed.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tokio::time::Instant;

use super::{MemberInfo, Server};
use crate::{Result, ServerError as Error};
use ferrokv_raft::node::Command;
pub use ferrokv_raft::types::MemberChange;
use ferrokv_raft::types::{codec, ConfChangeContext, MemberNode, Request, Response, WireError};
use ferrokv_storage::identity;

/// A learner may be promoted once it has this share of the leader's log (etcd's rule).
const LEARNER_READY_PERCENT: u64 = 90;
/// A voter counts as healthy for a membership change when it is this close to the leader.
const HEALTHY_LAG_ENTRIES: u64 = 1000;

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
                        Ok(Err(WireError::NotLeader)) => {}
                        Ok(Err(e)) => return Err(e.into()),
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
        let _one_at_a_time = self.inner.membership.lock().await;
        let status = self.raft_status();
        if !status.is_leader() {
            return Err(Error::NotLeader);
        }
        if status.pending_conf_index > self.state_machine().applied_index() {
            return Err(Error::MembershipInProgress);
        }
        let nodes = self.inner.members.nodes();
        let known = |id: &u64| status.voters.contains(id) || status.learners.contains(id);
        let (single, member, added) = match change {
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
                if !learner {
                    self.check_quorum_after(&status.voters, Some(id), None)?;
                }
                let change_type = if learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                let member = MemberNode {
                    name: String::new(),
                    peer_urls,
                };
                (conf_change(change_type, id), Some(member), Some(id))
            }
            MemberChange::Remove { id } => {
                if !known(&id) {
                    return Err(Error::MemberNotFound);
                }
                if status.voters.contains(&id) {
                    self.check_quorum_after(&status.voters, None, Some(id))?;
                }
                (conf_change(ConfChangeType::RemoveNode, id), None, None)
            }
            MemberChange::Update { id, peer_urls } => {
                if !known(&id) {
                    return Err(Error::MemberNotFound);
                }
                for url in &peer_urls {
                    crate::config::parse_url(url).map_err(Error::BadPeerUrl)?;
                }
                if nodes.iter().any(|(other, n)| {
                    *other != id && n.peer_urls.iter().any(|u| peer_urls.contains(u))
                }) {
                    return Err(Error::PeerUrlExists);
                }
                // Peer URLs are the members' business, not Raft's configuration.
                return match self
                    .propose(Request::UpdateMember { id, peer_urls })
                    .await?
                {
                    Response::Rejected(e) => Err(e.into()),
                    _ => Ok(None),
                };
            }
            MemberChange::Promote { id } => {
                if !known(&id) {
                    return Err(Error::MemberNotFound);
                }
                if status.voters.contains(&id) {
                    return Err(Error::MemberNotLearner);
                }
                let learner_index = status.progress.get(&id).map_or(0, |p| p.matched);
                if learner_index * 100 < status.last_index * LEARNER_READY_PERCENT {
                    return Err(Error::LearnerNotReady);
                }
                let member = nodes.get(&id).cloned();
                (conf_change(ConfChangeType::AddNode, id), member, None)
            }
        };
        self.propose_conf_change(single, member).await?;
        Ok(added)
    }

    /// Proposes one configuration change and waits until this member has applied it.
    async fn propose_conf_change(
        &self,
        single: ConfChangeSingle,
        member: Option<MemberNode>,
    ) -> Result<()> {
        let deadline = Instant::now() + self.inner.request_timeout;
        let id = self.next_proposal_id();
        let context = codec::encode(&ConfChangeContext {
            proposer: self.member_id(),
            id,
            member,
        });
        let change = ConfChangeV2 {
            changes: vec![single],
            context,
            ..Default::default()
        };
        let (answer, _guard) = self.wait_for_proposal(id);
        self.inner.raft.propose_conf_change(change).await?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result.map(|_| ()).map_err(Error::from),
            Ok(Err(_)) => Err(Error::Raft("the server is stopping".into())),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Refuses a change of voters after which fewer than a quorum of voters would be healthy:
    /// recently heard from by this leader, and caught up to within a few entries.
    fn check_quorum_after(
        &self,
        voters: &BTreeSet<u64>,
        adding: Option<u64>,
        removing: Option<u64>,
    ) -> Result<()> {
        let status = self.raft_status();
        let healthy = |id: &u64| -> bool {
            if *id == self.member_id() {
                return true;
            }
            let answering = self
                .inner
                .network
                .heard_from_within(*id, self.config().election_timeout);
            answering
                && status
                    .progress
                    .get(id)
                    .is_some_and(|p| p.matched + HEALTHY_LAG_ENTRIES >= status.last_index)
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

    /// Hands leadership to `target` (etcd's MoveLeader): a Raft leader transfer. The leader
    /// waits for the target to hold its whole log, then tells it to campaign at once; the
    /// transfer fails, as etcd's does, if the target has not taken over within an election
    /// timeout after catching up.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        let status = self.raft_status();
        if !status.is_leader() {
            return Err(Error::NotLeader);
        }
        if target == self.member_id() {
            return Ok(());
        }
        if !status.voters.contains(&target) {
            return Err(Error::BadLeaderTransferee);
        }
        let election = self.config().election_timeout;
        let deadline = Instant::now() + 2 * election;
        self.inner.raft.send(Command::TransferLeader(target));
        let mut watch = self.inner.raft.status_watch();
        loop {
            {
                let now = watch.borrow_and_update();
                if now.leader == target {
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Raft("raft stopped".into())),
                Err(_) => return Err(Error::LeaderTransferTimeout),
            }
        }
    }
}

fn conf_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut single = ConfChangeSingle {
        node_id,
        ..Default::default()
    };
    single.set_change_type(change_type);
    single
}
