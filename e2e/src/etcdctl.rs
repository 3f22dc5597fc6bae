//! Running Debian's `etcdctl` (API v3) against test members and capturing what it prints, so tests
//! can assert on exactly the text an operator would see.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

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

/// An etcdctl command that runs until it is dropped, such as `watch` or `lease keep-alive`,
/// read line by line as it prints.
#[derive(Debug)]
pub struct EtcdctlProcess {
    /// Killed when dropped.
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl EtcdctlProcess {
    /// Starts `etcdctl --endpoints=<endpoints> <args>` with `ETCDCTL_API=3`.
    pub fn spawn(etcdctl: &Path, endpoints: &[String], args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", etcdctl.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(EtcdctlProcess {
            child,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// The next `count` lines etcdctl prints, waiting at most `timeout` for all of them.
    pub async fn lines(&mut self, count: usize, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::with_capacity(count);
        let read = async {
            while lines.len() < count {
                match self.stdout.next_line().await? {
                    Some(line) => lines.push(line),
                    None => bail!("etcdctl exited ({:?})", self.child.try_wait()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(result) => result.with_context(|| format!("after reading {lines:?}"))?,
            Err(_) => bail!(
                "only {} of {count} lines after {timeout:?}: {lines:?}",
                lines.len()
            ),
        }
        Ok(lines)
    }
}
