//! [`ClusterDns`]: the cluster's names, as CoreDNS would serve them from Services and their
//! endpoints, written as hosts files — every pod host's `/etc/hosts` and the file the test's own
//! programs resolve through.
//!
//! Names: `HOSTNAME.SUBDOMAIN.NS.svc` for each pod whose headless Service `SUBDOMAIN` exists,
//! and each Service's `NAME.NS.svc` for the pods it selects (those Ready, unless
//! `publishNotReadyAddresses`), each also under `.cluster.local`. Addresses are the pods'
//! `status.podIP` and readiness their Ready condition, as the endpoints controller reads them:
//! a pod on a node that stopped reporting keeps its address until it is deleted.
//!
//! Not here: Services' virtual IPs (a Service name resolves to its pods' own addresses), SRV
//! records, search domains (names are written out to `.svc`).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::Value;

use crate::kube::background::Background;
use crate::kube::meta;
use crate::kube::store::{ListOptions, Store, WatchOptions};

/// How often the names are recomputed when nothing wakes the publisher.
const RESYNC: Duration = Duration::from_secs(1);

/// A running publisher; stops when dropped.
pub(crate) struct ClusterDns {
    _task: Background,
}

impl ClusterDns {
    /// Writes the current names to every file in `hosts_files` and keeps them current, in the
    /// current tokio runtime. The files are rewritten in place (bind mounts of them follow).
    pub fn start(store: Arc<Store>, hosts_files: Vec<PathBuf>) -> anyhow::Result<ClusterDns> {
        let mut publisher = Publisher {
            store,
            hosts_files,
            published: String::new(),
        };
        publisher.publish()?;
        Ok(ClusterDns {
            _task: Background::spawn(publisher.run()),
        })
    }
}

struct Publisher {
    store: Arc<Store>,
    hosts_files: Vec<PathBuf>,
    published: String,
}

impl Publisher {
    async fn run(mut self) {
        let pods = self
            .store
            .resource_type("", "v1", "pods")
            .expect("built-in");
        let services = self
            .store
            .resource_type("", "v1", "services")
            .expect("built-in");
        loop {
            let from = WatchOptions {
                resource_version: Some(self.store.revision().to_string()),
                ..WatchOptions::default()
            };
            let pod_changes = self.store.watch(&pods, None, from.clone());
            let service_changes = self.store.watch(&services, None, from);
            if let Err(error) = self.publish() {
                eprintln!("cluster-dns: {error:#}");
            }
            let (Ok(mut pod_changes), Ok(mut service_changes)) = (pod_changes, service_changes)
            else {
                tokio::time::sleep(RESYNC).await;
                continue;
            };
            tokio::select! {
                _ = pod_changes.next() => {}
                _ = service_changes.next() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// Rewrites every hosts file when the names changed.
    fn publish(&mut self) -> anyhow::Result<()> {
        let list = |plural| {
            let rt = self
                .store
                .resource_type("", "v1", plural)
                .expect("built-in");
            self.store
                .list(&rt, None, &ListOptions::default())
                .map(|listed| listed.items)
                .map_err(|e| anyhow!("listing {plural}: {e}"))
        };
        let services = list("services")?;
        let addressed: Vec<PodAddress> = list("pods")?
            .into_iter()
            .filter_map(|pod| {
                let address = pod["status"]["podIP"].as_str()?.parse().ok()?;
                let ready = is_ready(&pod);
                Some(PodAddress {
                    pod,
                    address,
                    ready,
                })
            })
            .collect();
        let text = hosts_text(&dns_records(&services, &addressed));
        if text == self.published {
            return Ok(());
        }
        for path in &self.hosts_files {
            write_in_place(path, &text)?;
        }
        self.published = text;
        Ok(())
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A pod with an address.
struct PodAddress {
    pod: Value,
    address: Ipv4Addr,
    ready: bool,
}

/// `(address, name)` records: pods by `HOSTNAME.SUBDOMAIN.NS.svc` (when the headless Service
/// `SUBDOMAIN` exists), Services by `NAME.NS.svc` to the pods they select.
fn dns_records(services: &[Value], pods: &[PodAddress]) -> Vec<(Ipv4Addr, String)> {
    let mut records = Vec::new();
    for service in services {
        let namespace = meta::namespace_of(service);
        let name = meta::name_of(service);
        let Some(selector) = service["spec"]["selector"].as_object() else {
            continue;
        };
        let not_ready_too = service["spec"]["publishNotReadyAddresses"] == true;
        for member in pods {
            let pod = &member.pod;
            if meta::namespace_of(pod) != namespace
                || meta::is_terminating(pod)
                || !selector
                    .iter()
                    .all(|(k, v)| &pod["metadata"]["labels"][k] == v)
            {
                continue;
            }
            if member.ready || not_ready_too {
                records.push((member.address, format!("{name}.{namespace}.svc")));
            }
            if let (Some(hostname), Some(subdomain)) = (
                pod["spec"]["hostname"].as_str(),
                pod["spec"]["subdomain"].as_str(),
            ) {
                if subdomain == name {
                    records.push((
                        member.address,
                        format!("{hostname}.{subdomain}.{namespace}.svc"),
                    ));
                }
            }
        }
    }
    records.sort();
    records.dedup();
    records
}

fn hosts_text(records: &[(Ipv4Addr, String)]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n");
    for (address, name) in records {
        text.push_str(&format!("{address}\t{name} {name}.cluster.local\n"));
    }
    text
}

/// Rewrites a file keeping its inode, so bind mounts of it see the new text.
fn write_in_place(path: &Path, text: &str) -> anyhow::Result<()> {
    // Written over the old text and only then cut to length: a resolver reading meanwhile sees
    // the new names (then, for a moment, the old text's tail), never an empty file — truncating
    // first made every name vanish for a moment.
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.set_len(text.len() as u64))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_resolve_to_selected_pods_and_pods_by_their_subdomain() {
        let service = |name: &str, not_ready: bool| {
            json!({
                "metadata": {"name": name, "namespace": "prod"},
                "spec": {"selector": {"app": "kv"}, "publishNotReadyAddresses": not_ready},
            })
        };
        let pod = |name: &str, ready: bool, octet: u8| PodAddress {
            pod: json!({
                "metadata": {"name": name, "namespace": "prod", "labels": {"app": "kv"}},
                "spec": {"hostname": name, "subdomain": "kv-peer"},
            }),
            address: Ipv4Addr::new(10, 0, 0, octet),
            ready,
        };
        let records = dns_records(
            &[service("kv-peer", true), service("kv-client", false)],
            &[pod("kv-0", true, 1), pod("kv-1", false, 2)],
        );
        let names: Vec<String> = records.iter().map(|(a, n)| format!("{a} {n}")).collect();
        assert_eq!(
            names,
            [
                "10.0.0.1 kv-0.kv-peer.prod.svc",
                "10.0.0.1 kv-client.prod.svc",
                "10.0.0.1 kv-peer.prod.svc",
                "10.0.0.2 kv-1.kv-peer.prod.svc",
                "10.0.0.2 kv-peer.prod.svc",
            ]
        );
    }
}
