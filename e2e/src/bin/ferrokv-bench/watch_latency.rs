//! `watch-latency`: how soon a put reaches many watchers of its prefix, and whether every watcher
//! receives every put exactly once, in revision order.
//!
//! `--watchers` watchers watch one fresh prefix from the revision after the current one, spread
//! over `--watch-conns` connections: one watch stream per connection with its watchers
//! multiplexed on it, as etcd's clients do with watches sharing a context. Once every watch is
//! created, `--clients` clients put `--total` keys under the prefix (at `--put-rate` puts per
//! second in all, or as fast as they can), each value starting with its send time. A delivery's
//! latency runs from that send to the arrival of the watch response carrying the event, and is
//! recorded for every (watcher, event) pair.
//!
//! The checks: every watcher must see every acknowledged put once, in increasing revision order,
//! and nothing else. A put whose request failed may or may not have been applied, so seeing it
//! is neither required nor a fault. This module does not measure watch creation or history
//! replay: watchers start before the first put.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use ferrokv_e2e::latency::LatencySummary;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::sync::watch;

use super::{parse_duration, Cli, ClientReport, Keys, Outcome, RunPlan};

/// Digits of the send time (nanoseconds since the run's origin) at the start of every value.
const STAMP_DIGITS: usize = 20;

/// How long creating all watches may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct WatchLatencyArgs {
    /// Watchers of the prefix.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,

    /// Connections the watchers are spread over, one watch stream each (connection `j` goes to
    /// endpoint `j mod len`).
    #[arg(long, default_value_t = 4)]
    watch_conns: usize,

    /// Puts per second over all clients; 0 puts as fast as the clients can.
    #[arg(long, default_value_t = 0.0)]
    put_rate: f64,

    /// How long the watchers may take after the last put to receive every event, before what
    /// they have not received counts as missed.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    drain_timeout: Duration,
}

pub async fn run(
    cli: &Cli,
    mut plan: RunPlan,
    args: &WatchLatencyArgs,
    keys: &Keys,
) -> anyhow::Result<Outcome> {
    if args.watchers == 0 || args.watch_conns == 0 {
        bail!("--watchers and --watch-conns must be at least 1");
    }
    if !(args.put_rate >= 0.0 && args.put_rate.is_finite()) {
        bail!("--put-rate must be a number of puts per second, 0 for no limit");
    }
    let suffix: String = rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    let prefix = format!("ferrokv-bench/watch-{suffix}/");
    let writers = plan.connect(plan.conns, true).await?;
    let start_revision = current_revision(&writers[0], &prefix).await? + 1;

    // Watcher i lives on connection i mod watch_conns.
    let readers = plan.connect(args.watch_conns, false).await?;
    let mut streams = Vec::with_capacity(readers.len());
    for (j, reader) in readers.iter().enumerate() {
        let count = (args.watchers + args.watch_conns - 1 - j) / args.watch_conns;
        if count > 0 {
            streams.push(open_watchers(reader, &prefix, start_revision, count).await?);
        }
    }

    // Send times are nanoseconds since `origin`, carried in the values.
    let origin = Instant::now();
    plan.restart_clock();
    let (finish, finished) = watch::channel(None);
    let mut receivers = Vec::with_capacity(streams.len());
    for (stream, watch_ids) in streams {
        let prefix_len = prefix.len();
        let finished = finished.clone();
        receivers.push(tokio::spawn(receive(
            stream, watch_ids, origin, prefix_len, finished,
        )));
    }

    let plan = Arc::new(plan);
    let next_put = Arc::new(AtomicU64::new(0));
    let mut putters = Vec::with_capacity(plan.clients);
    for c in 0..plan.clients {
        let putter = Putter {
            kv: writers[c % writers.len()].kv_client(),
            plan: plan.clone(),
            next_put: next_put.clone(),
            prefix: prefix.clone(),
            key_width: keys.key_size,
            value_size: cli.val_size,
            put_rate: args.put_rate,
            origin,
        };
        putters.push(tokio::spawn(putter.run()));
    }
    let mut puts = Vec::with_capacity(putters.len());
    for putter in putters {
        puts.push(putter.await.context("putting client panicked")?);
    }
    let put_seconds = plan.started.elapsed().as_secs_f64();

    let last_revision = puts
        .iter()
        .map(|p| p.last_revision)
        .max()
        .unwrap_or(0)
        .max(start_revision - 1);
    // The receivers stop once every watcher has seen the last acknowledged revision.
    let _ = finish.send(Some(Finish {
        revision: last_revision,
        deadline: Instant::now() + args.drain_timeout,
    }));
    let mut watched = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        watched.push(receiver.await.context("watch receiver panicked")?);
    }
    drop(finish);

    Ok(summarise(args, &plan, puts, watched, put_seconds))
}

/// When the receivers stop: once every watcher has seen `revision`, or at `deadline`.
#[derive(Debug, Clone, Copy)]
struct Finish {
    revision: i64,
    deadline: Instant,
}

async fn current_revision(client: &Client, prefix: &str) -> anyhow::Result<i64> {
    let response = client
        .kv_client()
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .context("reading the current revision")?;
    if response.count() != 0 {
        bail!("prefix {prefix} is not empty");
    }
    response
        .header()
        .map(|header| header.revision())
        .ok_or_else(|| anyhow!("range response without a header"))
}

/// Creates `count` watches of `prefix` from `start_revision` on one new watch stream, and
/// returns the stream with the watch IDs the server gave them, in creation order.
async fn open_watchers(
    client: &Client,
    prefix: &str,
    start_revision: i64,
    count: usize,
) -> anyhow::Result<(WatchStream, HashMap<i64, usize>)> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision);
    let mut stream = client
        .watch_client()
        .watch(prefix, Some(options.clone()))
        .await
        .context("opening a watch stream")?;
    let created = async {
        let mut watch_ids = HashMap::with_capacity(count);
        // A stream answers its create requests in order, one at a time.
        while watch_ids.len() < count {
            if watch_ids.len() + 1 < count {
                stream.watch(prefix, Some(options.clone())).await?;
            }
            let response = stream
                .message()
                .await?
                .ok_or_else(|| anyhow!("watch stream ended while creating watches"))?;
            if response.canceled() {
                bail!("watch creation refused: {}", response.cancel_reason());
            }
            if response.created() {
                let index = watch_ids.len();
                watch_ids.insert(response.watch_id(), index);
            }
        }
        Ok(watch_ids)
    };
    let watch_ids = tokio::time::timeout(CREATE_TIMEOUT, created)
        .await
        .with_context(|| format!("creating {count} watches took over {CREATE_TIMEOUT:?}"))??;
    Ok((stream, watch_ids))
}

/// One putting client.
struct Putter {
    kv: etcd_client::KvClient,
    plan: Arc<RunPlan>,
    next_put: Arc<AtomicU64>,
    prefix: String,
    key_width: usize,
    value_size: usize,
    /// Puts per second over all clients; 0 for no limit.
    put_rate: f64,
    origin: Instant,
}

/// What one putting client did.
#[derive(Debug, Default)]
struct PutLog {
    /// Sequence numbers of the puts the cluster acknowledged.
    acknowledged: Vec<u64>,
    /// Highest revision among them.
    last_revision: i64,
    /// Put latencies and failures.
    requests: ClientReport,
}

impl Putter {
    async fn run(mut self) -> PutLog {
        let mut log = PutLog::default();
        loop {
            let seq = self.next_put.fetch_add(1, Ordering::Relaxed);
            if self.plan.is_over(seq) {
                return log;
            }
            if self.put_rate > 0.0 {
                let due = self.plan.started + Duration::from_secs_f64(seq as f64 / self.put_rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let key = format!("{}{seq:0width$}", self.prefix, width = self.key_width);
            let sent = Instant::now();
            let value = stamped_value(sent.duration_since(self.origin), self.value_size);
            match self.kv.put(key, value, None).await {
                Ok(response) => {
                    log.requests.latencies.push(sent.elapsed());
                    log.acknowledged.push(seq);
                    let revision = response.header().map_or(0, |h| h.revision());
                    log.last_revision = log.last_revision.max(revision);
                }
                Err(error) => log.requests.record_error(error),
            }
        }
    }
}

/// A value that starts with its send time (`since_origin`, in nanoseconds, zero-padded) and is
/// `size` bytes long, or just the send time when `size` is smaller.
fn stamped_value(since_origin: Duration, size: usize) -> Vec<u8> {
    let mut value = format!("{:0STAMP_DIGITS$}", since_origin.as_nanos()).into_bytes();
    value.resize(size.max(STAMP_DIGITS), b'.');
    value
}

/// The send time a [`stamped_value`] carries.
fn send_time(value: &[u8]) -> Option<Duration> {
    let stamp = std::str::from_utf8(value.get(..STAMP_DIGITS)?).ok()?;
    Some(Duration::from_nanos(stamp.parse().ok()?))
}

/// What one watcher received.
#[derive(Debug, Default)]
struct WatcherLog {
    /// Bit `seq` is set once the put with sequence number `seq` has been received.
    seen: SeqSet,
    last_revision: i64,
    events: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Events that are not puts of this run's keys with stamped values.
    unexpected: u64,
    canceled: Option<String>,
}

/// A growable set of sequence numbers.
#[derive(Debug, Default)]
struct SeqSet(Vec<u64>);

impl SeqSet {
    /// Adds `seq`; false if it was already there.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    fn contains(&self, seq: u64) -> bool {
        self.0
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }
}

/// What the watchers of one stream received.
#[derive(Debug, Default)]
struct StreamLog {
    watchers: Vec<WatcherLog>,
    /// Delivery latency of every (watcher, event), in microseconds.
    latencies_us: Vec<u32>,
    last_delivery: Option<Instant>,
    /// Why the stream ended early, if it did.
    error: Option<String>,
}

/// Reads one watch stream until every watcher on it has seen the finishing revision, or the
/// finishing deadline passes.
async fn receive(
    mut stream: WatchStream,
    watch_ids: HashMap<i64, usize>,
    origin: Instant,
    prefix_len: usize,
    mut finished: watch::Receiver<Option<Finish>>,
) -> StreamLog {
    let mut log = StreamLog::default();
    log.watchers
        .resize_with(watch_ids.len(), WatcherLog::default);
    // Until the puts are over there is no deadline; this stands in for "never".
    let mut wake = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        let finish = *finished.borrow();
        if let Some(finish) = finish {
            let caught_up = log
                .watchers
                .iter()
                .all(|w| w.last_revision >= finish.revision || w.canceled.is_some());
            if caught_up || Instant::now() >= finish.deadline {
                return log;
            }
            wake = finish.deadline;
        }
        let message = tokio::select! {
            message = stream.message() => message,
            changed = finished.changed() => {
                if changed.is_err() {
                    log.error = Some("the run ended before the watchers caught up".into());
                    return log;
                }
                continue;
            }
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let arrived = Instant::now();
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                log.error = Some("watch stream ended".into());
                return log;
            }
            Err(error) => {
                log.error = Some(format!("watch stream failed: {error}"));
                return log;
            }
        };
        let Some(&index) = watch_ids.get(&response.watch_id()) else {
            continue;
        };
        let watcher = &mut log.watchers[index];
        if response.canceled() {
            watcher.canceled = Some(format!(
                "canceled (compact revision {}): {}",
                response.compact_revision(),
                response.cancel_reason()
            ));
            continue;
        }
        let since_origin = arrived.duration_since(origin);
        for event in response.events() {
            let Some(kv) = event.kv() else {
                watcher.unexpected += 1;
                continue;
            };
            let seq = std::str::from_utf8(&kv.key()[prefix_len.min(kv.key().len())..])
                .ok()
                .and_then(|digits| digits.parse::<u64>().ok());
            let (EventType::Put, Some(seq), Some(sent)) =
                (event.event_type(), seq, send_time(kv.value()))
            else {
                watcher.unexpected += 1;
                continue;
            };
            if !watcher.seen.insert(seq) {
                watcher.duplicates += 1;
                continue;
            }
            if kv.mod_revision() <= watcher.last_revision {
                watcher.out_of_order += 1;
            }
            watcher.last_revision = watcher.last_revision.max(kv.mod_revision());
            watcher.events += 1;
            let latency = since_origin.saturating_sub(sent).as_micros();
            log.latencies_us
                .push(u32::try_from(latency).unwrap_or(u32::MAX));
            log.last_delivery = Some(arrived);
        }
    }
}

/// Merges what the clients put and what the watchers received into the run's outcome.
fn summarise(
    args: &WatchLatencyArgs,
    plan: &RunPlan,
    puts: Vec<PutLog>,
    watched: Vec<StreamLog>,
    put_seconds: f64,
) -> Outcome {
    let mut acknowledged = Vec::new();
    let mut requests = Vec::with_capacity(puts.len());
    for put in puts {
        acknowledged.extend(put.acknowledged);
        requests.push(put.requests);
    }
    let mut outcome = Outcome::from_clients("watch-latency", requests, put_seconds);
    let put_latency = outcome.latency.take();

    let (mut deliveries, mut missed, mut duplicates, mut out_of_order, mut unexpected) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut canceled = 0u64;
    let mut stream_errors = Vec::new();
    let mut latencies_us = Vec::new();
    let mut last_delivery = None;
    for stream in watched {
        for watcher in &stream.watchers {
            deliveries += watcher.events;
            duplicates += watcher.duplicates;
            out_of_order += watcher.out_of_order;
            unexpected += watcher.unexpected;
            missed += acknowledged
                .iter()
                .filter(|&&seq| !watcher.seen.contains(seq))
                .count() as u64;
            if let Some(reason) = &watcher.canceled {
                canceled += 1;
                stream_errors.push(reason.clone());
            }
        }
        stream_errors.extend(stream.error);
        latencies_us.extend(stream.latencies_us);
        last_delivery = last_delivery.max(stream.last_delivery);
    }
    let delivery_seconds = last_delivery
        .map(|at| at.duration_since(plan.started).as_secs_f64())
        .unwrap_or(put_seconds);
    let events_per_sec = deliveries as f64 / delivery_seconds;
    outcome.latency = LatencySummary::from_micros(latencies_us);
    outcome.checks_passed = missed == 0
        && duplicates == 0
        && out_of_order == 0
        && unexpected == 0
        && stream_errors.is_empty();
    let expected = acknowledged.len() as u64 * args.watchers as u64;
    outcome.extra = vec![
        ("watchers", args.watchers.into()),
        ("watch_conns", args.watch_conns.into()),
        ("put_rate", args.put_rate.into()),
        ("put_latency_ms", serde_json::json!(put_latency)),
        ("deliveries", deliveries.into()),
        ("expected_deliveries", expected.into()),
        ("delivery_seconds", delivery_seconds.into()),
        ("events_per_sec", events_per_sec.into()),
        ("missed", missed.into()),
        ("duplicates", duplicates.into()),
        ("out_of_order", out_of_order.into()),
        ("unexpected", unexpected.into()),
        ("canceled_watchers", canceled.into()),
        ("watch_errors", stream_errors.into()),
    ];
    outcome
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::Workload;

    #[test]
    fn stamped_values_carry_their_send_time_at_the_requested_size() {
        let sent = Duration::from_nanos(123_456_789_012);
        let value = stamped_value(sent, 256);
        assert_eq!(value.len(), 256);
        assert_eq!(send_time(&value), Some(sent));
        assert_eq!(stamped_value(sent, 8).len(), STAMP_DIGITS);
        assert_eq!(send_time(b"not a stamp"), None);
    }

    fn watcher_that_saw(seqs: &[u64]) -> WatcherLog {
        let mut watcher = WatcherLog::default();
        for &seq in seqs {
            watcher.seen.insert(seq);
            watcher.events += 1;
        }
        watcher
    }

    fn figure(outcome: &Outcome, name: &str) -> serde_json::Value {
        outcome
            .extra
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", outcome.extra))
    }

    #[test]
    fn a_watcher_missing_an_acknowledged_put_fails_the_run() {
        let cli = Cli::parse_from(["ferrokv-bench", "watch-latency", "--watchers=2"]);
        let Workload::WatchLatency(args) = &cli.workload else {
            unreachable!()
        };
        let plan = RunPlan::new(&cli).unwrap();
        let puts = vec![PutLog {
            acknowledged: vec![0, 1, 2],
            last_revision: 4,
            requests: ClientReport::default(),
        }];
        let complete = StreamLog {
            watchers: vec![
                watcher_that_saw(&[0, 1, 2]),
                watcher_that_saw(&[0, 1, 2, 3]),
            ],
            ..StreamLog::default()
        };
        let outcome = summarise(args, &plan, puts, vec![complete], 1.0);
        // Seeing a put whose request failed (3) is allowed.
        assert!(outcome.passed(), "{outcome:?}");
        assert_eq!(figure(&outcome, "deliveries"), 7);
        assert_eq!(figure(&outcome, "expected_deliveries"), 6);

        let puts = vec![PutLog {
            acknowledged: vec![0, 1, 2],
            last_revision: 4,
            requests: ClientReport::default(),
        }];
        let gap = StreamLog {
            watchers: vec![watcher_that_saw(&[0, 1, 2]), watcher_that_saw(&[0, 2])],
            ..StreamLog::default()
        };
        let outcome = summarise(args, &plan, puts, vec![gap], 1.0);
        assert!(!outcome.passed());
        assert_eq!(figure(&outcome, "missed"), 1);
    }

    #[test]
    fn seq_set_reports_repeats() {
        let mut set = SeqSet::default();
        assert!(set.insert(0));
        assert!(set.insert(1000));
        assert!(!set.insert(1000));
        assert!(set.contains(0) && set.contains(1000));
        assert!(!set.contains(999) && !set.contains(100_000));
    }
}
