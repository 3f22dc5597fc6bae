//! The key index: for every key, the revisions of its kept versions, in memory (etcd's
//! `treeIndex`). The versions themselves live in `kv_revs`, keyed by revision, so a write
//! appends at the end of that table instead of dirtying a page chosen by its key: a batch of
//! writes to random keys costs the disk a few pages, not two or three pages per write.
//!
//! The index is rebuilt from `kv_revs` when the store opens. It is shared by every reader and
//! the one writer:
//! - a batch inserts the revisions it writes as it writes them (readers filter out revisions
//!   newer than their read transaction, so they never see a batch before it commits), and
//!   takes them out again if it is dropped without committing;
//! - what a compaction removes is taken out only when its batch commits, with the index
//!   locked across the commit, and readers lock the index before they open their read
//!   transaction: a reader sees the index and the database either both before the
//!   compaction or both after it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::key_span::KeySpan;

/// A revision: main (the request's) and sub (the change's within the request).
pub(super) type Rev = (i64, i64);

/// One kept version of a key, as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Indexed {
    pub(super) rev: Rev,
    /// The version is a deletion.
    pub(super) tombstone: bool,
}

/// The revisions of every key's kept versions.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    /// Each key's versions in ascending revision order; a key with none is absent.
    keys: BTreeMap<Vec<u8>, Vec<Indexed>>,
}

/// The index shared by the store's handles and its batches.
#[derive(Clone, Debug, Default)]
pub(super) struct SharedIndex(Arc<RwLock<KeyIndex>>);

impl SharedIndex {
    pub(super) fn new(index: KeyIndex) -> SharedIndex {
        SharedIndex(Arc::new(RwLock::new(index)))
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, KeyIndex> {
        // A panic while the index was locked leaves it as whole as the panicking step left it;
        // the store's answers come from the database, which the panic did not commit to.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KeyIndex {
    /// Records a new version of `key`; its revision is later than every version's it has.
    pub(super) fn insert(&mut self, key: &[u8], version: Indexed) {
        let versions = match self.keys.get_mut(key) {
            Some(versions) => versions,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        debug_assert!(versions.last().is_none_or(|last| last.rev < version.rev));
        versions.push(version);
    }

    /// Takes back the last version of `key` (a batch's insert being undone).
    pub(super) fn remove_last(&mut self, key: &[u8]) {
        if let Some(versions) = self.keys.get_mut(key) {
            versions.pop();
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Removes the versions of `key` at these revisions (a compaction's result).
    pub(super) fn remove(&mut self, key: &[u8], revs: &[Rev]) {
        if let Some(versions) = self.keys.get_mut(key) {
            versions.retain(|v| !revs.contains(&v.rev));
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// The version of `key` that was the last change at or before main revision `at`.
    pub(super) fn last_at(&self, key: &[u8], at: i64) -> Option<Indexed> {
        last_at(self.keys.get(key)?, at)
    }

    /// The revision of the version of `key` live at main revision `at`, if it was live.
    pub(super) fn live_at(&self, key: &[u8], at: i64) -> Option<Rev> {
        self.last_at(key, at)
            .filter(|version| !version.tombstone)
            .map(|version| version.rev)
    }

    /// The version of `key` before revision `rev`, if one is kept.
    pub(super) fn before(&self, key: &[u8], rev: Rev) -> Option<Indexed> {
        let versions = self.keys.get(key)?;
        let after = versions.partition_point(|v| v.rev < rev);
        after.checked_sub(1).map(|i| versions[i])
    }

    /// The keys of `span` with any kept version, in key order, with their versions.
    pub(super) fn keys_in<'a>(
        &'a self,
        span: &'a KeySpan,
    ) -> impl Iterator<Item = (&'a [u8], &'a [Indexed])> + 'a {
        let (lower, upper): (Bound<&[u8]>, Bound<&[u8]>) = match span {
            KeySpan::Single(key) => (Bound::Included(key), Bound::Included(key)),
            KeySpan::Interval { start, end } => (
                Bound::Included(start),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            ),
        };
        // An inverted range would make the map panic; an empty span has no keys anyway.
        (!span.is_empty())
            .then(|| self.keys.range::<[u8], _>((lower, upper)))
            .into_iter()
            .flatten()
            .map(|(key, versions)| (key.as_slice(), versions.as_slice()))
    }

    /// Every key with its versions, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &[Indexed])> {
        self.keys
            .iter()
            .map(|(key, versions)| (key.as_slice(), versions.as_slice()))
    }

    /// Takes back the versions a batch inserted (`inserted` names their keys, in the order
    /// they were written), newest first.
    pub(super) fn undo(&mut self, inserted: Vec<Vec<u8>>) {
        for key in inserted.into_iter().rev() {
            self.remove_last(&key);
        }
    }

    /// How many keys have kept versions.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The last of `versions` (ascending) at or before main revision `at`.
pub(super) fn last_at(versions: &[Indexed], at: i64) -> Option<Indexed> {
    let after = versions.partition_point(|v| v.rev.0 <= at);
    after.checked_sub(1).map(|i| versions[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64) -> Indexed {
        Indexed {
            rev: (main, 0),
            tombstone: false,
        }
    }

    #[test]
    fn lookups_see_the_version_live_at_a_revision() {
        let mut index = KeyIndex::default();
        index.insert(b"a", put(2));
        index.insert(
            b"a",
            Indexed {
                rev: (4, 0),
                tombstone: true,
            },
        );
        index.insert(b"a", put(6));
        assert_eq!(index.live_at(b"a", 1), None);
        assert_eq!(index.live_at(b"a", 3), Some((2, 0)));
        assert_eq!(index.live_at(b"a", 5), None);
        assert_eq!(index.live_at(b"a", 9), Some((6, 0)));
        assert_eq!(index.before(b"a", (6, 0)).unwrap().rev, (4, 0));
        assert_eq!(index.before(b"a", (2, 0)), None);

        index.undo(vec![b"a".to_vec()]);
        assert_eq!(index.live_at(b"a", 9), None);
        index.remove(b"a", &[(2, 0), (4, 0)]);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn keys_in_a_span_come_in_key_order() {
        let mut index = KeyIndex::default();
        for key in [&b"b"[..], b"a", b"c", b"ab"] {
            index.insert(key, put(2));
        }
        let span = KeySpan::new(b"a", b"c");
        let keys: Vec<&[u8]> = index.keys_in(&span).map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"a"[..], b"ab", b"b"]);
        let single = KeySpan::new(b"b", b"");
        assert_eq!(index.keys_in(&single).count(), 1);
        let empty = KeySpan::new(b"c", b"a");
        assert_eq!(index.keys_in(&empty).count(), 0);
    }
}
