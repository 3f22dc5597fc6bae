//! Reading a bbolt file held in memory: picks the meta page bbolt would (the valid one with the
//! higher transaction ID), then walks a bucket's B+tree on demand, checking every page it
//! touches against the file's bounds, so that a damaged file is refused with the page at fault
//! rather than read as garbage.

use crate::page::{
    u64_at, Meta, PageHeader, BRANCH_ELEMENT_SIZE, BUCKET_HEADER_SIZE, DEFAULT_PAGE_SIZE,
    ELEMENT_BUCKET, FLAG_BRANCH, FLAG_LEAF, LEAF_ELEMENT_SIZE, META_SIZE, NO_FREELIST,
    PAGE_HEADER_SIZE,
};
use crate::{BboltError as Error, Result};

/// Deeper than any B+tree or bucket nesting a real file has (a tree of 4 KiB pages is a handful
/// of levels deep for terabytes); past this the pages must form a cycle.
const MAX_DEPTH: usize = 64;

/// An open bbolt file.
#[derive(Clone, Copy, Debug)]
pub struct Db<'a> {
    pages: Pages<'a>,
    meta: Meta,
}

/// The pages of the file below the high-water mark.
#[derive(Clone, Copy, Debug)]
struct Pages<'a> {
    data: &'a [u8],
    page_size: usize,
    count: u64,
}

/// A bucket: a B+tree rooted at a page, or a small bucket stored inline in its parent's leaf.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    pages: Pages<'a>,
    root: Root<'a>,
    /// How many buckets this one is nested in.
    depth: usize,
}

#[derive(Clone, Copy, Debug)]
enum Root<'a> {
    Page(u64),
    /// The inline bucket's page image (header and elements), as stored in the parent's value.
    Inline(&'a [u8]),
}

/// The value of a key in a bucket.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    Value(&'a [u8]),
    Bucket(Bucket<'a>),
}

impl<'a> Db<'a> {
    /// Opens the database in `data`: the whole file, or a longer buffer that starts with it
    /// (bytes past the high-water mark, such as etcd's SHA-256 trailer, are ignored).
    pub fn open(data: &'a [u8]) -> Result<Db<'a>> {
        if data.len() < PAGE_HEADER_SIZE + META_SIZE {
            return Err(Error::TooSmall { len: data.len() });
        }
        let meta0 = Meta::read(&data[PAGE_HEADER_SIZE..]);
        // As bbolt does: the page size is meta 0's when it is valid, the usual one otherwise.
        let page_size = match meta0.problem() {
            None => meta0.page_size as usize,
            Some(_) => DEFAULT_PAGE_SIZE,
        };
        let meta1 = match data
            .get(page_size + PAGE_HEADER_SIZE..page_size + PAGE_HEADER_SIZE + META_SIZE)
            .map(Meta::read)
        {
            None => Err("beyond the end of the file".to_string()),
            Some(meta) => match meta.problem() {
                Some(problem) => Err(problem),
                None if meta.page_size as usize != page_size => Err(format!(
                    "page size {} differs from meta 0's",
                    meta.page_size
                )),
                None => Ok(meta),
            },
        };
        let meta = match (meta0.problem(), meta1) {
            (None, Ok(meta1)) if meta1.txid > meta0.txid => meta1,
            (None, _) => meta0,
            (Some(_), Ok(meta1)) => meta1,
            (Some(meta0), Err(meta1)) => return Err(Error::NoValidMeta { meta0, meta1 }),
        };

        let page_size = meta.page_size as usize;
        if !page_size.is_power_of_two() || !(1024..=65536).contains(&page_size) {
            return Err(Error::BadPageSize(page_size));
        }
        let needed = meta.pgid.saturating_mul(page_size as u64);
        if (data.len() as u64) < needed {
            return Err(Error::Truncated {
                len: data.len(),
                needed,
            });
        }
        let pages = Pages {
            data,
            page_size,
            count: meta.pgid,
        };
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(Error::CorruptPage {
                pgid: meta.root,
                reason: format!(
                    "the root bucket's page is outside the data pages 2..{}",
                    meta.pgid
                ),
            });
        }
        if meta.freelist != NO_FREELIST && meta.freelist >= meta.pgid {
            return Err(Error::CorruptPage {
                pgid: meta.freelist,
                reason: format!("the freelist is beyond the high-water mark {}", meta.pgid),
            });
        }
        Ok(Db { pages, meta })
    }

    pub fn page_size(&self) -> usize {
        self.pages.page_size
    }

    /// The ID of the transaction that wrote the meta page in use.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// The size of the database proper: pages up to the high-water mark.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.pages.page_size as u64
    }

    /// The root bucket, whose keys are the top-level buckets.
    pub fn root(&self) -> Bucket<'a> {
        Bucket {
            pages: self.pages,
            root: Root::Page(self.meta.root),
            depth: 0,
        }
    }

    /// A top-level bucket by name.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        self.root().bucket(name)
    }
}

impl<'a> Bucket<'a> {
    /// Every key of the bucket in key order, with its value or nested bucket.
    pub fn entries(&self) -> Result<Vec<(&'a [u8], Entry<'a>)>> {
        if self.depth > MAX_DEPTH {
            return Err(Error::TooDeep { max: MAX_DEPTH });
        }
        let mut out = Vec::new();
        let root_pgid = match self.root {
            Root::Page(pgid) => {
                self.collect(pgid, 0, &mut out)?;
                pgid
            }
            Root::Inline(image) => {
                let header = PageHeader::read(image);
                if header.flags != FLAG_LEAF {
                    return Err(Error::CorruptPage {
                        pgid: 0,
                        reason: format!(
                            "inline bucket page has flags {:#x}, not a leaf",
                            header.flags
                        ),
                    });
                }
                self.read_leaf(image, header, 0, &mut out)?;
                0
            }
        };
        if let Some(pair) = out.windows(2).find(|pair| pair[0].0 >= pair[1].0) {
            return Err(Error::CorruptPage {
                pgid: root_pgid,
                reason: format!(
                    "bucket keys out of order: {:?} before {:?}",
                    String::from_utf8_lossy(pair[0].0),
                    String::from_utf8_lossy(pair[1].0)
                ),
            });
        }
        Ok(out)
    }

    /// The plain key-value pairs of the bucket, in key order (nested buckets are left out).
    pub fn values(&self) -> Result<Vec<(&'a [u8], &'a [u8])>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Value(value) => Some((key, value)),
                Entry::Bucket(_) => None,
            })
            .collect())
    }

    /// A nested bucket by name.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        Ok(self
            .entries()?
            .into_iter()
            .find_map(|(key, entry)| match entry {
                Entry::Bucket(bucket) if key == name => Some(bucket),
                _ => None,
            }))
    }

    fn collect(&self, pgid: u64, level: usize, out: &mut Vec<(&'a [u8], Entry<'a>)>) -> Result<()> {
        if level > MAX_DEPTH {
            return Err(Error::TooDeep { max: MAX_DEPTH });
        }
        let (page, header) = self.pages.page(pgid)?;
        match header.flags {
            FLAG_LEAF => self.read_leaf(page, header, pgid, out),
            FLAG_BRANCH => {
                let corrupt = |reason: String| Error::CorruptPage { pgid, reason };
                elements_fit(page, header.count, BRANCH_ELEMENT_SIZE).map_err(corrupt)?;
                for i in 0..header.count as usize {
                    let at = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
                    let child = u64_at(page, at + 8);
                    if child == pgid {
                        return Err(corrupt(format!("branch element {i} points to itself")));
                    }
                    self.collect(child, level + 1, out)?;
                }
                Ok(())
            }
            flags => Err(Error::CorruptPage {
                pgid,
                reason: format!("flags {flags:#x} where a branch or leaf page belongs"),
            }),
        }
    }

    /// Reads the elements of a leaf page (or inline page image) `page`.
    fn read_leaf(
        &self,
        page: &'a [u8],
        header: PageHeader,
        pgid: u64,
        out: &mut Vec<(&'a [u8], Entry<'a>)>,
    ) -> Result<()> {
        let corrupt = |reason: String| Error::CorruptPage { pgid, reason };
        elements_fit(page, header.count, LEAF_ELEMENT_SIZE).map_err(corrupt)?;
        for i in 0..header.count as usize {
            let at = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
            let flags = crate::page::u32_at(page, at);
            let pos = crate::page::u32_at(page, at + 4) as usize;
            let ksize = crate::page::u32_at(page, at + 8) as usize;
            let vsize = crate::page::u32_at(page, at + 12) as usize;
            let start = at + pos;
            let end = start + ksize + vsize;
            if end > page.len() {
                return Err(corrupt(format!(
                    "leaf element {i} runs to byte {end} of a {}-byte page",
                    page.len()
                )));
            }
            let key = &page[start..start + ksize];
            let value = &page[start + ksize..end];
            let entry = if flags & ELEMENT_BUCKET != 0 {
                Entry::Bucket(self.nested(key, value, pgid)?)
            } else {
                Entry::Value(value)
            };
            out.push((key, entry));
        }
        Ok(())
    }

    /// The bucket whose header is `value` (the value of `name` in a leaf of page `pgid`).
    fn nested(&self, name: &[u8], value: &'a [u8], pgid: u64) -> Result<Bucket<'a>> {
        let corrupt = |reason: String| Error::CorruptPage { pgid, reason };
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(corrupt(format!(
                "bucket {:?} has a header of {} bytes",
                String::from_utf8_lossy(name),
                value.len()
            )));
        }
        let root = match u64_at(value, 0) {
            0 => {
                let image = &value[BUCKET_HEADER_SIZE..];
                if image.len() < PAGE_HEADER_SIZE {
                    return Err(corrupt(format!(
                        "inline bucket {:?} is too short for a page",
                        String::from_utf8_lossy(name)
                    )));
                }
                Root::Inline(image)
            }
            root => Root::Page(root),
        };
        Ok(Bucket {
            pages: self.pages,
            root,
            depth: self.depth + 1,
        })
    }
}

impl<'a> Pages<'a> {
    /// The bytes of page `pgid` with its overflow pages, and its header.
    fn page(&self, pgid: u64) -> Result<(&'a [u8], PageHeader)> {
        let corrupt = |reason: String| Error::CorruptPage { pgid, reason };
        if pgid < 2 || pgid >= self.count {
            return Err(corrupt(format!(
                "referenced, but outside the data pages 2..{}",
                self.count
            )));
        }
        let start = pgid as usize * self.page_size;
        let header = PageHeader::read(&self.data[start..]);
        if header.id != pgid {
            return Err(corrupt(format!("its header says page {}", header.id)));
        }
        let end_page = pgid + 1 + u64::from(header.overflow);
        if end_page > self.count {
            return Err(corrupt(format!(
                "{} overflow pages run past the high-water mark {}",
                header.overflow, self.count
            )));
        }
        Ok((
            &self.data[start..end_page as usize * self.page_size],
            header,
        ))
    }
}

/// Checks that `count` elements of `size` bytes fit in `page` after its header.
fn elements_fit(page: &[u8], count: u16, size: usize) -> std::result::Result<(), String> {
    let end = PAGE_HEADER_SIZE + count as usize * size;
    if end > page.len() {
        return Err(format!(
            "{count} elements do not fit in a {}-byte page",
            page.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
impl<'a> Bucket<'a> {
    pub(crate) fn root_pgid_for_test(&self) -> Option<u64> {
        match self.root {
            Root::Page(pgid) => Some(pgid),
            Root::Inline(_) => None,
        }
    }

    pub(crate) fn pages_for_test(&self, pgid: u64) -> (&'a [u8], PageHeader) {
        self.pages.page(pgid).expect("page")
    }
}
