//! Where the v2 tree lives in the replicated v3 key space, and what each v3 key records.
//!
//! The v2 node at path `/a/b` is the v3 key `\0v2keys/a/b`: the NUL byte keeps the tree apart
//! from every key a v3 client would write by name, and from etcd's own layouts. Each node —
//! file or directory — is one v3 key, so a node's MVCC `mod_revision` is its v2
//! `modifiedIndex` and the store's revision is the v2 index (`X-Etcd-Index`). Its value is
//!
//! ```text
//! [kind: b'f' file | b'd' dir][action: b's' set | b'c' create | b'u' update |
//!  b'w' compareAndSwap | b'i' parent made implicitly][created index: u64 big-endian,
//!  0 = the revision of this write][file value]
//! ```
//!
//! The action is recorded so a wait can report the event as etcd would, and implicitly made
//! parents (which etcd reports no event for) can be told apart. The created index is recorded
//! because v2 keeps a node's `createdIndex` through an update, yet gives a node replaced by a set
//! a new one — while a v3 put always keeps `create_revision`.
//!
//! Writes are planned here as pure functions of what was read: the puts to make and, for every
//! node read, a guard that it is still at the revision it was read at; the caller proposes them
//! as one v3 Txn, and reads and plans again when a guard fails.

use std::collections::BTreeMap;

use etcd_client::proto::{
    PbCompare, PbEvent, PbKeyValue, PbPutRequest, PbTargetUnion, PbTxnOpRequest, PbTxnRequest,
    PbTxnRequestOp,
};

use super::wire::{Action, Error, ErrorCode, Event, Node};

/// The v3 key prefix of the v2 tree.
pub const KEY_PREFIX: &[u8] = b"\0v2keys";

/// `Compare.CompareTarget::MOD` and `CompareResult::EQUAL` on the wire.
const COMPARE_MOD: i32 = 2;
const COMPARE_EQUAL: i32 = 0;
/// `Event.EventType::DELETE` on the wire.
const EVENT_DELETE: i32 = 1;

const HEADER_LEN: usize = 10;

/// A v2 path as etcd cleans it (Go's `path.Clean("/" + p)`): rooted, no empty, `.` or `..`
/// segments, no trailing slash.
pub fn clean_path(raw: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// The v3 key of the node at `path`.
pub fn v3_key(path: &str) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(path.as_bytes());
    key
}

/// The v3 range (`key`, `range_end`) holding every node below `path`.
pub fn descendants_range(path: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = KEY_PREFIX.to_vec();
    if path != "/" {
        start.extend_from_slice(path.as_bytes());
    }
    start.push(b'/');
    let mut end = start.clone();
    *end.last_mut().expect("ends with '/'") += 1;
    (start, end)
}

/// The v3 range holding `path` and every node below it (and, for a path other than the root,
/// some siblings whose names extend it, which [`under`] filters out).
pub fn subtree_range(path: &str) -> (Vec<u8>, Vec<u8>) {
    if path == "/" {
        return descendants_range(path);
    }
    let start = v3_key(path);
    let (_, end) = descendants_range(path);
    (start, end)
}

/// The v2 path of a v3 key of the tree.
pub fn path_of(key: &[u8]) -> Option<String> {
    let path = key.strip_prefix(KEY_PREFIX)?;
    Some(String::from_utf8_lossy(path).into_owned())
}

/// Whether `path` is `top` or below it.
pub fn under(path: &str, top: &str) -> bool {
    top == "/" || path == top || path.strip_prefix(top).is_some_and(|r| r.starts_with('/'))
}

/// The directories above `path`, outermost first, the root left out: `/a/b/c` → `/a`, `/a/b`.
pub fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = path[at + 1..].find('/') {
        at += 1 + i;
        out.push(path[..at].to_string());
    }
    out
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// etcd hides nodes whose name starts with `_` from listings and from waits above them.
pub fn hidden_below(top: &str, path: &str) -> bool {
    let rest = if top == "/" {
        path
    } else {
        path.strip_prefix(top).unwrap_or(path)
    };
    rest.split('/').any(|segment| segment.starts_with('_'))
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(String),
    Dir,
}

/// What one v3 key of the tree records; see the module documentation for the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub content: Content,
    /// `None` for a parent directory made implicitly by a write below it.
    pub action: Option<Action>,
    /// The node's `createdIndex` when it predates this write; 0 when this write created it.
    pub created: u64,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.push(match self.content {
            Content::File(_) => b'f',
            Content::Dir => b'd',
        });
        out.push(match self.action {
            None => b'i',
            Some(Action::Create) => b'c',
            Some(Action::Update) => b'u',
            Some(Action::CompareAndSwap) => b'w',
            Some(_) => b's',
        });
        out.extend_from_slice(&self.created.to_be_bytes());
        if let Content::File(value) = &self.content {
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Decodes a record; a value a v3 client wrote under the prefix reads as a file set to it.
    pub fn decode(bytes: &[u8]) -> Record {
        let raw = || Record {
            content: Content::File(String::from_utf8_lossy(bytes).into_owned()),
            action: Some(Action::Set),
            created: 0,
        };
        if bytes.len() < HEADER_LEN {
            return raw();
        }
        let action = match bytes[1] {
            b'i' => None,
            b's' => Some(Action::Set),
            b'c' => Some(Action::Create),
            b'u' => Some(Action::Update),
            b'w' => Some(Action::CompareAndSwap),
            _ => return raw(),
        };
        let created = u64::from_be_bytes(bytes[2..HEADER_LEN].try_into().expect("8 bytes"));
        let content = match bytes[0] {
            b'f' => Content::File(String::from_utf8_lossy(&bytes[HEADER_LEN..]).into_owned()),
            b'd' if bytes.len() == HEADER_LEN => Content::Dir,
            _ => return raw(),
        };
        Record {
            content,
            action,
            created,
        }
    }
}

/// A node as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub path: String,
    pub record: Record,
    pub created_index: u64,
    pub modified_index: u64,
}

impl Stored {
    pub fn from_kv(kv: &PbKeyValue) -> Option<Stored> {
        let path = path_of(&kv.key)?;
        let record = Record::decode(&kv.value);
        let modified_index = kv.mod_revision.max(0) as u64;
        let created_index = if record.created == 0 {
            modified_index
        } else {
            record.created
        };
        Some(Stored {
            path,
            record,
            created_index,
            modified_index,
        })
    }

    pub fn is_dir(&self) -> bool {
        self.record.content == Content::Dir
    }

    /// The node without its children.
    pub fn node(&self) -> Node {
        let (value, dir) = match &self.record.content {
            Content::File(v) => (Some(v.clone()), false),
            Content::Dir => (None, true),
        };
        Node {
            key: self.path.clone(),
            value,
            dir,
            nodes: Vec::new(),
            modified_index: self.modified_index,
            created_index: self.created_index,
        }
    }
}

/// The node `top` (the root when `None`) with its children — and theirs, when `recursive` —
/// from `descendants`, every node below it. Hidden nodes are left out; children are sorted by
/// key, which etcd does on `sorted=true` and which is one of the orders it may give without.
pub fn listing(path: &str, top: Option<&Stored>, descendants: &[Stored], recursive: bool) -> Node {
    let mut children: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for node in descendants {
        children.entry(parent(&node.path)).or_default().push(node);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let mut node = match top {
        Some(stored) => stored.node(),
        None => Node {
            dir: true,
            ..Node::default()
        },
    };
    if node.dir {
        node.nodes = child_nodes(path, &children, recursive);
    }
    node
}

fn child_nodes(dir: &str, children: &BTreeMap<&str, Vec<&Stored>>, recursive: bool) -> Vec<Node> {
    let Some(list) = children.get(dir) else {
        return Vec::new();
    };
    list.iter()
        .filter(|child| !hidden_below(dir, &child.path))
        .map(|child| {
            let mut node = child.node();
            if recursive && node.dir {
                node.nodes = child_nodes(&child.path, children, true);
            }
            node
        })
        .collect()
}

/// A write a PUT asks for, as etcd's v2 store tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// No precondition: create or replace (`PUT`).
    Set { dir: bool, value: String },
    /// `prevExist=false`: create only.
    Create { dir: bool, value: String },
    /// `prevExist=true`: replace only.
    Update { value: String },
    /// `prevValue` and/or `prevIndex`: replace a file only if it still matches.
    CompareAndSwap {
        prev_value: String,
        prev_index: u64,
        value: String,
    },
}

/// What a write's planning read: the node itself and each directory above it, all at revision
/// `index`.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub target: Option<Stored>,
    pub ancestors: Vec<(String, Option<Stored>)>,
    pub index: u64,
}

/// The v3 Txn a write becomes, and what to answer once it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// Nodes to write, parents first, the written node last.
    pub puts: Vec<(String, Record)>,
    /// Every node read, with the `mod_revision` it was read at (0: absent).
    pub guards: Vec<(String, i64)>,
    pub prev: Option<Stored>,
}

impl Plan {
    pub fn txn(&self) -> PbTxnRequest {
        PbTxnRequest {
            compare: self
                .guards
                .iter()
                .map(|(path, revision)| PbCompare {
                    result: COMPARE_EQUAL,
                    target: COMPARE_MOD,
                    key: v3_key(path),
                    range_end: Vec::new(),
                    target_union: Some(PbTargetUnion::ModRevision(*revision)),
                })
                .collect(),
            success: self
                .puts
                .iter()
                .map(|(path, record)| PbTxnRequestOp {
                    request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                        key: v3_key(path),
                        value: record.encode(),
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: Vec::new(),
        }
    }

    /// The event to answer with once the Txn committed at `revision`.
    pub fn event(&self, revision: u64) -> Event {
        let (path, record) = self.puts.last().expect("a plan writes its node");
        let stored = Stored {
            path: path.clone(),
            record: record.clone(),
            created_index: if record.created == 0 {
                revision
            } else {
                record.created
            },
            modified_index: revision,
        };
        Event {
            action: self.action,
            node: Some(stored.node()),
            prev_node: self.prev.as_ref().map(Stored::node),
        }
    }
}

/// Plans `write` to `path` against what was `observed`, or refuses it with etcd's error.
pub fn plan(path: &str, write: &Write, observed: &Observed) -> Result<Plan, Error> {
    let index = observed.index;
    if path == "/" {
        return Err(Error::new(ErrorCode::RootReadOnly, "/", index));
    }
    let mut guards: Vec<(String, i64)> = observed
        .ancestors
        .iter()
        .map(|(p, s)| (p.clone(), s.as_ref().map_or(0, |s| s.modified_index as i64)))
        .collect();
    guards.push((
        path.to_string(),
        observed
            .target
            .as_ref()
            .map_or(0, |s| s.modified_index as i64),
    ));
    let mut puts = Vec::new();
    let (action, content, created, prev) = match write {
        Write::Set { dir, value } | Write::Create { dir, value } => {
            // Creating walks down, making missing directories and refusing to pass a file.
            for (ancestor, stored) in &observed.ancestors {
                match stored {
                    Some(s) if !s.is_dir() => {
                        return Err(Error::new(ErrorCode::NotDir, ancestor.clone(), index))
                    }
                    Some(_) => {}
                    None => puts.push((
                        ancestor.clone(),
                        Record {
                            content: Content::Dir,
                            action: None,
                            created: 0,
                        },
                    )),
                }
            }
            let create_only = matches!(write, Write::Create { .. });
            let prev = match &observed.target {
                Some(_) if create_only => {
                    return Err(Error::new(ErrorCode::NodeExist, path, index))
                }
                Some(s) if s.is_dir() => return Err(Error::new(ErrorCode::NotFile, path, index)),
                other => other.clone(),
            };
            let content = if *dir {
                Content::Dir
            } else {
                Content::File(value.clone())
            };
            let action = if create_only {
                Action::Create
            } else {
                Action::Set
            };
            (action, content, 0, prev)
        }
        Write::Update { value } => {
            let current = existing(path, observed)?;
            if current.is_dir() && !value.is_empty() {
                return Err(Error::new(ErrorCode::NotFile, path, index));
            }
            let content = if current.is_dir() {
                Content::Dir
            } else {
                Content::File(value.clone())
            };
            (
                Action::Update,
                content,
                current.created_index,
                Some(current.clone()),
            )
        }
        Write::CompareAndSwap {
            prev_value,
            prev_index,
            value,
        } => {
            let current = existing(path, observed)?;
            let Content::File(current_value) = &current.record.content else {
                return Err(Error::new(ErrorCode::NotFile, path, index));
            };
            let index_matches = *prev_index == 0 || *prev_index == current.modified_index;
            let value_matches = prev_value.is_empty() || prev_value == current_value;
            let cause = match (value_matches, index_matches) {
                (true, true) => None,
                (false, true) => Some(format!("[{prev_value} != {current_value}]")),
                (true, false) => Some(format!("[{prev_index} != {}]", current.modified_index)),
                (false, false) => Some(format!(
                    "[{prev_value} != {current_value}] [{prev_index} != {}]",
                    current.modified_index
                )),
            };
            if let Some(cause) = cause {
                return Err(Error::new(ErrorCode::TestFailed, cause, index));
            }
            (
                Action::CompareAndSwap,
                Content::File(value.clone()),
                current.created_index,
                Some(current.clone()),
            )
        }
    };
    puts.push((
        path.to_string(),
        Record {
            content,
            action: Some(action),
            created,
        },
    ));
    Ok(Plan {
        action,
        puts,
        guards,
        prev,
    })
}

/// The node a write that needs one finds at `path`, or etcd's error walking there.
fn existing<'o>(path: &str, observed: &'o Observed) -> Result<&'o Stored, Error> {
    not_found(path, &observed.ancestors, observed.index)?;
    observed
        .target
        .as_ref()
        .ok_or_else(|| Error::new(ErrorCode::KeyNotFound, path, observed.index))
}

/// etcd's error for a missing node: "Not a directory" naming the file in the way, if one is,
/// else "Key not found".
pub fn not_found(
    path: &str,
    ancestors: &[(String, Option<Stored>)],
    index: u64,
) -> Result<(), Error> {
    for (ancestor, stored) in ancestors {
        match stored {
            Some(s) if !s.is_dir() => {
                return Err(Error::new(ErrorCode::NotDir, ancestor.clone(), index))
            }
            Some(_) => {}
            None => return Err(Error::new(ErrorCode::KeyNotFound, path, index)),
        }
    }
    Ok(())
}

/// The v2 event a v3 event of the tree is, for a wait on `top`; `None` for events a v2 watcher
/// does not see (implicitly made parents, hidden nodes, nodes elsewhere).
pub fn event_of(event: &PbEvent, top: &str, recursive: bool) -> Option<Event> {
    let kv = event.kv.as_ref()?;
    let path = path_of(&kv.key)?;
    let exact = path == top;
    if !(exact || recursive && under(&path, top)) || hidden_below(top, &path) {
        return None;
    }
    let prev = event.prev_kv.as_ref().and_then(Stored::from_kv);
    if event.r#type == EVENT_DELETE {
        let prev_node = prev.as_ref().map(Stored::node);
        return Some(Event {
            action: Action::Delete,
            node: Some(Node {
                key: path,
                dir: prev.as_ref().is_some_and(Stored::is_dir),
                modified_index: kv.mod_revision.max(0) as u64,
                created_index: prev.as_ref().map_or(0, |p| p.created_index),
                ..Node::default()
            }),
            prev_node,
        });
    }
    let stored = Stored::from_kv(kv)?;
    let action = stored.record.action?;
    let prev_node = match action {
        Action::Create => None,
        _ => prev.as_ref().map(Stored::node),
    };
    Some(Event {
        action,
        node: Some(stored.node()),
        prev_node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(path: &str, content: Content, modified: u64) -> Stored {
        Stored {
            path: path.into(),
            record: Record {
                content,
                action: Some(Action::Set),
                created: 0,
            },
            created_index: modified,
            modified_index: modified,
        }
    }

    fn file(path: &str, value: &str, modified: u64) -> Stored {
        stored(path, Content::File(value.into()), modified)
    }

    fn dir(path: &str, modified: u64) -> Stored {
        stored(path, Content::Dir, modified)
    }

    #[test]
    fn paths_are_cleaned_as_go_cleans_them() {
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("a//b/"), "/a/b");
        assert_eq!(clean_path("/a/./b/../c"), "/a/c");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
        assert!(ancestors("/a").is_empty());
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b"), "/a");
    }

    #[test]
    fn ranges_cover_the_subtree_and_nothing_else_after_filtering() {
        let (start, end) = descendants_range("/d");
        assert_eq!(start, b"\0v2keys/d/");
        assert_eq!(end, b"\0v2keys/d0");
        let (start, end) = descendants_range("/");
        assert_eq!(
            (start.as_slice(), end.as_slice()),
            (&b"\0v2keys/"[..], &b"\0v2keys0"[..])
        );
        let (start, _) = subtree_range("/d");
        assert_eq!(start, b"\0v2keys/d");
        assert!(under("/d/x", "/d") && under("/d", "/d") && !under("/dx", "/d"));
    }

    #[test]
    fn records_round_trip_and_foreign_values_read_as_files() {
        for record in [
            Record {
                content: Content::File("name=http://h:2380".into()),
                action: Some(Action::Create),
                created: 0,
            },
            Record {
                content: Content::Dir,
                action: None,
                created: 0,
            },
            Record {
                content: Content::File(String::new()),
                action: Some(Action::Update),
                created: 42,
            },
        ] {
            assert_eq!(Record::decode(&record.encode()), record);
        }
        assert_eq!(
            Record::decode(b"plain").content,
            Content::File("plain".into())
        );
    }

    #[test]
    fn listings_hide_underscore_names_and_nest_only_when_recursive() {
        let top = dir("/disc", 2);
        let below = vec![
            dir("/disc/_config", 2),
            file("/disc/_config/size", "3", 2),
            file("/disc/b", "b=http://b", 5),
            file("/disc/a", "a=http://a", 4),
            dir("/disc/sub", 6),
            file("/disc/sub/x", "1", 6),
        ];
        let flat = listing("/disc", Some(&top), &below, false);
        let keys: Vec<&str> = flat.nodes.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["/disc/a", "/disc/b", "/disc/sub"]);
        assert!(flat.nodes[2].dir && flat.nodes[2].nodes.is_empty());
        let deep = listing("/disc", Some(&top), &below, true);
        assert_eq!(deep.nodes[2].nodes[0].key, "/disc/sub/x");
        // The hidden node itself can be read by its path.
        let config = listing("/disc/_config", Some(&below[0]), &below[1..2], false);
        assert_eq!(config.nodes[0].value.as_deref(), Some("3"));
        let root = listing("/", None, std::slice::from_ref(&top), false);
        assert_eq!(root.key, "");
        assert_eq!(root.nodes[0].key, "/disc");
    }

    #[test]
    fn create_makes_missing_parents_implicitly_and_guards_every_node_read() {
        let observed = Observed {
            target: None,
            ancestors: vec![("/a".into(), Some(dir("/a", 3))), ("/a/b".into(), None)],
            index: 9,
        };
        let write = Write::Create {
            dir: false,
            value: "v".into(),
        };
        let plan = plan("/a/b/c", &write, &observed).unwrap();
        assert_eq!(plan.action, Action::Create);
        assert_eq!(
            plan.guards,
            vec![("/a".into(), 3), ("/a/b".into(), 0), ("/a/b/c".into(), 0)]
        );
        assert_eq!(plan.puts.len(), 2);
        assert_eq!(plan.puts[0].1.action, None);
        let txn = plan.txn();
        assert_eq!((txn.compare.len(), txn.success.len()), (3, 2));
        let event = plan.event(10);
        assert!(event.is_created());
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"action":"create","node":{"key":"/a/b/c","value":"v","modifiedIndex":10,"createdIndex":10}}"#
        );
    }

    #[test]
    fn writes_are_refused_with_etcds_errors() {
        let exists = Observed {
            target: Some(file("/k", "old", 4)),
            ancestors: vec![],
            index: 7,
        };
        let create = Write::Create {
            dir: false,
            value: "v".into(),
        };
        let e = plan("/k", &create, &exists).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str(), e.index), (105, "/k", 7));

        let under_file = Observed {
            target: None,
            ancestors: vec![("/f".into(), Some(file("/f", "x", 2)))],
            index: 7,
        };
        let e = plan("/f/k", &create, &under_file).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (104, "/f"));
        let update = Write::Update { value: "v".into() };
        let e = plan("/f/k", &update, &under_file).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (104, "/f"));
        let e = plan("/k", &update, &Observed::default()).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (100, "/k"));

        let a_dir = Observed {
            target: Some(dir("/d", 3)),
            ancestors: vec![],
            index: 7,
        };
        let set = Write::Set {
            dir: false,
            value: "v".into(),
        };
        assert_eq!(plan("/d", &set, &a_dir).unwrap_err().error_code, 102);
        assert_eq!(plan("/", &set, &a_dir).unwrap_err().error_code, 107);

        let cas = Write::CompareAndSwap {
            prev_value: "nope".into(),
            prev_index: 0,
            value: "v".into(),
        };
        let e = plan("/k", &cas, &exists).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (101, "[nope != old]"));
    }

    #[test]
    fn set_over_a_file_is_a_new_node_and_update_keeps_its_created_index() {
        let mut old = file("/k", "old", 8);
        old.created_index = 5;
        let observed = Observed {
            target: Some(old),
            ancestors: vec![],
            index: 8,
        };
        let set = plan(
            "/k",
            &Write::Set {
                dir: false,
                value: "new".into(),
            },
            &observed,
        )
        .unwrap();
        let event = set.event(9);
        assert!(!event.is_created());
        assert_eq!(event.node.unwrap().created_index, 9);
        assert_eq!(event.prev_node.unwrap().value.as_deref(), Some("old"));
        let update = plan("/k", &Write::Update { value: "u".into() }, &observed).unwrap();
        let node = update.event(9).node.unwrap();
        assert_eq!((node.created_index, node.modified_index), (5, 9));
    }

    #[test]
    fn waits_see_written_nodes_but_not_implicit_parents_or_hidden_ones() {
        let put = |path: &str, record: Record, revision: i64| PbEvent {
            r#type: 0,
            kv: Some(PbKeyValue {
                key: v3_key(path),
                value: record.encode(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        };
        let created = Record {
            content: Content::File("m=http://m".into()),
            action: Some(Action::Create),
            created: 0,
        };
        let implicit = Record {
            content: Content::Dir,
            action: None,
            created: 0,
        };
        let e = event_of(&put("/d/t/1", created.clone(), 5), "/d/t", true).unwrap();
        assert_eq!(e.action, Action::Create);
        assert_eq!(e.node.unwrap().modified_index, 5);
        assert!(event_of(&put("/d/t/1", created.clone(), 5), "/d/t", false).is_none());
        assert!(event_of(&put("/d/t/1", created.clone(), 5), "/d/t/1", false).is_some());
        assert!(event_of(&put("/d/t/sub", implicit, 5), "/d/t", true).is_none());
        assert!(event_of(&put("/d/t/_config/size", created.clone(), 5), "/d/t", true).is_none());
        assert!(event_of(&put("/d/tx", created, 5), "/d/t", true).is_none());
    }
}
