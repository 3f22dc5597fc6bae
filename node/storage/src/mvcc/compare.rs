//! Txn compares and the branch they choose, as etcd's `compareToPath` decides them.
//!
//! etcd evaluates the compares of a transaction and of every transaction nested in the chosen
//! branches against the state before the transaction runs, not against the state left by
//! earlier ops of the same transaction. The result is a path: one boolean per transaction,
//! in pre-order, which the executor consumes as it meets each transaction.

use std::cmp::Ordering;

use etcd_client::proto::{
    PbCompare, PbKeyValue, PbTargetUnion, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp,
};
use redb::ReadableTable;

use super::key_span::KeySpan;
use super::read::KvView;
use super::tables::{RevKey, RevValue};
use crate::Result;

/// `Compare.CompareResult`, an i32 on the wire.
pub mod compare_result {
    pub const EQUAL: i32 = 0;
    pub const GREATER: i32 = 1;
    pub const LESS: i32 = 2;
    pub const NOT_EQUAL: i32 = 3;
}

/// `Compare.CompareTarget`, an i32 on the wire.
pub mod compare_target {
    pub const VERSION: i32 = 0;
    pub const CREATE: i32 = 1;
    pub const MOD: i32 = 2;
    pub const VALUE: i32 = 3;
    pub const LEASE: i32 = 4;
}

/// The branch decision of `txn` and of every transaction nested in the chosen branches.
pub(super) fn txn_path<R>(view: &KvView<'_, R>, txn: &PbTxnRequest) -> Result<Vec<bool>>
where
    R: ReadableTable<RevKey, RevValue>,
{
    let mut succeeded = true;
    for compare in &txn.compare {
        if !compare_holds(view, compare)? {
            succeeded = false;
            break;
        }
    }
    let mut path = vec![succeeded];
    for op in branch(txn, succeeded) {
        if let Some(PbTxnOpRequest::RequestTxn(nested)) = &op.request {
            path.extend(txn_path(view, nested)?);
        }
    }
    Ok(path)
}

/// The ops of the branch a transaction takes.
pub(super) fn branch(txn: &PbTxnRequest, succeeded: bool) -> &[PbTxnRequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// Every op the transaction will run, nested transactions flattened, in execution order.
pub(super) fn chosen_ops<'r>(
    txn: &'r PbTxnRequest,
    path: &mut impl Iterator<Item = bool>,
    ops: &mut Vec<&'r PbTxnOpRequest>,
) {
    let succeeded = path.next().unwrap_or(false);
    for op in branch(txn, succeeded) {
        match &op.request {
            Some(PbTxnOpRequest::RequestTxn(nested)) => chosen_ops(nested, path, ops),
            Some(request) => ops.push(request),
            None => {}
        }
    }
}

/// A compare holds when it holds for every key of its range at the current revision. A range
/// with no key compares an empty key-value (every field zero), except that a VALUE compare on
/// missing keys always fails: gRPC cannot tell an empty value from a missing one.
fn compare_holds<R>(view: &KvView<'_, R>, compare: &PbCompare) -> Result<bool>
where
    R: ReadableTable<RevKey, RevValue>,
{
    let span = KeySpan::new(&compare.key, &compare.range_end);
    let (kvs, _) = view.range_at(&span, view.current, None)?;
    if kvs.is_empty() {
        return Ok(
            compare.target != compare_target::VALUE && compare_kv(compare, &PbKeyValue::default())
        );
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

fn compare_kv(compare: &PbCompare, kv: &PbKeyValue) -> bool {
    // A target union of another kind than the target compares as its zero value, as in etcd.
    let union = compare.target_union.as_ref();
    let ordering = match compare.target {
        compare_target::VALUE => {
            let wanted = match union {
                Some(PbTargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        compare_target::CREATE => kv.create_revision.cmp(&match union {
            Some(PbTargetUnion::CreateRevision(rev)) => *rev,
            _ => 0,
        }),
        compare_target::MOD => kv.mod_revision.cmp(&match union {
            Some(PbTargetUnion::ModRevision(rev)) => *rev,
            _ => 0,
        }),
        compare_target::VERSION => kv.version.cmp(&match union {
            Some(PbTargetUnion::Version(version)) => *version,
            _ => 0,
        }),
        compare_target::LEASE => kv.lease.cmp(&match union {
            Some(PbTargetUnion::Lease(lease)) => *lease,
            _ => 0,
        }),
        _ => Ordering::Equal,
    };
    match compare.result {
        compare_result::EQUAL => ordering == Ordering::Equal,
        compare_result::NOT_EQUAL => ordering != Ordering::Equal,
        compare_result::GREATER => ordering == Ordering::Greater,
        compare_result::LESS => ordering == Ordering::Less,
        // etcd treats an unknown result as holding; the api layer rejects it before.
        _ => true,
    }
}
