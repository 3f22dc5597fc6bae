//! The `ferrokv-operator` binary: `run` the controller, print the `crd`, or `render` the
//! objects the operator would build for a KVCluster manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing::{error, info, warn};

use ferrokv_operator::backup::on_demand;
use ferrokv_operator::bootstrap::BootstrapConfig;
use ferrokv_operator::children::{self, BuildDefaults};
use ferrokv_operator::controller::{self, Context};
use ferrokv_operator::crd::TlsMode;
use ferrokv_operator::crd::{self, KVCluster};
use ferrokv_operator::leader_election::LeaseLock;
use ferrokv_operator::metrics::Metrics;
use ferrokv_operator::names::TlsSide;
use ferrokv_operator::tls::TlsSettings;

#[derive(Parser)]
#[command(name = "ferrokv-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller, in a cluster or against the cluster KUBECONFIG points at.
    Run(RunArgs),
    /// Print a CustomResourceDefinition as YAML: KVCluster's, or KVClusterBackup's.
    Crd {
        #[arg(value_enum, default_value_t = CrdKind::Kvcluster)]
        kind: CrdKind,
    },
    /// Print, as a YAML stream, every object the operator builds for a KVCluster manifest.
    Render {
        /// A file holding one KVCluster.
        manifest: PathBuf,
        /// Repository of the ferrokv image.
        #[arg(long, default_value = "ghcr.io/ferrokv/ferrokv")]
        image_repository: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Kvcluster,
    Kvclusterbackup,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(
        long,
        env = "FERROKV_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// Repository of the ferrokv image; a cluster's spec.version is a tag of it.
    #[arg(
        long,
        env = "FERROKV_IMAGE_REPOSITORY",
        default_value = "ghcr.io/ferrokv/ferrokv"
    )]
    image_repository: String,
    /// Name of the coordination.k8s.io Lease the operator replicas elect a leader through.
    #[arg(
        long,
        env = "FERROKV_OPERATOR_LEASE_NAME",
        default_value = "ferrokv-operator"
    )]
    lease_name: String,
    /// Namespace of that Lease; the client's default namespace when unset.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds a changed Secret takes to reach the files of the pods that mount it (the
    /// kubelet's sync period plus its cache): each step of a CA rotation waits this long.
    #[arg(
        long,
        env = "FERROKV_SECRET_PROPAGATION_SECONDS",
        default_value_t = 120
    )]
    secret_propagation_seconds: u64,
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn serve_http(addr: SocketAddr, state: HttpState) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(state): State<HttpState>| async move {
                if state.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(state): State<HttpState>| async move { state.metrics.render() }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration: in a pod, or with KUBECONFIG")?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(serve_http(
        args.http_addr,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    ));

    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("ferrokv-operator-{}", std::process::id()))
    });
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let duration = Duration::from_secs(args.lease_duration_seconds);
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(client.clone(), &lease_namespace),
        &args.lease_name,
        &identity,
        duration,
    );
    info!(%identity, lease = %args.lease_name, namespace = %lease_namespace, "waiting for leadership");
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => ready.store(true, Ordering::Relaxed),
            Err(error) => warn!(%error, "lease"),
        }
        tokio::time::sleep(lock.retry_period()).await;
    }
    ready.store(true, Ordering::Relaxed);
    info!(%identity, "leading");

    // Keep the Lease; a leader that cannot renew in time must stop before another takes over.
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(lock.retry_period()).await;
            match lock.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    error!("lost the lease to another replica; exiting");
                    std::process::exit(1);
                }
                Err(error) => {
                    warn!(%error, "renewing the lease");
                    if renewed.elapsed() >= duration * 2 / 3 {
                        error!("could not renew the lease in time; exiting");
                        std::process::exit(1);
                    }
                }
            }
        }
    });

    let defaults = BuildDefaults {
        image_repository: args.image_repository,
        ..BuildDefaults::default()
    };
    let tls = TlsSettings {
        propagation: Duration::from_secs(args.secret_propagation_seconds),
    };
    let ctx = Arc::new(Context::new(client, metrics, defaults, tls, Some(identity)));
    let backup_deps = ctx.backups.deps.clone();
    tokio::select! {
        () = controller::run(ctx) => info!("controller stopped"),
        () = on_demand::run(backup_deps) => info!("KVClusterBackup controller stopped"),
        result = http => result??,
    }
    Ok(())
}

/// Every object the operator builds for a new cluster from this manifest.
fn render(manifest: &PathBuf, image_repository: String) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut kvc: KVCluster = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a KVCluster", manifest.display()))?;
    kvc.metadata
        .namespace
        .get_or_insert_with(|| "default".to_string());
    // Owner references need the UID the API server would assign.
    kvc.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-4000-8000-000000000000".to_string());
    let defaults = BuildDefaults {
        image_repository,
        ..BuildDefaults::default()
    };
    let replicas = kvc.spec.replicas;
    let mut documents = vec![
        serde_yaml::to_string(&children::peer_service(&kvc))?,
        serde_yaml::to_string(&children::client_service(&kvc))?,
        serde_yaml::to_string(&children::bootstrap_config_map(
            &kvc,
            &BootstrapConfig::new_cluster(replicas.max(0) as u32),
        ))?,
        serde_yaml::to_string(&children::pod_disruption_budget(&kvc))?,
        serde_yaml::to_string(&children::stateful_set(
            &kvc,
            replicas,
            &defaults.image_for(&kvc),
        ))?,
    ];
    for side in [TlsSide::Client, TlsSide::Peer] {
        if let Some(TlsMode::CertManager(cert_manager)) =
            children::tls_source(&kvc, side).map(|source| source.mode())
        {
            documents.push(serde_yaml::to_string(&children::member_certificate(
                &kvc,
                side,
                cert_manager,
            ))?);
            if side == TlsSide::Client {
                documents.push(serde_yaml::to_string(&children::operator_certificate(
                    &kvc,
                    cert_manager,
                ))?);
            }
        }
    }
    Ok(documents.iter().map(|d| format!("---\n{d}")).collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { kind } => match kind {
            CrdKind::Kvcluster => print!("{}", crd::crd_yaml()),
            CrdKind::Kvclusterbackup => print!("{}", crd::backup_crd_yaml()),
        },
        Command::Render {
            manifest,
            image_repository,
        } => print!("{}", render(&manifest, image_repository)?),
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            run(args).await?;
        }
    }
    Ok(())
}
