//! Request checks done before anything is proposed, as etcd's v3rpc layer does them: empty
//! keys, contradictory flags, oversized transactions, and transactions that write a key twice.

use etcd_client::proto::{
    PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest,
};

use ferrokv_server::KeySpan;
use ferrokv_server::{Result, ServerError as Error};

pub fn check_range(r: &PbRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    // SortOrder: NONE, ASCEND, DESCEND; SortTarget: KEY, VERSION, CREATE, MOD, VALUE.
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PbPutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &PbDeleteRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn check_txn(r: &PbTxnRequest, max_ops: usize) -> Result<()> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(Error::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(Error::EmptyKey);
        }
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(x)) => check_range(x)?,
            Some(PbTxnOpRequest::RequestPut(x)) => check_put(x)?,
            Some(PbTxnOpRequest::RequestDeleteRange(x)) => check_delete(x)?,
            Some(PbTxnOpRequest::RequestTxn(x)) => check_txn(x, max_ops)?,
            None => {}
        }
    }
    check_branch_writes(&r.success)?;
    check_branch_writes(&r.failure)?;
    Ok(())
}

/// Whether a transaction may put a key (on either branch, nested ones included): such a
/// transaction is subject to the backend quota.
pub fn txn_writes(r: &PbTxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .any(|op| match &op.request {
            Some(PbTxnOpRequest::RequestPut(_)) => true,
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_writes(t),
            _ => false,
        })
}

/// The keys a branch puts and the ranges it deletes, nested transactions included.
#[derive(Default)]
struct Writes {
    puts: Vec<Vec<u8>>,
    deletes: Vec<KeySpan>,
}

/// A key may be written once per branch: two puts of one key, or a put of a key that the same
/// branch deletes, are refused (etcd's `checkIntervals`). Deletes may overlap each other.
fn check_branch_writes(ops: &[etcd_client::proto::PbTxnRequestOp]) -> Result<()> {
    branch_writes(ops).map(|_| ())
}

fn branch_writes(ops: &[etcd_client::proto::PbTxnRequestOp]) -> Result<Writes> {
    let mut w = Writes::default();
    // Nested transactions first: only one of their branches runs, so each is checked against
    // this branch's own writes separately, and their union joins this branch's writes.
    let mut nested = Vec::new();
    for op in ops {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(p)) => {
                if w.puts.contains(&p.key) {
                    return Err(Error::DuplicateKey);
                }
                w.puts.push(p.key.clone());
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                w.deletes.push(KeySpan::new(&d.key, &d.range_end));
            }
            Some(PbTxnOpRequest::RequestTxn(t)) => {
                nested.push(branch_writes(&t.success)?);
                nested.push(branch_writes(&t.failure)?);
            }
            _ => {}
        }
    }
    for put in &w.puts {
        if w.deletes.iter().any(|span| span.contains(put)) {
            return Err(Error::DuplicateKey);
        }
    }
    for n in nested {
        for put in &n.puts {
            if w.puts.contains(put) || w.deletes.iter().any(|span| span.contains(put)) {
                return Err(Error::DuplicateKey);
            }
        }
        for span in &n.deletes {
            if w.puts.iter().any(|p| span.contains(p)) {
                return Err(Error::DuplicateKey);
            }
        }
        w.puts.extend(n.puts);
        w.deletes.extend(n.deletes);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use etcd_client::proto::PbTxnRequestOp;

    use super::*;

    fn put(k: &str) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<PbTxnRequestOp>, failure: Vec<PbTxnRequestOp>) -> PbTxnRequest {
        PbTxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn writing_a_key_twice_in_one_branch_is_refused() {
        assert!(matches!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(Error::DuplicateKey)
        ));
        // The two branches never both run.
        assert!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128).is_ok());
        // Overlapping deletes are fine.
        assert!(check_txn(&txn(vec![del("a", "c"), del("b", "d")], vec![]), 128).is_ok());
    }

    #[test]
    fn nested_transactions_count_towards_their_parent_branch() {
        let nested = PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestTxn(txn(
                vec![put("a")],
                vec![put("b")],
            ))),
        };
        assert!(matches!(
            check_txn(&txn(vec![put("a"), nested.clone()], vec![]), 128),
            Err(Error::DuplicateKey)
        ));
        assert!(check_txn(&txn(vec![put("c"), nested], vec![]), 128).is_ok());
    }

    #[test]
    fn too_many_operations_are_refused() {
        let ops = (0..5).map(|i| put(&format!("k{i}"))).collect();
        assert!(matches!(
            check_txn(&txn(ops, vec![]), 4),
            Err(Error::TooManyOps)
        ));
    }

    #[test]
    fn empty_keys_and_contradictory_put_flags_are_refused() {
        assert!(matches!(
            check_put(&PbPutRequest::default()),
            Err(Error::EmptyKey)
        ));
        let p = PbPutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        };
        assert!(matches!(check_put(&p), Err(Error::ValueProvided)));
    }
}
