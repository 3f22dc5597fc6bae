//! The set of keys a request addresses, decoded once from etcd's `(key, range_end)` convention so
//! that range, delete, compare and the in-transaction checks all read it the same way.

/// etcd's `range_end` that means "every key from `key` on".
const FROM_KEY: &[u8] = &[0];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySpan {
    /// `range_end` empty: exactly one key.
    Single(Vec<u8>),
    /// `[start, end)`, or `[start, ∞)` when `end` is `None` (`range_end == [0]`). An `end` at or
    /// before `start` addresses no key at all, as in etcd.
    Interval {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeySpan {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeySpan {
        if range_end.is_empty() {
            KeySpan::Single(key.to_vec())
        } else if range_end == FROM_KEY {
            KeySpan::Interval {
                start: key.to_vec(),
                end: None,
            }
        } else {
            KeySpan::Interval {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    /// True when no key can be in the span, so callers never build an inverted range.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            KeySpan::Single(_) => false,
            KeySpan::Interval {
                start,
                end: Some(end),
            } => end <= start,
            KeySpan::Interval { end: None, .. } => false,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::Single(k) => k == key,
            KeySpan::Interval { start, end } => {
                key >= start.as_slice() && end.as_deref().is_none_or(|end| key < end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_selects_single_key_interval_or_from_key() {
        // key, range_end, probe, contained
        type Case = (&'static [u8], &'static [u8], &'static [u8], bool);
        let cases: &[Case] = &[
            (b"a", b"", b"a", true),
            (b"a", b"", b"ab", false),
            (b"a", b"c", b"a", true),
            (b"a", b"c", b"bzz", true),
            (b"a", b"c", b"c", false),
            (b"b", b"\0", b"b", true),
            (b"b", b"\0", b"\xff\xff", true),
            (b"b", b"\0", b"a", false),
            (b"\0", b"\0", b"\0", true),
            (b"c", b"a", b"b", false),
        ];
        for &(key, end, probe, want) in cases {
            let span = KeySpan::new(key, end);
            assert_eq!(
                span.contains(probe),
                want,
                "{key:?}..{end:?} contains {probe:?}"
            );
        }
    }

    #[test]
    fn inverted_interval_is_empty() {
        assert!(KeySpan::new(b"c", b"a").is_empty());
        assert!(KeySpan::new(b"c", b"c").is_empty());
        assert!(!KeySpan::new(b"a", b"c").is_empty());
        assert!(!KeySpan::new(b"a", b"\0").is_empty());
        assert!(!KeySpan::new(b"a", b"").is_empty());
    }
}
