//! Auth as the server serves it: who a request comes from (a simple token, a JWT token, or a
//! client certificate's CommonName), the read and admin checks made where a request is
//! received, Authenticate (the password is checked here, off the apply stage, before anything
//! is proposed or signed) and the auth management requests. Write permissions are checked where entries are
//! applied (`Request::Authorized`); the rules themselves are the auth store's
//! (`ferrokv_storage::auth`).

use std::sync::Arc;

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::config::AuthToken;
use crate::jwt::SignFailure;
use crate::{Request, Response, Result, Server, ServerError as Error};
use ferrokv_storage::auth::Access;
pub use ferrokv_storage::auth::{AuthChange, AuthFailure, AuthState, PermKind, Permission};

/// Who a request comes from, and the auth revision it was authorized at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// None: no credentials (or auth disabled).
    pub user: Option<String>,
    pub revision: u64,
}

/// How many times Authenticate checks the password again when the auth store changed between
/// the check and the apply.
const AUTHENTICATE_ATTEMPTS: usize = 3;

impl Server {
    /// The auth store as of the last applied entry.
    pub fn auth_state(&self) -> Arc<AuthState> {
        self.state_machine().auth()
    }

    /// Who a request comes from: the user its token names, else the CommonName of its client
    /// certificate, else nobody. A token that names nobody (expired, forged, or a simple token
    /// from before a restart) is etcd's "invalid auth token".
    ///
    /// A JWT token is checked by its signature and carries the auth revision it was issued at,
    /// so any change to users or roles since makes it stale ("revision of auth store is old"),
    /// as in etcd. A simple token issued through another member is known here once this member
    /// has applied the Authenticate that issued it: an unknown token is looked up again after
    /// catching up.
    pub async fn auth_info(
        &self,
        token: Option<&str>,
        common_name: Option<&str>,
    ) -> Result<AuthInfo> {
        let state = self.auth_state();
        if !state.enabled {
            return Ok(AuthInfo {
                user: None,
                revision: state.revision,
            });
        }
        let user = match (token, &self.config().auth_token) {
            (Some(token), AuthToken::Jwt(jwt)) => {
                let (user, revision) = jwt.verify(token).ok_or(AuthFailure::InvalidAuthToken)?;
                return Ok(AuthInfo {
                    user: Some(user),
                    revision,
                });
            }
            (Some(token), AuthToken::Simple) => {
                let tokens = self.state_machine().tokens();
                let user = match tokens.user_of(token) {
                    Some(user) => Some(user),
                    None => {
                        self.read_barrier().await?;
                        tokens.user_of(token)
                    }
                };
                Some(user.ok_or(AuthFailure::InvalidAuthToken)?)
            }
            // etcd takes the user from the certificate only with --client-cert-auth.
            (None, _) => common_name
                .filter(|_| self.config().client_cert_auth)
                .map(str::to_string),
        };
        let state = self.auth_state();
        Ok(AuthInfo {
            user,
            revision: state.revision,
        })
    }

    /// Wraps a client's write so that it is checked against the auth store when applied.
    pub fn authorized(&self, info: &AuthInfo, request: Request) -> Request {
        Request::Authorized {
            user: info.user.clone(),
            auth_revision: info.revision,
            request: Box::new(request),
        }
    }

    /// Checks read permission on `(key, range_end)`, for reads served by this member. As in
    /// etcd, a user authorized at an older auth revision (a JWT token issued before a change of
    /// users or roles) is refused.
    pub fn check_read(&self, info: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<()> {
        let state = self.auth_state();
        if state.enabled && info.user.is_some() && info.revision < state.revision {
            return Err(AuthFailure::AuthOldRevision.into());
        }
        Ok(state.check(info.user.as_deref(), key, range_end, Access::Read)?)
    }

    /// Checks that the request comes from a user with the root role (when auth is enabled).
    pub fn check_admin(&self, info: &AuthInfo) -> Result<()> {
        Ok(self.auth_state().check_admin(info.user.as_deref())?)
    }

    /// Checks `password` and issues a token valid on every member: a simple token recorded
    /// through Raft, or a JWT token signed here at the auth revision the password was checked
    /// at.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String> {
        if let AuthToken::Jwt(jwt) = &self.config().auth_token {
            // Checked against everything committed before the request, so a token carries no
            // older revision than the one its password was valid at.
            let state = self.auth_state_linearized().await?;
            check_password(&state, name, password).await?;
            return jwt.sign(name, state.revision).map_err(|e| match e {
                SignFailure::VerifyOnly => Error::VerifyOnlyKey,
                SignFailure::Signing(message) => Error::TokenSigning(message),
            });
        }
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let state = self.auth_state();
            check_password(&state, name, password).await?;
            let random: String = rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(16)
                .map(char::from)
                .collect();
            let token = format!("{random}.{}", self.next_proposal_id());
            let request = Request::Authenticate {
                name: name.to_string(),
                token: token.clone(),
                checked_revision: state.revision,
            };
            match self.propose(request).await? {
                Response::Rejected(crate::ApplyError::Auth(AuthFailure::AuthOldRevision)) => {
                    continue
                }
                Response::Rejected(e) => return Err(e.into()),
                _ => return Ok(token),
            }
        }
        Err(AuthFailure::AuthOldRevision.into())
    }

    /// The bcrypt hash of `password` at `--bcrypt-cost`, computed off the async runtime.
    pub async fn hash_password(&self, password: &str) -> Result<Vec<u8>> {
        let cost = self.config().bcrypt_cost;
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Backend(e.to_string()))?
            .map_err(|e| Error::Backend(format!("hashing a password: {e}")))?;
        Ok(hash.into_bytes())
    }

    /// Proposes an auth management change on behalf of `info`'s user (who must be root once
    /// auth is enabled; checked when applied).
    pub async fn change_auth(&self, info: &AuthInfo, change: AuthChange) -> Result<()> {
        self.check_admin(info)?;
        // etcd asks of an admin request only that its user have the root role when applied,
        // not that its token be of the current auth revision: a root JWT token stays good for
        // the changes it makes itself. The request is authorized at the revision of everything
        // committed before it (a member that has not yet applied the last change catches up
        // first); the root role is checked again when it is applied.
        let current = self.auth_state_linearized().await?.revision;
        let admin = AuthInfo {
            user: info.user.clone(),
            revision: info.revision.max(current),
        };
        match self
            .propose(self.authorized(&admin, Request::Auth(change)))
            .await?
        {
            Response::Rejected(e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The auth store as of everything committed when called, for the auth management reads.
    pub async fn auth_state_linearized(&self) -> Result<Arc<AuthState>> {
        self.read_barrier().await?;
        Ok(self.auth_state())
    }
}

/// Checks `name`'s password against `state` (bcrypt, off the async runtime).
async fn check_password(state: &AuthState, name: &str, password: &str) -> Result<()> {
    if !state.enabled {
        return Err(AuthFailure::AuthNotEnabled.into());
    }
    let user = state.users.get(name).ok_or(AuthFailure::AuthFailed)?;
    if user.no_password || user.password_hash.is_empty() {
        return Err(AuthFailure::AuthFailed.into());
    }
    let hash = String::from_utf8_lossy(&user.password_hash).into_owned();
    let password = password.to_string();
    let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
        .unwrap_or(false);
    if matches {
        Ok(())
    } else {
        Err(AuthFailure::AuthFailed.into())
    }
}
