//! The errors of reading and writing bbolt files. Each names what is wrong with the file (or the
//! data handed to the writer), so that a refused snapshot says why in one line.

pub type Result<T, E = BboltError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BboltError {
    /// The file is smaller than the two meta pages every bbolt file starts with.
    #[error("bbolt: file of {len} bytes is too small to be a database")]
    TooSmall { len: usize },
    /// Neither meta page is valid: not a bbolt file, or both meta pages are damaged.
    #[error("bbolt: invalid database: meta page 0: {meta0}; meta page 1: {meta1}")]
    NoValidMeta { meta0: String, meta1: String },
    /// The meta page counts more pages than the file holds: the file was cut short.
    #[error("bbolt: file is truncated: {len} bytes, but its meta page describes {needed} bytes")]
    Truncated { len: usize, needed: u64 },
    /// A page reached from the root is out of bounds, of the wrong kind, or inconsistent.
    #[error("bbolt: corrupt page {pgid}: {reason}")]
    CorruptPage { pgid: u64, reason: String },
    /// The bucket tree is deeper than any real file's: a page refers back to itself.
    #[error("bbolt: bucket tree deeper than {max} levels; the pages form a cycle")]
    TooDeep { max: usize },
    /// A key handed to the writer that bbolt cannot hold.
    #[error("bbolt: cannot write key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },
    /// A value handed to the writer that bbolt cannot hold.
    #[error(
        "bbolt: cannot write the value of key {key:?}: {len} bytes is more than bbolt's maximum"
    )]
    ValueTooLarge { key: String, len: usize },
    /// A page size that bbolt does not use.
    #[error("bbolt: page size {0} is not a power of two between 1 KiB and 64 KiB")]
    BadPageSize(usize),
}
