//! Writing a fresh bbolt file from buckets held in memory, laid out compactly as bbolt's own
//! `compact` would: meta pages 0 and 1, an empty freelist at page 2, then each bucket's B+tree
//! built bottom-up — leaves filled up to a page (a single entry larger than a page gets overflow
//! pages), branch levels above them until one root page remains. A bucket small enough is stored
//! inline in its parent, as bbolt stores it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::page::{
    Meta, PageHeader, BRANCH_ELEMENT_SIZE, BUCKET_HEADER_SIZE, ELEMENT_BUCKET, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, FLAG_META, LEAF_ELEMENT_SIZE, MAGIC, MAX_KEY_SIZE, MAX_VALUE_SIZE,
    PAGE_HEADER_SIZE, VERSION,
};
use crate::{BboltError as Error, Result};

/// The first page free for data: 0 and 1 are the meta pages, 2 the freelist.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PAGE: u64 = 2;

/// A bucket to be written: its key-value pairs and its nested buckets, each in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketData {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    buckets: BTreeMap<Vec<u8>, BucketData>,
}

impl BucketData {
    pub fn new() -> BucketData {
        BucketData::default()
    }

    /// Sets `key` to `value`, refusing what bbolt refuses: an empty or oversized key, a key
    /// that names a nested bucket, an oversized value.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        check_key(&key)?;
        if self.buckets.contains_key(&key) {
            return Err(bad_key(&key, "it names a bucket"));
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::ValueTooLarge {
                key: String::from_utf8_lossy(&key).into_owned(),
                len: value.len(),
            });
        }
        self.values.insert(key, value);
        Ok(())
    }

    /// The nested bucket `name`, created empty if missing.
    pub fn bucket(&mut self, name: &[u8]) -> Result<&mut BucketData> {
        check_key(name)?;
        if self.values.contains_key(name) {
            return Err(bad_key(name, "it holds a value, not a bucket"));
        }
        Ok(self.buckets.entry(name.to_vec()).or_default())
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    pub fn nested(&self, name: &[u8]) -> Option<&BucketData> {
        self.buckets.get(name)
    }

    /// The key-value pairs, in key order.
    pub fn values(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.values
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(bad_key(key, "keys cannot be empty"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(bad_key(key, "longer than bbolt's 32768 bytes"));
    }
    Ok(())
}

fn bad_key(key: &[u8], reason: &'static str) -> Error {
    Error::BadKey {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// Writes a database whose root bucket holds `root`'s nested buckets (bbolt's root bucket holds
/// only buckets, so `root`'s plain values are refused), with pages of `page_size` bytes.
pub fn write_db(root: &BucketData, page_size: usize) -> Result<Vec<u8>> {
    if !page_size.is_power_of_two() || !(1024..=65536).contains(&page_size) {
        return Err(Error::BadPageSize(page_size));
    }
    if let Some(key) = root.values.keys().next() {
        return Err(bad_key(key, "the root bucket holds only buckets"));
    }
    let mut writer = PageWriter {
        page_size,
        out: vec![0; FIRST_DATA_PAGE as usize * page_size],
        next_pgid: FIRST_DATA_PAGE,
    };
    let items = writer.bucket_items(root)?;
    let root_pgid = writer.write_tree(&items)?;

    let freelist = FREELIST_PAGE as usize * page_size;
    PageHeader {
        id: FREELIST_PAGE,
        flags: FLAG_FREELIST,
        count: 0,
        overflow: 0,
    }
    .write(&mut writer.out[freelist..]);
    // Two metas, as a freshly created bbolt file has: transaction 0 on page 0 and 1 on page 1.
    for txid in 0..2u64 {
        let mut meta = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: page_size as u32,
            flags: 0,
            root: root_pgid,
            root_sequence: 0,
            freelist: FREELIST_PAGE,
            pgid: writer.next_pgid,
            txid,
            checksum: 0,
        };
        meta.checksum = meta.sum64();
        let at = txid as usize * page_size;
        PageHeader {
            id: txid,
            flags: FLAG_META,
            count: 0,
            overflow: 0,
        }
        .write(&mut writer.out[at..]);
        writer.out[at + PAGE_HEADER_SIZE..at + PAGE_HEADER_SIZE + meta.to_bytes().len()]
            .copy_from_slice(&meta.to_bytes());
    }
    Ok(writer.out)
}

/// One element of a leaf: a key with its value or nested bucket header.
struct LeafItem<'b> {
    key: &'b [u8],
    flags: u32,
    value: Cow<'b, [u8]>,
}

impl LeafItem<'_> {
    fn size(&self) -> usize {
        LEAF_ELEMENT_SIZE + self.key.len() + self.value.len()
    }
}

struct PageWriter {
    page_size: usize,
    out: Vec<u8>,
    next_pgid: u64,
}

impl PageWriter {
    /// The leaf items of a bucket: its values and nested buckets (written first) merged in key
    /// order.
    fn bucket_items<'b>(&mut self, bucket: &'b BucketData) -> Result<Vec<LeafItem<'b>>> {
        let mut items = Vec::with_capacity(bucket.values.len() + bucket.buckets.len());
        for (key, value) in &bucket.values {
            items.push(LeafItem {
                key,
                flags: 0,
                value: Cow::Borrowed(value),
            });
        }
        for (name, nested) in &bucket.buckets {
            items.push(LeafItem {
                key: name,
                flags: ELEMENT_BUCKET,
                value: Cow::Owned(self.write_bucket(nested)?),
            });
        }
        items.sort_by(|a, b| a.key.cmp(b.key));
        Ok(items)
    }

    /// Writes a nested bucket's pages (unless it is stored inline) and returns the value its
    /// parent holds for it: the bucket header, followed by the page image when inline.
    fn write_bucket(&mut self, bucket: &BucketData) -> Result<Vec<u8>> {
        let items = self.bucket_items(bucket)?;
        let size = PAGE_HEADER_SIZE + items.iter().map(LeafItem::size).sum::<usize>();
        // bbolt's rule: a bucket of one leaf, without nested buckets, up to a quarter page.
        if bucket.buckets.is_empty() && size <= self.page_size / 4 {
            let mut value = vec![0u8; BUCKET_HEADER_SIZE + size];
            lay_out_leaf(&mut value[BUCKET_HEADER_SIZE..], 0, 0, &items);
            return Ok(value);
        }
        let root = self.write_tree(&items)?;
        let mut value = vec![0u8; BUCKET_HEADER_SIZE];
        value[..8].copy_from_slice(&root.to_le_bytes());
        Ok(value)
    }

    /// Writes a B+tree of `items` and returns its root page.
    fn write_tree(&mut self, items: &[LeafItem]) -> Result<u64> {
        // Leaves, filled up to a page each.
        let mut level: Vec<(&[u8], u64)> = Vec::new();
        let mut start = 0;
        while start < items.len() || level.is_empty() {
            let mut end = start;
            let mut size = PAGE_HEADER_SIZE;
            while end < items.len() && (end == start || size + items[end].size() <= self.page_size)
            {
                size += items[end].size();
                end += 1;
            }
            let pgid = self.write_leaf(&items[start..end], size)?;
            level.push((items.get(start).map_or(&[][..], |item| item.key), pgid));
            start = end;
        }
        // Branch levels, each element the first key of a child and its page.
        while level.len() > 1 {
            let mut parents = Vec::new();
            let mut start = 0;
            while start < level.len() {
                let mut end = start;
                let mut size = PAGE_HEADER_SIZE;
                while end < level.len() {
                    let item = BRANCH_ELEMENT_SIZE + level[end].0.len();
                    if end > start + 1 && size + item > self.page_size {
                        break;
                    }
                    size += item;
                    end += 1;
                }
                let pgid = self.write_branch(&level[start..end], size)?;
                parents.push((level[start].0, pgid));
                start = end;
            }
            level = parents;
        }
        Ok(level[0].1)
    }

    /// Allocates enough contiguous pages for `size` bytes: the first and its overflow pages.
    fn allocate(&mut self, size: usize) -> Result<(u64, usize, u32)> {
        let pages = size.div_ceil(self.page_size).max(1);
        let pgid = self.next_pgid;
        self.next_pgid += pages as u64;
        self.out.resize(self.next_pgid as usize * self.page_size, 0);
        let overflow = u32::try_from(pages - 1).map_err(|_| Error::ValueTooLarge {
            key: String::new(),
            len: size,
        })?;
        Ok((pgid, pgid as usize * self.page_size, overflow))
    }

    fn write_leaf(&mut self, items: &[LeafItem], size: usize) -> Result<u64> {
        let (pgid, at, overflow) = self.allocate(size)?;
        lay_out_leaf(&mut self.out[at..at + size], pgid, overflow, items);
        Ok(pgid)
    }

    fn write_branch(&mut self, children: &[(&[u8], u64)], size: usize) -> Result<u64> {
        let (pgid, at, overflow) = self.allocate(size)?;
        let page = &mut self.out[at..at + size];
        PageHeader {
            id: pgid,
            flags: FLAG_BRANCH,
            count: children.len() as u16,
            overflow,
        }
        .write(page);
        let mut data = PAGE_HEADER_SIZE + children.len() * BRANCH_ELEMENT_SIZE;
        for (i, (key, child)) in children.iter().enumerate() {
            let element = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
            page[element..element + 4].copy_from_slice(&((data - element) as u32).to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
            page[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        Ok(pgid)
    }
}

/// Writes a leaf page of `items` into `page` (exactly the page's size): header, elements, then
/// keys and values in element order.
fn lay_out_leaf(page: &mut [u8], pgid: u64, overflow: u32, items: &[LeafItem]) {
    PageHeader {
        id: pgid,
        flags: FLAG_LEAF,
        count: items.len() as u16,
        overflow,
    }
    .write(page);
    let mut data = PAGE_HEADER_SIZE + items.len() * LEAF_ELEMENT_SIZE;
    for (i, item) in items.iter().enumerate() {
        let element = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        page[element..element + 4].copy_from_slice(&item.flags.to_le_bytes());
        page[element + 4..element + 8].copy_from_slice(&((data - element) as u32).to_le_bytes());
        page[element + 8..element + 12].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
        page[element + 12..element + 16].copy_from_slice(&(item.value.len() as u32).to_le_bytes());
        page[data..data + item.key.len()].copy_from_slice(item.key);
        data += item.key.len();
        page[data..data + item.value.len()].copy_from_slice(&item.value);
        data += item.value.len();
    }
}
