//! Maintenance duties of the server: alarms and the backend quota, defragmentation, hashes and
//! snapshots of the store.

use etcd_client::proto::PbAlarmMember;

use super::Server;
use crate::{Result, ServerError as Error};
use ferrokv_raft::apply::applied_in_meta;
use ferrokv_raft::types::{Request, Response};
use ferrokv_storage::snapshot_file::{self, ClusterState, SnapshotMember};

/// `AlarmType` on the wire.
pub const ALARM_NONE: i32 = 0;
pub const ALARM_NOSPACE: i32 = 1;
pub const ALARM_CORRUPT: i32 = 2;

impl Server {
    /// The alarms raised in the cluster, optionally of one type only.
    pub fn alarms(&self, only: i32) -> Result<Vec<PbAlarmMember>> {
        Ok(self
            .state_machine()
            .alarms()
            .iter()
            .filter(|(_, alarm)| only == ALARM_NONE || *alarm == only)
            .map(|&(member_id, alarm)| PbAlarmMember { member_id, alarm })
            .collect())
    }

    /// Raises or clears an alarm through Raft, so every member agrees on it.
    pub async fn set_alarm(&self, activate: bool, member_id: u64, alarm: i32) -> Result<()> {
        match self
            .propose(Request::Alarm {
                activate,
                member_id,
                alarm,
            })
            .await?
        {
            Response::Rejected(e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Refuses a request that would grow the store while the NOSPACE alarm is raised, and
    /// raises it when this member's backend has outgrown `--quota-backend-bytes` (etcd's quota).
    /// Reads, deletes and compactions are never refused: they are how space is won back.
    pub async fn check_quota(&self) -> Result<()> {
        if !self.alarms(ALARM_NOSPACE)?.is_empty() {
            return Err(Error::NoSpace);
        }
        let in_use = self.state_machine().size_in_use();
        if in_use > self.config().quota_backend_bytes {
            tracing::warn!(
                size_in_use = in_use,
                quota = self.config().quota_backend_bytes,
                "backend quota exceeded; raising the NOSPACE alarm"
            );
            self.set_alarm(true, self.member_id(), ALARM_NOSPACE)
                .await?;
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Defragments this member's store (not the others', as in etcd).
    pub async fn defragment(&self) -> Result<()> {
        Ok(self.state_machine().defragment().await?)
    }

    /// A hash of everything this member stores (etcd's Hash; differs between members, since
    /// each stores its own Raft metadata).
    pub async fn hash_all(&self) -> Result<(u32, i64)> {
        let store = self.store().clone();
        let (dump, revision) = tokio::task::spawn_blocking(move || {
            let revision = store.current_revision()?;
            store.snapshot().map(|d| (d, revision))
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))??;
        Ok((crc32fast::hash(&dump), revision))
    }

    /// etcd's HashKV: equal on members with equal history up to `revision`.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let store = self.store().clone();
        let hashed = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
        Ok(hashed)
    }

    /// A consistent snapshot of the store in etcd's format, as `etcdctl snapshot save` writes
    /// it to a file: the whole kept history, the leases, the members and the applied index.
    pub async fn snapshot_file(&self) -> Result<Vec<u8>> {
        let store = self.store().clone();
        let members = self
            .members()?
            .into_iter()
            .map(|member| SnapshotMember {
                id: member.id,
                name: member.name,
                peer_urls: member.peer_urls,
                client_urls: member.client_urls,
                is_learner: member.is_learner,
            })
            .collect();
        let file = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let contents = store.contents()?;
            let (consistent_index, term) = applied_in_meta(&contents.meta)?;
            let cluster = ClusterState {
                consistent_index,
                term,
                members,
                removed: Vec::new(),
            };
            Ok(snapshot_file::encode(&contents, &cluster)?)
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))??;
        Ok(file)
    }
}
