//! What the records mean: the rules of the log, in one place.
//!
//! `LogState` is the log without its entry payloads: the vote, the committed marker, the purge
//! point and the last index. The writer checks every request against it before writing, and
//! recovery checks every record it replays against it, so a log that the writer would have
//! refused is exactly a log that recovery reports as corrupt.
//!
//! The rules: entries are contiguous; appending index `i` discards the entries at and after `i`;
//! nothing at or below the purge point can be appended, truncated, or purged again; purging past
//! the last entry empties the log and makes the next index `up_to + 1`.

use super::record::{Record, SegmentStart};
use crate::{Result, StorageError as Error};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogState {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    /// The purge point and the caller's description of the purged log id.
    pub purged: Option<(u64, Vec<u8>)>,
    /// The highest index the log has reached, counting purged entries: the last entry, or the
    /// purge point when every entry is purged. `None` for a log that never held anything.
    pub last_index: Option<u64>,
}

impl LogState {
    pub(crate) fn from_segment_start(start: &SegmentStart) -> Self {
        LogState {
            vote: start.vote.clone(),
            committed: start.committed.clone(),
            purged: start.purged.clone(),
            last_index: start.last_index,
        }
    }

    pub(crate) fn segment_start(&self, seq: u64) -> SegmentStart {
        SegmentStart {
            seq,
            vote: self.vote.clone(),
            committed: self.committed.clone(),
            purged: self.purged.clone(),
            last_index: self.last_index,
        }
    }

    pub(crate) fn purged_index(&self) -> Option<u64> {
        self.purged.as_ref().map(|(index, _)| *index)
    }

    /// The index the next appended entry gets if it does not replace any; `None` when the log
    /// never held anything, in which case the first entry may take any index.
    pub(crate) fn next_index(&self) -> Option<u64> {
        self.last_index.map(|last| last + 1)
    }

    /// Whether `record` may be applied now.
    pub(crate) fn check(&self, record: &Record) -> Result<()> {
        match record {
            Record::Entry { index, .. } => {
                self.check_not_purged(*index)?;
                match self.next_index() {
                    Some(next) if *index > next => Err(Error::WalIndexGap {
                        expected: next,
                        got: *index,
                    }),
                    _ => Ok(()),
                }
            }
            Record::Truncate { from } => self.check_not_purged(*from),
            Record::Purge { up_to, .. } => match self.purged_index() {
                Some(purged) if *up_to < purged => Err(Error::WalBelowPurge {
                    index: *up_to,
                    purged,
                }),
                _ => Ok(()),
            },
            Record::Vote(_) | Record::Committed(_) | Record::SegmentStart(_) => Ok(()),
        }
    }

    fn check_not_purged(&self, index: u64) -> Result<()> {
        match self.purged_index() {
            Some(purged) if index <= purged => Err(Error::WalBelowPurge { index, purged }),
            _ => Ok(()),
        }
    }

    /// Applies a record that passed `check`.
    pub(crate) fn apply(&mut self, record: &Record) {
        match record {
            Record::Entry { index, .. } => self.last_index = Some(*index),
            Record::Vote(vote) => self.vote = Some(vote.clone()),
            Record::Committed(committed) => self.committed = Some(committed.clone()),
            Record::Truncate { from } => {
                if self.last_index.is_some_and(|last| *from <= last) {
                    // Below the purge point is refused by `check`, so `from - 1` is the purge
                    // point at the lowest; `from == 0` (nothing purged) empties the log.
                    self.last_index = from.checked_sub(1);
                }
            }
            Record::Purge { up_to, purged } => {
                self.purged = Some((*up_to, purged.clone()));
                self.last_index = Some(self.last_index.map_or(*up_to, |last| last.max(*up_to)));
            }
            Record::SegmentStart(start) => *self = LogState::from_segment_start(start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Record {
        Record::Entry {
            index,
            payload: Vec::new(),
        }
    }

    fn applied(records: &[Record]) -> LogState {
        let mut state = LogState::default();
        for record in records {
            state
                .check(record)
                .unwrap_or_else(|e| panic!("{record:?}: {e}"));
            state.apply(record);
        }
        state
    }

    #[test]
    fn an_empty_log_accepts_any_first_index_then_only_contiguous_ones() {
        let state = applied(&[entry(5), entry(6)]);
        assert_eq!(state.next_index(), Some(7));
        assert!(matches!(
            state.check(&entry(8)),
            Err(Error::WalIndexGap {
                expected: 7,
                got: 8
            })
        ));
        assert!(
            state.check(&entry(6)).is_ok(),
            "replacing the last entry is allowed"
        );
        assert!(
            state.check(&entry(5)).is_ok(),
            "replacing earlier entries is allowed"
        );
    }

    #[test]
    fn appending_over_existing_entries_moves_the_end_back() {
        let state = applied(&[entry(0), entry(1), entry(2), entry(1)]);
        assert_eq!(state.last_index, Some(1));
    }

    #[test]
    fn truncate_moves_the_end_back_and_ignores_indexes_past_the_end() {
        let state = applied(&[entry(0), entry(1), entry(2), Record::Truncate { from: 1 }]);
        assert_eq!(state.last_index, Some(0));
        let state = applied(&[entry(0), Record::Truncate { from: 9 }]);
        assert_eq!(state.last_index, Some(0));
        let state = applied(&[entry(0), Record::Truncate { from: 0 }]);
        assert_eq!(state.last_index, None);
    }

    #[test]
    fn nothing_at_or_below_the_purge_point_can_be_touched() {
        let purge = |up_to| Record::Purge {
            up_to,
            purged: Vec::new(),
        };
        let state = applied(&[entry(0), entry(1), entry(2), purge(1)]);
        assert!(matches!(
            state.check(&entry(1)),
            Err(Error::WalBelowPurge {
                index: 1,
                purged: 1
            })
        ));
        assert!(matches!(
            state.check(&Record::Truncate { from: 0 }),
            Err(Error::WalBelowPurge { .. })
        ));
        assert!(matches!(
            state.check(&purge(0)),
            Err(Error::WalBelowPurge { .. })
        ));
        assert!(
            state.check(&purge(1)).is_ok(),
            "purging the same point again is harmless"
        );
        assert!(state.check(&entry(2)).is_ok());
    }

    #[test]
    fn purging_past_the_end_empties_the_log_and_moves_the_next_index() {
        let state = applied(&[
            entry(0),
            entry(1),
            Record::Purge {
                up_to: 10,
                purged: b"p".to_vec(),
            },
        ]);
        assert_eq!(state.next_index(), Some(11));
        assert!(matches!(
            state.check(&entry(12)),
            Err(Error::WalIndexGap {
                expected: 11,
                got: 12
            })
        ));
    }
}
