//! Batching of proposals: client writes that arrive while others are in flight travel to the
//! leader and through Raft together, as one log entry.
//!
//! A write that finds nothing queued and a batch slot free is proposed by its caller's own task
//! ([`Proposer::try_direct`]): a lone client's put then skips the hand-offs to the batching
//! task and to a batch task and back, each a wake-up of another task. Under heavy load the
//! slots are taken and writes queue and batch as before; a slot freed goes to the batching task first,
//! since the semaphore serves its waiters before any `try_acquire`.
//!
//! Every entry costs Raft, the WAL and the apply stage a fixed amount of work, so under
//! concurrent load one entry per write caps throughput before the disk or the network does. A
//! batch is still applied request by request — each write gets its own revision — and each
//! caller gets its own response. Batches stay small in bytes, so that large values never make
//! an entry too large to replicate.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::Server;
use crate::{Result, ServerError as Error};
use ferrokv_raft::types::{Request, Response};

/// Most requests in one batch.
const MAX_BATCH_REQUESTS: usize = 256;
/// A batch stops growing at this many bytes of requests.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Batches (or direct proposals) in flight at once. Beyond keeping the Raft pipeline full,
/// each slot lets one more write skip the batching task: the Ready loop gathers the entries
/// proposed between two Readies into one WAL write and one message per follower anyway, as
/// etcd's does, so a write proposed directly costs less than a queued one. At 64 clients over
/// 3 members, 64 slots instead of 4 made puts 10% faster and 8% cheaper in CPU
/// (docs/benchmarks.md); past this many writes in flight, writes queue and batch.
const MAX_BATCHES_IN_FLIGHT: usize = 64;
/// Requests waiting to be batched before callers wait for room.
const QUEUE_DEPTH: usize = 4096;

type Waiter = oneshot::Sender<Result<Response>>;
/// A request waiting to be proposed, with whom to answer and since when it waits.
type Queued = (Request, Waiter, Instant);

/// The handle callers propose through.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Queued>,
    /// Batches (or direct proposals) in flight, shared with the batching task.
    in_flight: Arc<Semaphore>,
}

/// The receiving end, run by [`Server::run_proposer`].
pub struct ProposerQueue {
    queue: mpsc::Receiver<Queued>,
    in_flight: Arc<Semaphore>,
}

pub fn proposer() -> (Proposer, ProposerQueue) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    (
        Proposer {
            queue: tx,
            in_flight: in_flight.clone(),
        },
        ProposerQueue {
            queue: rx,
            in_flight,
        },
    )
}

impl Proposer {
    /// A batch slot for proposing one write directly, when no write is queued and a slot is
    /// free; `None` means the write should queue.
    pub fn try_direct(&self) -> Option<OwnedSemaphorePermit> {
        if self.queue.capacity() < self.queue.max_capacity() {
            return None;
        }
        self.in_flight.clone().try_acquire_owned().ok()
    }

    pub async fn propose(&self, req: Request) -> Result<Response> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((req, tx, Instant::now()))
            .await
            .map_err(|_| Error::Raft("the server is stopping".into()))?;
        rx.await
            .map_err(|_| Error::Raft("the server is stopping".into()))?
    }
}

impl Server {
    /// Takes queued requests, as many as are waiting, and proposes them as one entry.
    pub async fn run_proposer(self, mut queue: ProposerQueue) {
        let in_flight = queue.in_flight.clone();
        // A request that would have made the last batch too large starts the next one.
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match queue.queue.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            // Requests that arrived while waiting for a slot join this batch.
            let mut bytes = first.0.approximate_size();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
                match queue.queue.try_recv() {
                    Ok(next) => {
                        let size = next.0.approximate_size();
                        if bytes + size > MAX_BATCH_BYTES {
                            carried = Some(next);
                            break;
                        }
                        bytes += size;
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let server = self.clone();
            tokio::spawn(async move {
                server.propose_batch(batch).await;
                drop(permit);
            });
        }
    }

    async fn propose_batch(&self, mut batch: Vec<Queued>) {
        if batch.len() == 1 {
            let (req, waiter, queued) = batch.pop().expect("one request");
            let _ = waiter.send(self.propose_direct(req, &[queued]).await);
            return;
        }
        let mut requests = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        let mut queued = Vec::with_capacity(batch.len());
        for (request, waiter, since) in batch {
            requests.push(request);
            waiters.push(waiter);
            queued.push(since);
        }
        match self.propose_direct(Request::Batch(requests), &queued).await {
            Ok(Response::Batch(responses)) if responses.len() == waiters.len() => {
                for (waiter, response) in waiters.into_iter().zip(responses) {
                    let _ = waiter.send(Ok(response));
                }
            }
            Ok(other) => {
                let e = format!("a batch of {} requests applied as {other:?}", waiters.len());
                for waiter in waiters {
                    let _ = waiter.send(Err(Error::Raft(e.clone())));
                }
            }
            Err(e) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(e.for_each_waiter()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued() -> Queued {
        let (waiter, _) = oneshot::channel();
        (Request::Compact(Default::default()), waiter, Instant::now())
    }

    #[tokio::test]
    async fn a_write_goes_direct_only_with_nothing_queued_and_a_slot_free() {
        let (proposer, mut queue) = proposer();

        let slots: Vec<_> = (0..MAX_BATCHES_IN_FLIGHT)
            .map(|_| proposer.try_direct().expect("a free slot"))
            .collect();
        assert!(proposer.try_direct().is_none(), "every slot is taken");
        drop(slots);

        proposer.queue.send(queued()).await.unwrap();
        assert!(
            proposer.try_direct().is_none(),
            "a queued write is not overtaken"
        );
        queue.queue.recv().await.unwrap();
        assert!(proposer.try_direct().is_some());
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_batcher_first() {
        let (proposer, queue) = proposer();
        let mut slots: Vec<_> = (0..MAX_BATCHES_IN_FLIGHT)
            .map(|_| proposer.try_direct().unwrap())
            .collect();
        let waiting = tokio::spawn(queue.in_flight.clone().acquire_owned());
        tokio::task::yield_now().await;
        slots.pop();
        assert!(
            proposer.try_direct().is_none(),
            "the slot went to the batcher"
        );
        let _batcher = waiting.await.unwrap().unwrap();
    }
}
