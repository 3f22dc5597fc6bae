//! Errors on the wire: each node error becomes the gRPC status etcd returns for it, with the
//! message etcd's clients match on (etcd's `rpctypes`).

use tonic::{Code, Status};

use crate::Error;

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
        Error::Raft(_)
        | Error::DataDir(_)
        | Error::Config(_)
        | Error::AlreadyBootstrapped { .. }
        | Error::Backend(_)
        | Error::WalCorrupt { .. }
        | Error::WalIo { .. } => Code::Unavailable,
        #[allow(unreachable_patterns)]
        _ => Code::Unknown,
    };
    let message = match &e {
        // etcd prefixes the mvcc errors on the wire.
        Error::Compacted | Error::FutureRev => format!("etcdserver: {e}"),
        _ => e.to_string(),
    };
    Status::new(code, message)
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
    }
}
