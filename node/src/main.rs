//! The `ferrokv` binary: parses etcd's flags and runs one member.

use std::process::ExitCode;

use ferrokv_node::config::NodeConfig;

fn main() -> ExitCode {
    let config = match NodeConfig::from_args() {
        Ok(c) => c,
        Err(message) => return fail(&format!("ferrokv: {message}")),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERROKV_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},openraft=warn", config.log_level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    match runtime.block_on(ferrokv_node::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("ferrokv: {e}")),
    }
}

/// Reports why the member cannot run, on stderr and — under Kubernetes — in the container's
/// termination message, where an operator can read it.
fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    let termination_log = std::path::Path::new("/dev/termination-log");
    if termination_log.exists() {
        let _ = std::fs::write(termination_log, message);
    }
    ExitCode::FAILURE
}
