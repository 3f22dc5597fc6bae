//! The snapshot file: what `Maintenance.Snapshot` streams and `etcdctl snapshot save` writes,
//! and what `ferrokv snapshot restore` reads back.
//!
//! Layout: the magic `FERROKV1`, the length of the MVCC dump (u64, big-endian), the dump, zero
//! padding to a multiple of 512 bytes, and the SHA-256 of everything before it. The padding and
//! the trailing digest are what etcdctl checks before it accepts a snapshot (etcd's own files
//! are bolt databases of 512-byte multiples followed by their SHA-256).

use sha2::{Digest, Sha256};

use crate::{Result, StorageError as Error};

const MAGIC: &[u8; 8] = b"FERROKV1";
const ALIGN: usize = 512;
const DIGEST_LEN: usize = 32;

/// Wraps an MVCC dump as a snapshot file.
pub fn encode(dump: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dump.len() + ALIGN + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(dump.len() as u64).to_be_bytes());
    out.extend_from_slice(dump);
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Checks a snapshot file and returns the MVCC dump inside it.
pub fn decode(file: &[u8]) -> Result<&[u8]> {
    let invalid = |why: &str| Error::SnapshotInvalid(format!("snapshot file: {why}"));
    if file.len() < MAGIC.len() + 8 + DIGEST_LEN || !(file.len() - DIGEST_LEN).is_multiple_of(ALIGN)
    {
        return Err(invalid(
            "sha256 checksum not found (size is not 512*n + 32)",
        ));
    }
    let (body, digest) = file.split_at(file.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(invalid("sha256 checksum mismatch: the file is damaged"));
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err(invalid("not a ferrokv snapshot (bad magic)"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[MAGIC.len()..MAGIC.len() + 8]);
    let len = u64::from_be_bytes(len) as usize;
    let start = MAGIC.len() + 8;
    if start + len > body.len() {
        return Err(invalid("length runs past the end"));
    }
    Ok(&body[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_files_round_trip_and_are_512_aligned_plus_digest() {
        let file = encode(b"hello");
        assert_eq!((file.len() - 32) % 512, 0);
        assert_eq!(decode(&file).unwrap(), b"hello");
    }

    #[test]
    fn damaged_snapshot_files_are_refused() {
        let mut file = encode(b"hello world");
        file[12] ^= 1;
        assert!(decode(&file).unwrap_err().to_string().contains("mismatch"));
        assert!(decode(&file[..100]).is_err());
    }
}
