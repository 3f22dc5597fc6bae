//! Membership through the etcd v3 API: reading the member list and each member's health, and
//! the four membership steps (add as learner, promote, remove, move leadership).
//!
//! This is the only module that speaks to the cluster itself; it translates the wire types into
//! the planner's [`Member`] and nothing else.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use futures::future::join_all;

use crate::error::Error;
use crate::names::ClusterNames;
use crate::planner::Member;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the cluster says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    pub members: Vec<Member>,
    pub cluster_id: u64,
}

async fn connect(endpoints: &[String]) -> Result<Client, Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// Client URLs of the members the operator may have created, to reach the cluster through.
pub fn endpoints(names: &ClusterNames, ordinals: u32) -> Vec<String> {
    (0..ordinals.max(1)).map(|o| names.client_url(o)).collect()
}

/// The member list with every member's health and the leader; `None` when no member answers.
pub async fn observe(names: &ClusterNames, endpoints: &[String]) -> Option<MembershipView> {
    let mut client = connect(endpoints).await.ok()?;
    let response = client.member_list().await.ok()?;
    let cluster_id = response.header().map_or(0, |h| h.cluster_id());
    let listed = response.members().to_vec();

    let statuses = join_all(listed.iter().map(|m| {
        let ordinal = names.ordinal_of_member(m.name()).or_else(|| {
            m.peer_urls()
                .iter()
                .find_map(|u| names.ordinal_of_peer_url(u))
        });
        let url = m
            .client_urls()
            .first()
            .cloned()
            .or_else(|| ordinal.map(|o| names.client_url(o)));
        async move {
            let url = url?;
            let mut client = connect(&[url]).await.ok()?;
            let status = client.status().await.ok()?;
            status.errors().is_empty().then_some(status.leader())
        }
    }))
    .await;
    let leader = statuses.iter().flatten().copied().find(|&l| l != 0);

    let members = listed
        .iter()
        .zip(statuses)
        .map(|(m, status)| Member {
            id: m.id(),
            name: m.name().to_string(),
            ordinal: names.ordinal_of_member(m.name()).or_else(|| {
                m.peer_urls()
                    .iter()
                    .find_map(|u| names.ordinal_of_peer_url(u))
            }),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
            healthy: status.is_some(),
            is_leader: leader == Some(m.id()),
        })
        .collect();
    Some(MembershipView {
        members,
        cluster_id,
    })
}

/// MemberAdd as a learner; returns the new member's ID.
pub async fn add_learner(endpoints: &[String], peer_url: &str) -> Result<u64, Error> {
    let mut client = connect(endpoints).await?;
    let response = client
        .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
        .await?;
    Ok(response.member().map_or(0, |m| m.id()))
}

/// MemberPromote. The cluster refuses while the learner has not caught up; that is an error
/// the controller retries.
pub async fn promote(endpoints: &[String], id: u64) -> Result<(), Error> {
    connect(endpoints).await?.member_promote(id).await?;
    Ok(())
}

pub async fn remove(endpoints: &[String], id: u64) -> Result<(), Error> {
    connect(endpoints).await?.member_remove(id).await?;
    Ok(())
}

/// MoveLeader must be sent to the leader itself.
pub async fn move_leader(leader_client_url: &str, to: u64) -> Result<(), Error> {
    connect(&[leader_client_url.to_string()])
        .await?
        .move_leader(to)
        .await?;
    Ok(())
}
