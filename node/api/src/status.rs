//! Errors on the wire: each server error becomes the gRPC status etcd returns for it, with the
//! message etcd's clients match on (etcd's `rpctypes`).

use ferrokv_server::auth::AuthFailure;
use ferrokv_server::{ServerError as Error, StorageError};
use tonic::{Code, Status};

pub fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
        Error::LeaseNotFound => Code::NotFound,
        Error::LeaseExists => Code::FailedPrecondition,
        Error::KeyNotFound
        | Error::EmptyKey
        | Error::ValueProvided
        | Error::LeaseProvided
        | Error::TooManyOps
        | Error::DuplicateKey
        | Error::RequestTooLarge
        | Error::InvalidSortOption => Code::InvalidArgument,
        Error::NoSpace => Code::ResourceExhausted,
        Error::MemberNotFound => Code::NotFound,
        Error::PeerUrlExists
        | Error::MemberNotLearner
        | Error::LearnerNotReady
        | Error::MembershipInProgress => Code::FailedPrecondition,
        Error::BadPeerUrl(_) => Code::InvalidArgument,
        Error::NotLeader | Error::BadLeaderTransferee => Code::FailedPrecondition,
        Error::LeaderTransferTimeout => Code::Unavailable,
        Error::Unhealthy(_) => Code::Unavailable,
        Error::NoLeader | Error::Timeout => Code::Unavailable,
        Error::Raft(_) | Error::Backend(_) => Code::Unavailable,
        Error::Storage(e) => storage_code(e),
        Error::Auth(failure) => auth_code(failure),
        // etcd has no gRPC error of its own for these: its auth store's error goes out as is.
        Error::VerifyOnlyKey | Error::TokenSigning(_) => Code::Unknown,
    };
    let message = match &e {
        // etcd prefixes the mvcc errors on the wire.
        Error::Compacted | Error::FutureRev => format!("etcdserver: {e}"),
        _ => e.to_string(),
    };
    Status::new(code, message)
}

/// The code etcd gives each auth error (`rpctypes`).
fn auth_code(failure: &AuthFailure) -> Code {
    use AuthFailure as F;
    match failure {
        F::RootUserNotExist
        | F::RootRoleNotExist
        | F::UserAlreadyExist
        | F::UserNotFound
        | F::RoleAlreadyExist
        | F::RoleNotFound
        | F::RoleNotGranted
        | F::PermissionNotGranted
        | F::AuthNotEnabled => Code::FailedPrecondition,
        F::UserEmpty
        | F::RoleEmpty
        | F::AuthFailed
        | F::PermissionNotGiven
        | F::InvalidAuthMgmt
        | F::AuthOldRevision => Code::InvalidArgument,
        F::PermissionDenied => Code::PermissionDenied,
        F::InvalidAuthToken => Code::Unauthenticated,
    }
}

/// The code of a storage failure underneath the server. The conditions a request can meet
/// (a compacted revision, a missing lease, ...) reach the api as server errors of their own;
/// they are listed here too, with the same codes, so that no variant goes unmapped.
fn storage_code(e: &StorageError) -> Code {
    match e {
        StorageError::Compacted | StorageError::FutureRev => Code::OutOfRange,
        StorageError::LeaseNotFound => Code::NotFound,
        StorageError::LeaseExists => Code::FailedPrecondition,
        StorageError::KeyNotFound => Code::InvalidArgument,
        StorageError::Backend(_)
        | StorageError::DataDir(_)
        | StorageError::WalCorrupt { .. }
        | StorageError::WalIo { .. } => Code::Unavailable,
        StorageError::WalIndexGap { .. }
        | StorageError::WalBelowPurge { .. }
        | StorageError::WalFailed { .. }
        | StorageError::WalLocked { .. }
        | StorageError::WalClosed
        | StorageError::MvccCorrupt(_)
        | StorageError::SnapshotInvalid(_)
        | StorageError::SnapshotFile(_)
        | StorageError::SnapshotDb(_)
        | StorageError::SegmentInvalid(_)
        | StorageError::SegmentsIncomplete(_) => Code::Unknown,
        StorageError::Auth(failure) => auth_code(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_etcds_wire_messages() {
        let s = to_status(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(Error::FutureRev);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(
            to_status(Error::DuplicateKey).message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(to_status(Error::NoLeader).code(), Code::Unavailable);
        let s = to_status(Error::Auth(AuthFailure::PermissionDenied));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "etcdserver: permission denied");
        let s = to_status(Error::Auth(AuthFailure::InvalidAuthToken));
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "etcdserver: invalid auth token");
    }
}
