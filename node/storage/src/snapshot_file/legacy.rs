//! ferrokv's first snapshot file format, read so that snapshots saved from older releases can
//! still be restored; nothing writes it any more.
//!
//! Layout: the magic `FERROKV1`, the length of the MVCC dump (u64, big-endian), the dump, zero
//! padding to a multiple of 512 bytes; the SHA-256 trailer after it is checked, and taken off,
//! before this module sees the body.

use crate::mvcc::StoreContents;
use crate::{Result, StorageError as Error};

pub(super) const MAGIC: &[u8; 8] = b"FERROKV1";

/// The store contents of a `FERROKV1` body (the file without its SHA-256 trailer).
pub(super) fn read(body: &[u8]) -> Result<StoreContents> {
    let len_bytes = body
        .get(MAGIC.len()..MAGIC.len() + 8)
        .ok_or_else(|| Error::SnapshotFile("ferrokv v1 snapshot cut short in its header".into()))?;
    let len = u64::from_be_bytes(len_bytes.try_into().expect("8 bytes"));
    let start = MAGIC.len() + 8;
    let dump = usize::try_from(len)
        .ok()
        .and_then(|len| body.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            Error::SnapshotFile(format!(
                "ferrokv v1 snapshot says its dump is {len} bytes, more than the file holds"
            ))
        })?;
    StoreContents::from_dump(dump)
}

#[cfg(test)]
pub(super) fn write(contents: &StoreContents) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let dump = contents.to_dump().expect("dump");
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(dump.len() as u64).to_be_bytes());
    out.extend_from_slice(&dump);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}
