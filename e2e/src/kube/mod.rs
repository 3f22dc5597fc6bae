//! A hermetic Kubernetes API server: the REST API (JSON) of the kinds the operator and kubectl
//! use, on 127.0.0.1, in the test process. No etcd, no authentication, no admission webhooks;
//! everything else the operator relies on behaves as a real API server does — resourceVersions
//! and watches that resume or answer 410 Gone, server-side apply with managed fields, merge,
//! JSON and strategic merge patches, the status and scale subresources, finalizers, owner
//! references and garbage collection, CRDs with their schemas and CEL rules enforced.
//!
//! [`ApiServer::start`] runs one; [`ApiServer::kubeconfig`] is what kubectl and the operator
//! are pointed at. In-process controllers (a StatefulSet controller, the nodes) use the same
//! [`store::Store`] the HTTP layer does.
//!
//! | module | owns |
//! | --- | --- |
//! | `store` | objects, the resourceVersion counter, history, and every verb's semantics; its `deletion` (finalizers, GC, namespace and CRD cleanup), `scale` and `watch` |
//! | `http` | paths, query parameters, content types, Tables and watch streams |
//! | `resources` | the served kinds: built-in ones and those CRDs define |
//! | `schema`, `cel` | custom resources' structural schemas and validation rules |
//! | `fields` | managed fields and server-side apply |
//! | `patch` | strategic merge patch |
//! | `portforward` | the pods' `portforward` subresource, over a WebSocket |
//! | `discovery`, `openapi`, `table` | discovery and OpenAPI documents, `kubectl get` tables |
//! | `views` | kinds served under two APIs from one storage (Events) |
//! | `selector`, `meta`, `error` | selectors, server-assigned metadata, Status errors |
//! | `statefulset` | in-process controller: StatefulSets to pods and claims |
//! | `nodes` | a pool of nodes sharing one pod network: a `kubelet` per node (pods run as processes in network namespaces), the `scheduler`, the `node_lifecycle` controller and the `cluster_dns` |
//! | `background` | the controllers' tasks, which stop when their owner is dropped |

pub mod background;
pub mod cel;
mod cluster_dns;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod http;
pub mod kubelet;
pub mod meta;
mod node_lifecycle;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod portforward;
pub mod resources;
mod scheduler;
pub mod schema;
pub mod selector;
pub mod statefulset;
pub mod store;
pub mod table;
pub mod views;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::kube::http::Server;
use crate::kube::store::{Store, WriteOptions};

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Changes kept for watches to resume from; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            history_limit: store::DEFAULT_HISTORY,
            bookmark_interval: Duration::from_secs(30),
            port: 0,
        }
    }
}

/// A running API server; stops when dropped.
pub struct ApiServer {
    pub store: Arc<Store>,
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 in the current tokio runtime.
    pub async fn start(config: ServerConfig) -> anyhow::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
        let address = listener.local_addr()?;
        let store = Store::new(config.history_limit);
        let server = Arc::new(Server {
            store: store.clone(),
            address: address.to_string(),
            bookmark_interval: config.bookmark_interval,
        });
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
                axum::routing::get(portforward::handle),
            )
            .fallback(http::handle)
            .with_state(server);
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                eprintln!("hermetic API server stopped: {error}");
            }
        });
        Ok(ApiServer {
            store,
            address,
            shutdown: Some(shutdown),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kubeconfig whose current context is this server, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hermetic\n  cluster:\n    server: {}\n\
             users:\n- name: hermetic\n  user: {{}}\ncontexts:\n- name: hermetic\n  context:\n    \
             cluster: hermetic\n    user: hermetic\n    namespace: default\n\
             current-context: hermetic\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Creates every object of a YAML stream (CRDs, namespaces, anything served), as
    /// `kubectl create -f` would, under the field manager `hermetic-kube`.
    pub fn create_from_yaml(&self, text: &str) -> anyhow::Result<Vec<Value>> {
        let mut created = Vec::new();
        for document in serde_yaml::Deserializer::from_str(text) {
            let object = Value::deserialize(document).context("parsing a YAML document")?;
            if object.is_null() {
                continue;
            }
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let rt = self
                .store
                .types()
                .into_iter()
                .find(|t| t.group == group && t.version == version && t.kind == kind)
                .ok_or_else(|| anyhow!("{api_version} {kind} is not served"))?;
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let options = WriteOptions {
                manager: "hermetic-kube".into(),
                ..WriteOptions::default()
            };
            let written = self
                .store
                .create(&rt, &namespace, object, &options)
                .map_err(|e| anyhow!("{e}"))?;
            created.push(written.object);
        }
        Ok(created)
    }

    /// Creates every `*.yaml` file of a directory, in name order (e.g. `crds/`).
    pub fn create_from_dir(&self, dir: &Path) -> anyhow::Result<Vec<Value>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut created = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            created.extend(
                self.create_from_yaml(&text)
                    .with_context(|| format!("creating {}", file.display()))?,
            );
        }
        Ok(created)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
