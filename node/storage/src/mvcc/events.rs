//! Replay of past changes as watch events, for watchers that start at an older revision.
//!
//! `kv_events` lists every change since the compaction point in (main, sub) revision order; the
//! event's key-value (or tombstone) and its `prev_kv` come from `kv_history`.

use etcd_client::proto::{PbEvent, PbKeyValue};
use redb::ReadableTable;

use super::tables::{ChunkSource, HistoryKey, HistoryRecord};
use crate::{Result, StorageError as Error};

/// `Event.EventType`, an i32 on the wire.
pub mod event_type {
    pub const PUT: i32 = 0;
    pub const DELETE: i32 = 1;
}

/// The events of revisions `from..=to`, each with `prev_kv` filled when the previous version is
/// still in history (it is not for a change at the compaction point whose previous version was
/// compacted away, which is what etcd reports too).
pub(super) fn events_in<E, H>(
    events: &E,
    history: &H,
    values: &dyn ChunkSource,
    from: i64,
    to: i64,
) -> Result<Vec<PbEvent>>
where
    E: ReadableTable<(i64, i64), &'static [u8]>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    for entry in events.range((from, i64::MIN)..=(to, i64::MAX))? {
        let (revision, key) = entry?;
        let (main, sub) = revision.value();
        let key = key.value();
        let record = match history.get((key, main, sub))? {
            Some(record) => HistoryRecord::load(key, main, sub, record.value(), values)?,
            None => {
                return Err(Error::MvccCorrupt(format!(
                    "event at revision {main}.{sub} has no history record"
                )))
            }
        };
        let prev_kv = match history
            .range((key, i64::MIN, i64::MIN)..(key, main, sub))?
            .next_back()
        {
            Some(previous) => {
                let (k, record) = previous?;
                let (_, main, sub) = k.value();
                HistoryRecord::load(key, main, sub, record.value(), values)?.into_kv()
            }
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
