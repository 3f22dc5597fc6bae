//! The `ferrokv` binary: parses etcd's flags and runs one member; `ferrokv snapshot restore`
//! builds a data dir from a snapshot file; `ferrokv snapshot save` takes one from a running
//! member.

use std::process::ExitCode;

use clap::Parser;
use ferrokv_node::config::{etcd_style_args, token_given, NodeConfig};
use ferrokv_node::restore::{run_restore, RestoreArgs, Restored};
use ferrokv_node::snapshot_save::{run_save, SaveArgs, Saved};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub fn main() -> ExitCode {
    exit_on_panic();
    let args = etcd_style_args(std::env::args_os());
    let is_restore =
        args.get(1).is_some_and(|a| a == "snapshot") && args.get(2).is_some_and(|a| a == "restore");
    if is_restore {
        let rest: Vec<_> = std::iter::once(args[0].clone())
            .chain(args[3..].iter().cloned())
            .collect();
        let given = token_given(&rest);
        let parsed = RestoreArgs::parse_from(rest);
        let config = match NodeConfig::check(parsed.member.clone(), given) {
            Ok(c) => c,
            Err(message) => return fail("ferrokv snapshot restore", &message),
        };
        init_logging(&config.log_level);
        return match run_restore(&parsed, &config) {
            Ok(Restored::Member { source, identity }) => {
                println!(
                    "restored {source} into {} as member {:x} of cluster {:x}",
                    config.data_dir.display(),
                    identity.member_id,
                    identity.cluster_id
                );
                ExitCode::SUCCESS
            }
            Ok(Restored::Skipped(reason)) => {
                println!("{reason}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("ferrokv snapshot restore", &e.to_string()),
        };
    }
    let is_save =
        args.get(1).is_some_and(|a| a == "snapshot") && args.get(2).is_some_and(|a| a == "save");
    if is_save {
        let rest = std::iter::once(args[0].clone()).chain(args[3..].iter().cloned());
        init_logging("info");
        return match run_save(&SaveArgs::parse_from(rest)) {
            Ok(Saved::File {
                path,
                revision,
                size,
            }) => {
                println!(
                    "Snapshot saved at {} (revision {revision}, {size} bytes)",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Ok(Saved::Backup(saved)) => {
                let json = serde_json::to_string(&saved).expect("a saved backup serializes");
                println!("{json}");
                write_termination_message(&json);
                ExitCode::SUCCESS
            }
            Err(e) => fail("ferrokv snapshot save", &e.to_string()),
        };
    }
    let config = match NodeConfig::from_args() {
        Ok(c) => c,
        Err(message) => return fail("ferrokv", &message),
    };
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    match runtime.block_on(ferrokv_node::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("ferrokv", &e.to_string()),
    }
}

/// Rust's exit status for a panic.
const PANIC_EXIT_STATUS: i32 = 101;

/// Makes a panic on any thread stop the process, as a panic stops etcd. Left to itself, a panic
/// ends only its own thread: a member whose Raft, WAL or apply thread died would go on
/// answering clients and peers while never committing or applying a write again. The panic is
/// reported as usual on stderr, and in the termination message under Kubernetes.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        write_termination_message(&info.to_string());
        std::process::exit(PANIC_EXIT_STATUS);
    }));
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERROKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Where a container's termination message goes: Kubernetes' default path, or the file
/// `FERROKV_TERMINATION_LOG` names (for runtimes that collect it elsewhere, like the e2e kubelet).
const TERMINATION_LOG_ENV: &str = "FERROKV_TERMINATION_LOG";

/// Reports why the member cannot run, on stderr and — under Kubernetes — in the container's
/// termination message, where an operator can read it.
/// The termination message is the reason alone, without the program's name: the operator reads
/// its first words ("data dir empty but member ...").
fn fail(program: &str, message: &str) -> ExitCode {
    eprintln!("{program}: {message}");
    write_termination_message(message);
    ExitCode::FAILURE
}

/// Leaves `message` where Kubernetes reads a container's termination message, when there is
/// such a place.
fn write_termination_message(message: &str) {
    let termination_log = std::env::var_os(TERMINATION_LOG_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/dev/termination-log".into());
    if termination_log.exists() {
        let _ = std::fs::write(&termination_log, message);
    }
}
