//! The JSON of etcd's v2 keys API, field for field: events (`{"action":..,"node":..}`), nodes,
//! and errors with etcd's codes, messages and HTTP statuses. Both the server side (`v2keys`) and
//! the v2 discovery client (`discovery::v2`) use these types, so they agree on one shape.

use serde::{Deserialize, Serialize};

/// What happened to a node, as etcd names it in `"action"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    Delete,
    CompareAndSwap,
    CompareAndDelete,
    Expire,
}

/// A node of the v2 tree: a file with a value, or a directory with (possibly) its children.
/// Fields are in etcd's order and left out when etcd leaves them out (`omitempty`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub created_index: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The body of every successful answer, and of every answer to a wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<Node>,
    #[serde(rename = "prevNode", skip_serializing_if = "Option::is_none", default)]
    pub prev_node: Option<Node>,
}

impl Event {
    /// Whether etcd answers this event with 201 Created rather than 200.
    pub fn is_created(&self) -> bool {
        self.action == Action::Create || (self.action == Action::Set && self.prev_node.is_none())
    }
}

/// etcd's v2 error codes (`v2error`), the ones this API can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    KeyNotFound,
    TestFailed,
    NotFile,
    NotDir,
    NodeExist,
    RootReadOnly,
    Unauthorized,
    PrevValueRequired,
    TtlNaN,
    IndexNaN,
    InvalidField,
    RaftInternal,
    EventIndexCleared,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::KeyNotFound => 100,
            ErrorCode::TestFailed => 101,
            ErrorCode::NotFile => 102,
            ErrorCode::NotDir => 104,
            ErrorCode::NodeExist => 105,
            ErrorCode::RootReadOnly => 107,
            ErrorCode::Unauthorized => 110,
            ErrorCode::PrevValueRequired => 201,
            ErrorCode::TtlNaN => 202,
            ErrorCode::IndexNaN => 203,
            ErrorCode::InvalidField => 209,
            ErrorCode::RaftInternal => 300,
            ErrorCode::EventIndexCleared => 401,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::KeyNotFound => "Key not found",
            ErrorCode::TestFailed => "Compare failed",
            ErrorCode::NotFile => "Not a file",
            ErrorCode::NotDir => "Not a directory",
            ErrorCode::NodeExist => "Key already exists",
            ErrorCode::RootReadOnly => "Root is read only",
            ErrorCode::Unauthorized => "The request requires user authentication",
            ErrorCode::PrevValueRequired => "PrevValue is Required in POST form",
            ErrorCode::TtlNaN => "The given TTL in POST form is not a number",
            ErrorCode::IndexNaN => "The given index in POST form is not a number",
            ErrorCode::InvalidField => "Invalid field",
            ErrorCode::RaftInternal => "Raft Internal Error",
            ErrorCode::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }
}

/// etcd's error body: `{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Error {
    pub error_code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub cause: String,
    pub index: u64,
}

impl Error {
    pub fn new(code: ErrorCode, cause: impl Into<String>, index: u64) -> Error {
        Error {
            error_code: code.code(),
            message: code.message().to_string(),
            cause: cause.into(),
            index,
        }
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.error_code == code.code()
    }

    /// The HTTP status etcd answers this error with.
    pub fn status(&self) -> u16 {
        match self.error_code {
            100 => 404,
            102 | 103 | 104 | 106 | 107 | 108 => 403,
            101 | 105 => 412,
            110 => 401,
            300 | 301 => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcd's own rendering: "100: Key not found (/foo) [7]".
        write!(
            f,
            "{}: {} ({}) [{}]",
            self.error_code, self.message, self.cause, self.index
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, value: &str, modified: u64, created: u64) -> Node {
        Node {
            key: key.into(),
            value: Some(value.into()),
            modified_index: modified,
            created_index: created,
            ..Node::default()
        }
    }

    #[test]
    fn a_created_file_has_etcds_field_order_and_no_empty_fields() {
        let event = Event {
            action: Action::Create,
            node: Some(file(
                "/discovery/t/8e9e05c52164694d",
                "a=http://h:2380",
                7,
                7,
            )),
            prev_node: None,
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"action":"create","node":{"key":"/discovery/t/8e9e05c52164694d","value":"a=http://h:2380","modifiedIndex":7,"createdIndex":7}}"#
        );
        assert!(event.is_created());
    }

    #[test]
    fn a_replaced_file_carries_its_previous_node_and_is_not_created() {
        let event = Event {
            action: Action::Set,
            node: Some(file("/k", "new", 9, 9)),
            prev_node: Some(file("/k", "old", 8, 8)),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"action":"set","node":{"key":"/k","value":"new","modifiedIndex":9,"createdIndex":9},"prevNode":{"key":"/k","value":"old","modifiedIndex":8,"createdIndex":8}}"#
        );
        assert!(!event.is_created());
        let cas = Event {
            action: Action::CompareAndSwap,
            ..event
        };
        assert!(serde_json::to_string(&cas)
            .unwrap()
            .starts_with(r#"{"action":"compareAndSwap","#));
    }

    #[test]
    fn a_listing_nests_directories_and_keeps_empty_values() {
        let event = Event {
            action: Action::Get,
            node: Some(Node {
                dir: true,
                nodes: vec![
                    Node {
                        key: "/d".into(),
                        dir: true,
                        modified_index: 3,
                        created_index: 3,
                        ..Node::default()
                    },
                    file("/e", "", 4, 4),
                ],
                ..Node::default()
            }),
            prev_node: None,
        };
        // The root has no key and no indexes; an empty value is still a value.
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"action":"get","node":{"dir":true,"nodes":[{"key":"/d","dir":true,"modifiedIndex":3,"createdIndex":3},{"key":"/e","value":"","modifiedIndex":4,"createdIndex":4}]}}"#
        );
    }

    #[test]
    fn errors_have_etcds_codes_messages_and_statuses() {
        let e = Error::new(ErrorCode::KeyNotFound, "/foo", 39);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"errorCode":100,"message":"Key not found","cause":"/foo","index":39}"#
        );
        assert_eq!(e.status(), 404);
        let e = Error::new(ErrorCode::NodeExist, "/foo", 40);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"errorCode":105,"message":"Key already exists","cause":"/foo","index":40}"#
        );
        assert_eq!(e.status(), 412);
        // A request error has no cause of its own in some cases and index 0.
        let e = Error::new(ErrorCode::InvalidField, "", 0);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"errorCode":209,"message":"Invalid field","index":0}"#
        );
        let status = |code| Error::new(code, "", 0).status();
        assert_eq!(status(ErrorCode::TestFailed), 412);
        assert_eq!(status(ErrorCode::NotFile), 403);
        assert_eq!(status(ErrorCode::NotDir), 403);
        assert_eq!(status(ErrorCode::RootReadOnly), 403);
        assert_eq!(status(ErrorCode::IndexNaN), 400);
        assert_eq!(status(ErrorCode::RaftInternal), 500);
        assert_eq!(status(ErrorCode::EventIndexCleared), 400);
    }

    #[test]
    fn etcds_answers_parse_back() {
        let text = r#"{"action":"get","node":{"key":"/discovery/t","dir":true,"nodes":[{"key":"/discovery/t/1","value":"a=http://h:1","modifiedIndex":5,"createdIndex":5},{"key":"/discovery/t/_config","dir":true,"modifiedIndex":4,"createdIndex":4}],"modifiedIndex":4,"createdIndex":4}}"#;
        let event: Event = serde_json::from_str(text).unwrap();
        let node = event.node.unwrap();
        assert_eq!(node.nodes.len(), 2);
        assert_eq!(node.nodes[0].value.as_deref(), Some("a=http://h:1"));
        assert!(node.nodes[1].dir);
        let e: Error = serde_json::from_str(
            r#"{"errorCode":100,"message":"Key not found","cause":"/x","index":3}"#,
        )
        .unwrap();
        assert!(e.is(ErrorCode::KeyNotFound));
    }
}
