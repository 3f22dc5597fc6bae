//! `etcdserverpb.Auth`: AuthEnable/Disable/Status, Authenticate, and the user and role
//! management calls; and `request_auth`, which every service uses to learn who a request comes
//! from (the `token` metadata etcd's clients send, else the client certificate's CommonName).
//!
//! The service is routed by hand rather than through etcd-client's generated `Auth` trait:
//! that trait names AuthStatus messages the crate does not export, so it cannot be implemented
//! outside it. The messages are etcd's (`AuthStatus*` declared here with etcd's field numbers).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use etcd_client::proto::{
    PbAuthDisableRequest, PbAuthDisableResponse, PbAuthEnableRequest, PbAuthEnableResponse,
    PbAuthRoleAddRequest, PbAuthRoleAddResponse, PbAuthRoleDeleteRequest, PbAuthRoleDeleteResponse,
    PbAuthRoleGetRequest, PbAuthRoleGetResponse, PbAuthRoleGrantPermissionRequest,
    PbAuthRoleGrantPermissionResponse, PbAuthRoleListRequest, PbAuthRoleListResponse,
    PbAuthRoleRevokePermissionRequest, PbAuthRoleRevokePermissionResponse, PbAuthUserAddRequest,
    PbAuthUserAddResponse, PbAuthUserChangePasswordRequest, PbAuthUserChangePasswordResponse,
    PbAuthUserDeleteRequest, PbAuthUserDeleteResponse, PbAuthUserGetRequest, PbAuthUserGetResponse,
    PbAuthUserGrantRoleRequest, PbAuthUserGrantRoleResponse, PbAuthUserListRequest,
    PbAuthUserListResponse, PbAuthUserRevokeRoleRequest, PbAuthUserRevokeRoleResponse,
    PbAuthenticateRequest, PbAuthenticateResponse, PbResponseHeader,
};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::traits::{AuthServer, Authorizer};
use ferrokv_server::auth::{AuthChange, AuthFailure, AuthInfo, PermKind, Permission};
use ferrokv_tls::accept::TlsConnectInfo;

/// The metadata key etcd's clients carry their token in.
const TOKEN_KEY: &str = "token";

/// Who `request` comes from: the user its token names, else its client certificate's
/// CommonName, else nobody.
pub async fn request_auth<A: Authorizer, T>(
    server: &A,
    request: &Request<T>,
) -> Result<AuthInfo, Status> {
    RequestCredentials::of(request)
        .auth_info(server)
        .await
        .map_err(to_status)
}

/// What a request carries to name its user: its token, its client certificate's CommonName.
/// Kept by a stream to resolve them again later.
#[derive(Debug, Clone, Default)]
pub struct RequestCredentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl RequestCredentials {
    pub fn of<T>(request: &Request<T>) -> RequestCredentials {
        RequestCredentials {
            token: request
                .metadata()
                .get(TOKEN_KEY)
                .and_then(|v| v.to_str().ok())
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            common_name: request
                .extensions()
                .get::<TlsConnectInfo>()
                .and_then(|info| info.common_name.clone()),
        }
    }

    /// The user the credentials name now.
    pub async fn auth_info<A: Authorizer>(&self, server: &A) -> ferrokv_server::Result<AuthInfo> {
        server
            .auth_info(self.token.as_deref(), self.common_name.as_deref())
            .await
    }
}

/// Refuses `request` unless it comes from a user with the root role (while auth is enabled):
/// the admin-only calls (membership changes, defragment, snapshot, hashes, move-leader, ...).
pub async fn require_admin<A: Authorizer, T>(
    server: &A,
    request: &Request<T>,
) -> Result<(), Status> {
    let info = request_auth(server, request).await?;
    server.check_admin(&info).map_err(to_status)
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthStatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<PbResponseHeader>,
    #[prost(bool, tag = "2")]
    pub enabled: bool,
    #[prost(uint64, tag = "3")]
    pub auth_revision: u64,
}

pub struct AuthService<S> {
    server: S,
}

impl<S: AuthServer> AuthService<S> {
    pub fn new(server: S) -> AuthService<S> {
        AuthService { server }
    }

    fn header(&self) -> Result<PbResponseHeader, Status> {
        let revision = self.server.current_revision().map_err(to_status)?;
        Ok(self.server.header(revision))
    }

    async fn change<T>(&self, request: &Request<T>, change: AuthChange) -> Result<(), Status> {
        let info = request_auth(&self.server, request).await?;
        self.server
            .change_auth(&info, change)
            .await
            .map_err(to_status)
    }

    async fn auth_enable(
        &self,
        request: Request<PbAuthEnableRequest>,
    ) -> Result<Response<PbAuthEnableResponse>, Status> {
        self.change(&request, AuthChange::Enable).await?;
        Ok(Response::new(PbAuthEnableResponse {
            header: Some(self.header()?),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<PbAuthDisableRequest>,
    ) -> Result<Response<PbAuthDisableResponse>, Status> {
        self.change(&request, AuthChange::Disable).await?;
        Ok(Response::new(PbAuthDisableResponse {
            header: Some(self.header()?),
        }))
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let state = self.server.auth_state().await.map_err(to_status)?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.header()?),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<PbAuthenticateRequest>,
    ) -> Result<Response<PbAuthenticateResponse>, Status> {
        let req = request.into_inner();
        let token = self
            .server
            .authenticate(&req.name, &req.password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbAuthenticateResponse {
            header: Some(self.header()?),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<PbAuthUserAddRequest>,
    ) -> Result<Response<PbAuthUserAddResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(to_status(AuthFailure::UserEmpty.into()));
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        // Hashing is slow: refused callers do not get to make the server do it.
        self.server.check_admin(&info).map_err(to_status)?;
        let password_hash = if no_password {
            Vec::new()
        } else if !req.hashed_password.is_empty() {
            req.hashed_password.into_bytes()
        } else {
            self.server
                .hash_password(&req.password)
                .await
                .map_err(to_status)?
        };
        let change = AuthChange::UserAdd {
            name: req.name,
            password_hash,
            no_password,
        };
        self.server
            .change_auth(&info, change)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbAuthUserAddResponse {
            header: Some(self.header()?),
        }))
    }

    async fn user_get(
        &self,
        request: Request<PbAuthUserGetRequest>,
    ) -> Result<Response<PbAuthUserGetResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let name = request.into_inner().name;
        // A user may read its own entry.
        if info.user.as_deref() != Some(name.as_str()) {
            self.server.check_admin(&info).map_err(to_status)?;
        }
        let state = self.server.auth_state().await.map_err(to_status)?;
        let user = state
            .users
            .get(&name)
            .ok_or_else(|| to_status(AuthFailure::UserNotFound.into()))?;
        Ok(Response::new(PbAuthUserGetResponse {
            header: Some(self.header()?),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<PbAuthUserListRequest>,
    ) -> Result<Response<PbAuthUserListResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        self.server.check_admin(&info).map_err(to_status)?;
        let state = self.server.auth_state().await.map_err(to_status)?;
        Ok(Response::new(PbAuthUserListResponse {
            header: Some(self.header()?),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<PbAuthUserDeleteRequest>,
    ) -> Result<Response<PbAuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change(&request, AuthChange::UserDelete { name })
            .await?;
        Ok(Response::new(PbAuthUserDeleteResponse {
            header: Some(self.header()?),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<PbAuthUserChangePasswordRequest>,
    ) -> Result<Response<PbAuthUserChangePasswordResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        self.server.check_admin(&info).map_err(to_status)?;
        let req = request.into_inner();
        let password_hash = if !req.hashed_password.is_empty() {
            req.hashed_password.into_bytes()
        } else {
            self.server
                .hash_password(&req.password)
                .await
                .map_err(to_status)?
        };
        let change = AuthChange::UserChangePassword {
            name: req.name,
            password_hash,
        };
        self.server
            .change_auth(&info, change)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbAuthUserChangePasswordResponse {
            header: Some(self.header()?),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<PbAuthUserGrantRoleRequest>,
    ) -> Result<Response<PbAuthUserGrantRoleResponse>, Status> {
        let req = request.get_ref().clone();
        let change = AuthChange::UserGrantRole {
            user: req.user,
            role: req.role,
        };
        self.change(&request, change).await?;
        Ok(Response::new(PbAuthUserGrantRoleResponse {
            header: Some(self.header()?),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<PbAuthUserRevokeRoleRequest>,
    ) -> Result<Response<PbAuthUserRevokeRoleResponse>, Status> {
        let req = request.get_ref().clone();
        let change = AuthChange::UserRevokeRole {
            user: req.name,
            role: req.role,
        };
        self.change(&request, change).await?;
        Ok(Response::new(PbAuthUserRevokeRoleResponse {
            header: Some(self.header()?),
        }))
    }

    async fn role_add(
        &self,
        request: Request<PbAuthRoleAddRequest>,
    ) -> Result<Response<PbAuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change(&request, AuthChange::RoleAdd { name }).await?;
        Ok(Response::new(PbAuthRoleAddResponse {
            header: Some(self.header()?),
        }))
    }

    async fn role_get(
        &self,
        request: Request<PbAuthRoleGetRequest>,
    ) -> Result<Response<PbAuthRoleGetResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        let name = request.into_inner().role;
        let state = self.server.auth_state().await.map_err(to_status)?;
        // A user may read the roles it has.
        let has_role = info
            .user
            .as_ref()
            .and_then(|u| state.users.get(u))
            .is_some_and(|u| u.roles.contains(&name));
        if !has_role {
            self.server.check_admin(&info).map_err(to_status)?;
        }
        let role = state
            .roles
            .get(&name)
            .ok_or_else(|| to_status(AuthFailure::RoleNotFound.into()))?;
        let perm = role
            .permissions
            .iter()
            .map(|p| {
                let kind = match p.kind {
                    PermKind::Read => etcd_client::PermissionType::Read,
                    PermKind::Write => etcd_client::PermissionType::Write,
                    PermKind::ReadWrite => etcd_client::PermissionType::Readwrite,
                };
                etcd_client::Permission::new(kind, p.key.clone())
                    .with_range_end(p.range_end.clone())
                    .into()
            })
            .collect();
        Ok(Response::new(PbAuthRoleGetResponse {
            header: Some(self.header()?),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<PbAuthRoleListRequest>,
    ) -> Result<Response<PbAuthRoleListResponse>, Status> {
        let info = request_auth(&self.server, &request).await?;
        self.server.check_admin(&info).map_err(to_status)?;
        let state = self.server.auth_state().await.map_err(to_status)?;
        Ok(Response::new(PbAuthRoleListResponse {
            header: Some(self.header()?),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<PbAuthRoleDeleteRequest>,
    ) -> Result<Response<PbAuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        self.change(&request, AuthChange::RoleDelete { name })
            .await?;
        Ok(Response::new(PbAuthRoleDeleteResponse {
            header: Some(self.header()?),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<PbAuthRoleGrantPermissionRequest>,
    ) -> Result<Response<PbAuthRoleGrantPermissionResponse>, Status> {
        let req = request.get_ref();
        let perm = req
            .perm
            .as_ref()
            .ok_or_else(|| to_status(AuthFailure::PermissionNotGiven.into()))?;
        let kind = PermKind::from_i32(perm.perm_type)
            .ok_or_else(|| to_status(AuthFailure::PermissionNotGiven.into()))?;
        let change = AuthChange::RoleGrantPermission {
            role: req.name.clone(),
            permission: Permission {
                kind,
                key: perm.key.clone(),
                range_end: perm.range_end.clone(),
            },
        };
        self.change(&request, change).await?;
        Ok(Response::new(PbAuthRoleGrantPermissionResponse {
            header: Some(self.header()?),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<PbAuthRoleRevokePermissionRequest>,
    ) -> Result<Response<PbAuthRoleRevokePermissionResponse>, Status> {
        let req = request.get_ref().clone();
        let change = AuthChange::RoleRevokePermission {
            role: req.role,
            key: req.key,
            range_end: req.range_end,
        };
        self.change(&request, change).await?;
        Ok(Response::new(PbAuthRoleRevokePermissionResponse {
            header: Some(self.header()?),
        }))
    }
}

/// The routes of `etcdserverpb.Auth`, for tonic's router.
pub struct AuthRoutes<S> {
    service: Arc<AuthService<S>>,
    max_decoding: usize,
}

impl<S> Clone for AuthRoutes<S> {
    fn clone(&self) -> Self {
        AuthRoutes {
            service: self.service.clone(),
            max_decoding: self.max_decoding,
        }
    }
}

impl<S: AuthServer> AuthRoutes<S> {
    pub fn new(server: S, max_decoding: usize) -> AuthRoutes<S> {
        AuthRoutes {
            service: Arc::new(AuthService::new(server)),
            max_decoding,
        }
    }
}

impl<S> NamedService for AuthRoutes<S> {
    const NAME: &'static str = "etcdserverpb.Auth";
}

/// A unary call: decodes the request, runs `handle`, encodes the answer.
struct Unary<F>(F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = Fut;

    fn call(&mut self, request: Request<Req>) -> Fut {
        (self.0)(request)
    }
}

async fn unary<Req, Resp, F, Fut>(
    request: http::Request<Body>,
    max_decoding: usize,
    handle: F,
) -> http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default())
        .apply_max_message_size_config(Some(max_decoding), None);
    grpc.unary(Unary(handle), request).await
}

macro_rules! route {
    ($request:expr, $service:expr, $max:expr, $( $path:literal => $method:ident ),+ $(,)?) => {
        match $request.uri().path() {
            $( $path => {
                let service = $service.clone();
                Box::pin(async move {
                    Ok(unary($request, $max, move |r| {
                        let service = service.clone();
                        async move { service.$method(r).await }
                    })
                    .await)
                }) as BoxFuture<http::Response<Body>, Infallible>
            } )+
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    };
}

impl<S: AuthServer> Service<http::Request<Body>> for AuthRoutes<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max = self.max_decoding;
        route!(request, self.service, max,
            "/etcdserverpb.Auth/AuthEnable" => auth_enable,
            "/etcdserverpb.Auth/AuthDisable" => auth_disable,
            "/etcdserverpb.Auth/AuthStatus" => auth_status,
            "/etcdserverpb.Auth/Authenticate" => authenticate,
            "/etcdserverpb.Auth/UserAdd" => user_add,
            "/etcdserverpb.Auth/UserGet" => user_get,
            "/etcdserverpb.Auth/UserList" => user_list,
            "/etcdserverpb.Auth/UserDelete" => user_delete,
            "/etcdserverpb.Auth/UserChangePassword" => user_change_password,
            "/etcdserverpb.Auth/UserGrantRole" => user_grant_role,
            "/etcdserverpb.Auth/UserRevokeRole" => user_revoke_role,
            "/etcdserverpb.Auth/RoleAdd" => role_add,
            "/etcdserverpb.Auth/RoleGet" => role_get,
            "/etcdserverpb.Auth/RoleList" => role_list,
            "/etcdserverpb.Auth/RoleDelete" => role_delete,
            "/etcdserverpb.Auth/RoleGrantPermission" => role_grant_permission,
            "/etcdserverpb.Auth/RoleRevokePermission" => role_revoke_permission,
        )
    }
}
