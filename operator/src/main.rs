//! The `ferrokv-operator` binary: `run` the controller, or print the `crd`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferrokv-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KVCluster CustomResourceDefinition as YAML.
    Crd,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", ferrokv_operator::crd::crd_yaml()),
    }
}
