//! The checkers: pure functions from a recorded [`History`] and the store's [`FinalState`] to the
//! anomalies they show. None of them talks to a cluster, so each is tested on crafted histories,
//! including ones it must reject.
//!
//! - [`linearizability`]: every key's operations, including those whose outcome is unknown,
//!   can be put in one order that respects real time and the key-value model;
//! - [`revision_order`]: revisions never go backwards in real time and no two writes share one;
//! - [`watch`]: every watch delivered exactly the store's events of its range, in order, from
//!   its start revision;
//! - [`lease`]: no keep-alive renews a dead lease and no attached key goes before its TTL;
//! - [`durability`]: every acknowledged write is in the store's history after all members
//!   were killed and restarted, and the store's final pairs are what its history makes them;
//! - [`at_most_once`]: no write was applied twice.

pub mod at_most_once;
pub mod durability;
pub mod lease;
pub mod linearizability;
pub mod revision_order;
pub mod watch;

use std::collections::BTreeSet;
use std::fmt;

use super::history::{FinalState, History, Request};

/// Which checker found an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checker {
    Linearizability,
    RevisionOrder,
    Watch,
    Lease,
    Durability,
    AtMostOnce,
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Checker::Linearizability => "linearizability",
            Checker::RevisionOrder => "revision order",
            Checker::Watch => "watch",
            Checker::Lease => "lease",
            Checker::Durability => "durability",
            Checker::AtMostOnce => "at most once",
        };
        f.write_str(name)
    }
}

/// One thing a checker found wrong, with the smallest part of the history that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub checker: Checker,
    pub summary: String,
    /// Ids of the operations that show it, in invocation order.
    pub operations: Vec<usize>,
    /// Index of the watch that shows it, in [`History::watches`].
    pub watch: Option<usize>,
}

impl Anomaly {
    fn new(checker: Checker, summary: String, operations: Vec<usize>) -> Anomaly {
        Anomaly {
            checker,
            summary,
            operations,
            watch: None,
        }
    }
}

/// How strictly to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Checks serializable reads as if they were linearizable: the negative control, which a
    /// cluster with faults must fail.
    pub serializable_as_linearizable: bool,
    /// Search steps the linearizability checker may spend on one key before it gives up.
    pub search_budget: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            serializable_as_linearizable: false,
            search_budget: 2_000_000,
        }
    }
}

/// What all checkers found in one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    /// Keys whose linearizability search ran out of budget: neither proven nor refuted.
    pub inconclusive: Vec<String>,
}

/// Runs every checker.
pub fn check(history: &History, final_state: &FinalState, options: CheckOptions) -> Verdict {
    let linearizable = linearizability::check(history, options);
    let mut anomalies = linearizable.anomalies;
    anomalies.extend(revision_order::check(history, options));
    anomalies.extend(watch::check(history, final_state));
    anomalies.extend(lease::check(history));
    anomalies.extend(durability::check(history, final_state));
    anomalies.extend(at_most_once::check(history, final_state));
    Verdict {
        anomalies,
        inconclusive: linearizable.inconclusive,
    }
}

/// Keys written with a lease attached: they disappear when their lease ends, which the
/// key-value checkers do not model, so only the lease checker and durability look at them.
pub fn leased_keys(history: &History) -> BTreeSet<String> {
    history
        .operations
        .iter()
        .filter_map(|op| match &op.request {
            Request::Put {
                key,
                lease: Some(_),
                ..
            } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Building crafted histories for the checkers' tests.

    use std::time::Duration;

    use crate::robustness::history::{
        Compare, Event, EventKind, KeyValue, Operation, Outcome, Request, Response,
    };

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub fn kv(key: &str, value: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision,
        }
    }

    pub fn op(invoked: u64, returned: u64, request: Request, outcome: Outcome) -> Operation {
        Operation {
            id: 0,
            client: 0,
            member: 0,
            request,
            invoked: ms(invoked),
            returned: ms(returned),
            outcome,
        }
    }

    pub fn put(invoked: u64, returned: u64, key: &str, value: &str, revision: i64) -> Operation {
        op(
            invoked,
            returned,
            Request::Put {
                key: key.into(),
                value: value.into(),
                lease: None,
            },
            Outcome::Ok(Response::Put { revision }),
        )
    }

    pub fn unknown_put(invoked: u64, key: &str, value: &str) -> Operation {
        op(
            invoked,
            invoked + 5000,
            Request::Put {
                key: key.into(),
                value: value.into(),
                lease: None,
            },
            Outcome::Unknown("timed out".into()),
        )
    }

    pub fn get(
        invoked: u64,
        returned: u64,
        key: &str,
        found: Option<(&str, i64)>,
        revision: i64,
    ) -> Operation {
        read(invoked, returned, key, found, revision, false)
    }

    pub fn read(
        invoked: u64,
        returned: u64,
        key: &str,
        found: Option<(&str, i64)>,
        revision: i64,
        serializable: bool,
    ) -> Operation {
        op(
            invoked,
            returned,
            Request::Get {
                key: key.into(),
                serializable,
            },
            Outcome::Ok(Response::Range {
                revision,
                kvs: found
                    .map(|(value, rev)| kv(key, value, rev))
                    .into_iter()
                    .collect(),
            }),
        )
    }

    pub fn create(
        invoked: u64,
        returned: u64,
        key: &str,
        value: &str,
        answer: Response,
    ) -> Operation {
        op(
            invoked,
            returned,
            Request::CompareAndPut {
                key: key.into(),
                compare: Compare::ModRevision(0),
                value: value.into(),
            },
            Outcome::Ok(answer),
        )
    }

    pub fn put_event(revision: i64, key: &str, value: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            kind: EventKind::Put {
                value: value.into(),
            },
        }
    }

    pub fn delete_event(revision: i64, key: &str) -> Event {
        Event {
            revision,
            key: key.into(),
            kind: EventKind::Delete,
        }
    }
}
