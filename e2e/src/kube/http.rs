//! The REST layer: turns Kubernetes API requests into [`Store`] calls and their results into
//! responses — paths, query parameters, content types, Status objects, Tables and watch
//! streams. It decides nothing about objects itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::kube::discovery;
use crate::kube::error::ApiError;
use crate::kube::openapi;
use crate::kube::resources::ResourceType;
use crate::kube::selector::{FieldSelector, LabelSelector};
use crate::kube::store::{
    DeleteOptions, FieldValidation, ListOptions, Patch, Propagation, ScaleChange, Store, WatchItem,
    WatchOptions, WriteOptions,
};
use crate::kube::table::{self, IncludeObject};

/// What every request handler shares.
pub struct Server {
    pub store: Arc<Store>,
    /// `127.0.0.1:PORT`, for `/api`'s server address.
    pub address: String,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

/// The longest a watch runs when the client gives no `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

fn error_response(error: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.status(),
    )
}

fn not_found_path() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "details": {}, "code": 404,
        }),
    )
}

/// Where a resource request points.
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// The one handler: discovery, health, then resources.
pub async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let query = Query::parse(uri.query());
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let types = server.store.types();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET {
        match segments.as_slice() {
            ["version"] => return json_response(StatusCode::OK, &discovery::version()),
            ["healthz"] | ["livez"] | ["readyz"] => {
                return Response::new(Body::from("ok"));
            }
            ["api"] => {
                return if wants_aggregated(&accept) {
                    aggregated_response(discovery::aggregated(&types, true))
                } else {
                    json_response(StatusCode::OK, &discovery::core_versions(&server.address))
                };
            }
            ["apis"] => {
                return if wants_aggregated(&accept) {
                    aggregated_response(discovery::aggregated(&types, false))
                } else {
                    json_response(StatusCode::OK, &discovery::group_list(&types))
                };
            }
            ["openapi", "v3"] => {
                return json_response(StatusCode::OK, &openapi::index(&types));
            }
            ["openapi", "v3", "api", version] => {
                return openapi::group_version(&types, "", version)
                    .map_or_else(not_found_path, |d| json_response(StatusCode::OK, &d));
            }
            ["openapi", "v3", "apis", group, version] => {
                return openapi::group_version(&types, group, version)
                    .map_or_else(not_found_path, |d| json_response(StatusCode::OK, &d));
            }
            ["api", version] => {
                return discovery::resource_list(&types, "", version)
                    .map_or_else(not_found_path, |d| json_response(StatusCode::OK, &d));
            }
            ["apis", group] => {
                return discovery::group(&types, group)
                    .map_or_else(not_found_path, |d| json_response(StatusCode::OK, &d));
            }
            ["apis", group, version] => {
                return discovery::resource_list(&types, group, version)
                    .map_or_else(not_found_path, |d| json_response(StatusCode::OK, &d));
            }
            _ => {}
        }
    }
    let Some(target) = resolve(&server.store, &segments) else {
        return not_found_path();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let options = WriteOptions {
        manager: match query.get("fieldManager") {
            Some(manager) => manager.to_string(),
            None => user_agent
                .split('/')
                .next()
                .filter(|m| !m.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        },
        dry_run: query.get("dryRun") == Some("All"),
        field_validation: match query.get("fieldValidation") {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
    };
    let result = match method {
        Method::GET => return read(&server, &target, &query, &accept).await,
        Method::POST => create(&server, &target, &body, &content_type, &options),
        Method::PUT => replace(&server, &target, &body, &content_type, &options),
        Method::PATCH => {
            // An apply names its manager in `fieldManager` only; the user agent does not do.
            let options = if content_type.starts_with("application/apply-patch") {
                WriteOptions {
                    manager: query.get("fieldManager").unwrap_or_default().to_string(),
                    ..options
                }
            } else {
                options
            };
            patch(&server, &target, &query, &body, &content_type, &options)
        }
        Method::DELETE => delete(&server, &target, &query, &body),
        _ => Err(ApiError::MethodNotSupported {
            resource: target.rt.group_resource(),
            verb: method.to_string(),
        }),
    };
    match result {
        Ok((status, body, warnings)) => {
            let mut response = json_response(status, &body);
            for warning in warnings {
                let text = format!("299 - {:?}", warning);
                if let Ok(value) = HeaderValue::from_str(&text) {
                    response.headers_mut().append(header::WARNING, value);
                }
            }
            response
        }
        Err(error) => error_response(&error),
    }
}

type Outcome = Result<(StatusCode, Value, Vec<String>), ApiError>;

/// Whether the client accepts aggregated discovery: a media range with the parameters
/// `g=apidiscovery.k8s.io`, `v=v2` and `as=APIGroupDiscoveryList`.
fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let parameters: Vec<&str> = range.split(';').map(str::trim).skip(1).collect();
        ["g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"]
            .iter()
            .all(|wanted| parameters.contains(wanted))
    })
}

fn aggregated_response(document: Value) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)
        .body(Body::from(document.to_string()))
        .expect("static headers are valid")
}

/// Resolves `/api/v1/...` and `/apis/G/V/...` to a resource, namespace, name and subresource.
fn resolve(store: &Store, segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let lookup = |plural: &str| store.resource_type(group, version, plural);
    let owned = |s: &&str| s.to_string();
    match rest {
        ["namespaces", namespace, plural, tail @ ..]
            if !matches!(*plural, "status" | "finalize") =>
        {
            let rt = lookup(plural)?;
            if !rt.namespaced || tail.len() > 2 {
                return None;
            }
            Some(Target {
                rt,
                namespace: Some(namespace.to_string()),
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            })
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let rt = lookup(plural)?;
            if rt.namespaced && !tail.is_empty() {
                return None;
            }
            Some(Target {
                rt,
                namespace: None,
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            })
        }
        _ => None,
    }
}

fn decode_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if content_type.contains("protobuf") {
        // kubectl's imperative generators (`kubectl create namespace`, `create configmap`)
        // send protobuf; manifests (`create -f`, `apply -f`) go as JSON.
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml ({content_type} was sent; the hermetic API \
             server does not decode protobuf: use a manifest with `kubectl apply -f`)"
        )));
    }
    if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the object provided is unrecognized (must be of type JSON): {e}"
            ))
        })
    }
}

fn namespace_of(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or_default()
}

fn check_subresource(target: &Target) -> Result<(), ApiError> {
    match target.subresource.as_deref() {
        None => Ok(()),
        Some("status") if target.rt.status => Ok(()),
        Some("scale") if target.rt.scale.is_some() => Ok(()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "the server does not serve the {other:?} subresource of {}",
            target.rt.group_resource()
        ))),
    }
}

fn create(
    server: &Server,
    target: &Target,
    body: &Bytes,
    content_type: &str,
    options: &WriteOptions,
) -> Outcome {
    if target.name.is_some() {
        return Err(ApiError::MethodNotSupported {
            resource: target.rt.group_resource(),
            verb: "POST".into(),
        });
    }
    if target.rt.namespaced && target.namespace.is_none() {
        return Err(ApiError::BadRequest(
            "the namespace of the object must be given in the path".into(),
        ));
    }
    let object = decode_body(body, content_type)?;
    let written = server
        .store
        .create(&target.rt, namespace_of(target), object, options)?;
    Ok((StatusCode::CREATED, written.object, written.warnings))
}

fn replace(
    server: &Server,
    target: &Target,
    body: &Bytes,
    content_type: &str,
    options: &WriteOptions,
) -> Outcome {
    let name = target
        .name
        .as_deref()
        .ok_or_else(|| ApiError::MethodNotSupported {
            resource: target.rt.group_resource(),
            verb: "PUT on a collection".into(),
        })?;
    check_subresource(target)?;
    let object = decode_body(body, content_type)?;
    let namespace = namespace_of(target);
    if target.subresource.as_deref() == Some("scale") {
        let scale = server.store.update_scale(
            &target.rt,
            namespace,
            name,
            ScaleChange::Replace(object),
            options,
        )?;
        return Ok((StatusCode::OK, scale, Vec::new()));
    }
    let status = target.subresource.as_deref() == Some("status");
    let written = server
        .store
        .update(&target.rt, namespace, name, object, status, options)?;
    Ok((StatusCode::OK, written.object, written.warnings))
}

fn patch(
    server: &Server,
    target: &Target,
    query: &Query,
    body: &Bytes,
    content_type: &str,
    options: &WriteOptions,
) -> Outcome {
    let name = target
        .name
        .as_deref()
        .ok_or_else(|| ApiError::MethodNotSupported {
            resource: target.rt.group_resource(),
            verb: "PATCH on a collection".into(),
        })?;
    check_subresource(target)?;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let patch = match media {
        "application/merge-patch+json" => Patch::Merge(decode_body(body, "json")?),
        "application/json-patch+json" => Patch::Json(decode_body(body, "json")?),
        "application/strategic-merge-patch+json" => Patch::Strategic(decode_body(body, "json")?),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Patch::Apply {
            config: decode_body(body, "yaml")?,
            force: query.flag("force"),
        },
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json ({other})"
            )))
        }
    };
    let namespace = namespace_of(target);
    if target.subresource.as_deref() == Some("scale") {
        let scale = server.store.update_scale(
            &target.rt,
            namespace,
            name,
            ScaleChange::Patch(patch),
            options,
        )?;
        return Ok((StatusCode::OK, scale, Vec::new()));
    }
    let status = target.subresource.as_deref() == Some("status");
    let written = server
        .store
        .patch(&target.rt, namespace, name, patch, status, options)?;
    let code = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, written.object, written.warnings))
}

fn delete_options(query: &Query, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    };
    let propagation = body["propagationPolicy"]
        .as_str()
        .or_else(|| query.get("propagationPolicy"))
        .map(|p| match p {
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            "Background" => Ok(Propagation::Background),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy: Unsupported value: {other:?}"
            ))),
        })
        .transpose()?;
    let propagation = match (propagation, body["orphanDependents"].as_bool()) {
        (Some(p), _) => Some(p),
        (None, Some(true)) => Some(Propagation::Orphan),
        _ => None,
    };
    Ok(DeleteOptions {
        propagation,
        grace_period_seconds: body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_resource_version: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run: query.get("dryRun") == Some("All")
            || body["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All")),
    })
}

fn delete(server: &Server, target: &Target, query: &Query, body: &Bytes) -> Outcome {
    let options = delete_options(query, body)?;
    let namespace = namespace_of(target);
    let Some(name) = target.name.as_deref() else {
        // deletecollection
        let list = server.store.list(
            &target.rt,
            target.namespace.as_deref(),
            &list_options(query, &target.rt)?,
        )?;
        let mut deleted = Vec::new();
        for item in list.items {
            let name = item["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = item["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match server.store.delete(&target.rt, &ns, &name, &options) {
                Ok(d) => deleted.push(d.object),
                Err(ApiError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        let list = json!({
            "kind": target.rt.list_kind(),
            "apiVersion": target.rt.api_version(),
            "metadata": {"resourceVersion": server.store.revision().to_string()},
            "items": deleted,
        });
        return Ok((StatusCode::OK, list, Vec::new()));
    };
    if target.subresource.is_some() {
        return Err(ApiError::MethodNotSupported {
            resource: target.rt.group_resource(),
            verb: "DELETE of a subresource".into(),
        });
    }
    let deleted = server.store.delete(&target.rt, namespace, name, &options)?;
    let code = if deleted.finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, deleted.object, Vec::new()))
}

fn list_options(query: &Query, rt: &ResourceType) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &rt.kind)?,
        limit: query.get("limit").and_then(|l| l.parse().ok()),
        continue_token: query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: query.get("resourceVersion").map(str::to_string),
        resource_version_match: query.get("resourceVersionMatch").map(str::to_string),
    })
}

fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

async fn read(server: &Arc<Server>, target: &Target, query: &Query, accept: &str) -> Response {
    let store = &server.store;
    let include = IncludeObject::parse(query.get("includeObject"));
    let Some(name) = target.name.as_deref() else {
        if query.flag("watch") {
            return watch(server, target, query, wants_table(accept), include);
        }
        let options = match list_options(query, &target.rt) {
            Ok(options) => options,
            Err(error) => return error_response(&error),
        };
        return match store.list(&target.rt, target.namespace.as_deref(), &options) {
            Ok(listed) if wants_table(accept) => json_response(
                StatusCode::OK,
                &table::table(&target.rt, &listed.items, Some(listed.revision), include),
            ),
            Ok(listed) => {
                let mut metadata = json!({"resourceVersion": listed.revision.to_string()});
                if let Some(token) = listed.continue_token {
                    metadata["continue"] = json!(token);
                }
                json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": target.rt.list_kind(),
                        "apiVersion": target.rt.api_version(),
                        "metadata": metadata,
                        "items": listed.items,
                    }),
                )
            }
            Err(error) => error_response(&error),
        };
    };
    if let Err(error) = check_subresource(target) {
        return error_response(&error);
    }
    let namespace = namespace_of(target);
    let result = if target.subresource.as_deref() == Some("scale") {
        store.get_scale(&target.rt, namespace, name)
    } else {
        store.get(&target.rt, namespace, name)
    };
    match result {
        Ok(object) if wants_table(accept) && target.subresource.is_none() => json_response(
            StatusCode::OK,
            &table::table(&target.rt, &[object], None, include),
        ),
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(error) => error_response(&error),
    }
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch: newline-delimited JSON events until `timeoutSeconds`, the client leaves, or the
/// watch falls behind (an ERROR event with 410 Gone, so the client lists again).
fn watch(
    server: &Arc<Server>,
    target: &Target,
    query: &Query,
    as_table: bool,
    include: IncludeObject,
) -> Response {
    let options = match (|| -> Result<WatchOptions, ApiError> {
        Ok(WatchOptions {
            resource_version: query.get("resourceVersion").map(str::to_string),
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").unwrap_or_default(),
                &target.rt.kind,
            )?,
            send_initial_events: query.flag("sendInitialEvents"),
        })
    })() {
        Ok(options) => options,
        Err(error) => return error_response(&error),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    let watcher = server
        .store
        .watch(&target.rt, target.namespace.as_deref(), options);
    let rt = target.rt.clone();
    let interval = server.bookmark_interval;
    tokio::spawn(async move {
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(error) => {
                let _ = sender.send(event_line("ERROR", error.status())).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        let bookmark = |revision: u64, initial_end: bool| {
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}),
            )
        };
        loop {
            let line = tokio::select! {
                () = &mut deadline => break,
                () = sender.closed() => break,
                _ = ticks.tick(), if bookmarks => match watcher.bookmark_revision() {
                    Some(revision) => bookmark(revision, false),
                    None => continue,
                },
                item = watcher.next() => match item {
                    None => break,
                    Some(WatchItem::Event(kind, object)) => {
                        let object = if as_table {
                            let revision = object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok());
                            table::table(&rt, &[object], revision, include)
                        } else {
                            object
                        };
                        event_line(kind.as_str(), object)
                    }
                    Some(WatchItem::InitialEventsEnd(revision)) => bookmark(revision, true),
                    Some(WatchItem::Lagged) => {
                        let gone = ApiError::Expired("the watch fell behind; list again".into());
                        let _ = sender.send(event_line("ERROR", gone.status())).await;
                        break;
                    }
                },
            };
            if sender.send(line).await.is_err() {
                break;
            }
        }
    });
    let stream = ReceiverStream::new(receiver).map(Ok::<Bytes, Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_is_recognised_in_kubectls_accept_header() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
             application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
             application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let query = Query::parse(Some("labelSelector=app%3Dkv%2Ctier+in+%28a%29&watch=1"));
        assert_eq!(query.get("labelSelector"), Some("app=kv,tier in (a)"));
        assert!(query.flag("watch"));
    }

    #[test]
    fn paths_resolve_to_namespaced_and_cluster_resources() {
        let store = Store::new(100);
        let target = resolve(
            &store,
            &["api", "v1", "namespaces", "default", "pods", "p", "status"],
        )
        .unwrap();
        assert_eq!(target.rt.plural, "pods");
        assert_eq!(target.namespace.as_deref(), Some("default"));
        assert_eq!(target.subresource.as_deref(), Some("status"));
        let target = resolve(&store, &["api", "v1", "namespaces", "default"]).unwrap();
        assert_eq!(target.rt.plural, "namespaces");
        assert_eq!(target.name.as_deref(), Some("default"));
        let target = resolve(&store, &["apis", "apps", "v1", "statefulsets"]).unwrap();
        assert!(target.namespace.is_none() && target.name.is_none());
        assert!(resolve(&store, &["apis", "ferrokv.io", "v1alpha1", "kvclusters"]).is_none());
    }
}
