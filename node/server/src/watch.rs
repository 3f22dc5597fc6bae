//! Watches: the events of applied writes, delivered to each watcher in revision order, each
//! exactly once, with no gaps.
//!
//! One task serves one client stream and all the watchers on it. Live events arrive from the
//! state machine through a bounded broadcast channel; a watcher that starts in the past, or a
//! stream that falls so far behind that the channel overwrites what it has not read, reads the
//! missing revisions from the MVCC store's history instead. So a slow client never holds up
//! writes: it only falls back to history, and to a compaction notice if history is gone.
//!
//! The stream tracks from which revision on the live channel is sure to deliver (`live_from`):
//! only revisions before it are read from history. (A commit is visible in the store a moment
//! before its events are broadcast, so "behind the store" would send every watcher to history
//! for nearly every write under load, one read per watcher.)

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::proto::{PbEvent, PbWatchResponse};
use tokio::sync::{broadcast, mpsc};

use super::Server;
use crate::ServerError as Error;
use ferrokv_storage::mvcc::KeySpan;

/// How many revisions one catch-up read takes from history.
const CATCH_UP_REVISIONS: i64 = 1000;
/// etcd's default interval of progress notifications.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// The watch ID etcd puts in a response to a progress request.
const PROGRESS_WATCH_ID: i64 = -1;
/// `WatchCreateRequest.FilterType` on the wire.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
/// `Event.EventType` on the wire.
const EVENT_PUT: i32 = 0;

/// What a client asked to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub progress_notify: bool,
    pub filters: Vec<i32>,
    pub prev_kv: bool,
    pub watch_id: i64,
}

/// A message from the client side of a watch stream.
#[derive(Debug)]
pub enum WatchCommand {
    Create(WatchSpec),
    Cancel(i64),
    Progress,
}

struct Watcher {
    spec: WatchSpec,
    /// The keys watched, decoded once from the spec's key and range end.
    span: KeySpan,
    /// The next revision this watcher must see.
    next: i64,
}

impl Watcher {
    fn matches(&self, event: &PbEvent) -> bool {
        let Some(kv) = &event.kv else { return false };
        if !self.span.contains(&kv.key) {
            return false;
        }
        let filtered = if event.r#type == EVENT_PUT {
            FILTER_NOPUT
        } else {
            FILTER_NODELETE
        };
        !self.spec.filters.contains(&filtered)
    }

    fn shape(&self, event: &PbEvent) -> PbEvent {
        let mut e = event.clone();
        if !self.spec.prev_kv {
            e.prev_kv = None;
        }
        e
    }
}

fn revision_of(event: &PbEvent) -> i64 {
    event.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

/// Serves one watch stream: reads commands from `commands`, writes responses to `out`, until
/// either side closes.
pub async fn serve_stream(
    server: Server,
    mut commands: mpsc::Receiver<WatchCommand>,
    out: mpsc::Sender<Result<PbWatchResponse, tonic::Status>>,
) {
    let mut live = server.state_machine().subscribe_events();
    // Everything committed after this read is broadcast after the subscription above.
    let mut live_from = current_revision(&server) + 1;
    let mut watchers: BTreeMap<i64, Watcher> = BTreeMap::new();
    let mut next_id: i64 = 0;
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        // Watchers behind what the live channel will deliver catch up from history first.
        if let Err(()) = catch_up(&server, &mut watchers, live_from, &out).await {
            return;
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                let reply = match command {
                    WatchCommand::Create(spec) => create(&server, &mut watchers, &mut next_id, spec),
                    WatchCommand::Cancel(id) => {
                        let existed = watchers.remove(&id).is_some();
                        existed.then(|| PbWatchResponse {
                            header: Some(server.header(current_revision(&server))),
                            watch_id: id,
                            canceled: true,
                            ..Default::default()
                        })
                    }
                    WatchCommand::Progress => Some(PbWatchResponse {
                        header: Some(server.header(progress_revision(&server, &watchers))),
                        watch_id: PROGRESS_WATCH_ID,
                        ..Default::default()
                    }),
                };
                if let Some(reply) = reply {
                    if out.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
            batch = live.recv() => match batch {
                Ok(events) => {
                    let (Some(first), Some(last)) = (events.first(), events.last()) else {
                        continue;
                    };
                    let (first, last) = (revision_of(first), revision_of(last));
                    if first > live_from {
                        // Revisions that were never broadcast (a snapshot replaced the store):
                        // watchers before them read them from history, if it still has them.
                        live_from = first;
                        if catch_up(&server, &mut watchers, live_from, &out).await.is_err() {
                            return;
                        }
                    }
                    if deliver(&server, &mut watchers, &events, (first, last), &out)
                        .await
                        .is_err() {
                        return;
                    }
                    live_from = live_from.max(last + 1);
                }
                // Fell behind the live channel: what was missed is read from history by the
                // catch-up at the top of the loop; everything committed after this read will
                // still come live.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    live_from = current_revision(&server) + 1;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = progress.tick() => {
                let revision = current_revision(&server);
                for (id, w) in &watchers {
                    if w.spec.progress_notify && w.next > revision {
                        let reply = PbWatchResponse {
                            header: Some(server.header(revision)),
                            watch_id: *id,
                            ..Default::default()
                        };
                        if out.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn current_revision(server: &Server) -> i64 {
    server.store().current_revision().unwrap_or(0)
}

/// The revision every watcher on the stream has been brought up to.
fn progress_revision(server: &Server, watchers: &BTreeMap<i64, Watcher>) -> i64 {
    let current = current_revision(server);
    watchers
        .values()
        .map(|w| w.next - 1)
        .min()
        .unwrap_or(current)
        .min(current)
}

fn create(
    server: &Server,
    watchers: &mut BTreeMap<i64, Watcher>,
    next_id: &mut i64,
    spec: WatchSpec,
) -> Option<PbWatchResponse> {
    let current = current_revision(server);
    let id = if spec.watch_id != 0 {
        spec.watch_id
    } else {
        while watchers.contains_key(next_id) {
            *next_id += 1;
        }
        *next_id
    };
    if watchers.contains_key(&id) {
        // etcd: a duplicate watch ID is refused with a created-and-canceled response.
        return Some(PbWatchResponse {
            header: Some(server.header(current)),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: "mvcc: duplicate watch ID".into(),
            ..Default::default()
        });
    }
    if spec.key.is_empty() {
        return Some(PbWatchResponse {
            header: Some(server.header(current)),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: Error::EmptyKey.to_string(),
            ..Default::default()
        });
    }
    let next = if spec.start_revision > 0 {
        spec.start_revision
    } else {
        current + 1
    };
    let span = KeySpan::new(&spec.key, &spec.range_end);
    watchers.insert(id, Watcher { spec, span, next });
    Some(PbWatchResponse {
        header: Some(server.header(current)),
        watch_id: id,
        created: true,
        ..Default::default()
    })
}

/// Brings every watcher that is behind `live_from` (the first revision the live channel is sure
/// to deliver) up to it from history.
async fn catch_up(
    server: &Server,
    watchers: &mut BTreeMap<i64, Watcher>,
    live_from: i64,
    out: &mpsc::Sender<Result<PbWatchResponse, tonic::Status>>,
) -> Result<(), ()> {
    loop {
        let behind: Vec<i64> = watchers
            .iter()
            .filter(|(_, w)| w.next < live_from)
            .map(|(id, _)| *id)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        let current = current_revision(server);
        for id in behind {
            let w = watchers.get_mut(&id).expect("listed above");
            let from = w.next;
            let to = (from + CATCH_UP_REVISIONS - 1).min(live_from - 1);
            let store = server.store().clone();
            let history = tokio::task::spawn_blocking(move || store.events_between(from, to))
                .await
                .map_err(|_| ())?;
            match history {
                Ok(events) => {
                    let matching: Vec<PbEvent> = events
                        .iter()
                        .filter(|e| w.matches(e))
                        .map(|e| w.shape(e))
                        .collect();
                    w.next = to + 1;
                    if !matching.is_empty() {
                        let reply = PbWatchResponse {
                            header: Some(server.header(to)),
                            watch_id: id,
                            events: matching,
                            ..Default::default()
                        };
                        out.send(Ok(reply)).await.map_err(|_| ())?;
                    }
                }
                Err(ferrokv_storage::StorageError::Compacted) => {
                    let compacted = server.store().compact_revision().unwrap_or(0);
                    watchers.remove(&id);
                    let reply = PbWatchResponse {
                        header: Some(server.header(current)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted,
                        cancel_reason: Error::Compacted.to_string(),
                        ..Default::default()
                    };
                    out.send(Ok(reply)).await.map_err(|_| ())?;
                }
                Err(e) => {
                    watchers.remove(&id);
                    let reply = PbWatchResponse {
                        header: Some(server.header(current)),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: e.to_string(),
                        ..Default::default()
                    };
                    out.send(Ok(reply)).await.map_err(|_| ())?;
                }
            }
        }
    }
}

/// Hands a batch of live events to the watchers that are caught up to it.
/// `first` and `last` are the revisions of the batch's first and last event.
async fn deliver(
    server: &Server,
    watchers: &mut BTreeMap<i64, Watcher>,
    events: &[PbEvent],
    (first, last): (i64, i64),
    out: &mpsc::Sender<Result<PbWatchResponse, tonic::Status>>,
) -> Result<(), ()> {
    for (id, w) in watchers.iter_mut() {
        // A watcher still behind this batch is served by catch-up; one already past it has
        // seen these revisions from history.
        if w.next < first || w.next > last {
            continue;
        }
        let matching: Vec<PbEvent> = events
            .iter()
            .filter(|e| revision_of(e) >= w.next && w.matches(e))
            .map(|e| w.shape(e))
            .collect();
        w.next = last + 1;
        if !matching.is_empty() {
            let reply = PbWatchResponse {
                header: Some(server.header(last)),
                watch_id: *id,
                events: matching,
                ..Default::default()
            };
            out.send(Ok(reply)).await.map_err(|_| ())?;
        }
    }
    Ok(())
}
