//! etcd's v2 discovery protocol (`--discovery <url>`), over the v2 keys HTTP API: the URL's path
//! is the cluster's directory, `<dir>/_config/size` holds the expected size, and each member
//! creates `<dir>/<member-id-hex>` = `name=peer-url` (create only). The requests are etcd's:
//! a GET of the size, a GET listing of the directory, a `prevExist=false` PUT, and long-polling
//! recursive waits from the listing's index.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::net::TcpStream;

use super::{
    back_off, check_not_full, Registration, ERR_BAD_ENDPOINT, ERR_BAD_SIZE_KEY, ERR_DUPLICATE_ID,
    ERR_SIZE_NOT_FOUND,
};
use crate::api::v2keys::wire::{self, ErrorCode};
use crate::{Error, Result};

/// etcd's v2 client request timeout (`client.DefaultRequestTimeout`); waits have none.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a path segment may not hold unescaped in a request line.
const PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A discovery URL split as etcd splits it: the server, and the path naming the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryUrl {
    /// `host:port`.
    pub authority: String,
    /// The cluster's directory, e.g. `/v2/keys/discovery/<token>`.
    pub cluster: String,
}

impl DiscoveryUrl {
    pub fn parse(url: &str) -> std::result::Result<DiscoveryUrl, String> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(format!(
                "{url:?}: TLS URLs are not supported by ferrokv yet"
            ));
        } else {
            return Err(format!(
                "{url:?} is not a valid URL (expected http://host:port/v2/keys/...)"
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let cluster = format!("/{}", path.trim_end_matches('/'));
        if cluster == "/" {
            return Err(format!("{url:?} has no path naming the cluster"));
        }
        Ok(DiscoveryUrl { authority, cluster })
    }

    fn self_key(&self, id: &str) -> String {
        format!("{}/{id}", self.cluster)
    }

    fn size_key(&self) -> String {
        format!("{}/_config/size", self.cluster)
    }
}

/// An answer of the keys API: the event, or etcd's error.
struct Reply {
    status: StatusCode,
    index: u64,
    body: Bytes,
}

impl Reply {
    fn event(&self) -> std::result::Result<wire::Event, Answer> {
        if self.status.is_success() {
            return serde_json::from_slice(&self.body).map_err(|_| Answer::BadJson);
        }
        match serde_json::from_slice::<wire::Error>(&self.body) {
            Ok(e) => Err(Answer::Refused(e)),
            Err(_) => Err(Answer::BadJson),
        }
    }
}

/// Why an answer is not an event.
enum Answer {
    Refused(wire::Error),
    BadJson,
}

/// Registers `id` = `value` with the discovery service at `url` and waits for the cluster to
/// fill; returns every registration seen and the expected size.
pub async fn join(url: &str, id: &str, value: &str) -> Result<(Vec<Registration>, usize)> {
    let url = DiscoveryUrl::parse(url).map_err(Error::Discovery)?;
    let mut retries = 0;
    // Fast path: a full cluster is refused before registering.
    check_cluster(&url, id, &mut retries).await?;
    create_self(&url, id, value, &mut retries).await?;
    loop {
        let (registrations, size, index) = check_cluster(&url, id, &mut retries).await?;
        match wait_for_members(&url, registrations, size, index).await {
            Ok(all) => return Ok((all, size)),
            Err(e) => back_off(&mut retries, "waiting for other nodes", &e).await,
        }
    }
}

/// Reads the size and the registrations so far (sorted by creation), and the index to wait
/// from; refuses with etcd's error when the cluster is full without this member.
async fn check_cluster(
    url: &DiscoveryUrl,
    id: &str,
    retries: &mut u32,
) -> Result<(Vec<Registration>, usize, u64)> {
    loop {
        let size = match get(url, &url.size_key(), "").await {
            Err(e) => {
                back_off(retries, "cluster status check", &e).await;
                continue;
            }
            Ok(reply) => match reply.event() {
                Err(Answer::Refused(e)) if e.is(ErrorCode::KeyNotFound) => {
                    return Err(Error::Discovery(ERR_SIZE_NOT_FOUND.into()))
                }
                Err(Answer::Refused(e)) => return Err(Error::Discovery(format!("discovery: {e}"))),
                Err(Answer::BadJson) => return Err(Error::Discovery(ERR_BAD_ENDPOINT.into())),
                Ok(event) => event
                    .node
                    .and_then(|n| n.value)
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|size| *size > 0)
                    .ok_or_else(|| Error::Discovery(ERR_BAD_SIZE_KEY.into()))?,
            },
        };
        let reply = match get(url, &url.cluster, "").await {
            Err(e) => {
                back_off(retries, "cluster status check", &e).await;
                continue;
            }
            Ok(reply) => reply,
        };
        let listing = match reply.event() {
            Ok(event) => event.node.map(|n| n.nodes).unwrap_or_default(),
            Err(Answer::Refused(e)) => return Err(Error::Discovery(format!("discovery: {e}"))),
            Err(Answer::BadJson) => return Err(Error::Discovery(ERR_BAD_ENDPOINT.into())),
        };
        *retries = 0;
        let mut registrations: Vec<Registration> =
            listing.into_iter().filter_map(registration).collect();
        registrations.sort_by_key(|r| r.created);
        check_not_full(&registrations, id, size).map_err(Error::Discovery)?;
        return Ok((registrations, size, reply.index));
    }
}

/// A listed node as a registration, unless it is the `_config` directory.
fn registration(node: wire::Node) -> Option<Registration> {
    let id = node.key.rsplit('/').next()?.to_string();
    if id == "_config" || node.dir {
        return None;
    }
    Some(Registration {
        id,
        value: node.value?,
        created: node.created_index,
    })
}

/// Creates this member's key (create only). A key already holding the same registration is
/// this member's own, left by a start that died before its data dir was initialised.
async fn create_self(url: &DiscoveryUrl, id: &str, value: &str, retries: &mut u32) -> Result<()> {
    let key = url.self_key(id);
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("value", value)
        .finish();
    let created = loop {
        match request(
            url,
            Method::PUT,
            &key,
            "prevExist=false",
            Some(body.clone()),
        )
        .await
        {
            Err(e) => back_off(retries, "registering this member", &e).await,
            Ok(reply) => break reply,
        }
    };
    let created_index = match created.event() {
        Ok(event) => event.node.map_or(0, |n| n.created_index),
        Err(Answer::Refused(e)) if e.is(ErrorCode::NodeExist) => {
            let existing = get(url, &key, "").await.map_err(Error::Discovery)?;
            match existing.event() {
                Ok(event)
                    if event.node.as_ref().and_then(|n| n.value.as_deref()) == Some(value) =>
                {
                    tracing::info!(key = %key, "found this member's own registration from an earlier start");
                    event.node.map_or(0, |n| n.created_index)
                }
                _ => return Err(Error::Discovery(ERR_DUPLICATE_ID.into())),
            }
        }
        Err(Answer::Refused(e)) => return Err(Error::Discovery(format!("discovery: {e}"))),
        Err(Answer::BadJson) => return Err(Error::Discovery(ERR_BAD_ENDPOINT.into())),
    };
    // As etcd does: make sure the registration is visible on the server answering us.
    let query = format!("wait=true&waitIndex={created_index}");
    request(url, Method::GET, &key, &query, None)
        .await
        .map_err(Error::Discovery)?;
    Ok(())
}

/// Waits (long polls from `index + 1`) until `size` members have registered.
async fn wait_for_members(
    url: &DiscoveryUrl,
    mut all: Vec<Registration>,
    size: usize,
    index: u64,
) -> std::result::Result<Vec<Registration>, String> {
    all.truncate(size);
    let mut next = index + 1;
    while all.len() < size {
        tracing::info!(
            found = all.len(),
            needed = size - all.len(),
            "found peers from discovery server; waiting for more"
        );
        let query = format!("wait=true&recursive=true&waitIndex={next}");
        let reply = request(url, Method::GET, &url.cluster, &query, None).await?;
        let event = match reply.event() {
            Ok(event) => event,
            Err(Answer::Refused(e)) => return Err(e.to_string()),
            Err(Answer::BadJson) => return Err(ERR_BAD_ENDPOINT.to_string()),
        };
        let Some(node) = event.node else { continue };
        next = node.modified_index + 1;
        if let Some(r) = registration(node) {
            if !all.iter().any(|seen| seen.id == r.id) {
                tracing::info!(peer = %r.id, "found peer from discovery server");
                all.push(r);
            }
        }
    }
    Ok(all)
}

async fn get(url: &DiscoveryUrl, key: &str, query: &str) -> std::result::Result<Reply, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, request(url, Method::GET, key, query, None))
        .await
        .map_err(|_| format!("GET {key}: timed out after {REQUEST_TIMEOUT:?}"))?
}

/// One HTTP/1.1 request on its own connection. `Err` when the server cannot be reached or the
/// exchange breaks off — what etcd retries.
async fn request(
    url: &DiscoveryUrl,
    method: Method,
    key: &str,
    query: &str,
    form: Option<String>,
) -> std::result::Result<Reply, String> {
    let what = format!("{method} http://{}{key}", url.authority);
    let fail = |e: &dyn std::fmt::Display| format!("{what}: {e}");
    let stream = TcpStream::connect(&url.authority)
        .await
        .map_err(|e| fail(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(connection);
    let mut target = utf8_percent_encode(key, PATH_ESCAPES).to_string();
    if !query.is_empty() {
        target.push('?');
        target.push_str(query);
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header(hyper::header::HOST, &url.authority);
    if form.is_some() {
        builder = builder.header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let request = builder
        .body(Full::new(Bytes::from(form.unwrap_or_default())))
        .map_err(|e| fail(&e))?;
    let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
    let status = response.status();
    let index = response
        .headers()
        .get("X-Etcd-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(&e))?
        .to_bytes();
    Ok(Reply {
        status,
        index,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_urls_split_as_etcd_splits_them() {
        let u = DiscoveryUrl::parse("http://127.0.0.1:2379/v2/keys/discovery/abc/").unwrap();
        assert_eq!(u.authority, "127.0.0.1:2379");
        assert_eq!(u.cluster, "/v2/keys/discovery/abc");
        assert_eq!(
            u.self_key("8e9e05c52164694d"),
            "/v2/keys/discovery/abc/8e9e05c52164694d"
        );
        assert_eq!(u.size_key(), "/v2/keys/discovery/abc/_config/size");
        assert_eq!(DiscoveryUrl::parse("http://d/x").unwrap().authority, "d:80");
        assert!(DiscoveryUrl::parse("https://d:1/x").is_err());
        assert!(DiscoveryUrl::parse("http://d:1").is_err());
    }

    #[test]
    fn listed_nodes_are_registrations_except_the_config_directory() {
        let node = |key: &str, value: Option<&str>, dir: bool, created| wire::Node {
            key: key.into(),
            value: value.map(str::to_string),
            dir,
            created_index: created,
            modified_index: created,
            ..wire::Node::default()
        };
        assert_eq!(
            registration(node("/discovery/t/abc", Some("a=http://a"), false, 7)),
            Some(Registration {
                id: "abc".into(),
                value: "a=http://a".into(),
                created: 7
            })
        );
        assert_eq!(
            registration(node("/discovery/t/_config", None, true, 3)),
            None
        );
    }
}
