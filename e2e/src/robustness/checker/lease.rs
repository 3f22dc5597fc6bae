//! Leases: no keep-alive renews a lease after its revoke was acknowledged, and a key attached to
//! a lease is gone no earlier than TTL after the invocation of any acknowledged grant or
//! keep-alive of its lease (the server renewed it no earlier than that), unless a revoke was
//! sent. Attached keys are written once and touched by nothing but reads, so a linearizable read
//! that finds one gone proves its lease dead; a renewal acknowledged later is then as wrong as
//! an expiry that came early.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Anomaly, Checker};
use crate::robustness::history::{History, Outcome, Request, Response, Time};

/// What the history says about one lease.
#[derive(Debug, Default)]
struct LeaseFacts {
    /// Acknowledged grants and keep-alives: (operation id, invoked, TTL).
    renewals: Vec<(usize, Time, Duration)>,
    /// Revokes, answered or not: (operation id, invoked, returned if acknowledged).
    revokes: Vec<(usize, Time, Option<Time>)>,
    /// Acknowledged puts of attached keys: (key, returned).
    keys: Vec<(String, Time)>,
}

pub fn check(history: &History) -> Vec<Anomaly> {
    let mut leases: BTreeMap<i64, LeaseFacts> = BTreeMap::new();
    for op in &history.operations {
        match (&op.request, &op.outcome) {
            (_, Outcome::Ok(Response::LeaseGrant { lease, ttl })) if *ttl > 0 => {
                let ttl = Duration::from_secs(*ttl as u64);
                leases
                    .entry(*lease)
                    .or_default()
                    .renewals
                    .push((op.id, op.invoked, ttl));
            }
            (Request::LeaseKeepAlive { lease }, Outcome::Ok(Response::LeaseKeepAlive { ttl }))
                if *ttl > 0 =>
            {
                let ttl = Duration::from_secs(*ttl as u64);
                leases
                    .entry(*lease)
                    .or_default()
                    .renewals
                    .push((op.id, op.invoked, ttl));
            }
            (Request::LeaseRevoke { lease }, outcome) => {
                let returned = matches!(outcome, Outcome::Ok(_)).then_some(op.returned);
                leases
                    .entry(*lease)
                    .or_default()
                    .revokes
                    .push((op.id, op.invoked, returned));
            }
            (
                Request::Put {
                    key,
                    lease: Some(lease),
                    ..
                },
                Outcome::Ok(_),
            ) => {
                leases
                    .entry(*lease)
                    .or_default()
                    .keys
                    .push((key.clone(), op.returned));
            }
            _ => {}
        }
    }

    let mut anomalies = Vec::new();
    for (lease, facts) in &leases {
        for &(revoke, _, returned) in &facts.revokes {
            let Some(revoked) = returned else { continue };
            for &(renewal, invoked, _) in &facts.renewals {
                if invoked > revoked {
                    anomalies.push(Anomaly::new(
                        Checker::Lease,
                        format!(
                            "lease {lease:x} was renewed by a keep-alive sent after its revoke \
                             was acknowledged"
                        ),
                        vec![revoke, renewal],
                    ));
                }
            }
        }
        for (key, written) in &facts.keys {
            for op in &history.operations {
                let gone = match (&op.request, op.response()) {
                    (
                        Request::Get {
                            key: read,
                            serializable: false,
                        },
                        Some(Response::Range { kvs, .. }),
                    ) => read == key && op.invoked > *written && kvs.is_empty(),
                    _ => false,
                };
                if !gone {
                    continue;
                }
                // A revoke sent before the read answered may have removed the key.
                if facts
                    .revokes
                    .iter()
                    .any(|&(_, invoked, _)| invoked < op.returned)
                {
                    continue;
                }
                let renewed_until = facts
                    .renewals
                    .iter()
                    .map(|&(renewal, invoked, ttl)| (invoked + ttl, renewal))
                    .max();
                if let Some((until, renewal)) = renewed_until {
                    if op.returned < until {
                        anomalies.push(Anomaly::new(
                            Checker::Lease,
                            format!(
                                "key {key:?} of lease {lease:x} was gone {:?} before the TTL of \
                                 an acknowledged renewal ran out",
                                until - op.returned
                            ),
                            vec![renewal, op.id],
                        ));
                        break;
                    }
                }
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::checker::fixtures::*;
    use crate::robustness::history::Operation;

    const LEASE: i64 = 0x42;

    fn grant(invoked: u64, ttl: i64) -> Operation {
        op(
            invoked,
            invoked + 10,
            Request::LeaseGrant { ttl },
            Outcome::Ok(Response::LeaseGrant { lease: LEASE, ttl }),
        )
    }

    fn attach(invoked: u64) -> Operation {
        op(
            invoked,
            invoked + 10,
            Request::Put {
                key: "l".into(),
                value: "v".into(),
                lease: Some(LEASE),
            },
            Outcome::Ok(Response::Put { revision: 2 }),
        )
    }

    fn keep_alive(invoked: u64, ttl: i64) -> Operation {
        op(
            invoked,
            invoked + 10,
            Request::LeaseKeepAlive { lease: LEASE },
            Outcome::Ok(Response::LeaseKeepAlive { ttl }),
        )
    }

    fn revoke(invoked: u64) -> Operation {
        op(
            invoked,
            invoked + 10,
            Request::LeaseRevoke { lease: LEASE },
            Outcome::Ok(Response::LeaseRevoke { revision: 3 }),
        )
    }

    fn found(operations: Vec<Operation>) -> Vec<Anomaly> {
        check(&History::new(operations, Vec::new()))
    }

    #[test]
    fn key_gone_after_its_ttl_passes() {
        let anomalies = found(vec![
            grant(0, 2),
            attach(100),
            keep_alive(1000, 2),
            get(200, 210, "l", Some(("v", 2)), 2),
            get(3100, 3110, "l", None, 3),
            keep_alive(3200, 0),
        ]);
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }

    #[test]
    fn key_gone_before_the_ttl_of_a_keep_alive_is_flagged() {
        let anomalies = found(vec![
            grant(0, 2),
            attach(100),
            keep_alive(1000, 2),
            get(2500, 2510, "l", None, 3),
        ]);
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    }

    #[test]
    fn keep_alive_that_renews_an_expired_lease_is_flagged() {
        // The isolated-leader bug: the key is gone (the majority expired the lease), yet a
        // keep-alive sent afterwards is acknowledged.
        let anomalies = found(vec![
            grant(0, 2),
            attach(100),
            get(2500, 2510, "l", None, 3),
            keep_alive(2600, 2),
        ]);
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    }

    #[test]
    fn keep_alive_after_an_acknowledged_revoke_is_flagged() {
        let anomalies = found(vec![grant(0, 30), revoke(100), keep_alive(200, 30)]);
        assert_eq!(anomalies.len(), 1);
        assert!(found(vec![grant(0, 30), revoke(100), keep_alive(200, 0)]).is_empty());
    }

    #[test]
    fn key_gone_early_after_a_revoke_was_sent_passes() {
        let anomalies = found(vec![
            grant(0, 30),
            attach(100),
            revoke(200),
            get(300, 310, "l", None, 3),
        ]);
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }
}
