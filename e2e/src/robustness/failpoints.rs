//! The suite's side of the node's failpoints (docs/robustness.md): which server has them, the
//! points it crashes members at, and the client of the member's failpoint endpoint
//! (`ferrokv_node::failpoints`: `PUT /<point>` with the actions, `DELETE /<point>`).
//!
//! Only `ferrokv-failpoints`, the member built with the `failpoints` feature, has them; against
//! `ferrokv` or etcd the failpoint nemeses are skipped and say so in the timeline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binaries::{profile_dir, server_binary, SERVER_ENV};

/// The member binary with failpoints, built into the same directory as `ferrokv`.
pub const FAILPOINT_SERVER: &str = "ferrokv-failpoints";
/// Where a member's failpoint endpoint listens on its host (`FERROKV_FAILPOINTS_HTTP`'s default).
pub const FAILPOINT_PORT: u16 = 2381;
/// The action that SIGKILLs the member at the point.
pub const CRASH: &str = "crash";

/// A point inside the node where a member can be made to crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The WAL's writer: a batch durable, its completions not yet run.
    WalAfterSync,
    /// The Ready loop: a Ready durable, its held messages (a follower's acks) not yet sent.
    RaftAfterSave,
    /// The apply stage: a batch applied, the store's commit not yet made.
    ApplyBeforeCommit,
    /// The apply stage: the store committed, the proposers not yet answered.
    ApplyAfterCommit,
    /// A received snapshot, before it replaces the store.
    RaftBeforeApplySnap,
    /// The store replaced by a snapshot, its applied index not yet recorded.
    RaftDuringApplySnap,
    /// A snapshot installed, the log not yet told.
    RaftAfterApplySnap,
    /// Defragment: the copy created, nothing copied.
    DefragBeforeCopy,
    /// Defragment: the copy complete and durable, not yet renamed over the database.
    DefragBeforeRename,
}

/// What makes a member reach a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Any write: the schedule's traffic.
    ByWrites,
    /// Installing a snapshot: the member must fall far behind first.
    BySnapshotInstall,
    /// A defragment of the member.
    ByDefragment,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 9] = [
        CrashPoint::WalAfterSync,
        CrashPoint::RaftAfterSave,
        CrashPoint::ApplyBeforeCommit,
        CrashPoint::ApplyAfterCommit,
        CrashPoint::RaftBeforeApplySnap,
        CrashPoint::RaftDuringApplySnap,
        CrashPoint::RaftAfterApplySnap,
        CrashPoint::DefragBeforeCopy,
        CrashPoint::DefragBeforeRename,
    ];

    /// The failpoint's name in the node.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::WalAfterSync => "walAfterSync",
            CrashPoint::RaftAfterSave => "raftAfterSave",
            CrashPoint::ApplyBeforeCommit => "applyBeforeCommit",
            CrashPoint::ApplyAfterCommit => "applyAfterCommit",
            CrashPoint::RaftBeforeApplySnap => "raftBeforeApplySnap",
            CrashPoint::RaftDuringApplySnap => "raftDuringApplySnap",
            CrashPoint::RaftAfterApplySnap => "raftAfterApplySnap",
            CrashPoint::DefragBeforeCopy => "defragBeforeCopy",
            CrashPoint::DefragBeforeRename => "defragBeforeRename",
        }
    }

    pub fn reached(self) -> Reached {
        match self {
            CrashPoint::WalAfterSync
            | CrashPoint::RaftAfterSave
            | CrashPoint::ApplyBeforeCommit
            | CrashPoint::ApplyAfterCommit => Reached::ByWrites,
            CrashPoint::RaftBeforeApplySnap
            | CrashPoint::RaftDuringApplySnap
            | CrashPoint::RaftAfterApplySnap => Reached::BySnapshotInstall,
            CrashPoint::DefragBeforeCopy | CrashPoint::DefragBeforeRename => Reached::ByDefragment,
        }
    }

    /// The line the member logs when it crashes at the point.
    pub fn crash_line(self) -> String {
        format!("failpoint {} reached", self.name())
    }
}

/// The broken model of the negative control: every batch is acknowledged before its WAL write,
/// which then waits half a second, and no store commit is durable but a snapshot's — so what
/// a crash of every member loses was acknowledged.
pub const ACK_BEFORE_FSYNC: [(&str, &str); 3] = [
    ("walAckBeforeWrite", "return"),
    ("walBeforeWrite", "sleep(500)"),
    ("applySkipDurableCommit", "return"),
];

/// Whether `server` is the member binary with failpoints.
pub fn has_failpoints(server: &Path) -> bool {
    server
        .file_name()
        .is_some_and(|name| name == FAILPOINT_SERVER)
}

/// The server the suite runs by default: `$FERROKV_E2E_SERVER` if set, else
/// [`FAILPOINT_SERVER`] beside the running executable's `ferrokv`. Panics with instructions
/// when it has not been built.
pub fn failpoint_server() -> PathBuf {
    if std::env::var_os(SERVER_ENV).is_some() {
        return server_binary();
    }
    let path = profile_dir().join(FAILPOINT_SERVER);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build -p ferrokv-node --features failpoints --bin \
         {FAILPOINT_SERVER}` first (with the same CARGO_TARGET_DIR), or set {SERVER_ENV}",
        path.display()
    );
    path
}

/// Arms `point` with `actions` on the member at `host`.
pub async fn arm(host: Ipv4Addr, point: &str, actions: &str) -> anyhow::Result<()> {
    arm_at((host, FAILPOINT_PORT).into(), point, actions).await
}

/// Arms `point` with `actions` on the member whose endpoint listens at `endpoint` (its
/// `FERROKV_FAILPOINTS_HTTP`), for members that share a host.
pub async fn arm_at(endpoint: SocketAddr, point: &str, actions: &str) -> anyhow::Result<()> {
    request(endpoint, "PUT", point, actions).await
}

/// Disarms `point` on the member at `host`.
pub async fn disarm(host: Ipv4Addr, point: &str) -> anyhow::Result<()> {
    request((host, FAILPOINT_PORT).into(), "DELETE", point, "").await
}

async fn request(
    endpoint: SocketAddr,
    method: &str,
    point: &str,
    body: &str,
) -> anyhow::Result<()> {
    let host = endpoint.ip();
    let call = async {
        let mut stream = TcpStream::connect(endpoint)
            .await
            .context("connecting to the failpoint endpoint")?;
        let request = format!(
            "{method} /{point} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let status = answer.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if !code.starts_with('2') {
            bail!("{method} /{point}: {}", answer.replace("\r\n", " "));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .context("the failpoint endpoint did not answer within 5 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_failpoint_build_has_failpoints() {
        assert!(has_failpoints(Path::new("/t/debug/ferrokv-failpoints")));
        assert!(!has_failpoints(Path::new("/t/debug/ferrokv")));
        assert!(!has_failpoints(Path::new("/usr/bin/etcd")));
    }

    #[test]
    fn every_point_has_a_distinct_name() {
        let mut names: Vec<_> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CrashPoint::ALL.len());
    }
}
