//! ferrokv-bbolt: reads and writes bbolt database files, the format of etcd's backend and of the
//! snapshots `etcdctl snapshot save` writes.
//!
//! It is for moving data in and out in one piece, not a database: [`Db::open`] reads a whole file
//! held in memory (checking its meta pages and every page it walks), and [`write_db`] lays out a
//! fresh, compact file from a tree of buckets held in memory. There are no transactions, no
//! free-page reuse and no in-place updates; bbolt itself does those once etcd opens the file.
//!
//! The layout follows bbolt's (version 2, the only one bbolt has written): two meta pages, a
//! freelist page, and B+trees of branch and leaf pages per bucket, with nested buckets, inline
//! buckets and overflow pages. Page layout: `page`; reading: `read`; writing: `write`. etcd's
//! use of buckets (revisions, protobuf values) lives with ferrokv's storage, not here.

mod error;
mod page;
mod read;
mod write;

pub use error::{BboltError, Result};
pub use page::DEFAULT_PAGE_SIZE;
pub use read::{Bucket, Db, Entry};
pub use write::{write_db, BucketData};

#[cfg(test)]
mod tests;
