//! Running `kubectl` against a hermetic API server and capturing what it prints, so tests can
//! assert on exactly the text a user would see.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::binaries::kubectl_binary;

/// A kubectl invocation is killed if it runs longer than this.
const KUBECTL_DEADLINE: Duration = Duration::from_secs(120);

/// kubectl pointed at one cluster, with a discovery cache of its own (so a CRD registered
/// mid-test is seen, and parallel tests do not share a cache).
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

/// What one kubectl run printed and how it exited.
#[derive(Debug)]
pub struct KubectlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The standard output of a run that must have succeeded; panics with everything kubectl
    /// printed otherwise.
    pub fn expect_stdout(&self) -> &str {
        assert!(
            self.success(),
            "kubectl failed ({}):\nstdout:\n{}\nstderr:\n{}",
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
            "kubectl succeeded where it should fail:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

impl Kubectl {
    /// kubectl using `kubeconfig`, caching discovery under `cache_dir`.
    pub fn new(kubeconfig: &Path, cache_dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
        }
    }

    /// `kubectl <args>`.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<KubectlOutput> {
        self.run_with_stdin(args, None).await
    }

    /// A `kubectl <args>` command to spawn, for one that keeps running (`port-forward`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(kubectl_binary());
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache_dir.display()))
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    /// `kubectl <args>` with `stdin` fed to it, e.g. a manifest for `apply -f -`.
    pub async fn run_with_stdin(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<KubectlOutput> {
        let kubectl = kubectl_binary();
        let mut command = self.command(args);
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| {
            format!(
                "spawning {} (Debian's package kubectl; or set {})",
                kubectl.display(),
                crate::binaries::KUBECTL_ENV
            )
        })?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .await
                .context("writing kubectl's stdin")?;
            drop(pipe);
        }
        let output = tokio::time::timeout(KUBECTL_DEADLINE, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} still running after {KUBECTL_DEADLINE:?}"))?
            .context("waiting for kubectl")?;
        Ok(KubectlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
