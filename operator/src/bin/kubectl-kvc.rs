//! `kubectl-kvc`: the kubectl plugin for KVClusters. On the PATH, kubectl runs it as
//! `kubectl kvc ...`; see `ferrokv_operator::plugin`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use ferrokv_operator::plugin::{report, Session};

#[derive(Parser)]
#[command(
    name = "kubectl kvc",
    version,
    about = "Look at and act on ferrokv KVClusters"
)]
struct Cli {
    /// Namespace of the KVCluster; the kubeconfig context's by default.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file; $KUBECONFIG or ~/.kube/config by default.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Members, their IDs, roles, health, revision and database sizes, alarms, the last backup
    /// and the conditions, on one screen.
    Status { name: String },
    /// Back the cluster up now: creates a KVClusterBackup for the operator to take.
    Backup {
        name: String,
        /// Wait until the backup has succeeded or failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Defragment one member, or all of them one at a time, followers first and the leader last.
    Defrag {
        name: String,
        member: Option<String>,
    },
    /// Hand leadership to MEMBER.
    MoveLeader { name: String, member: String },
}

async fn client(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (client, namespace) = client(&cli).await?;
    match &cli.command {
        Command::Status { name } => {
            let session = Session::open(client, &namespace, name).await?;
            print!("{}", report::render(&session.status_report().await?));
        }
        Command::Backup {
            name,
            wait,
            timeout,
        } => {
            let session = Session::open(client, &namespace, name).await?;
            let backup = session.create_backup(Timestamp::now()).await?;
            println!("kvclusterbackup/{backup} created");
            if *wait {
                let done = session
                    .wait_backup(&backup, Duration::from_secs(*timeout))
                    .await?;
                println!("{done}");
            }
        }
        Command::Defrag { name, member } => {
            let session = Session::open(client, &namespace, name).await?;
            for line in session.defragment(member.as_deref()).await? {
                println!("{line}");
            }
        }
        Command::MoveLeader { name, member } => {
            let session = Session::open(client, &namespace, name).await?;
            println!("{}", session.move_leader(member).await?);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Only warnings, on stderr: the screen is for stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBECTL_KVC_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
