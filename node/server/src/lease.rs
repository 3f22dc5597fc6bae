//! Leases: granted and revoked through Raft, kept alive and expired by the leader.
//!
//! Which leases exist, their TTLs and their keys are replicated state (the MVCC store). When
//! each one expires is not: only the leader keeps the clock, as etcd's lessor does. A member
//! that becomes leader starts every lease's clock afresh at its full TTL — a lease never expires
//! early because leadership moved — and revokes a lease by proposing the revoke, so its keys are
//! deleted in one revision on every member. Keep-alives and TTL queries that reach a follower are
//! forwarded to the leader.
//!
//! A keep-alive is answered only by a leader that has confirmed its leadership with a quorum
//! after the request arrived (a read-index round, etcd-io/etcd#15247) and has applied its log:
//! a leader cut off from its peers, whom the majority has already replaced, renews nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::Instant as Deadline;

use super::Server;
use crate::{Result, ServerError as Error};
use ferrokv_raft::transport::{LeaderDuties, LeaseQuery};
pub use ferrokv_raft::types::LeaseTtl;
use ferrokv_raft::types::{Request, Response, WireError};

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(500);
/// How often the leader reconciles its clock with the replicated leases.
const RECONCILE_TICKS: u32 = 4;

/// The leader's clock of lease expiries.
#[derive(Default)]
pub struct LeaseClock {
    /// The term in which this member became leader and loaded the clock; 0 when not leader.
    term: u64,
    expiries: HashMap<i64, Instant>,
}

/// Generates lease IDs unique across members: the member ID's low 16 bits, then time and a
/// counter, as etcd's idutil does.
pub struct LeaseIds {
    next: AtomicI64,
}

impl LeaseIds {
    pub fn new(member_id: u64) -> LeaseIds {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let prefix = ((member_id & 0x7fff) as i64) << 48;
        LeaseIds {
            next: AtomicI64::new(prefix | ((millis & 0xff_ffff_ffff) << 8)),
        }
    }

    fn next(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed).max(1)
    }
}

impl Server {
    /// The shortest TTL a lease gets: etcd's 1.5 election timeouts, in whole seconds.
    fn min_lease_ttl(&self) -> i64 {
        let ms = self.config().election_timeout.as_millis() as i64 * 3 / 2;
        ((ms + 999) / 1000).max(1)
    }

    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = ttl.max(self.min_lease_ttl());
        let id = if id == 0 {
            self.inner.lease_ids.next()
        } else {
            id
        };
        match self.propose(Request::LeaseGrant { id, ttl }).await? {
            Response::Rejected(e) => Err(e.into()),
            _ => {
                if self.is_leader() {
                    let mut clock = self.inner.lease_clock.lock().unwrap();
                    clock
                        .expiries
                        .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
                }
                Ok((id, ttl))
            }
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<i64> {
        self.propose_lease_revoke(id, Request::LeaseRevoke { id })
            .await
    }

    /// Revokes lease `id` for a client: its user needs write permission on the lease's keys,
    /// checked when the revoke is applied.
    pub async fn lease_revoke_as(&self, info: &crate::auth::AuthInfo, id: i64) -> Result<i64> {
        let request = self.authorized(info, Request::LeaseRevoke { id });
        self.propose_lease_revoke(id, request).await
    }

    async fn propose_lease_revoke(&self, id: i64, request: Request) -> Result<i64> {
        match self.propose(request).await? {
            Response::Rejected(e) => Err(e.into()),
            Response::Done { revision } => {
                self.inner.lease_clock.lock().unwrap().expiries.remove(&id);
                Ok(revision)
            }
            other => Err(Error::Raft(format!("lease revoke applied as {other:?}"))),
        }
    }

    /// The keys attached to lease `id`, in key order; none when there is no such lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        Ok(self.store().lease(id)?.map(|l| l.keys).unwrap_or_default())
    }

    /// The IDs of every lease the store holds.
    pub fn lease_ids(&self) -> Result<Vec<i64>> {
        Ok(self.store().leases()?.into_iter().map(|l| l.id).collect())
    }

    /// Renews lease `id`; on a follower, asks the leader.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseTtl> {
        if self.is_leader() {
            return self.keep_alive_as_leader(id).await;
        }
        self.ask_leader_about_lease(id, true).await
    }

    /// The remaining TTL of lease `id`; on a follower, asks the leader.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<LeaseTtl> {
        if self.is_leader() {
            return self.time_to_live_as_leader(id);
        }
        self.ask_leader_about_lease(id, false).await
    }

    async fn ask_leader_about_lease(&self, id: i64, renew: bool) -> Result<LeaseTtl> {
        let deadline = Deadline::now() + self.inner.request_timeout;
        loop {
            if self.is_leader() {
                return if renew {
                    self.keep_alive_as_leader(id).await
                } else {
                    self.time_to_live_as_leader(id)
                };
            }
            let leader = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Deadline::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            if let Some(url) = self.peer_url_of(leader) {
                match self.inner.network.lease(&url, id, renew, remaining).await {
                    Ok(Ok(ttl)) => return Ok(ttl),
                    Ok(Err(WireError::NotLeader)) => {
                        tracing::debug!("the member asked is no longer the leader; retrying")
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::debug!(error = %e, "lease request to the leader failed; retrying")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Loads the clock when this member has just become leader: every lease starts afresh.
    fn sync_lease_clock(&self) -> Result<()> {
        let status = self.raft_status();
        let mut clock = self.inner.lease_clock.lock().unwrap();
        if !status.is_leader() {
            clock.term = 0;
            clock.expiries.clear();
            return Ok(());
        }
        if clock.term != status.term {
            let now = Instant::now();
            clock.expiries = self
                .store()
                .leases()?
                .into_iter()
                .map(|l| (l.id, now + Duration::from_secs(l.ttl.max(0) as u64)))
                .collect();
            clock.term = status.term;
        }
        Ok(())
    }

    async fn keep_alive_as_leader(&self, id: i64) -> Result<LeaseTtl> {
        // Leadership confirmed by a quorum since the request arrived, and the log applied.
        self.read_barrier().await?;
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        self.sync_lease_clock()?;
        let Some(lease) = self.store().lease(id)? else {
            return Ok(LeaseTtl::NotFound);
        };
        {
            let mut clock = self.inner.lease_clock.lock().unwrap();
            let now = Instant::now();
            let expired = clock.expiries.get(&id).is_some_and(|at| *at <= now);
            if !expired {
                let ttl = Duration::from_secs(lease.ttl.max(0) as u64);
                clock.expiries.insert(id, now + ttl);
                return Ok(LeaseTtl::Alive {
                    remaining: lease.ttl,
                    granted: lease.ttl,
                });
            }
        }
        self.await_expired_lease_revoked(id).await
    }

    /// A lease whose time is up is not renewed: its revoke is (or is about to be) on its way
    /// through Raft, and renewing it would promise a TTL its keys will not get. As etcd's lessor
    /// does, the keep-alive waits for the revoke and answers that the lease is gone, or that
    /// this member is no longer the leader (the new leader starts every lease afresh).
    async fn await_expired_lease_revoked(&self, id: i64) -> Result<LeaseTtl> {
        let deadline = Deadline::now() + self.inner.request_timeout;
        loop {
            if !self.is_leader() {
                return Err(Error::NotLeader);
            }
            if self.store().lease(id)?.is_none() {
                return Ok(LeaseTtl::NotFound);
            }
            if Deadline::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn time_to_live_as_leader(&self, id: i64) -> Result<LeaseTtl> {
        self.sync_lease_clock()?;
        let Some(lease) = self.store().lease(id)? else {
            return Ok(LeaseTtl::NotFound);
        };
        let mut clock = self.inner.lease_clock.lock().unwrap();
        let now = Instant::now();
        let expiry = *clock
            .expiries
            .entry(id)
            .or_insert(now + Duration::from_secs(lease.ttl.max(0) as u64));
        Ok(LeaseTtl::Alive {
            remaining: expiry.saturating_duration_since(now).as_secs() as i64,
            granted: lease.ttl,
        })
    }

    /// The leader's expiry loop: revokes, through Raft, every lease whose time is up.
    pub async fn run_lease_expiry(self) {
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(EXPIRY_TICK).await;
            ticks = ticks.wrapping_add(1);
            if let Err(e) = self.sync_lease_clock() {
                tracing::warn!(error = %e, "reading leases failed");
                continue;
            }
            if !self.is_leader() {
                continue;
            }
            if ticks.is_multiple_of(RECONCILE_TICKS) {
                if let Err(e) = self.reconcile_lease_clock() {
                    tracing::warn!(error = %e, "reading leases failed");
                }
            }
            let now = Instant::now();
            let expired: Vec<i64> = {
                let clock = self.inner.lease_clock.lock().unwrap();
                clock
                    .expiries
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| *id)
                    .collect()
            };
            for id in expired {
                match self.lease_revoke(id).await {
                    Ok(_) | Err(Error::LeaseNotFound) => {
                        tracing::debug!(lease = format!("{id:x}"), "lease expired and was revoked");
                        self.inner.lease_clock.lock().unwrap().expiries.remove(&id);
                    }
                    Err(e) => {
                        tracing::info!(lease = format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry")
                    }
                }
            }
        }
    }

    /// Starts clocks for leases granted through another member, drops those revoked.
    fn reconcile_lease_clock(&self) -> Result<()> {
        let leases = self.store().leases()?;
        let now = Instant::now();
        let mut clock = self.inner.lease_clock.lock().unwrap();
        let live: HashMap<i64, i64> = leases.iter().map(|l| (l.id, l.ttl)).collect();
        clock.expiries.retain(|id, _| live.contains_key(id));
        for (id, ttl) in live {
            clock
                .expiries
                .entry(id)
                .or_insert(now + Duration::from_secs(ttl.max(0) as u64));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl LeaderDuties for Server {
    fn published_members(&self) -> Vec<u64> {
        self.state_machine()
            .member_attributes()
            .map(|attrs| {
                attrs
                    .into_iter()
                    .filter(|(_, a)| !a.client_urls.is_empty())
                    .map(|(id, _)| id)
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn change_members(
        &self,
        change: super::membership::MemberChange,
    ) -> Result<Option<u64>, WireError> {
        if !self.is_leader() {
            return Err(WireError::NotLeader);
        }
        Ok(self.change_members_as_leader(change).await?)
    }

    async fn lease(&self, query: LeaseQuery) -> Result<LeaseTtl, WireError> {
        if !self.is_leader() {
            return Err(WireError::NotLeader);
        }
        let result = if query.renew {
            self.keep_alive_as_leader(query.id).await
        } else {
            self.time_to_live_as_leader(query.id)
        };
        Ok(result?)
    }
}
