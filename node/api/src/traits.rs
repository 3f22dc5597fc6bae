//! What each gRPC service asks of the server, one narrow trait per service (as etcd's v3rpc
//! sees its server through `RaftKV`, `Lessor`, `RaftStatusGetter`, `Alarmer`, ...). The services
//! are generic over them; `ferrokv_server::Server` implements them all, and a test can put
//! anything in its place.

use std::future::Future;
use std::sync::Arc;

use etcd_client::proto::{PbAlarmMember, PbRangeRequest, PbRangeResponse, PbResponseHeader};
use ferrokv_server::auth::{AuthChange, AuthInfo, AuthState};
use ferrokv_server::lease::LeaseTtl;
use ferrokv_server::membership::MemberChange;
use ferrokv_server::{MemberInfo, RaftSummary, Request, Response, Result, Server};

/// What every service stamps its responses with.
pub trait Header: Send + Sync + 'static {
    /// The response header: cluster ID, member ID, Raft term, and `revision`.
    fn header(&self, revision: i64) -> PbResponseHeader;
    /// The store's current revision, for responses that did not read one.
    fn current_revision(&self) -> Result<i64>;
}

/// Who a request comes from and what it may do (etcd's `AuthGetter`); every service asks.
pub trait Authorizer: Send + Sync + 'static {
    /// The user a token (or, without one, a client certificate's CommonName) names.
    fn auth_info(
        &self,
        token: Option<&str>,
        common_name: Option<&str>,
    ) -> impl Future<Output = Result<AuthInfo>> + Send;
    /// A client's write, wrapped to be checked against the auth store when applied.
    fn authorized(&self, info: &AuthInfo, request: Request) -> Request;
    /// Read permission on `(key, range_end)`.
    fn check_read(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<()>;
    /// The root role, for the admin-only calls.
    fn check_admin(&self, info: &AuthInfo) -> Result<()>;
}

/// The Auth service's view of the server.
pub trait AuthServer: Header + Authorizer {
    fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> impl Future<Output = Result<String>> + Send;
    fn hash_password(&self, password: &str) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn change_auth(
        &self,
        info: &AuthInfo,
        change: AuthChange,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The auth store as of everything committed when called.
    fn auth_state(&self) -> impl Future<Output = Result<Arc<AuthState>>> + Send;
}

/// Refuses writes while a NOSPACE alarm is raised or the backend is over its quota.
pub trait QuotaChecker: Send + Sync + 'static {
    fn check_quota(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The KV service's view of the server (etcd's `RaftKV`).
pub trait KvServer: Header + QuotaChecker + Authorizer {
    /// `--max-request-bytes`.
    fn max_request_bytes(&self) -> usize;
    /// `--max-txn-ops`.
    fn max_txn_ops(&self) -> usize;
    /// Proposes a write and answers with its result once this member applied it.
    fn propose(&self, request: Request) -> impl Future<Output = Result<Response>> + Send;
    /// Waits for what a Range must see (the read barrier, unless the read is serializable);
    /// the permission check comes after it, then `range_read`.
    fn range_barrier(&self, request: &PbRangeRequest) -> impl Future<Output = Result<()>> + Send;
    /// Reads a Range, after `range_barrier`.
    fn range_read(
        &self,
        request: &PbRangeRequest,
    ) -> impl Future<Output = Result<PbRangeResponse>> + Send;
}

/// The Lease service's view of the server (etcd's `Lessor`). Cloned into each keep-alive
/// stream.
pub trait LeaseServer: Header + QuotaChecker + Authorizer + Clone {
    /// Grants lease `id` (0: a new ID) for `ttl` seconds; answers with its ID and TTL.
    fn lease_grant(&self, id: i64, ttl: i64) -> impl Future<Output = Result<(i64, i64)>> + Send;
    /// Revokes lease `id` on behalf of `info`'s user, who needs write permission on its keys;
    /// answers with the revision of its keys' deletion.
    fn lease_revoke(&self, info: &AuthInfo, id: i64) -> impl Future<Output = Result<i64>> + Send;
    fn lease_keep_alive(&self, id: i64) -> impl Future<Output = Result<LeaseTtl>> + Send;
    fn lease_time_to_live(&self, id: i64) -> impl Future<Output = Result<LeaseTtl>> + Send;
    fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>>;
    fn lease_ids(&self) -> Result<Vec<i64>>;
}

/// The Cluster service's view of the server.
pub trait ClusterServer: Header + Authorizer {
    /// Applies a membership change; answers with the added member (for MemberAdd) and the
    /// member list after the change.
    fn change_members(
        &self,
        change: MemberChange,
    ) -> impl Future<Output = Result<(Option<MemberInfo>, Vec<MemberInfo>)>> + Send;
    fn members(&self) -> Result<Vec<MemberInfo>>;
    /// Waits until this member has applied everything committed when it was called.
    fn read_barrier(&self) -> impl Future<Output = Result<()>> + Send;
}

/// The Maintenance service's view of the server (etcd's `RaftStatusGetter`, `Alarmer`,
/// `BackendGetter`, ...).
pub trait MaintenanceServer: Header + Authorizer {
    fn raft_summary(&self) -> RaftSummary;
    fn applied_index(&self) -> u64;
    fn db_size_bytes(&self) -> u64;
    fn db_size_in_use(&self) -> u64;
    /// `--quota-backend-bytes`.
    fn quota_backend_bytes(&self) -> u64;
    /// The active alarms of type `only` (every type for NONE).
    fn alarms(&self, only: i32) -> Result<Vec<PbAlarmMember>>;
    fn set_alarm(
        &self,
        activate: bool,
        member_id: u64,
        alarm: i32,
    ) -> impl Future<Output = Result<()>> + Send;
    fn defragment(&self) -> impl Future<Output = Result<()>> + Send;
    /// The hash of the whole backend, and the current revision.
    fn hash_all(&self) -> impl Future<Output = Result<(u32, i64)>> + Send;
    /// The hash of the key-value history up to `revision`, the compact revision and the
    /// revision hashed.
    fn hash_kv(&self, revision: i64) -> impl Future<Output = Result<(u32, i64, i64)>> + Send;
    /// A consistent snapshot, as `etcdctl snapshot save` writes it to a file.
    fn snapshot_file(&self) -> impl Future<Output = Result<Vec<u8>>> + Send;
    fn move_leader(&self, target: u64) -> impl Future<Output = Result<()>> + Send;
}

impl Header for Server {
    fn header(&self, revision: i64) -> PbResponseHeader {
        Server::header(self, revision)
    }
    fn current_revision(&self) -> Result<i64> {
        Server::current_revision(self)
    }
}

impl Authorizer for Server {
    async fn auth_info(&self, token: Option<&str>, common_name: Option<&str>) -> Result<AuthInfo> {
        Server::auth_info(self, token, common_name).await
    }
    fn authorized(&self, info: &AuthInfo, request: Request) -> Request {
        Server::authorized(self, info, request)
    }
    fn check_read(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<()> {
        Server::check_read(self, info, key, range_end)
    }
    fn check_admin(&self, info: &AuthInfo) -> Result<()> {
        Server::check_admin(self, info)
    }
}

impl AuthServer for Server {
    async fn authenticate(&self, name: &str, password: &str) -> Result<String> {
        Server::authenticate(self, name, password).await
    }
    async fn hash_password(&self, password: &str) -> Result<Vec<u8>> {
        Server::hash_password(self, password).await
    }
    async fn change_auth(&self, info: &AuthInfo, change: AuthChange) -> Result<()> {
        Server::change_auth(self, info, change).await
    }
    async fn auth_state(&self) -> Result<Arc<AuthState>> {
        Server::auth_state_linearized(self).await
    }
}

impl QuotaChecker for Server {
    async fn check_quota(&self) -> Result<()> {
        Server::check_quota(self).await
    }
}

impl KvServer for Server {
    fn max_request_bytes(&self) -> usize {
        self.config().max_request_bytes
    }
    fn max_txn_ops(&self) -> usize {
        self.config().max_txn_ops
    }
    async fn propose(&self, request: Request) -> Result<Response> {
        Server::propose(self, request).await
    }
    async fn range_barrier(&self, request: &PbRangeRequest) -> Result<()> {
        Server::range_barrier(self, request).await
    }
    async fn range_read(&self, request: &PbRangeRequest) -> Result<PbRangeResponse> {
        Server::range_read(self, request).await
    }
}

impl LeaseServer for Server {
    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        Server::lease_grant(self, id, ttl).await
    }
    async fn lease_revoke(&self, info: &AuthInfo, id: i64) -> Result<i64> {
        Server::lease_revoke_as(self, info, id).await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<LeaseTtl> {
        Server::lease_keep_alive(self, id).await
    }
    async fn lease_time_to_live(&self, id: i64) -> Result<LeaseTtl> {
        Server::lease_time_to_live(self, id).await
    }
    fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        Server::lease_keys(self, id)
    }
    fn lease_ids(&self) -> Result<Vec<i64>> {
        Server::lease_ids(self)
    }
}

impl ClusterServer for Server {
    async fn change_members(
        &self,
        change: MemberChange,
    ) -> Result<(Option<MemberInfo>, Vec<MemberInfo>)> {
        Server::change_members(self, change).await
    }
    fn members(&self) -> Result<Vec<MemberInfo>> {
        Server::members(self)
    }
    async fn read_barrier(&self) -> Result<()> {
        Server::read_barrier(self).await
    }
}

impl MaintenanceServer for Server {
    fn raft_summary(&self) -> RaftSummary {
        Server::raft_summary(self)
    }
    fn applied_index(&self) -> u64 {
        Server::applied_index(self)
    }
    fn db_size_bytes(&self) -> u64 {
        Server::db_size_bytes(self)
    }
    fn db_size_in_use(&self) -> u64 {
        Server::db_size_in_use(self)
    }
    fn quota_backend_bytes(&self) -> u64 {
        self.config().quota_backend_bytes
    }
    fn alarms(&self, only: i32) -> Result<Vec<PbAlarmMember>> {
        Server::alarms(self, only)
    }
    async fn set_alarm(&self, activate: bool, member_id: u64, alarm: i32) -> Result<()> {
        Server::set_alarm(self, activate, member_id, alarm).await
    }
    async fn defragment(&self) -> Result<()> {
        Server::defragment(self).await
    }
    async fn hash_all(&self) -> Result<(u32, i64)> {
        Server::hash_all(self).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        Server::hash_kv(self, revision).await
    }
    async fn snapshot_file(&self) -> Result<Vec<u8>> {
        Server::snapshot_file(self).await
    }
    async fn move_leader(&self, target: u64) -> Result<()> {
        Server::move_leader(self, target).await
    }
}
