//! TEMPORARY shim over the single-node kubelet until the node pool lands.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::kube::kubelet::{claim_dir, Kubelet, KubeletConfig};
use crate::kube::store::Store;

pub struct NodePoolConfig {
    pub nodes: Vec<String>,
    pub capacity: usize,
    pub dir: PathBuf,
    pub programs: BTreeMap<String, PathBuf>,
    pub node_monitor_grace: Duration,
}

pub struct NodePool {
    kubelet: Kubelet,
    dir: PathBuf,
}

impl NodePool {
    pub fn start(store: Arc<Store>, config: NodePoolConfig) -> anyhow::Result<NodePool> {
        let dir = config.dir.join("node-0");
        let kubelet = Kubelet::start(
            store,
            KubeletConfig {
                node_name: "node-0".into(),
                capacity: config.capacity,
                dir: dir.clone(),
                programs: config.programs,
            },
        )?;
        Ok(NodePool { kubelet, dir })
    }
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.kubelet.command(program)
    }
    pub fn container_log(&self, namespace: &str, pod: &str) -> String {
        self.kubelet.container_log(namespace, pod)
    }
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        claim_dir(&self.dir, namespace, claim)
    }
    pub fn fail_node(&self, _node: &str) {
        unimplemented!()
    }
    pub fn kill_container(&self, _namespace: &str, _pod: &str) -> bool {
        unimplemented!()
    }
}
