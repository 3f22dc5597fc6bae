//! `hermetic-kube`: the hermetic Kubernetes API server of the e2e tests, on its own, for
//! pointing kubectl or the operator at by hand.
//!
//! ```text
//! hermetic-kube --port 6443 --crds crds --kubeconfig /tmp/hermetic.kubeconfig
//! kubectl --kubeconfig /tmp/hermetic.kubeconfig apply -f examples/kvcluster.yaml
//! ```

use std::path::PathBuf;

use clap::Parser;
use ferrokv_e2e::kube::{ApiServer, ServerConfig};

#[derive(Parser)]
#[command(name = "hermetic-kube", about)]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// A directory of manifests (e.g. the CRDs in `crds/`) to create at start.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Where to write a kubeconfig for this server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from.
    #[arg(long, default_value_t = ferrokv_e2e::kube::store::DEFAULT_HISTORY)]
    history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ApiServer::start(ServerConfig {
        port: args.port,
        history_limit: args.history,
        ..ServerConfig::default()
    })
    .await?;
    if let Some(dir) = &args.crds {
        for object in server.create_from_dir(dir)? {
            println!(
                "created {} {}",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
    }
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
        println!("kubeconfig: {}", path.display());
    }
    println!("serving on {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
