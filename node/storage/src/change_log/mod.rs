//! The change log of continuous backup: every change made to the keyspace after a full
//! snapshot, cut into segments as a follower's watch delivers them, and the replay of those
//! segments onto a snapshot's contents up to a chosen revision.
//!
//! A [`Segment`] holds the changes of an unbroken run of revisions, each with its key, its
//! revision and the version written (create revision, version, lease, value) or its deletion,
//! in the order of the watch, which is the order of the changes' sub revisions. It also holds
//! the granted TTL of every lease its changes attach keys to, as far as the writer could learn
//! them, and the wall-clock time at which the writer saw revisions (for a restore to a time).
//! Segments are written by the operator's streamer and read by `ferrokv snapshot restore
//! --segments`; [`format`] owns their bytes, [`replay`] their application.
//!
//! Not here: where segments live in object storage and when they are cut (the operator), the
//! snapshot file itself (`crate::snapshot_file`).

pub mod format;
pub mod replay;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::mvcc::{Lease, Version};

pub use format::{decode_segment, encode_segment};
pub use replay::{replay, revision_at_time, Replayed};

/// The changes of revisions `first_revision..=last_revision`, every one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub first_revision: i64,
    pub last_revision: i64,
    /// In revision order; the changes of one revision in the order they were made.
    pub changes: Vec<LoggedChange>,
    /// Granted TTLs of the leases the changes attach keys to, where the writer learnt them.
    pub leases: Vec<Lease>,
    /// When the writer saw revisions (Unix milliseconds): each entry says that every revision up
    /// to `revision` had been made by `unix_millis`. Ascending in both.
    pub seen: Vec<RevisionSeen>,
}

/// One change of the keyspace: a version written, or a deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedChange {
    pub key: Vec<u8>,
    /// The main revision of the change (its mod revision).
    pub revision: i64,
    /// The version written, or `None` for a deletion.
    pub put: Option<Version>,
}

/// Every revision up to `revision` existed at `unix_millis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSeen {
    pub revision: i64,
    pub unix_millis: i64,
}

/// The name of the file or object holding the segment of revisions `first..=last`,
/// zero-padded so that names sort as revisions do.
pub fn segment_file_name(first: i64, last: i64) -> String {
    format!("{first:020}-{last:020}.seg")
}

/// The revisions in the name of a segment's file or object (the last component of `path`),
/// when it is a segment's.
pub fn segment_file_revisions(path: &str) -> Option<(i64, i64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".seg")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}
