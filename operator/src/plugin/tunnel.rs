//! A member's client port on 127.0.0.1, through the API server's `portforward` subresource of
//! its pod, as `kubectl port-forward` does: every connection accepted on the local port is
//! carried by a port-forward of its own. So the plugin reaches members from wherever kubectl
//! works, without their cluster DNS names or pod IPs.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::Error;

/// A local port forwarded to one pod's port; closed when dropped.
pub struct Tunnel {
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl Tunnel {
    /// Listens on a free port of 127.0.0.1 and forwards what it accepts to `port` of `pod`.
    pub async fn open(pods: Api<Pod>, pod: &str, port: u16) -> Result<Tunnel, Error> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?;
        let pod = pod.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let (pods, pod) = (pods.clone(), pod.clone());
                tokio::spawn(async move {
                    let mut forwarder = match pods.portforward(&pod, &[port]).await {
                        Ok(forwarder) => forwarder,
                        Err(error) => {
                            warn!(%error, pod, "port-forward refused");
                            return;
                        }
                    };
                    let Some(mut upstream) = forwarder.take_stream(port) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut connection, &mut upstream).await;
                    drop(upstream);
                    let _ = forwarder.join().await;
                });
            }
        });
        Ok(Tunnel { local, task })
    }

    /// The member's client URL through the tunnel. Member certificates name `127.0.0.1`, so
    /// TLS is verified as it would be on the member's own names.
    pub fn url(&self, https: bool) -> String {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://{}", self.local)
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}
