//! bbolt's on-disk structures: the page header, leaf and branch elements, bucket headers and the
//! meta page, in the byte layout bbolt gives them (native little-endian integers, no padding
//! between fields, no alignment of keys or values).
//!
//! A page starts with a 16-byte header — page ID (u64), flags (u16), element count (u16),
//! overflow page count (u32) — followed by the page's elements. A page and its overflow pages
//! are contiguous in the file. Each element records where its key (and value) sits as an offset
//! from the element itself.

/// Marks a file as a bbolt database.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The data file format version; bbolt has only ever written 2.
pub const VERSION: u32 = 2;
/// The page size etcd's files use on x86-64 and arm64 Linux.
pub const DEFAULT_PAGE_SIZE: usize = 4096;

pub const PAGE_HEADER_SIZE: usize = 16;
pub const LEAF_ELEMENT_SIZE: usize = 16;
pub const BRANCH_ELEMENT_SIZE: usize = 16;
/// A bucket's header, stored as the value of its key in the parent: root page ID and sequence.
pub const BUCKET_HEADER_SIZE: usize = 16;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;

/// Leaf element flag of a key whose value is a nested bucket.
pub const ELEMENT_BUCKET: u32 = 0x01;

/// The meta field that says the freelist is not stored (bbolt's `NoFreelistSync`).
pub const NO_FREELIST: u64 = u64::MAX;

/// bbolt's limits on keys and values.
pub const MAX_KEY_SIZE: usize = 32768;
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// Bytes of the meta structure that its checksum covers (everything before the checksum).
const META_CHECKSUMMED: usize = 56;

/// The page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    pub fn read(bytes: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(bytes, 0),
            flags: u16::from_le_bytes([bytes[8], bytes[9]]),
            count: u16::from_le_bytes([bytes[10], bytes[11]]),
            overflow: u32_at(bytes, 12),
        }
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// The meta page's contents (after the page header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket (its sequence is not used by etcd and written as 0).
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// The high-water mark: the number of pages in use, so the file holds at least this many.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

pub const META_SIZE: usize = 64;

impl Meta {
    pub fn read(bytes: &[u8]) -> Meta {
        Meta {
            magic: u32_at(bytes, 0),
            version: u32_at(bytes, 4),
            page_size: u32_at(bytes, 8),
            flags: u32_at(bytes, 12),
            root: u64_at(bytes, 16),
            root_sequence: u64_at(bytes, 24),
            freelist: u64_at(bytes, 32),
            pgid: u64_at(bytes, 40),
            txid: u64_at(bytes, 48),
            checksum: u64_at(bytes, 56),
        }
    }

    /// The meta as bytes, with `checksum` as stored.
    pub fn to_bytes(self) -> [u8; META_SIZE] {
        let mut out = [0u8; META_SIZE];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        out[56..64].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// The checksum bbolt computes: FNV-1a (64-bit) of the fields before the checksum.
    pub fn sum64(&self) -> u64 {
        fnv1a64(&self.to_bytes()[..META_CHECKSUMMED])
    }

    /// Why this meta cannot be used, as bbolt checks it (magic, version, checksum).
    pub fn problem(&self) -> Option<String> {
        if self.magic != MAGIC {
            Some(format!("magic {:#010x} is not bbolt's", self.magic))
        } else if self.version != VERSION {
            Some(format!(
                "format version {} (bbolt writes {VERSION})",
                self.version
            ))
        } else if self.checksum != self.sum64() {
            Some("checksum mismatch".to_string())
        } else {
            None
        }
    }
}

/// FNV-1a, 64-bit: the hash bbolt checksums its meta pages with.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
