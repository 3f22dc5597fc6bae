//! The auth store: users, roles, their permissions, the auth revision and whether auth is
//! enabled; etcd's rules for changing them (`AuthState::apply`) and the permission check every
//! request goes through (`AuthState::check`). The state is one value in the MVCC store's
//! metadata, written in the same transaction as the applied index, so applying replicates it,
//! snapshots carry it and restarts keep it.
//!
//! Not here: password hashing and tokens (the server's: hashing is slow and must not run where
//! entries are applied), nor the wire.

use std::collections::BTreeMap;

use etcd_client::proto::{PbDeleteRequest, PbPutRequest, PbTxnOpRequest, PbTxnRequest};
use serde::{Deserialize, Serialize};

use crate::mvcc::{KeySpan, MvccStore, MvccWrite, Requests};
use crate::{Result, StorageError};

/// The metadata key the auth state is stored under.
pub(crate) const AUTH_STATE_KEY: &str = "auth/state";
/// The name of the user and of the role that may do everything.
pub const ROOT: &str = "root";

/// Why an auth operation or a permission check failed; the same on every member. The messages
/// are etcd's, which clients match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthFailure {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

/// What a permission allows, with etcd's numbers (authpb.Permission.Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermKind {
    pub fn from_i32(n: i32) -> Option<PermKind> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Access::Read)
                | (PermKind::Write, Access::Write)
        )
    }
}

/// What a request does to a span of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A permission on a key, a range or a prefix, with etcd's `(key, range_end)` encoding: an
/// empty `range_end` is the key alone, `[0]` every key from `key` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// The bcrypt hash of the password; empty for a user without password.
    pub password_hash: Vec<u8>,
    /// Sorted.
    pub roles: Vec<String>,
    /// etcd's `UserAddOptions.no_password`: the user cannot authenticate with a password (a
    /// client certificate's CommonName names it).
    pub no_password: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Sorted by key, then range end.
    pub permissions: Vec<Permission>,
}

/// A change to the auth store, as the Raft log carries it. Passwords arrive hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthChange {
    /// The user whose tokens must stop working once this change is applied.
    pub fn invalidates_user(&self) -> Option<&str> {
        match self {
            AuthChange::UserDelete { name } | AuthChange::UserChangePassword { name, .. } => {
                Some(name)
            }
            _ => None,
        }
    }
}

/// Users, roles, the revision and the enabled flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Raised by every change, so that a request checked against an older state is refused.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl AuthState {
    /// The auth state a store holds (the default when auth was never used).
    pub fn load(store: &MvccStore) -> Result<AuthState> {
        decode(store.meta(AUTH_STATE_KEY)?)
    }

    /// The auth state as a write transaction sees it.
    pub fn load_in(write: &MvccWrite) -> Result<AuthState> {
        decode(write.meta(AUTH_STATE_KEY)?)
    }

    /// Writes the state into the transaction of `write`'s batch.
    pub fn save(&self, write: &mut Requests<'_>) -> Result<()> {
        write.set_meta(AUTH_STATE_KEY, &self.to_meta())
    }

    /// The state as its metadata value.
    pub(crate) fn to_meta(&self) -> Vec<u8> {
        bincode::serialize(self).expect("in-memory values always serialise")
    }

    /// The state a metadata value holds.
    pub(crate) fn from_meta(bytes: &[u8]) -> Result<AuthState> {
        decode(Some(bytes.to_vec()))
    }

    /// Applies one change by etcd's rules; every successful change raises the revision.
    pub fn apply(&mut self, change: &AuthChange) -> Result<(), AuthFailure> {
        use AuthFailure as F;
        match change {
            AuthChange::Enable => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(F::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(F::RootRoleNotExist);
                }
                self.enabled = true;
                // etcd's AuthEnable only reloads the revision; it does not raise it.
                return Ok(());
            }
            AuthChange::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            AuthChange::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(F::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(F::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        name: name.clone(),
                        password_hash: password_hash.clone(),
                        roles: Vec::new(),
                        no_password: *no_password,
                    },
                );
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(F::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(F::UserNotFound)?;
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(F::UserNotFound)?;
                user.password_hash = password_hash.clone();
            }
            AuthChange::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(F::UserNotFound);
                }
                // The root role need not be created to be granted.
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(F::RoleNotFound);
                }
                let user = self.users.get_mut(user).expect("checked above");
                match user.roles.binary_search(role) {
                    // Already granted: etcd ignores the grant, revision unchanged.
                    Ok(_) => return Ok(()),
                    Err(at) => user.roles.insert(at, role.clone()),
                }
            }
            AuthChange::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(F::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(user).ok_or(F::UserNotFound)?;
                let at = user
                    .roles
                    .binary_search(role)
                    .map_err(|_| F::RoleNotGranted)?;
                user.roles.remove(at);
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(F::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(F::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        permissions: Vec::new(),
                    },
                );
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(F::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(F::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|r| r != name);
                }
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                let role = self.roles.get_mut(role).ok_or(F::RoleNotFound)?;
                if !valid_permission_range(&permission.key, &permission.range_end) {
                    return Err(F::InvalidAuthMgmt);
                }
                let place = role.permissions.binary_search_by(|p| {
                    (&p.key, &p.range_end).cmp(&(&permission.key, &permission.range_end))
                });
                match place {
                    Ok(at) => role.permissions[at].kind = permission.kind,
                    Err(at) => role.permissions.insert(at, permission.clone()),
                }
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let role = self.roles.get_mut(role).ok_or(F::RoleNotFound)?;
                let at = role
                    .permissions
                    .iter()
                    .position(|p| &p.key == key && &p.range_end == range_end)
                    .ok_or(F::PermissionNotGranted)?;
                role.permissions.remove(at);
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `user` has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Checks that `user` (`None`: a request without credentials) may do `access` on the keys
    /// `(key, range_end)` name. Everything is allowed while auth is disabled.
    pub fn check(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthFailure> {
        if !self.enabled {
            return Ok(());
        }
        let user = self.known_user(user)?;
        if self.is_root(&user.name) {
            return Ok(());
        }
        let spans: Vec<Span> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.kind.allows(access))
            .map(|p| Span::of(&p.key, &p.range_end))
            .collect();
        if covered(&Span::of(key, range_end), &spans) {
            Ok(())
        } else {
            Err(AuthFailure::PermissionDenied)
        }
    }

    /// A Put needs write permission on its key, and read permission too when it returns the
    /// previous value.
    pub fn check_put(&self, user: Option<&str>, req: &PbPutRequest) -> Result<(), AuthFailure> {
        self.check(user, &req.key, &[], Access::Write)?;
        if req.prev_kv {
            self.check(user, &req.key, &[], Access::Read)?;
        }
        Ok(())
    }

    /// A DeleteRange needs write permission on its range, and read permission too when it
    /// returns the deleted values.
    pub fn check_delete(
        &self,
        user: Option<&str>,
        req: &PbDeleteRequest,
    ) -> Result<(), AuthFailure> {
        self.check(user, &req.key, &req.range_end, Access::Write)?;
        if req.prev_kv {
            self.check(user, &req.key, &req.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// A Txn needs read permission on every compare, and the permission of every operation in
    /// both branches, nested transactions included, whichever branch runs.
    pub fn check_txn(&self, user: Option<&str>, req: &PbTxnRequest) -> Result<(), AuthFailure> {
        for compare in &req.compare {
            self.check(user, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in req.success.iter().chain(req.failure.iter()) {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => {
                    self.check(user, &r.key, &r.range_end, Access::Read)?
                }
                Some(PbTxnOpRequest::RequestPut(r)) => self.check_put(user, r)?,
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => self.check_delete(user, r)?,
                Some(PbTxnOpRequest::RequestTxn(r)) => self.check_txn(user, r)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Checks that `user` may administer the cluster (the root role).
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthFailure> {
        if !self.enabled {
            return Ok(());
        }
        // etcd's IsAdminPermitted: an unknown user is ErrUserNotFound (a permission check on
        // keys answers permission denied).
        let user = match self.known_user(user) {
            Err(AuthFailure::PermissionDenied) => return Err(AuthFailure::UserNotFound),
            other => other?,
        };
        if self.is_root(&user.name) {
            Ok(())
        } else {
            Err(AuthFailure::PermissionDenied)
        }
    }

    fn known_user(&self, user: Option<&str>) -> Result<&User, AuthFailure> {
        let name = user
            .filter(|u| !u.is_empty())
            .ok_or(AuthFailure::UserEmpty)?;
        self.users.get(name).ok_or(AuthFailure::PermissionDenied)
    }
}

fn decode(bytes: Option<Vec<u8>>) -> Result<AuthState> {
    match bytes {
        Some(bytes) => {
            bincode::deserialize(&bytes).map_err(|e| StorageError::MvccCorrupt(e.to_string()))
        }
        None => Ok(AuthState::default()),
    }
}

/// etcd refuses a permission whose range ends before it starts.
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    range_end.is_empty() || range_end == [0] || key < range_end
}

/// A half-open interval of keys; `end: None` is unbounded.
#[derive(Debug, Clone)]
struct Span {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Span {
    fn of(key: &[u8], range_end: &[u8]) -> Span {
        match KeySpan::new(key, range_end) {
            KeySpan::Single(key) => {
                // The key alone is [key, key + "\0").
                let mut end = key.clone();
                end.push(0);
                Span {
                    start: key,
                    end: Some(end),
                }
            }
            KeySpan::Interval { start, end } => Span { start, end },
        }
    }
}

/// Whether the union of `spans` covers all of `wanted` (etcd merges a user's permissions into
/// intervals, so a range two permissions cover together is allowed).
fn covered(wanted: &Span, spans: &[Span]) -> bool {
    if matches!(&wanted.end, Some(end) if *end <= wanted.start) {
        return true;
    }
    let mut reached = wanted.start.clone();
    loop {
        let next = spans
            .iter()
            .filter(|s| s.start <= reached && s.end.as_ref().is_none_or(|e| *e > reached))
            .map(|s| s.end.clone())
            .max_by(|a, b| match (a, b) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, _) => std::cmp::Ordering::Greater,
                (_, None) => std::cmp::Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            });
        match next {
            None => return false,
            Some(None) => return true,
            Some(Some(end)) => {
                if wanted.end.as_ref().is_some_and(|w| end >= *w) {
                    return true;
                }
                reached = end;
            }
        }
    }
}

#[cfg(test)]
mod tests;
