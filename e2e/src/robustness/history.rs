//! What the clients of one schedule asked and what they were told: every operation with the
//! times it was invoked and answered, every watch with the events it delivered, and the store's
//! own account of its history read after the schedule ([`FinalState`]).
//!
//! This module only holds records; the checkers judge them. An operation whose answer never
//! came (a timeout, a dropped connection, any error) is [`Outcome::Unknown`]: it may or may not
//! have taken effect, and checkers must allow both.

use std::time::Duration;

/// Time since the schedule started.
pub type Time = Duration;

/// A key with the value and revision a response reported for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

/// The condition of a compare-and-put transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key holds exactly this value.
    Value(String),
    /// The key's mod_revision is this one; 0 means the key does not exist (create-if-absent).
    ModRevision(i64),
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put {
        key: String,
        value: String,
        lease: Option<i64>,
    },
    /// A single-key Range.
    Get {
        key: String,
        serializable: bool,
    },
    /// A Range over `[start, end)`, as a Kubernetes list.
    List {
        start: String,
        end: String,
        serializable: bool,
    },
    /// A DeleteRange over `[start, end)` with prev_kv, or over one key when `end` is `None`.
    Delete {
        start: String,
        end: Option<String>,
    },
    /// A Txn: if `compare` holds on `key`, put `value`, else get `key`.
    CompareAndPut {
        key: String,
        compare: Compare,
        value: String,
    },
    LeaseGrant {
        ttl: i64,
    },
    /// One keep-alive request on a fresh stream.
    LeaseKeepAlive {
        lease: i64,
    },
    LeaseRevoke {
        lease: i64,
    },
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Put {
        revision: i64,
    },
    /// The answer to a Get or a List: header revision and the pairs found.
    Range {
        revision: i64,
        kvs: Vec<KeyValue>,
    },
    Delete {
        revision: i64,
        deleted: Vec<KeyValue>,
    },
    CompareAndPut {
        revision: i64,
        succeeded: bool,
        /// What the else branch read (absent when the compare held or the key does not exist).
        current: Option<KeyValue>,
    },
    LeaseGrant {
        lease: i64,
        ttl: i64,
    },
    /// `ttl` is 0 when the server said the lease does not exist.
    LeaseKeepAlive {
        ttl: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Response),
    /// No answer, or an error: the operation may or may not have taken effect.
    Unknown(String),
}

/// One request of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Position in [`History::operations`], set by [`History::new`].
    pub id: usize,
    pub client: usize,
    /// The host index of the member the client sent it to.
    pub member: usize,
    pub request: Request,
    pub invoked: Time,
    /// When the answer (or the error) came back.
    pub returned: Time,
    pub outcome: Outcome,
}

impl Operation {
    /// The response, when the outcome is known.
    pub fn response(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(response) => Some(response),
            Outcome::Unknown(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put { value: String },
    Delete,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub kind: EventKind,
}

/// One watch request, from its creation until its stream ended or the schedule stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRecord {
    pub client: usize,
    pub member: usize,
    pub start: String,
    pub end: String,
    pub start_revision: i64,
    pub opened: Time,
    pub events: Vec<Event>,
    /// Set when the watch was still open when traffic stopped and the client waited for every
    /// event up to this revision: the watch must have delivered all of them.
    pub complete_to: Option<i64>,
    /// Why the stream ended, for the report.
    pub ended: String,
}

impl WatchRecord {
    /// Whether `key` is in the watched range.
    pub fn covers(&self, key: &str) -> bool {
        self.start.as_str() <= key && key < self.end.as_str()
    }
}

/// The store's account of the schedule, read after every member was killed and restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalState {
    /// Every event under the schedule's prefix from revision 1, in order.
    pub events: Vec<Event>,
    /// Every pair under the schedule's prefix at `revision`.
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// Everything the clients of one schedule recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub operations: Vec<Operation>,
    pub watches: Vec<WatchRecord>,
}

impl History {
    /// Orders `operations` by invocation time and numbers them.
    pub fn new(mut operations: Vec<Operation>, watches: Vec<WatchRecord>) -> History {
        operations.sort_by_key(|op| (op.invoked, op.client));
        for (id, op) in operations.iter_mut().enumerate() {
            op.id = id;
        }
        History {
            operations,
            watches,
        }
    }
}
