//! The records a frame carries, and their byte encoding.
//!
//! A record is one logical change to the log: an entry, a vote, a committed marker, a truncation,
//! a purge, or the state snapshot that opens every segment. This module only turns records into
//! bytes and back; what a record *means* for the log is decided in `log_state`, and how records
//! are grouped, checksummed and placed on disk is decided in `frame` and `segment`.
//!
//! Encoding: one tag byte, then the fields in order. Integers are little-endian `u64`; byte
//! strings are a little-endian `u32` length followed by the bytes; optional fields are a presence
//! byte (0 or 1) followed by the field.

use std::fmt;

const TAG_ENTRY: u8 = 1;
const TAG_VOTE: u8 = 2;
const TAG_COMMITTED: u8 = 3;
const TAG_TRUNCATE: u8 = 4;
const TAG_PURGE: u8 = 5;
const TAG_SEGMENT_START: u8 = 6;

/// One logical change to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Log entry `index`; replaces any entries at or after `index`.
    Entry { index: u64, payload: Vec<u8> },
    /// The latest vote, opaque to the WAL.
    Vote(Vec<u8>),
    /// The latest committed marker, opaque to the WAL.
    Committed(Vec<u8>),
    /// Entries at or after `from` are discarded.
    Truncate { from: u64 },
    /// Entries at or before `up_to` are discarded; `purged` describes the last purged log id.
    Purge { up_to: u64, purged: Vec<u8> },
    /// Opens every segment: the whole non-entry state of the log when the segment was started, so
    /// that deleting older segments never loses the only copy of the vote or the purge point.
    SegmentStart(SegmentStart),
}

/// The state written at the start of every segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentStart {
    /// Sequence number of the segment, repeated from its file name so that a renamed or copied
    /// file is caught.
    pub seq: u64,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purged: Option<(u64, Vec<u8>)>,
    /// Index of the last entry in the log when the segment was started.
    pub last_index: Option<u64>,
}

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Record {
    /// Appends the encoding of `self` to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Entry { index, payload } => {
                out.push(TAG_ENTRY);
                put_u64(out, *index);
                put_bytes(out, payload);
            }
            Record::Vote(vote) => {
                out.push(TAG_VOTE);
                put_bytes(out, vote);
            }
            Record::Committed(committed) => {
                out.push(TAG_COMMITTED);
                put_bytes(out, committed);
            }
            Record::Truncate { from } => {
                out.push(TAG_TRUNCATE);
                put_u64(out, *from);
            }
            Record::Purge { up_to, purged } => {
                out.push(TAG_PURGE);
                put_u64(out, *up_to);
                put_bytes(out, purged);
            }
            Record::SegmentStart(start) => {
                out.push(TAG_SEGMENT_START);
                put_u64(out, start.seq);
                put_optional(out, start.vote.as_ref(), |out, vote| put_bytes(out, vote));
                put_optional(out, start.committed.as_ref(), |out, c| put_bytes(out, c));
                put_optional(out, start.purged.as_ref(), |out, (up_to, purged)| {
                    put_u64(out, *up_to);
                    put_bytes(out, purged);
                });
                put_optional(out, start.last_index.as_ref(), |out, last| {
                    put_u64(out, *last)
                });
            }
        }
    }

    /// Decodes every record in `bytes`, which must hold whole records and nothing else.
    pub(crate) fn decode_all(bytes: &[u8]) -> Result<Vec<Record>, DecodeError> {
        let mut reader = Reader { bytes, pos: 0 };
        let mut records = Vec::new();
        while reader.pos < bytes.len() {
            records.push(reader.record()?);
        }
        Ok(records)
    }
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Frames are limited to u32::MAX bytes, so a record's byte string always fits.
    let len = u32::try_from(bytes.len()).expect("record field larger than a frame");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional<T>(out: &mut Vec<u8>, value: Option<&T>, put: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put(out, value);
        }
    }
}

/// A cursor over the bytes of a frame's payload.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn record(&mut self) -> Result<Record, DecodeError> {
        let at = self.pos;
        let tag = self.u8("record tag")?;
        let record = match tag {
            TAG_ENTRY => Record::Entry {
                index: self.u64("entry index")?,
                payload: self.bytes("entry payload")?,
            },
            TAG_VOTE => Record::Vote(self.bytes("vote")?),
            TAG_COMMITTED => Record::Committed(self.bytes("committed")?),
            TAG_TRUNCATE => Record::Truncate {
                from: self.u64("truncate index")?,
            },
            TAG_PURGE => Record::Purge {
                up_to: self.u64("purge index")?,
                purged: self.bytes("purged log id")?,
            },
            TAG_SEGMENT_START => Record::SegmentStart(SegmentStart {
                seq: self.u64("segment sequence number")?,
                vote: self.optional(|r| r.bytes("vote"))?,
                committed: self.optional(|r| r.bytes("committed"))?,
                purged: self
                    .optional(|r| Ok((r.u64("purge index")?, r.bytes("purged log id")?)))?,
                last_index: self.optional(|r| r.u64("last index"))?,
            }),
            other => {
                return Err(DecodeError(format!(
                    "unknown record tag {other} at payload byte {at}"
                )))
            }
        };
        Ok(record)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                DecodeError(format!(
                    "{what} at payload byte {} runs past the end of the frame",
                    self.pos
                ))
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, DecodeError> {
        let len = self.take(4, what)?;
        let len = u32::from_le_bytes(len.try_into().expect("took 4 bytes")) as usize;
        Ok(self.take(len, what)?.to_vec())
    }

    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8("presence flag")? {
            0 => Ok(None),
            1 => Ok(Some(read(self)?)),
            other => Err(DecodeError(format!(
                "presence flag {other} at payload byte {} is neither 0 nor 1",
                self.pos - 1
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind_of_record() -> Vec<Record> {
        vec![
            Record::Entry {
                index: 7,
                payload: b"put foo bar".to_vec(),
            },
            Record::Entry {
                index: 8,
                payload: Vec::new(),
            },
            Record::Vote(b"term 3 node 1".to_vec()),
            Record::Committed(b"log id 5".to_vec()),
            Record::Truncate { from: 6 },
            Record::Purge {
                up_to: 4,
                purged: b"log id 4".to_vec(),
            },
            Record::SegmentStart(SegmentStart::default()),
            Record::SegmentStart(SegmentStart {
                seq: 9,
                vote: Some(b"v".to_vec()),
                committed: Some(Vec::new()),
                purged: Some((3, b"p".to_vec())),
                last_index: Some(12),
            }),
        ]
    }

    #[test]
    fn every_record_decodes_to_what_was_encoded() {
        let records = every_kind_of_record();
        let mut bytes = Vec::new();
        for record in &records {
            record.encode_into(&mut bytes);
        }
        assert_eq!(Record::decode_all(&bytes).unwrap(), records);
    }

    #[test]
    fn a_cut_record_is_a_decode_error() {
        let mut bytes = Vec::new();
        Record::Entry {
            index: 1,
            payload: b"payload".to_vec(),
        }
        .encode_into(&mut bytes);
        for cut in 1..bytes.len() {
            assert!(
                Record::decode_all(&bytes[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
    }

    #[test]
    fn an_unknown_tag_is_a_decode_error() {
        let err = Record::decode_all(&[0x7f, 0, 0]).unwrap_err();
        assert!(err.0.contains("unknown record tag 127"), "{err}");
    }
}
