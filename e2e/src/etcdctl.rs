//! Running Debian's `etcdctl` (API v3) against test members and capturing what it prints, so tests
//! can assert on exactly the text an operator would see.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// An etcdctl invocation is killed if it runs longer than this; its own `--command-timeout`
/// (5 s by default) normally ends it well before.
const ETCDCTL_DEADLINE: Duration = Duration::from_secs(60);

/// What one etcdctl run printed and how it exited.
#[derive(Debug)]
pub struct EtcdctlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl EtcdctlOutput {
    /// Whether etcdctl exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The standard output of a run that must have succeeded; panics with everything etcdctl
    /// printed otherwise.
    pub fn expect_stdout(&self) -> &str {
        assert!(
            self.success(),
            "etcdctl failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// The standard error of a run that must have failed; panics with its output otherwise.
    pub fn expect_failure(&self) -> &str {
        assert!(
            !self.success(),
            "etcdctl succeeded where it should fail:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// Runs `etcdctl --endpoints=<endpoints> <args>` with `ETCDCTL_API=3`, feeding `stdin` (if any)
/// to it, e.g. the lines of an interactive `txn -i`.
pub async fn run_etcdctl(
    etcdctl: &Path,
    endpoints: &[String],
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<EtcdctlOutput> {
    let mut command = Command::new(etcdctl);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {}", etcdctl.display()))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .await
            .context("writing etcdctl's stdin")?;
        // Closing stdin ends etcdctl's interactive input.
        drop(pipe);
    }
    let output = tokio::time::timeout(ETCDCTL_DEADLINE, child.wait_with_output())
        .await
        .with_context(|| format!("etcdctl {args:?} still running after {ETCDCTL_DEADLINE:?}"))?
        .context("waiting for etcdctl")?;
    Ok(EtcdctlOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
