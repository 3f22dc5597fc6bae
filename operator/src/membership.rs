//! Membership through the etcd v3 API: reading the member list and each member's health, and
//! the four membership steps (add as learner, promote, remove, move leadership).
//!
//! This is the only module that speaks to the cluster itself; it translates the wire types into
//! the planner's [`Member`] and nothing else.

use std::time::Duration;

use etcd_client::{Client, MemberAddOptions};
use futures::future::join_all;

use crate::error::Error;
use crate::etcd_access::EtcdAccess;
use crate::names::ClusterNames;
use crate::planner::Member;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's own client gives a defragmentation this long by default too.
const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What the cluster says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    pub members: Vec<Member>,
    pub cluster_id: u64,
}

async fn connect(access: &EtcdAccess, endpoints: &[String]) -> Result<Client, Error> {
    Ok(access
        .connect(endpoints, CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .await?)
}

/// Client URLs of the members the operator may have created, to reach the cluster through.
pub fn endpoints(names: &ClusterNames, ordinals: u32) -> Vec<String> {
    (0..ordinals.max(1)).map(|o| names.client_url(o)).collect()
}

/// What one member says about itself in its Status.
#[derive(Clone, Copy, Debug)]
struct Probed {
    id: u64,
    /// The leader it follows; never 0 (see [`probe`]).
    leader: u64,
    db_size: i64,
    db_size_in_use: i64,
    committed_index: u64,
    applied_index: u64,
}

/// Asks one member for its Status. `None` — unhealthy — when it does not answer or follows no
/// leader (etcd's `/health` says the same): a cluster electing is not Available, and a member
/// cut off from the others is not healthy. An alarm (the `errors` of its status) does not make
/// a member unhealthy: it stops writes, not the member.
async fn probe(access: &EtcdAccess, url: String) -> Option<Probed> {
    let mut client = connect(access, &[url]).await.ok()?;
    let status = client.status().await.ok()?;
    let probed = Probed {
        id: status.header()?.member_id(),
        leader: status.leader(),
        db_size: status.db_size(),
        db_size_in_use: status.raft_used_db_size(),
        committed_index: status.raft_index(),
        applied_index: status.raft_applied_index(),
    };
    (probed.leader != 0).then_some(probed)
}

/// The member list with every member's health and the leader; `None` when no member answers.
///
/// Each endpoint is asked on its own, and the list is the leader's: a member that was just
/// removed keeps answering for a moment with the membership it was in, and a client balancing
/// over all endpoints could ask it.
pub async fn observe(
    access: &EtcdAccess,
    names: &ClusterNames,
    endpoints: &[String],
) -> Option<MembershipView> {
    let probed = join_all(endpoints.iter().cloned().map(|url| probe(access, url))).await;
    let answering: Vec<(&String, Probed)> = endpoints
        .iter()
        .zip(&probed)
        .filter_map(|(url, p)| Some((url, (*p)?)))
        .collect();
    let source = answering
        .iter()
        .find(|(_, p)| p.id == p.leader)
        .or_else(|| answering.first())
        .map(|(url, _)| (*url).clone());
    // No endpoint answered a status: the list may still come from one (a member without a
    // leader answers MemberList locally).
    let sources = match source {
        Some(url) => vec![url],
        None => endpoints.to_vec(),
    };
    let mut response = None;
    for url in sources {
        let Ok(mut client) = connect(access, &[url]).await else {
            continue;
        };
        if let Ok(listed) = client.member_list().await {
            response = Some(listed);
            break;
        }
    }
    let response = response?;
    let cluster_id = response.header().map_or(0, |h| h.cluster_id());
    let listed = response.members().to_vec();

    let ordinal_of = |m: &etcd_client::Member| {
        names.ordinal_of_member(m.name()).or_else(|| {
            m.peer_urls()
                .iter()
                .find_map(|u| names.ordinal_of_peer_url(u))
        })
    };
    // Members the endpoints did not cover are asked at their own client URL.
    let statuses = join_all(listed.iter().map(|m| {
        let known = answering
            .iter()
            .find(|(_, p)| p.id == m.id())
            .map(|(_, p)| *p);
        let url = m
            .client_urls()
            .first()
            .cloned()
            .or_else(|| ordinal_of(m).map(|o| names.client_url(o)));
        let asked_already = url.as_ref().is_some_and(|u| endpoints.contains(u));
        async move {
            match (known, url) {
                (Some(status), _) => Some(status),
                (None, Some(url)) if !asked_already => probe(access, url).await,
                _ => None,
            }
        }
    }))
    .await;
    let leader = statuses.iter().flatten().map(|p| p.leader).next();

    let members = listed
        .iter()
        .zip(statuses)
        .map(|(m, status)| Member {
            id: m.id(),
            name: m.name().to_string(),
            ordinal: ordinal_of(m),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
            healthy: status.is_some(),
            is_leader: leader == Some(m.id()),
            db_size: status.map(|p| p.db_size),
            db_size_in_use: status.map(|p| p.db_size_in_use),
            committed_index: status.map(|p| p.committed_index),
            applied_index: status.map(|p| p.applied_index),
        })
        .collect();
    Some(MembershipView {
        members,
        cluster_id,
    })
}

/// Where membership changes go: the leader's client URL when a leader is known, so that the
/// answer never comes from a member that the change itself stops.
pub fn change_endpoints(names: &ClusterNames, members: &[Member], all: Vec<String>) -> Vec<String> {
    members
        .iter()
        .find(|m| m.is_leader && m.healthy)
        .and_then(|m| m.client_url(names))
        .map_or(all, |url| vec![url])
}

/// MemberAdd as a learner; returns the new member's ID.
pub async fn add_learner(
    access: &EtcdAccess,
    endpoints: &[String],
    peer_url: &str,
) -> Result<u64, Error> {
    let mut client = connect(access, endpoints).await?;
    let response = client
        .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
        .await?;
    Ok(response.member().map_or(0, |m| m.id()))
}

/// MemberPromote. The cluster refuses while the learner has not caught up; that is an error
/// the controller retries.
pub async fn promote(access: &EtcdAccess, endpoints: &[String], id: u64) -> Result<(), Error> {
    connect(access, endpoints).await?.member_promote(id).await?;
    Ok(())
}

pub async fn remove(access: &EtcdAccess, endpoints: &[String], id: u64) -> Result<(), Error> {
    connect(access, endpoints).await?.member_remove(id).await?;
    Ok(())
}

/// MoveLeader must be sent to the leader itself.
pub async fn move_leader(
    access: &EtcdAccess,
    leader_client_url: &str,
    to: u64,
) -> Result<(), Error> {
    connect(access, &[leader_client_url.to_string()])
        .await?
        .move_leader(to)
        .await?;
    Ok(())
}

/// Database sizes of one member, before and after it was defragmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defragmented {
    pub db_size_before: i64,
    pub db_size_after: i64,
    pub took: Duration,
    /// The member led the cluster when its defragmentation began: the planner keeps the
    /// leader for last, and its Event says so, so that a person (or a test) can tell the
    /// order apart from a leader change in between.
    pub led: bool,
}

impl Defragmented {
    /// Bytes given back to the file system.
    pub fn reclaimed(&self) -> i64 {
        (self.db_size_before - self.db_size_after).max(0)
    }
}

/// Defragments the member at `client_url` (etcd's Defragment, which only that member does)
/// and reads its database size before and after.
pub async fn defragment(access: &EtcdAccess, client_url: &str) -> Result<Defragmented, Error> {
    let mut client = access
        .connect(
            &[client_url.to_string()],
            CONNECT_TIMEOUT,
            DEFRAGMENT_TIMEOUT,
        )
        .await?;
    let status = client.status().await?;
    let before = status.db_size();
    let led = status
        .header()
        .is_some_and(|header| header.member_id() == status.leader());
    let started = std::time::Instant::now();
    client.defragment().await?;
    let took = started.elapsed();
    let after = client.status().await?.db_size();
    Ok(Defragmented {
        db_size_before: before,
        db_size_after: after,
        took,
        led,
    })
}
