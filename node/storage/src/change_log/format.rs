//! The bytes of a change-log segment: a bincode header (magic string, format version), the
//! bincode body (a [`Segment`], integers as varints), and the SHA-256 of everything before it
//! as a 32-byte trailer, as etcd's snapshot files end.
//!
//! Decoding checks the trailer first, then that the segment is whole: changes in revision
//! order, every revision of its range present (each revision of an etcd keyspace changes at
//! least one key, so a missing one is a lost change), none outside it.

use std::io::Cursor;

use bincode::Options;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Segment;
use crate::{Result, StorageError as Error};

const MAGIC: &str = "ferrokv change-log segment";
const FORMAT_VERSION: u32 = 1;
const TRAILER_LEN: usize = 32;

#[derive(Serialize, Deserialize)]
struct SegmentHeader {
    magic: String,
    format_version: u32,
}

fn encoding() -> impl Options {
    bincode::DefaultOptions::new().allow_trailing_bytes()
}

/// The bytes of `segment`; refuses a segment that [`decode_segment`] would refuse.
pub fn encode_segment(segment: &Segment) -> Result<Vec<u8>> {
    check(segment)?;
    let header = SegmentHeader {
        magic: MAGIC.to_string(),
        format_version: FORMAT_VERSION,
    };
    let mut out = Vec::new();
    let encode = |e: bincode::Error| Error::SegmentInvalid(format!("encoding: {e}"));
    encoding()
        .serialize_into(&mut out, &header)
        .map_err(encode)?;
    encoding()
        .serialize_into(&mut out, segment)
        .map_err(encode)?;
    let trailer = Sha256::digest(&out);
    out.extend_from_slice(&trailer);
    Ok(out)
}

/// The segment `bytes` hold, or why they are not a whole, undamaged segment.
pub fn decode_segment(bytes: &[u8]) -> Result<Segment> {
    let invalid = |problem: String| Error::SegmentInvalid(problem);
    if bytes.len() < TRAILER_LEN {
        return Err(invalid(format!("{} bytes is too short", bytes.len())));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(invalid(
            "SHA-256 trailer does not match the contents: the segment is damaged or truncated"
                .to_string(),
        ));
    }
    let mut reader = Cursor::new(body);
    let limit = body.len() as u64;
    let header: SegmentHeader = encoding()
        .with_limit(limit)
        .deserialize_from(&mut reader)
        .map_err(|e| invalid(format!("unreadable header: {e}")))?;
    if header.magic != MAGIC {
        return Err(invalid(format!(
            "not a change-log segment (magic {:?})",
            header.magic
        )));
    }
    if header.format_version != FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {} is not supported (this build reads {FORMAT_VERSION})",
            header.format_version
        )));
    }
    let segment: Segment = encoding()
        .with_limit(limit)
        .deserialize_from(&mut reader)
        .map_err(|e| invalid(format!("unreadable body: {e}")))?;
    if reader.position() != limit {
        return Err(invalid(format!(
            "{} bytes after the body",
            limit - reader.position()
        )));
    }
    check(&segment)?;
    Ok(segment)
}

/// Refuses a segment that is not whole: see the module's docs.
fn check(segment: &Segment) -> Result<()> {
    let range = format!("{}-{}", segment.first_revision, segment.last_revision);
    let invalid = |problem: String| Error::SegmentInvalid(format!("segment {range}: {problem}"));
    if segment.first_revision < 2 || segment.last_revision < segment.first_revision {
        return Err(invalid("not a range of revisions after 1".to_string()));
    }
    let mut expected = segment.first_revision;
    for change in &segment.changes {
        if change.revision == expected {
            expected += 1;
        } else if change.revision != expected - 1 || expected == segment.first_revision {
            return Err(invalid(format!(
                "a change at revision {} where revision {expected} comes next",
                change.revision
            )));
        }
    }
    if expected != segment.last_revision + 1 {
        return Err(invalid(format!(
            "no change at revision {expected}: the segment is missing changes"
        )));
    }
    let ascending = segment.seen.windows(2).all(|pair| {
        pair[0].revision < pair[1].revision && pair[0].unix_millis <= pair[1].unix_millis
    });
    let within = segment
        .seen
        .iter()
        .all(|seen| (segment.first_revision..=segment.last_revision).contains(&seen.revision));
    if !ascending || !within {
        return Err(invalid(
            "the times revisions were seen are not in order within its range".to_string(),
        ));
    }
    Ok(())
}
