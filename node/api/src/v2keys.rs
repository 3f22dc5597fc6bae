//! etcd's v2 keys HTTP API on the client port, the subset that v2 discovery (`--discovery`)
//! uses, so one ferrokv cluster can be the discovery service of another: `GET` (a node, a
//! directory listing, `recursive`, `sorted`, and waits: `wait=true`, `waitIndex`, `stream`) and
//! `PUT` (`value`, `dir=true`, `prevExist`, `prevValue`, `prevIndex`), with etcd's JSON bodies,
//! error codes, statuses and `X-Etcd-Index` header. Not served: `POST` (in-order keys),
//! `DELETE`, TTLs.
//!
//! The tree lives in the replicated v3 key space (see `tree` for the layout): reads are
//! linearizable v3 Ranges, writes are v3 Txns proposed through Raft, and v2 indexes are MVCC
//! revisions. Waits are served by the server's watch engine, from history when `waitIndex` is
//! in the past.

mod tree;
pub mod wire;

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use etcd_client::proto::{PbKeyValue, PbRangeRequest};
use tokio::sync::mpsc;

use ferrokv_server::watch::{serve_stream, WatchCommand, WatchSpec};
use ferrokv_server::Server;
use ferrokv_server::{ApplyError, Request as Proposal, Response as Applied};
use tree::{Observed, Stored, Write};
use wire::{Action, Error, ErrorCode, Event};

/// The path prefix of the keys API.
const KEYS_PREFIX: &str = "/v2/keys";
/// A write whose guards keep failing (other writers racing on the same nodes) gives up after
/// this many plans.
const WRITE_ATTEMPTS: usize = 32;

pub fn router() -> Router<Server> {
    Router::new()
        .route(KEYS_PREFIX, any(serve))
        .route("/v2/keys/", any(serve))
        .route("/v2/keys/{*path}", any(serve))
}

async fn serve(
    State(server): State<Server>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::GET && method != Method::HEAD && method != Method::PUT {
        // etcd's allowMethod, for the methods served here.
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [
                (header::ALLOW, "GET,HEAD,PUT"),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            ],
            "Method Not Allowed\n",
        )
            .into_response();
    }
    let outcome = match KeyRequest::parse(&method, &uri, &headers, &body) {
        // The v2 API knows nothing of v3 users: while auth is enabled it serves nobody, with
        // etcd's answer to a v2 request without sufficient credentials.
        _ if server.auth_state().enabled => Err(unauthorized()),
        Err(e) => Err(e),
        Ok(req) if req.wait => wait(&server, req).await,
        Ok(req) if method == Method::PUT => put(&server, req).await,
        Ok(req) => get(&server, req).await,
    };
    let mut response = outcome.unwrap_or_else(error_response);
    if let Ok(id) = HeaderValue::from_str(&format!("{:x}", server.cluster_id())) {
        response.headers_mut().insert("X-Etcd-Cluster-ID", id);
    }
    response
}

/// A keys request, its form fields parsed as etcd parses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyRequest {
    path: String,
    value: String,
    dir: bool,
    recursive: bool,
    wait: bool,
    wait_index: u64,
    stream: bool,
    prev_exist: Option<bool>,
    prev_value: String,
    prev_index: u64,
    no_value_on_success: bool,
}

impl KeyRequest {
    fn parse(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<KeyRequest, Error> {
        let invalid = |code, cause: &str| Error::new(code, cause, 0);
        let raw = uri.path().strip_prefix(KEYS_PREFIX).unwrap_or("");
        let path = tree::clean_path(&percent_encoding::percent_decode_str(raw).decode_utf8_lossy());
        // Go's ParseForm: a form body first (it takes precedence), then the query string.
        let mut form: Vec<(String, String)> = Vec::new();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form && method == Method::PUT {
            form.extend(form_urlencoded::parse(body).into_owned());
        }
        if let Some(query) = uri.query() {
            form.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let flag = |name: &str| match field(name) {
            None => Ok(false),
            Some(v) => go_bool(v).ok_or_else(|| {
                invalid(
                    ErrorCode::InvalidField,
                    &format!("invalid value for {name:?}"),
                )
            }),
        };
        let index = |name: &str| match field(name) {
            None => Ok(0),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid(ErrorCode::IndexNaN, &format!("invalid value for {name:?}"))),
        };
        // Checked only: listings are always sorted by key (one of the orders etcd may give),
        // and every read is linearizable.
        flag("sorted")?;
        flag("quorum")?;
        let req = KeyRequest {
            prev_index: index("prevIndex")?,
            wait_index: index("waitIndex")?,
            recursive: flag("recursive")?,
            wait: flag("wait")?,
            dir: flag("dir")?,
            stream: flag("stream")?,
            no_value_on_success: flag("noValueOnSuccess")?,
            prev_value: field("prevValue").unwrap_or("").to_string(),
            prev_exist: match field("prevExist") {
                None => None,
                Some(v) => Some(go_bool(v).ok_or_else(|| {
                    invalid(ErrorCode::InvalidField, "invalid value for prevExist")
                })?),
            },
            value: field("value").unwrap_or("").to_string(),
            path,
        };
        if req.wait && method != Method::GET {
            return Err(invalid(
                ErrorCode::InvalidField,
                "\"wait\" can only be used with GET requests",
            ));
        }
        if field("prevValue") == Some("") {
            return Err(invalid(
                ErrorCode::PrevValueRequired,
                "\"prevValue\" cannot be empty",
            ));
        }
        if let Some(ttl) = field("ttl").filter(|t| !t.is_empty()) {
            if ttl.parse::<u64>().is_err() {
                return Err(invalid(ErrorCode::TtlNaN, "invalid value for \"ttl\""));
            }
            return Err(invalid(
                ErrorCode::InvalidField,
                "ttl is not supported by ferrokv's v2 keys API",
            ));
        }
        if field("refresh").is_some() {
            return Err(invalid(
                ErrorCode::InvalidField,
                "refresh is not supported by ferrokv's v2 keys API",
            ));
        }
        Ok(req)
    }

    fn write(&self) -> Write {
        match self.prev_exist {
            Some(true) if self.prev_value.is_empty() && self.prev_index == 0 => Write::Update {
                value: self.value.clone(),
            },
            Some(false) => Write::Create {
                dir: self.dir,
                value: self.value.clone(),
            },
            Some(true) => Write::CompareAndSwap {
                prev_value: self.prev_value.clone(),
                prev_index: self.prev_index,
                value: self.value.clone(),
            },
            None if !self.prev_value.is_empty() || self.prev_index > 0 => Write::CompareAndSwap {
                prev_value: self.prev_value.clone(),
                prev_index: self.prev_index,
                value: self.value.clone(),
            },
            None => Write::Set {
                dir: self.dir,
                value: self.value.clone(),
            },
        }
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

async fn get(server: &Server, req: KeyRequest) -> Result<Response, Error> {
    let path = req.path.as_str();
    let (kvs, revision) = range(server, tree::v3_key(path), Vec::new(), None).await?;
    let index = revision as u64;
    let target = kvs.first().and_then(Stored::from_kv);
    if target.is_none() && path != "/" {
        let observed = observe_ancestors(server, path, revision).await?;
        tree::not_found(path, &observed, index)?;
        return Err(Error::new(ErrorCode::KeyNotFound, path, index));
    }
    let node = match &target {
        Some(file) if !file.is_dir() => file.node(),
        _ => {
            let (start, end) = tree::descendants_range(path);
            let (kvs, _) = range(server, start, end, Some(revision)).await?;
            let below: Vec<Stored> = kvs.iter().filter_map(Stored::from_kv).collect();
            tree::listing(path, target.as_ref(), &below, req.recursive)
        }
    };
    let event = Event {
        action: Action::Get,
        node: Some(node),
        prev_node: None,
    };
    Ok(event_response(server, StatusCode::OK, &event, index))
}

async fn put(server: &Server, req: KeyRequest) -> Result<Response, Error> {
    let write = req.write();
    let current = || server.current_revision().unwrap_or(0).max(0) as u64;
    server
        .check_quota()
        .await
        .map_err(|e| Error::new(ErrorCode::RaftInternal, e.to_string(), current()))?;
    for _ in 0..WRITE_ATTEMPTS {
        let (kvs, revision) = range(server, tree::v3_key(&req.path), Vec::new(), None).await?;
        let observed = Observed {
            target: kvs.first().and_then(Stored::from_kv),
            ancestors: observe_ancestors(server, &req.path, revision).await?,
            index: revision as u64,
        };
        let plan = tree::plan(&req.path, &write, &observed)?;
        let txn = plan.txn();
        if txn.compare.len() > server.config().max_txn_ops {
            return Err(Error::new(
                ErrorCode::InvalidField,
                format!(
                    "{} is deeper than --max-txn-ops ({}) levels",
                    req.path,
                    server.config().max_txn_ops
                ),
                current(),
            ));
        }
        // Checked again where it is applied: refused there if auth was enabled meanwhile.
        let anonymous = server
            .auth_info(None, None)
            .await
            .map_err(|e| Error::new(ErrorCode::RaftInternal, e.to_string(), current()))?;
        let applied = server
            .propose(server.authorized(&anonymous, Proposal::Txn(txn)))
            .await
            .map_err(|e| Error::new(ErrorCode::RaftInternal, e.to_string(), current()))?;
        let resp = match applied {
            Applied::Txn(resp) => resp,
            Applied::Rejected(ApplyError::Auth(_)) => return Err(unauthorized()),
            Applied::Rejected(e) => {
                let e: ferrokv_server::ServerError = e.into();
                return Err(Error::new(
                    ErrorCode::RaftInternal,
                    e.to_string(),
                    current(),
                ));
            }
            other => {
                return Err(Error::new(
                    ErrorCode::RaftInternal,
                    format!("applying a v2 write returned {other:?}"),
                    current(),
                ))
            }
        };
        if !resp.succeeded {
            // Another write changed a node this one read: read and plan again.
            continue;
        }
        let revision = resp.header.map(|h| h.revision).unwrap_or(0).max(0) as u64;
        let mut event = plan.event(revision);
        let status = if event.is_created() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        if req.no_value_on_success {
            event.node = None;
            event.prev_node = None;
        }
        return Ok(event_response(server, status, &event, revision));
    }
    Err(Error::new(
        ErrorCode::RaftInternal,
        format!(
            "{} kept changing under this write; gave up after {WRITE_ATTEMPTS} attempts",
            req.path
        ),
        current(),
    ))
}

/// Answers with the first event at or after `waitIndex` (or, without one, the next event) on the
/// node — or below it, with `recursive=true`; with `stream=true`, with every such event. As in
/// etcd the headers go out at once and the body when the event happens.
async fn wait(server: &Server, req: KeyRequest) -> Result<Response, Error> {
    let current = server.current_revision().unwrap_or(0).max(0);
    let compacted = server.compact_revision().unwrap_or(0).max(0);
    let since = if req.wait_index == 0 {
        current as u64 + 1
    } else {
        req.wait_index
    };
    if (since as i64) < compacted {
        return Err(Error::new(
            ErrorCode::EventIndexCleared,
            format!("the requested history has been cleared [{compacted}/{since}]"),
            current as u64,
        ));
    }
    let (key, range_end) = if req.recursive {
        tree::subtree_range(&req.path)
    } else {
        (tree::v3_key(&req.path), Vec::new())
    };
    let (commands, command_rx) = mpsc::channel(1);
    let (out_tx, out_rx) = mpsc::channel(16);
    tokio::spawn(serve_stream(server.clone(), command_rx, out_tx));
    let spec = WatchSpec {
        key,
        range_end,
        start_revision: since as i64,
        prev_kv: true,
        ..WatchSpec::default()
    };
    if commands.send(WatchCommand::Create(spec)).await.is_err() {
        return Err(Error::new(
            ErrorCode::RaftInternal,
            "the watch engine stopped",
            current as u64,
        ));
    }
    let waiter = Waiter {
        _commands: commands,
        responses: out_rx,
        pending: std::collections::VecDeque::new(),
        path: req.path.clone(),
        recursive: req.recursive,
        current: current as u64,
        done: false,
    };
    let stream = futures::stream::unfold((waiter, req.stream), |(mut waiter, stream)| async move {
        if waiter.done {
            return None;
        }
        let chunk = waiter.next_chunk().await;
        if !stream {
            waiter.done = true;
        }
        Some((Ok::<_, Infallible>(chunk), (waiter, stream)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.headers_mut() = v2_headers(server, current as u64);
    Ok(response)
}

/// One wait's side of a watch stream, turning v3 events into v2 ones.
struct Waiter {
    /// Dropping it ends the watch stream's task.
    _commands: mpsc::Sender<WatchCommand>,
    responses: mpsc::Receiver<Result<etcd_client::proto::PbWatchResponse, tonic::Status>>,
    pending: std::collections::VecDeque<Event>,
    path: String,
    recursive: bool,
    current: u64,
    done: bool,
}

impl Waiter {
    /// The next event as a JSON line, or an error body if the watch ends first.
    async fn next_chunk(&mut self) -> Bytes {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return json_line(&event);
            }
            let response = match self.responses.recv().await {
                Some(Ok(response)) => response,
                _ => {
                    self.done = true;
                    return json_line(&Error::new(
                        ErrorCode::RaftInternal,
                        "the watch ended",
                        self.current,
                    ));
                }
            };
            if response.canceled {
                self.done = true;
                let (code, cause) = if response.compact_revision > 0 {
                    (
                        ErrorCode::EventIndexCleared,
                        format!(
                            "the requested history has been cleared [{}]",
                            response.compact_revision
                        ),
                    )
                } else {
                    (ErrorCode::RaftInternal, response.cancel_reason)
                };
                return json_line(&Error::new(code, cause, self.current));
            }
            self.pending.extend(
                response
                    .events
                    .iter()
                    .filter_map(|e| tree::event_of(e, &self.path, self.recursive)),
            );
        }
    }
}

/// Reads `key` (or the range up to `range_end`): linearizably at the current revision, or, given
/// one, serializably at `revision`. Returns the key-values and the revision read at.
async fn range(
    server: &Server,
    key: Vec<u8>,
    range_end: Vec<u8>,
    revision: Option<i64>,
) -> Result<(Vec<PbKeyValue>, i64), Error> {
    let req = PbRangeRequest {
        key,
        range_end,
        revision: revision.unwrap_or(0),
        serializable: revision.is_some(),
        ..Default::default()
    };
    match server.range(&req).await {
        Ok(resp) => {
            let at = revision.unwrap_or_else(|| resp.header.as_ref().map_or(0, |h| h.revision));
            Ok((resp.kvs, at))
        }
        Err(e) => Err(Error::new(
            ErrorCode::RaftInternal,
            e.to_string(),
            server.current_revision().unwrap_or(0).max(0) as u64,
        )),
    }
}

/// The directories above `path`, each as found at `revision`.
async fn observe_ancestors(
    server: &Server,
    path: &str,
    revision: i64,
) -> Result<Vec<(String, Option<Stored>)>, Error> {
    let mut out = Vec::new();
    for ancestor in tree::ancestors(path) {
        let (kvs, _) = range(server, tree::v3_key(&ancestor), Vec::new(), Some(revision)).await?;
        out.push((ancestor, kvs.first().and_then(Stored::from_kv)));
    }
    Ok(out)
}

fn v2_headers(server: &Server, index: u64) -> HeaderMap {
    let applied = server.applied_index();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("X-Etcd-Index", HeaderValue::from(index));
    headers.insert("X-Raft-Index", HeaderValue::from(applied));
    headers.insert("X-Raft-Term", HeaderValue::from(server.raft_summary().term));
    headers
}

fn event_response(server: &Server, status: StatusCode, event: &Event, index: u64) -> Response {
    let mut response = Response::new(Body::from(json_line(event)));
    *response.status_mut() = status;
    *response.headers_mut() = v2_headers(server, index);
    response
}

/// etcd's writeKeyNoAuth.
fn unauthorized() -> Error {
    Error::new(ErrorCode::Unauthorized, "Insufficient credentials", 0)
}

fn error_response(e: Error) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static("x-etcd-index"),
                HeaderValue::from(e.index),
            ),
        ],
        json_line(&e),
    )
        .into_response()
}

/// JSON as Go's `json.Encoder` writes it: one line.
fn json_line<T: serde::Serialize>(value: &T) -> Bytes {
    let mut out = serde_json::to_vec(value).expect("v2 JSON serializes");
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str, body: &str) -> Result<KeyRequest, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        KeyRequest::parse(&method, &uri.parse().unwrap(), &headers, body.as_bytes())
    }

    #[test]
    fn discovery_requests_parse_as_etcd_parses_them() {
        let req = parse(
            Method::PUT,
            "/v2/keys/discovery/tok/8e9e05c52164694d?prevExist=false",
            "value=infra1%3Dhttp%3A%2F%2F10.0.1.10%3A2380",
        )
        .unwrap();
        assert_eq!(req.path, "/discovery/tok/8e9e05c52164694d");
        assert_eq!(req.value, "infra1=http://10.0.1.10:2380");
        assert_eq!(
            req.write(),
            Write::Create {
                dir: false,
                value: "infra1=http://10.0.1.10:2380".into()
            }
        );
        let req = parse(
            Method::GET,
            "/v2/keys/discovery/tok?wait=true&recursive=true&waitIndex=12",
            "",
        )
        .unwrap();
        assert!(req.wait && req.recursive);
        assert_eq!(req.wait_index, 12);
        // The body wins over the query string, as in Go's ParseForm.
        let req = parse(Method::PUT, "/v2/keys/a%20b/?value=q", "value=b").unwrap();
        assert_eq!((req.path.as_str(), req.value.as_str()), ("/a b", "b"));
        assert_eq!(parse(Method::GET, "/v2/keys", "").unwrap().path, "/");
    }

    #[test]
    fn malformed_fields_are_refused_with_etcds_request_errors() {
        let e = parse(Method::GET, "/v2/keys/a?waitIndex=x", "").unwrap_err();
        assert_eq!((e.error_code, e.index), (203, 0));
        assert_eq!(e.cause, "invalid value for \"waitIndex\"");
        let e = parse(Method::GET, "/v2/keys/a?recursive=yes", "").unwrap_err();
        assert_eq!(e.error_code, 209);
        let e = parse(Method::PUT, "/v2/keys/a?wait=true", "").unwrap_err();
        assert_eq!(e.error_code, 209);
        let e = parse(Method::PUT, "/v2/keys/a?prevValue=", "").unwrap_err();
        assert_eq!(e.error_code, 201);
        let e = parse(Method::PUT, "/v2/keys/a", "value=1&ttl=x").unwrap_err();
        assert_eq!(e.error_code, 202);
    }

    #[test]
    fn preconditions_choose_the_write() {
        let write = |q: &str| {
            parse(Method::PUT, &format!("/v2/keys/a?{q}"), "value=v")
                .unwrap()
                .write()
        };
        assert!(matches!(write(""), Write::Set { .. }));
        assert!(matches!(write("prevExist=true"), Write::Update { .. }));
        assert!(matches!(
            write("prevExist=false&dir=true"),
            Write::Create { dir: true, .. }
        ));
        assert!(matches!(write("prevValue=x"), Write::CompareAndSwap { .. }));
        assert!(matches!(
            write("prevExist=true&prevIndex=3"),
            Write::CompareAndSwap { prev_index: 3, .. }
        ));
    }
}
