//! Frames: the unit of writing and of checksumming.
//!
//! A frame is what the writer hands to one `write` and one `fdatasync`: a 16-byte header and a
//! payload of whole records, padded with zeroes to a multiple of 8 bytes so that the next frame
//! starts 8-byte aligned.
//!
//! ```text
//! 0      4            8          12         16
//! | magic | payload len | checksum | reserved | payload ... | zero padding to 8 |
//! ```
//!
//! The checksum is CRC-32 over the segment's sequence number, the frame's offset, the payload
//! length and the payload: a header whose length was torn does not pass, and neither does a
//! frame found anywhere but where it was written — say inside an entry's payload that happens
//! to hold WAL bytes, or left over from another file. Segments are preallocated with zeroes, so an all-zero header marks the
//! place after the last frame written. This module reads and writes single frames; deciding
//! whether a bad frame is a torn tail or corruption is `recovery`'s job.

use super::record::Record;

/// Marks the start of a frame; chosen so that zeroed space never looks like one.
const MAGIC: u32 = u32::from_le_bytes(*b"FKVW");
pub(crate) const HEADER_LEN: usize = 16;
pub(crate) const ALIGN: usize = 8;

/// Rounds `len` up to the frame alignment.
pub(crate) fn align(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// The bytes a frame with `payload_len` bytes of records occupies on disk.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    align(HEADER_LEN + payload_len)
}

/// A frame being assembled: records are encoded straight into the final buffer, after room for
/// the header, so a batch is copied once.
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub(crate) fn new() -> Self {
        FrameBuilder {
            buf: vec![0; HEADER_LEN],
        }
    }

    pub(crate) fn push(&mut self, record: &Record) {
        record.encode_into(&mut self.buf);
    }

    pub(crate) fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.payload_len() == 0
    }

    /// The on-disk length of the frame if it were finished now.
    pub(crate) fn frame_len(&self) -> usize {
        frame_len(self.payload_len())
    }

    /// Fills in the header and the padding; the result is written to disk as is.
    pub(crate) fn finish(mut self, segment_seq: u64, offset: u64) -> Vec<u8> {
        let payload_len =
            u32::try_from(self.payload_len()).expect("frame payload larger than 4 GiB");
        let checksum = checksum(segment_seq, offset, payload_len, &self.buf[HEADER_LEN..]);
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&checksum.to_le_bytes());
        self.buf[12..16].copy_from_slice(&0u32.to_le_bytes());
        let padded = align(self.buf.len());
        self.buf.resize(padded, 0);
        self.buf
    }
}

/// Encodes `records` as one finished frame, to be written at `offset` of segment `segment_seq`.
pub(crate) fn encode(records: &[Record], segment_seq: u64, offset: u64) -> Vec<u8> {
    let mut frame = FrameBuilder::new();
    for record in records {
        frame.push(record);
    }
    frame.finish(segment_seq, offset)
}

/// Wraps arbitrary bytes in an intact frame, for tests of what recovery does with records that
/// pass the checksum but make no sense.
#[cfg(test)]
pub(crate) fn encode_raw(payload: &[u8], segment_seq: u64, offset: u64) -> Vec<u8> {
    let mut frame = FrameBuilder::new();
    frame.buf.extend_from_slice(payload);
    frame.finish(segment_seq, offset)
}

fn checksum(segment_seq: u64, offset: u64, payload_len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_seq.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(&payload_len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What lies at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameAt<'a> {
    /// A frame whose checksum holds; the next frame starts at `next`.
    Valid { payload: &'a [u8], next: usize },
    /// An all-zero header: nothing was written here.
    Unwritten,
    /// Something was written here, but it is not a whole, intact frame.
    Invalid { reason: String },
}

/// Reads the frame that starts at `offset` of `segment`, the whole bytes of the segment with
/// sequence number `segment_seq`.
pub(crate) fn read_at(segment: &[u8], segment_seq: u64, offset: usize) -> FrameAt<'_> {
    let Some(header) = segment.get(offset..offset + HEADER_LEN) else {
        let rest = &segment[offset.min(segment.len())..];
        return if rest.iter().all(|&b| b == 0) {
            FrameAt::Unwritten
        } else {
            FrameAt::Invalid {
                reason: "frame header runs past the end of the segment".into(),
            }
        };
    };
    if header.iter().all(|&b| b == 0) {
        return FrameAt::Unwritten;
    }
    let field = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (magic, payload_len, stored_checksum, reserved) = (field(0), field(4), field(8), field(12));
    if magic != MAGIC {
        return FrameAt::Invalid {
            reason: format!("bad frame magic {magic:#010x}"),
        };
    }
    if reserved != 0 {
        return FrameAt::Invalid {
            reason: format!("reserved header field is {reserved:#x}, not zero"),
        };
    }
    let payload_start = offset + HEADER_LEN;
    let Some(payload) = segment.get(payload_start..payload_start + payload_len as usize) else {
        return FrameAt::Invalid {
            reason: format!("frame of {payload_len} bytes runs past the end of the segment"),
        };
    };
    let actual_checksum = checksum(segment_seq, offset as u64, payload_len, payload);
    if actual_checksum != stored_checksum {
        return FrameAt::Invalid {
            reason: format!("checksum mismatch: stored {stored_checksum:#010x}, computed {actual_checksum:#010x}"),
        };
    }
    FrameAt::Valid {
        payload,
        next: offset + frame_len(payload_len as usize),
    }
}

/// The offset of the first intact frame at or after `from`, looking at every aligned offset.
/// Recovery uses it to tell a torn tail (nothing intact follows) from a damaged middle.
pub(crate) fn find_valid_at_or_after(
    segment: &[u8],
    segment_seq: u64,
    from: usize,
) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (align(from)..segment.len())
        .step_by(ALIGN)
        .filter(|&offset| segment[offset..].starts_with(&magic))
        .find(|&offset| matches!(read_at(segment, segment_seq, offset), FrameAt::Valid { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame for offset `offset` of segment 1.
    fn sample_frame(offset: u64) -> Vec<u8> {
        encode(
            &[
                Record::Entry {
                    index: 1,
                    payload: b"abc".to_vec(),
                },
                Record::Vote(b"v".to_vec()),
            ],
            1,
            offset,
        )
    }

    #[test]
    fn frames_are_aligned_and_read_back() {
        let frame = sample_frame(0);
        assert_eq!(frame.len() % ALIGN, 0);
        let mut segment = frame.clone();
        segment.resize(256, 0);
        let FrameAt::Valid { payload, next } = read_at(&segment, 1, 0) else {
            panic!("frame not valid")
        };
        assert_eq!(next, frame.len());
        assert_eq!(Record::decode_all(payload).unwrap().len(), 2);
        assert_eq!(read_at(&segment, 1, next), FrameAt::Unwritten);
    }

    #[test]
    fn any_flipped_byte_invalidates_the_frame() {
        let frame = sample_frame(0);
        let payload_end = HEADER_LEN + frame_payload_len(&frame);
        for at in 0..payload_end {
            let mut damaged = frame.clone();
            damaged[at] ^= 0x40;
            assert!(
                matches!(read_at(&damaged, 1, 0), FrameAt::Invalid { .. }),
                "flipping byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn a_frame_cut_short_is_invalid() {
        let frame = sample_frame(0);
        let cut = &frame[..frame.len() - ALIGN];
        assert!(matches!(read_at(cut, 1, 0), FrameAt::Invalid { .. }));
    }

    #[test]
    fn finds_the_next_intact_frame_past_damage() {
        let mut segment = vec![0xee; 24];
        let second_at = segment.len();
        segment.extend(sample_frame(second_at as u64));
        segment.resize(512, 0);
        assert_eq!(find_valid_at_or_after(&segment, 1, 0), Some(second_at));
        assert_eq!(find_valid_at_or_after(&segment, 1, second_at + ALIGN), None);
    }

    #[test]
    fn a_frame_is_intact_only_where_it_was_written() {
        let frame = sample_frame(0);
        let mut moved = vec![0; 16];
        moved.extend(&frame);
        assert!(
            matches!(read_at(&moved, 1, 16), FrameAt::Invalid { .. }),
            "at another offset"
        );
        assert!(
            matches!(read_at(&frame, 2, 0), FrameAt::Invalid { .. }),
            "in another segment"
        );
    }

    fn frame_payload_len(frame: &[u8]) -> usize {
        u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize
    }
}
