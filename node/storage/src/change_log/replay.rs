//! Replaying segments onto a snapshot's contents: the history of revisions after the
//! snapshot's, up to a target revision, written at the revisions the changes had.
//!
//! Each change becomes a record at (its revision, its place among the changes of that
//! revision) — the sub revision the source gave it, since a watch delivers the changes of a
//! revision in sub-revision order — carrying the create revision, version and lease the source
//! wrote. So the restored store's revision, every key's create and mod revision and version,
//! and `HashKV` at the target equal the source's at that revision.
//!
//! The segments must cover every revision from the snapshot's to the target; a gap is refused
//! before anything changes. Each change is checked against the key's history (a put follows
//! the key's version, a deletion deletes a live key), so segments of another cluster or out of
//! order do not make a history that never was.
//!
//! Leases: a lease that keys live at the target are attached to but that the snapshot does not
//! hold (granted after it) is granted in the restored store under its ID, with the TTL the
//! segments recorded for it, and starts afresh as every restored lease does. Without a
//! recorded TTL (the writer could not learn it: the lease was gone before it asked) it is
//! granted with a TTL of 0, so the restored cluster's leader revokes it at once, as the
//! source did soon after. Leases revoked after the snapshot without keys stay until they
//! expire; revocations with keys are in the segments as the deletions they made.

use std::collections::{BTreeMap, HashMap};

use super::Segment;
use crate::mvcc::{Change, Lease, StoreContents, Version};
use crate::{Result, StorageError as Error};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The snapshot's revision, where the replay started.
    pub from_revision: i64,
    /// The revision the store is at now.
    pub to_revision: i64,
    /// Changes written.
    pub changes: usize,
    /// Leases granted that the snapshot did not hold: ID and TTL.
    pub leases_granted: Vec<(i64, i64)>,
}

/// The last revision at or before `unix_millis` that the segments saw made, if any.
pub fn revision_at_time(segments: &[Segment], unix_millis: i64) -> Option<i64> {
    segments
        .iter()
        .flat_map(|segment| &segment.seen)
        .filter(|seen| seen.unix_millis <= unix_millis)
        .map(|seen| seen.revision)
        .max()
}

/// Writes the changes of `segments` after `contents`' revision, up to `to_revision`, into
/// `contents`. Segments may come in any order and may overlap the snapshot or each other.
pub fn replay(
    contents: &mut StoreContents,
    segments: &[Segment],
    to_revision: i64,
) -> Result<Replayed> {
    let from_revision = contents.current_revision;
    if to_revision < from_revision {
        return Err(Error::SegmentsIncomplete(format!(
            "revision {to_revision} is before the snapshot's revision {from_revision}: restore an older snapshot"
        )));
    }
    let mut ordered: Vec<&Segment> = segments.iter().collect();
    ordered.sort_by_key(|segment| (segment.first_revision, segment.last_revision));

    // The changes of each revision, from the first segment that has it; which segments hold
    // which revisions is checked first, so a gap changes nothing.
    let mut covered = from_revision;
    let mut chosen = Vec::new();
    for segment in ordered {
        if segment.last_revision <= covered || covered >= to_revision {
            continue;
        }
        if segment.first_revision > covered + 1 {
            break;
        }
        chosen.push((segment, covered + 1));
        covered = segment.last_revision;
    }
    if covered < to_revision {
        let next = segments
            .iter()
            .map(|segment| segment.first_revision)
            .filter(|&first| first > covered)
            .min();
        let missing = match next {
            Some(next) => format!("revisions {} to {}", covered + 1, next - 1),
            None => format!("revisions {} to {to_revision}", covered + 1),
        };
        return Err(Error::SegmentsIncomplete(format!(
            "no segment holds {missing}: the change log has a gap between the snapshot at revision {from_revision} and revision {to_revision}"
        )));
    }

    let mut live = live_versions(contents);
    let mut written = Vec::new();
    let mut sub = 0;
    let mut last_revision = from_revision;
    for (segment, start) in &chosen {
        for change in &segment.changes {
            if change.revision < *start || change.revision > to_revision {
                continue;
            }
            if change.revision != last_revision {
                last_revision = change.revision;
                sub = 0;
            }
            let version = follow(&mut live, &change.key, change.revision, change.put.as_ref())?;
            written.push(Change {
                key: change.key.clone(),
                main: change.revision,
                sub,
                put: version,
            });
            sub += 1;
        }
    }

    let known: HashMap<i64, i64> = chosen
        .iter()
        .flat_map(|(segment, _)| &segment.leases)
        .map(|lease| (lease.id, lease.ttl))
        .collect();
    let mut leases_granted = Vec::new();
    let held: Vec<i64> = contents.leases.iter().map(|lease| lease.id).collect();
    let mut wanted: Vec<i64> = live
        .values()
        .filter_map(|version| version.as_ref().map(|v| v.lease))
        .filter(|&lease| lease != 0 && !held.contains(&lease))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    for id in wanted {
        let ttl = known.get(&id).copied().unwrap_or(0);
        contents.leases.push(Lease { id, ttl });
        leases_granted.push((id, ttl));
    }

    let changes = written.len();
    contents.history.extend(written);
    contents.current_revision = to_revision;
    Ok(Replayed {
        from_revision,
        to_revision,
        changes,
        leases_granted,
    })
}

/// Each key's live version (`None`: deleted) as the snapshot's history ends.
fn live_versions(contents: &StoreContents) -> BTreeMap<Vec<u8>, Option<Version>> {
    let mut last: BTreeMap<Vec<u8>, (i64, i64, Option<Version>)> = BTreeMap::new();
    for change in &contents.history {
        let newer = last
            .get(&change.key)
            .is_none_or(|(main, sub, _)| (change.main, change.sub) > (*main, *sub));
        if newer {
            last.insert(
                change.key.clone(),
                (change.main, change.sub, change.put.clone()),
            );
        }
    }
    last.into_iter()
        .map(|(key, (_, _, version))| (key, version))
        .collect()
}

/// Checks a change against the key's live version and records it as the new one.
fn follow(
    live: &mut BTreeMap<Vec<u8>, Option<Version>>,
    key: &[u8],
    revision: i64,
    put: Option<&Version>,
) -> Result<Option<Version>> {
    let current = live.get(key).cloned().flatten();
    let shown = String::from_utf8_lossy(key);
    let refuse = |problem: String| {
        Err(Error::SegmentInvalid(format!(
            "the change of {shown:?} at revision {revision} {problem}: the segments are not this snapshot's history"
        )))
    };
    match (put, &current) {
        (Some(new), Some(old))
            if new.version != old.version + 1 || new.create_revision != old.create_revision =>
        {
            return refuse(format!(
                "writes version {} created at {}, but the key is at version {} created at {}",
                new.version, new.create_revision, old.version, old.create_revision
            ));
        }
        (Some(new), None) if new.version != 1 || new.create_revision != revision => {
            return refuse(format!(
                "writes version {} created at {}, but the key does not exist",
                new.version, new.create_revision
            ));
        }
        (None, None) => return refuse("deletes it, but the key does not exist".to_string()),
        _ => {}
    }
    live.insert(key.to_vec(), put.cloned());
    Ok(put.cloned())
}
