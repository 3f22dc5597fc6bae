//! Replay of past changes as watch events, for watchers that start at an older revision.
//!
//! `kv_revs` holds every kept change in (main, sub) revision order: the events are its entries
//! from the start revision on, and the key index names each one's previous version.

use etcd_client::proto::{PbEvent, PbKeyValue};
use redb::ReadableTable;

use super::index::KeyIndex;
use super::read::load;
use super::tables::{ChunkSource, HistoryRecord, RevKey, RevValue};
use crate::Result;

/// `Event.EventType`, an i32 on the wire.
pub mod event_type {
    pub const PUT: i32 = 0;
    pub const DELETE: i32 = 1;
}

/// The events of revisions `from..=to`, each with `prev_kv` filled when the previous version is
/// still kept (it is not for a change at the compaction point whose previous version was
/// compacted away, which is what etcd reports too).
pub(super) fn events_in<R>(
    index: &KeyIndex,
    revs: &R,
    values: &dyn ChunkSource,
    from: i64,
    to: i64,
) -> Result<Vec<PbEvent>>
where
    R: ReadableTable<RevKey, RevValue>,
{
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    for entry in revs.range((from, i64::MIN)..=(to, i64::MAX))? {
        let (rev, change) = entry?;
        let (main, sub) = rev.value();
        let (key, record) = change.value();
        let record = HistoryRecord::load(key, main, sub, record, values)?;
        let prev_kv = match index.before(key, (main, sub)) {
            Some(previous) => load(revs, values, key, previous.rev)?.into_kv(),
            None => None,
        };
        let (r#type, kv) = match record {
            HistoryRecord::Put(kv) => (event_type::PUT, kv),
            HistoryRecord::Tombstone => (
                event_type::DELETE,
                PbKeyValue {
                    key: key.to_vec(),
                    mod_revision: main,
                    ..Default::default()
                },
            ),
        };
        out.push(PbEvent {
            r#type,
            kv: Some(kv),
            prev_kv,
        });
    }
    Ok(out)
}
