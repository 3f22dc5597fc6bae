//! `etcdserverpb.Maintenance`: Status, Alarm, Defragment, Hash, HashKV, Snapshot and
//! MoveLeader.
//!
//! Downgrade answers `Unimplemented`: an etcd client then reports the call as unsupported
//! rather than believing it succeeded.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest,
    PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use etcd_client::proto::PbAlarmMember;

use super::auth::require_admin;
use super::status::to_status;
use crate::traits::MaintenanceServer;
use ferrokv_server::maintenance::{ALARM_CORRUPT, ALARM_NONE, ALARM_NOSPACE};
use ferrokv_server::{Server, ETCD_API_VERSION};

/// `AlarmRequest.AlarmAction` on the wire.
const ALARM_ACTION_GET: i32 = 0;
const ALARM_ACTION_ACTIVATE: i32 = 1;
const ALARM_ACTION_DEACTIVATE: i32 = 2;
/// Bytes per Snapshot message, as etcd sends them.
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

pub struct MaintenanceService<S = Server> {
    server: S,
}

impl<S: MaintenanceServer> MaintenanceService<S> {
    pub fn new(server: S) -> MaintenanceService<S> {
        MaintenanceService { server }
    }
}

/// An alarm as etcd writes it into `StatusResponse.errors` (the message's text form).
fn alarm_text(alarm: &PbAlarmMember) -> String {
    let name = match alarm.alarm {
        ALARM_NOSPACE => "NOSPACE",
        ALARM_CORRUPT => "CORRUPT",
        _ => "NONE",
    };
    format!("memberID:{} alarm:{name} ", alarm.member_id)
}

fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!(
        "ferrokv: Maintenance.{call} is not implemented yet"
    ))
}

#[tonic::async_trait]
impl<S: MaintenanceServer> PbMaintenanceService for MaintenanceService<S> {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        if request.get_ref().action != ALARM_ACTION_GET {
            require_admin(&self.server, &request).await?;
        }
        let req = request.into_inner();
        match req.action {
            ALARM_ACTION_GET => {}
            ALARM_ACTION_ACTIVATE | ALARM_ACTION_DEACTIVATE => {
                if req.alarm == ALARM_NONE {
                    return Err(Status::invalid_argument("etcdserver: no alarm type given"));
                }
                self.server
                    .set_alarm(
                        req.action == ALARM_ACTION_ACTIVATE,
                        req.member_id,
                        req.alarm,
                    )
                    .await
                    .map_err(to_status)?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown alarm action {other}"
                )))
            }
        }
        let alarms = match req.action {
            ALARM_ACTION_GET => self.server.alarms(req.alarm).map_err(to_status)?,
            // etcd answers a change with the alarm it changed.
            _ => vec![PbAlarmMember {
                member_id: req.member_id,
                alarm: req.alarm,
            }],
        };
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.server.header(revision)),
            alarms,
        }))
    }

    async fn status(
        &self,
        _: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let revision = self.server.current_revision().map_err(to_status)?;
        let db_size = self.server.db_size_bytes() as i64;
        let raft = self.server.raft_summary();
        let is_learner = raft.is_learner;
        // As etcd fills them: no leader, then every alarm raised in the cluster.
        let mut errors = Vec::new();
        if raft.leader == 0 {
            errors.push("etcdserver: no leader".to_string());
        }
        for alarm in self.server.alarms(ALARM_NONE).map_err(to_status)? {
            errors.push(alarm_text(&alarm));
        }
        Ok(Response::new(PbStatusResponse {
            header: Some(self.server.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: raft.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: self.server.applied_index(),
            errors,
            db_size_in_use: self.server.db_size_in_use() as i64,
            is_learner,
            storage_version: String::new(),
            db_size_quota: self.server.quota_backend_bytes() as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        require_admin(&self.server, &request).await?;
        self.server.defragment().await.map_err(to_status)?;
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(Response::new(PbDefragmentResponse {
            header: Some(self.server.header(revision)),
        }))
    }

    async fn hash(
        &self,
        request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        require_admin(&self.server, &request).await?;
        let (hash, revision) = self.server.hash_all().await.map_err(to_status)?;
        Ok(Response::new(PbHashResponse {
            header: Some(self.server.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        require_admin(&self.server, &request).await?;
        let (hash, compact_revision, hash_revision) = self
            .server
            .hash_kv(request.into_inner().revision)
            .await
            .map_err(to_status)?;
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(Response::new(PbHashKvResponse {
            header: Some(self.server.header(revision)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        require_admin(&self.server, &request).await?;
        let revision = self.server.current_revision().map_err(to_status)?;
        let data = self.server.snapshot_file().await.map_err(to_status)?;
        let header = self.server.header(revision);
        let total = data.len() as u64;
        let mut sent = 0u64;
        let messages: Vec<Result<PbSnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|chunk| {
                sent += chunk.len() as u64;
                Ok(PbSnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total - sent,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.to_string(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        require_admin(&self.server, &request).await?;
        let target = request.into_inner().target_id;
        self.server.move_leader(target).await.map_err(to_status)?;
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(Response::new(PbMoveLeaderResponse {
            header: Some(self.server.header(revision)),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}
