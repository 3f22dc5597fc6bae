use super::*;

fn user_add(name: &str) -> AuthChange {
    AuthChange::UserAdd {
        name: name.into(),
        password_hash: b"hash".to_vec(),
        no_password: false,
    }
}

fn grant(user: &str, role: &str) -> AuthChange {
    AuthChange::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

fn perm(role: &str, kind: PermKind, key: &[u8], range_end: &[u8]) -> AuthChange {
    AuthChange::RoleGrantPermission {
        role: role.into(),
        permission: Permission {
            kind,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        },
    }
}

/// root with the root role, alice with role `r`, auth enabled.
fn enabled_with_alice() -> AuthState {
    let mut state = AuthState::default();
    for change in [
        user_add("root"),
        grant("root", "root"),
        user_add("alice"),
        AuthChange::RoleAdd { name: "r".into() },
        grant("alice", "r"),
        AuthChange::Enable,
    ] {
        state.apply(&change).unwrap();
    }
    state
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut state = AuthState::default();
    assert_eq!(
        state.apply(&AuthChange::Enable),
        Err(AuthFailure::RootUserNotExist)
    );
    state.apply(&user_add("root")).unwrap();
    assert_eq!(
        state.apply(&AuthChange::Enable),
        Err(AuthFailure::RootRoleNotExist)
    );
    state.apply(&grant("root", "root")).unwrap();
    state.apply(&AuthChange::Enable).unwrap();
    assert!(state.enabled);
}

#[test]
fn root_keeps_root_and_the_root_role_stays_while_auth_is_enabled() {
    let mut state = enabled_with_alice();
    let revoke = AuthChange::UserRevokeRole {
        user: "root".into(),
        role: "root".into(),
    };
    assert_eq!(state.apply(&revoke), Err(AuthFailure::InvalidAuthMgmt));
    assert_eq!(
        state.apply(&AuthChange::UserDelete {
            name: "root".into()
        }),
        Err(AuthFailure::InvalidAuthMgmt)
    );
    assert_eq!(
        state.apply(&AuthChange::RoleDelete {
            name: "root".into()
        }),
        Err(AuthFailure::InvalidAuthMgmt)
    );
    state.apply(&AuthChange::Disable).unwrap();
    state.apply(&revoke).unwrap();
}

#[test]
fn every_change_raises_the_revision_and_a_refused_one_does_not() {
    let mut state = enabled_with_alice();
    let before = state.revision;
    state.apply(&perm("r", PermKind::Read, b"a", b"")).unwrap();
    assert_eq!(state.revision, before + 1);
    state
        .apply(&AuthChange::RoleRevokePermission {
            role: "r".into(),
            key: b"a".to_vec(),
            range_end: vec![],
        })
        .unwrap();
    assert_eq!(state.revision, before + 2);
    assert_eq!(
        state.apply(&user_add("alice")),
        Err(AuthFailure::UserAlreadyExist)
    );
    assert_eq!(
        state.apply(&grant("alice", "nope")),
        Err(AuthFailure::RoleNotFound)
    );
    assert_eq!(state.revision, before + 2);
    // As in etcd: granting a role the user has, and enabling auth, leave the revision alone.
    state.apply(&grant("alice", "r")).unwrap();
    assert_eq!(state.revision, before + 2);
    state.apply(&AuthChange::Disable).unwrap();
    assert_eq!(state.revision, before + 3);
    state.apply(&AuthChange::Enable).unwrap();
    assert!(state.enabled);
    assert_eq!(state.revision, before + 3);
}

#[test]
fn an_unknown_user_is_not_found_by_the_admin_check_and_denied_by_the_key_check() {
    let state = enabled_with_alice();
    assert_eq!(
        state.check_admin(Some("ghost")),
        Err(AuthFailure::UserNotFound)
    );
    assert_eq!(
        state.check_admin(Some("alice")),
        Err(AuthFailure::PermissionDenied)
    );
    assert_eq!(state.check_admin(None), Err(AuthFailure::UserEmpty));
    assert_eq!(
        state.check(Some("ghost"), b"a", b"", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn deleting_a_role_takes_it_from_its_users() {
    let mut state = enabled_with_alice();
    state
        .apply(&AuthChange::RoleDelete { name: "r".into() })
        .unwrap();
    assert!(state.users["alice"].roles.is_empty());
    assert_eq!(
        state.apply(&AuthChange::UserRevokeRole {
            user: "alice".into(),
            role: "r".into()
        }),
        Err(AuthFailure::RoleNotGranted)
    );
}

#[test]
fn a_key_permission_allows_that_key_only() {
    let mut state = enabled_with_alice();
    state.apply(&perm("r", PermKind::Read, b"k", b"")).unwrap();
    let alice = Some("alice");
    assert_eq!(state.check(alice, b"k", b"", Access::Read), Ok(()));
    assert_eq!(
        state.check(alice, b"k", b"", Access::Write),
        Err(AuthFailure::PermissionDenied)
    );
    assert_eq!(
        state.check(alice, b"k1", b"", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
    assert_eq!(
        state.check(alice, b"k", b"l", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn a_prefix_permission_covers_keys_and_ranges_inside_it() {
    let mut state = enabled_with_alice();
    state
        .apply(&perm("r", PermKind::ReadWrite, b"app/", b"app0"))
        .unwrap();
    let alice = Some("alice");
    assert_eq!(state.check(alice, b"app/x", b"", Access::Write), Ok(()));
    assert_eq!(state.check(alice, b"app/", b"app0", Access::Read), Ok(()));
    assert_eq!(state.check(alice, b"app/a", b"app/b", Access::Read), Ok(()));
    assert_eq!(
        state.check(alice, b"app/", b"b", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
    assert_eq!(
        state.check(alice, b"other", b"", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn adjacent_ranges_together_cover_a_range_neither_covers_alone() {
    let mut state = enabled_with_alice();
    state.apply(&perm("r", PermKind::Read, b"a", b"c")).unwrap();
    state.apply(&perm("r", PermKind::Read, b"c", b"e")).unwrap();
    let alice = Some("alice");
    assert_eq!(state.check(alice, b"b", b"d", Access::Read), Ok(()));
    assert_eq!(
        state.check(alice, b"b", b"f", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn a_from_key_permission_covers_everything_after_its_key() {
    let mut state = enabled_with_alice();
    state
        .apply(&perm("r", PermKind::Write, b"m", &[0]))
        .unwrap();
    let alice = Some("alice");
    assert_eq!(state.check(alice, b"zzz", b"", Access::Write), Ok(()));
    assert_eq!(state.check(alice, b"m", &[0], Access::Write), Ok(()));
    assert_eq!(
        state.check(alice, b"a", &[0], Access::Write),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn root_may_do_anything_and_a_request_without_user_nothing() {
    let state = enabled_with_alice();
    assert_eq!(state.check(Some("root"), b"x", &[0], Access::Write), Ok(()));
    assert_eq!(state.check_admin(Some("root")), Ok(()));
    assert_eq!(
        state.check_admin(Some("alice")),
        Err(AuthFailure::PermissionDenied)
    );
    assert_eq!(
        state.check(None, b"x", b"", Access::Read),
        Err(AuthFailure::UserEmpty)
    );
    assert_eq!(
        state.check(Some("ghost"), b"x", b"", Access::Read),
        Err(AuthFailure::PermissionDenied)
    );
}

#[test]
fn everything_is_allowed_while_auth_is_disabled() {
    let state = AuthState::default();
    assert_eq!(state.check(None, b"x", b"", Access::Write), Ok(()));
    assert_eq!(state.check_admin(None), Ok(()));
}

#[test]
fn the_state_survives_a_store_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("db.redb")).unwrap();
    let state = enabled_with_alice();
    let mut write = store.begin_write().unwrap();
    state.save(&mut write.requests().unwrap()).unwrap();
    write.commit(true).unwrap();
    assert_eq!(AuthState::load(&store).unwrap(), state);
}

#[test]
fn a_txn_is_refused_for_a_compare_or_a_nested_op_outside_the_permissions() {
    use etcd_client::proto::{PbCompare, PbTxnRequestOp};
    let mut state = enabled_with_alice();
    state
        .apply(&perm("r", PermKind::ReadWrite, b"a/", b"a0"))
        .unwrap();
    let alice = Some("alice");
    let put = |key: &[u8]| PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    let compare = |key: &[u8]| PbCompare {
        key: key.to_vec(),
        ..Default::default()
    };
    let inside = PbTxnRequest {
        compare: vec![compare(b"a/1")],
        success: vec![put(b"a/2")],
        failure: vec![put(b"a/3")],
    };
    assert_eq!(state.check_txn(alice, &inside), Ok(()));
    let bad_compare = PbTxnRequest {
        compare: vec![compare(b"b")],
        ..inside.clone()
    };
    assert_eq!(
        state.check_txn(alice, &bad_compare),
        Err(AuthFailure::PermissionDenied)
    );
    let nested = PbTxnRequest {
        failure: vec![PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestTxn(PbTxnRequest {
                success: vec![put(b"zzz")],
                ..Default::default()
            })),
        }],
        ..inside
    };
    assert_eq!(
        state.check_txn(alice, &nested),
        Err(AuthFailure::PermissionDenied)
    );
}
