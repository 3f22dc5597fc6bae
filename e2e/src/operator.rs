//! [`RunningOperator`]: the `ferrokv-operator` binary of this workspace, run as a process
//! against the cluster a kubeconfig names, the way a user runs it outside a cluster.
//!
//! Its log goes to a file; a panicking test prints the tail. The process is started with
//! `PR_SET_PDEATHSIG = SIGKILL` and killed when dropped.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::binaries::operator_binary;
use crate::ports::ReservedPort;

/// Lines of the operator's log printed when a test panics.
const LOG_TAIL_LINES: usize = 60;

/// A running operator.
pub struct RunningOperator {
    child: Child,
    log_path: PathBuf,
    http: ReservedPort,
}

impl RunningOperator {
    /// Starts `ferrokv-operator run` with `KUBECONFIG=kubeconfig`, its Lease in `namespace`,
    /// logging to `dir/operator.log`.
    pub fn start(kubeconfig: &Path, namespace: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(Command::new(operator_binary()), kubeconfig, namespace, dir)
    }

    /// As [`RunningOperator::start`], through `command`: the binary, or a wrapper that execs it
    /// (e.g. one that lets it resolve a hermetic cluster's names).
    pub fn start_with(
        mut command: Command,
        kubeconfig: &Path,
        namespace: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let http = ReservedPort::reserve()?;
        let log_path = dir.join("operator.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        command
            .arg("run")
            .arg(format!("--http-addr=127.0.0.1:{}", http.port()))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", "ferrokv-operator-e2e")
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            // The hermetic kubelet updates Secret volumes within a second, not a real one's
            // minute or two: CA rotations need not wait as long.
            .env("FERROKV_SECRET_PROPAGATION_SECONDS", "3")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl in the child between fork and exec, touching no shared state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().context("spawning ferrokv-operator")?;
        Ok(Self {
            child,
            log_path,
            http,
        })
    }

    /// `http://127.0.0.1:PORT` of its /metrics, /healthz and /readyz.
    pub fn http_url(&self) -> String {
        self.http.url()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        // Errors mean the process is gone already, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- ferrokv-operator log ({}) ---\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}
