//! The clients of a schedule: key-value clients (puts, reads, lists, deletes, compare-and-put
//! transactions, Kubernetes-style create and update), lease clients (grant, attached keys,
//! keep-alive, revoke or expiry) and watch clients (watches opened from past revisions). Each
//! client talks to one member at a time, records every request as an
//! [`Operation`](super::history::Operation), and stops when told.
//!
//! Choices come from a seeded generator per client, so a seed replays the same requests;
//! the server's answers and the timing are the run's own. Every written value is unique in the
//! schedule, which is what makes the at-most-once and durability checks possible.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, Error, EventType,
    GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rand::rngs::StdRng;
use rand::Rng;

use super::history::{
    Compare, Event, EventKind, KeyValue, Operation, Outcome, Request, Response, Time, WatchRecord,
};

/// Every key of a schedule is under this prefix; the store's history is read back from it.
pub const PREFIX: &str = "r/";
/// Keys of the key-value clients: `r/kv/k00`, `r/kv/k01`, ...
pub const KV_PREFIX: &str = "r/kv/";
/// Keys attached to leases: `r/lease/<client>-<n>-<k>`.
pub const LEASE_PREFIX: &str = "r/lease/";
/// Keys of the large-value burst: `r/big/<n>`.
pub const BIG_PREFIX: &str = "r/big/";
/// The key written once after traffic stops; every watch covers it, so a watch that delivered
/// its event delivered everything before it.
pub const FENCE_KEY: &str = "r/kv/~fence";

/// How long a client waits for an answer before it records the outcome as unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client waits after a request without an answer or a broken watch.
const ERROR_BACKOFF: Duration = Duration::from_millis(250);

/// Values longer than this are recorded by their head and length.
const RECORDED_VALUE_BYTES: usize = 64;

/// The first key after every key that starts with `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.pop().expect("a non-empty prefix");
    end.push(last + 1);
    String::from_utf8(end).expect("ASCII prefix")
}

/// How a value is recorded: itself, or for a large value its head and length.
pub fn value_text(value: &[u8]) -> String {
    if value.len() <= RECORDED_VALUE_BYTES {
        String::from_utf8_lossy(value).into_owned()
    } else {
        format!(
            "{}...({} bytes)",
            String::from_utf8_lossy(&value[..32]),
            value.len()
        )
    }
}

pub fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: value_text(kv.value()),
        mod_revision: kv.mod_revision(),
    }
}

pub fn event(event: &etcd_client::Event) -> Option<Event> {
    let kv = event.kv()?;
    Some(Event {
        revision: kv.mod_revision(),
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        kind: match event.event_type() {
            EventType::Put => EventKind::Put {
                value: value_text(kv.value()),
            },
            EventType::Delete => EventKind::Delete,
        },
    })
}

/// The weights of the key-value requests in a schedule's mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMix {
    pub put: u32,
    pub get: u32,
    pub get_serializable: u32,
    pub list: u32,
    pub delete: u32,
    pub delete_range: u32,
    pub compare_value: u32,
    pub create: u32,
    pub update: u32,
}

impl KvMix {
    /// A random mix: every kind has weight at least 1, so every schedule exercises all.
    pub fn random(rng: &mut StdRng) -> KvMix {
        let mut weight = |high| rng.gen_range(1..=high);
        KvMix {
            put: weight(10),
            get: weight(10),
            get_serializable: weight(4),
            list: weight(4),
            delete: weight(3),
            delete_range: weight(2),
            compare_value: weight(6),
            create: weight(6),
            update: weight(6),
        }
    }

    fn weights(&self) -> [u32; 9] {
        [
            self.put,
            self.get,
            self.get_serializable,
            self.list,
            self.delete,
            self.delete_range,
            self.compare_value,
            self.create,
            self.update,
        ]
    }
}

/// The time base of one schedule's records.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> Time {
        self.0.elapsed()
    }
}

/// What every client of a schedule shares.
#[derive(Debug, Clone)]
pub struct TrafficContext {
    pub clock: Clock,
    /// Client URL of each host, by host index.
    pub endpoints: Vec<String>,
    /// Set when the clients must finish.
    pub stop: Arc<AtomicBool>,
    /// Set (non-zero) with the fence's revision once it is written; watches then wait for it.
    pub fence: Arc<AtomicI64>,
    /// Pause between two requests of one client.
    pub pace: Duration,
}

impl TrafficContext {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Connects to the member at `endpoint`, trying again until it works or traffic stops.
async fn connect(context: &TrafficContext, endpoint: &str) -> Option<Client> {
    connect_until(endpoint, || context.stopped()).await
}

/// Connects to the member at `endpoint`, trying again until it works or `give_up` says so.
async fn connect_until(endpoint: &str, give_up: impl Fn() -> bool) -> Option<Client> {
    while !give_up() {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(REQUEST_TIMEOUT);
        if let Ok(client) = Client::connect([endpoint], Some(options)).await {
            return Some(client);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Records one request of `client` to `member`: its invocation, its answer or its error.
pub struct Recorder {
    pub client: usize,
    pub operations: Vec<Operation>,
    clock: Clock,
}

impl Recorder {
    pub fn new(client: usize, clock: Clock) -> Recorder {
        Recorder {
            client,
            operations: Vec::new(),
            clock,
        }
    }

    /// Sends a request through `call` and records it; returns the answer if there was one.
    pub async fn record<F>(&mut self, member: usize, request: Request, call: F) -> Option<Response>
    where
        F: std::future::Future<Output = Result<Response, Error>>,
    {
        self.record_within(REQUEST_TIMEOUT, member, request, call)
            .await
    }

    /// [`record`](Self::record) with its own timeout, for requests known to be slow.
    pub async fn record_within<F>(
        &mut self,
        timeout: Duration,
        member: usize,
        request: Request,
        call: F,
    ) -> Option<Response>
    where
        F: std::future::Future<Output = Result<Response, Error>>,
    {
        let invoked = self.clock.now();
        let answer = tokio::time::timeout(timeout, call).await;
        let returned = self.clock.now();
        let outcome = match answer {
            Ok(Ok(response)) => Outcome::Ok(response),
            Ok(Err(error)) => Outcome::Unknown(error.to_string()),
            Err(_) => Outcome::Unknown(format!("no answer within {timeout:?}")),
        };
        let response = match &outcome {
            Outcome::Ok(response) => Some(response.clone()),
            Outcome::Unknown(_) => None,
        };
        self.operations.push(Operation {
            id: 0,
            client: self.client,
            member,
            request,
            invoked,
            returned,
            outcome,
        });
        response
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision())
}

pub async fn put(
    client: &mut Client,
    key: &str,
    value: Vec<u8>,
    lease: Option<i64>,
) -> Result<Response, Error> {
    let options = lease.map(|lease| PutOptions::new().with_lease(lease));
    let answer = client.put(key, value, options).await?;
    Ok(Response::Put {
        revision: revision_of(answer.header()),
    })
}

async fn range(
    client: &mut Client,
    start: &str,
    end: Option<&str>,
    serializable: bool,
) -> Result<Response, Error> {
    let mut options = GetOptions::new();
    if let Some(end) = end {
        options = options.with_range(end);
    }
    if serializable {
        options = options.with_serializable();
    }
    let answer = client.get(start, Some(options)).await?;
    Ok(Response::Range {
        revision: revision_of(answer.header()),
        kvs: answer.kvs().iter().map(key_value).collect(),
    })
}

async fn delete(client: &mut Client, start: &str, end: Option<&str>) -> Result<Response, Error> {
    let mut options = DeleteOptions::new().with_prev_key();
    if let Some(end) = end {
        options = options.with_range(end);
    }
    let answer = client.delete(start, Some(options)).await?;
    Ok(Response::Delete {
        revision: revision_of(answer.header()),
        deleted: answer.prev_kvs().iter().map(key_value).collect(),
    })
}

async fn compare_and_put(
    client: &mut Client,
    key: &str,
    compare: &Compare,
    value: &str,
) -> Result<Response, Error> {
    let condition = match compare {
        Compare::Value(expected) => EtcdCompare::value(key, CompareOp::Equal, expected.as_str()),
        Compare::ModRevision(revision) => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, *revision)
        }
    };
    let txn = Txn::new()
        .when([condition])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let answer = client.txn(txn).await?;
    let current = answer
        .op_responses()
        .into_iter()
        .find_map(|response| match response {
            TxnOpResponse::Get(get) => get.kvs().first().map(key_value),
            _ => None,
        });
    Ok(Response::CompareAndPut {
        revision: revision_of(answer.header()),
        succeeded: answer.succeeded(),
        current,
    })
}

/// One key-value client: sends the mix's requests to `member` until traffic stops.
pub async fn run_kv_client(
    context: TrafficContext,
    client_id: usize,
    member: usize,
    keys: usize,
    mix: KvMix,
    mut rng: StdRng,
) -> Vec<Operation> {
    let mut recorder = Recorder::new(client_id, context.clock);
    let Some(mut client) = connect(&context, &context.endpoints[member]).await else {
        return recorder.operations;
    };
    let key_name = |k: usize| format!("{KV_PREFIX}k{k:02}");
    // What this client last learnt of each key, to aim its compare-and-puts.
    let mut known: HashMap<String, KeyValue> = HashMap::new();
    let weights = mix.weights();
    let total: u32 = weights.iter().sum();
    let mut written = 0u64;
    while !context.stopped() {
        let key = key_name(rng.gen_range(0..keys));
        let mut value = || {
            written += 1;
            format!("c{client_id}-{written}")
        };
        let mut pick = rng.gen_range(0..total);
        let kind = weights
            .iter()
            .position(|&w| {
                let here = pick < w;
                pick = pick.saturating_sub(w);
                here
            })
            .expect("a kind within the total weight");
        let (request, answer) = match kind {
            0 => {
                let value = value();
                let request = Request::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: None,
                };
                let call = put(&mut client, &key, value.into_bytes(), None);
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
            1 | 2 => {
                let serializable = kind == 2;
                let request = Request::Get {
                    key: key.clone(),
                    serializable,
                };
                let call = range(&mut client, &key, None, serializable);
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
            3 => {
                let from = key_name(rng.gen_range(0..keys));
                let end = prefix_end(KV_PREFIX);
                let request = Request::List {
                    start: from.clone(),
                    end: end.clone(),
                    serializable: false,
                };
                let call = range(&mut client, &from, Some(&end), false);
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
            4 => {
                let request = Request::Delete {
                    start: key.clone(),
                    end: None,
                };
                let call = delete(&mut client, &key, None);
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
            5 => {
                let first = rng.gen_range(0..keys);
                let last = (first + rng.gen_range(1..=3)).min(keys);
                let (start, end) = (key_name(first), key_name(last));
                let request = Request::Delete {
                    start: start.clone(),
                    end: Some(end.clone()),
                };
                let call = delete(&mut client, &start, Some(&end));
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
            _ => {
                let compare = match (kind, known.get(&key)) {
                    (6, Some(kv)) => Compare::Value(kv.value.clone()),
                    (6, None) => Compare::Value("none".to_string()),
                    (7, _) => Compare::ModRevision(0),
                    (_, Some(kv)) => Compare::ModRevision(kv.mod_revision),
                    (_, None) => Compare::ModRevision(rng.gen_range(1..100)),
                };
                let value = value();
                let request = Request::CompareAndPut {
                    key: key.clone(),
                    compare: compare.clone(),
                    value: value.clone(),
                };
                let call = compare_and_put(&mut client, &key, &compare, &value);
                (
                    request.clone(),
                    recorder.record(member, request, call).await,
                )
            }
        };
        learn(&mut known, &request, answer.as_ref());
        // A member that is down refuses at once; backing off keeps the unknown outcomes (which
        // the linearizability search pays for) few.
        let pause = if answer.is_none() {
            ERROR_BACKOFF
        } else {
            context.pace
        };
        tokio::time::sleep(pause).await;
    }
    recorder.operations
}

/// Updates what a client knows of its keys from one answer.
fn learn(known: &mut HashMap<String, KeyValue>, request: &Request, answer: Option<&Response>) {
    match (request, answer) {
        (Request::Put { key, value, .. }, Some(Response::Put { revision }))
        | (
            Request::CompareAndPut { key, value, .. },
            Some(Response::CompareAndPut {
                revision,
                succeeded: true,
                ..
            }),
        ) => {
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                mod_revision: *revision,
            };
            known.insert(key.clone(), kv);
        }
        (_, Some(Response::Range { kvs, .. })) => {
            for kv in kvs {
                known.insert(kv.key.clone(), kv.clone());
            }
        }
        (
            _,
            Some(Response::CompareAndPut {
                current: Some(kv), ..
            }),
        ) => {
            known.insert(kv.key.clone(), kv.clone());
        }
        (_, Some(Response::Delete { deleted, .. })) => {
            for kv in deleted {
                known.remove(&kv.key);
            }
        }
        _ => {}
    }
}

/// One lease client: grants leases with attached keys through random members, renews them
/// with single keep-alives, reads the keys, and then revokes the lease or lets it expire and
/// tries to renew it once more.
pub async fn run_lease_client(
    context: TrafficContext,
    client_id: usize,
    members: Vec<usize>,
    mut rng: StdRng,
) -> Vec<Operation> {
    let mut recorder = Recorder::new(client_id, context.clock);
    let mut clients = Vec::new();
    for &member in &members {
        match connect(&context, &context.endpoints[member]).await {
            Some(client) => clients.push((member, client)),
            None => return recorder.operations,
        }
    }
    let mut round = 0;
    while !context.stopped() {
        round += 1;
        let ttl = rng.gen_range(3..=6);
        let (member, client) = &mut clients[rng.gen_range(0..members.len())];
        let granted = recorder
            .record(*member, Request::LeaseGrant { ttl }, async {
                let answer = client.lease_grant(ttl, None).await?;
                Ok(Response::LeaseGrant {
                    lease: answer.id(),
                    ttl: answer.ttl(),
                })
            })
            .await;
        let Some(Response::LeaseGrant { lease, ttl }) = granted else {
            tokio::time::sleep(context.pace).await;
            continue;
        };
        let mut keys = Vec::new();
        for k in 0..rng.gen_range(1..=2) {
            let key = format!("{LEASE_PREFIX}{client_id}-{round}-{k}");
            let value = format!("l{client_id}-{round}-{k}");
            let request = Request::Put {
                key: key.clone(),
                value: value.clone(),
                lease: Some(lease),
            };
            let call = put(client, &key, value.into_bytes(), Some(lease));
            if recorder.record(*member, request, call).await.is_some() {
                keys.push(key);
            }
        }
        for _ in 0..rng.gen_range(2..=6) {
            if context.stopped() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
            let (member, client) = &mut clients[rng.gen_range(0..members.len())];
            keep_alive(&mut recorder, *member, client, lease, ttl).await;
            read_keys(&mut recorder, &mut clients, &keys, &mut rng).await;
        }
        if rng.gen_bool(0.5) {
            let (member, client) = &mut clients[rng.gen_range(0..members.len())];
            recorder
                .record(*member, Request::LeaseRevoke { lease }, async {
                    let answer = client.lease_revoke(lease).await?;
                    Ok(Response::LeaseRevoke {
                        revision: revision_of(answer.header()),
                    })
                })
                .await;
        } else {
            // Let it expire, then check the keys are gone and the lease cannot be renewed.
            tokio::time::sleep(Duration::from_secs(ttl as u64 + 1)).await;
        }
        read_keys(&mut recorder, &mut clients, &keys, &mut rng).await;
        let (member, client) = &mut clients[rng.gen_range(0..members.len())];
        keep_alive(&mut recorder, *member, client, lease, ttl).await;
    }
    recorder.operations
}

/// Sends one keep-alive for `lease` on a fresh stream. etcd-client answers `Ok` only when the
/// server renewed the lease (to its granted TTL), and a `LeaseKeepAliveError` when the server
/// answered that it does not exist or the request never left.
async fn keep_alive(
    recorder: &mut Recorder,
    member: usize,
    client: &mut Client,
    lease: i64,
    ttl: i64,
) {
    recorder
        .record(member, Request::LeaseKeepAlive { lease }, async {
            match client.lease_keep_alive(lease).await {
                Ok(_) => Ok(Response::LeaseKeepAlive { ttl }),
                Err(Error::LeaseKeepAliveError(_)) => Ok(Response::LeaseKeepAlive { ttl: 0 }),
                Err(error) => Err(error),
            }
        })
        .await;
}

async fn read_keys(
    recorder: &mut Recorder,
    clients: &mut [(usize, Client)],
    keys: &[String],
    rng: &mut StdRng,
) {
    for key in keys {
        let (member, client) = &mut clients[rng.gen_range(0..clients.len())];
        let request = Request::Get {
            key: key.clone(),
            serializable: false,
        };
        recorder
            .record(*member, request, range(client, key, None, false))
            .await;
    }
}

/// One watch client: opens watches from past revisions over a range that ends with the
/// key-value prefix, on random members, each for a few seconds; a broken watch is opened again
/// from the revision after its last event. Once traffic stops it keeps its watch open until the
/// fence is written and then waits for the fence's event.
pub async fn run_watch_client(
    context: TrafficContext,
    client_id: usize,
    members: Vec<usize>,
    keys: usize,
    mut rng: StdRng,
) -> Vec<WatchRecord> {
    let mut records = Vec::new();
    let end = prefix_end(KV_PREFIX);
    // `None` opens a fresh watch; `Some` resumes a broken one.
    let mut resume: Option<(String, i64)> = None;
    // Runs until a watch has waited for the fence; the schedule aborts it if no fence comes.
    loop {
        let member = members[rng.gen_range(0..members.len())];
        let Some(mut client) = connect_until(&context.endpoints[member], || false).await else {
            break;
        };
        let (start, start_revision) = match resume.take() {
            Some(resumed) => resumed,
            None => {
                let start = if rng.gen_bool(0.5) {
                    KV_PREFIX.to_string()
                } else {
                    format!("{KV_PREFIX}k{:02}", rng.gen_range(0..keys))
                };
                let current = match client.get(KV_PREFIX, None).await {
                    Ok(answer) => revision_of(answer.header()),
                    Err(_) => {
                        tokio::time::sleep(context.pace).await;
                        continue;
                    }
                };
                (start, rng.gen_range(1..=current.max(1)))
            }
        };
        let mut record = WatchRecord {
            client: client_id,
            member,
            start: start.clone(),
            end: end.clone(),
            start_revision,
            opened: context.clock.now(),
            events: Vec::new(),
            complete_to: None,
            ended: String::new(),
        };
        let lasting = Duration::from_millis(rng.gen_range(1500..6000));
        let broke = watch_once(&context, &mut client, &mut record, lasting).await;
        if broke {
            let next = record
                .events
                .last()
                .map_or(start_revision, |e| e.revision + 1);
            resume = Some((start, next));
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        let done = record.complete_to.is_some();
        records.push(record);
        if done {
            break;
        }
    }
    records
}

/// Runs one watch until `lasting` passes (or, once the fence is written, until its event
/// arrives), recording its events. Returns whether the stream broke.
async fn watch_once(
    context: &TrafficContext,
    client: &mut Client,
    record: &mut WatchRecord,
    lasting: Duration,
) -> bool {
    let options = WatchOptions::new()
        .with_range(record.end.as_str())
        .with_start_revision(record.start_revision);
    let opened = Instant::now();
    let mut stream = match client.watch(record.start.as_str(), Some(options)).await {
        Ok(stream) => stream,
        Err(error) => {
            record.ended = format!("could not open: {error}");
            return true;
        }
    };
    let mut fence_seen_wait: Option<Instant> = None;
    loop {
        let fence = context.fence.load(Ordering::Relaxed);
        if fence != 0 {
            let waiting = fence_seen_wait.get_or_insert_with(Instant::now);
            if record.events.last().is_some_and(|e| e.revision >= fence) {
                record.complete_to = Some(fence);
                record.ended = "received the fence".into();
                return false;
            }
            if waiting.elapsed() > FENCE_WAIT {
                record.complete_to = Some(fence);
                record.ended = format!("no fence event within {FENCE_WAIT:?}");
                return false;
            }
        } else if !context.stopped() && opened.elapsed() > lasting {
            record.ended = "closed by the client".into();
            return false;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(response))) => {
                if response.canceled() {
                    record.ended = format!("canceled: {}", response.cancel_reason());
                    return true;
                }
                record
                    .events
                    .extend(response.events().iter().filter_map(event));
            }
            Ok(Ok(None)) => {
                record.ended = "stream ended".into();
                return true;
            }
            Ok(Err(error)) => {
                record.ended = format!("stream failed: {error}");
                return true;
            }
        }
    }
}

/// How long a large put may take: 64 of them at once take tens of seconds in a debug build.
const LARGE_PUT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a watch open when the fence is written may take to deliver the fence's event.
pub const FENCE_WAIT: Duration = Duration::from_secs(20);

/// A burst of `count` concurrent puts of `bytes`-byte values to `r/big/<n>` through members in
/// turn (issue 11's "64 concurrent 1.5 MiB puts").
pub async fn run_large_puts(
    context: TrafficContext,
    client_id: usize,
    members: Vec<usize>,
    count: usize,
    bytes: usize,
) -> Vec<Operation> {
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let context = context.clone();
            let member = members[n % members.len()];
            tokio::spawn(async move {
                let mut recorder = Recorder::new(client_id, context.clock);
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(LARGE_PUT_TIMEOUT);
                let endpoint = context.endpoints[member].as_str();
                let Ok(mut client) = Client::connect([endpoint], Some(options)).await else {
                    return recorder.operations;
                };
                let key = format!("{BIG_PREFIX}{n:03}");
                let mut value = format!("big-{client_id}-{n}-").into_bytes();
                value.resize(bytes, b'x');
                let request = Request::Put {
                    key: key.clone(),
                    value: value_text(&value),
                    lease: None,
                };
                let call = put(&mut client, &key, value, None);
                recorder
                    .record_within(LARGE_PUT_TIMEOUT, member, request, call)
                    .await;
                recorder.operations
            })
        })
        .collect();
    let mut operations = Vec::new();
    for task in tasks {
        operations.extend(task.await.unwrap_or_default());
    }
    operations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_recorded_by_head_and_length() {
        assert_eq!(value_text(b"c1-7"), "c1-7");
        let mut big = b"big-9-3-".to_vec();
        big.resize(1000, b'x');
        assert_eq!(
            value_text(&big),
            "big-9-3-xxxxxxxxxxxxxxxxxxxxxxxx...(1000 bytes)"
        );
    }

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(KV_PREFIX), "r/kv0");
        assert!(FENCE_KEY < prefix_end(KV_PREFIX).as_str());
    }
}
