//! Coalescing of linearizable reads: the reads that arrive while a read index is being
//! obtained share the next one (etcd's linearizable read loop).
//!
//! A read may use a read index only if it was obtained after the read arrived; so a round
//! takes every read waiting when it starts, obtains one index (one leadership check on the
//! leader, one ReadIndex RPC from a follower), waits until this member has applied it, and
//! releases them all. Reads arriving meanwhile wait for the next round.

use tokio::sync::{mpsc, oneshot};

use super::Server;
use crate::{Result, ServerError as Error};

type Waiter = oneshot::Sender<Result<()>>;

#[derive(Clone)]
pub struct ReadBarrier {
    queue: mpsc::UnboundedSender<Waiter>,
}

pub struct ReadBarrierQueue {
    queue: mpsc::UnboundedReceiver<Waiter>,
}

pub fn read_barrier() -> (ReadBarrier, ReadBarrierQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ReadBarrier { queue: tx }, ReadBarrierQueue { queue: rx })
}

impl ReadBarrier {
    pub async fn wait(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .map_err(|_| Error::Raft("the server is stopping".into()))?;
        rx.await
            .map_err(|_| Error::Raft("the server is stopping".into()))?
    }
}

impl Server {
    /// Serves read rounds until the server stops.
    pub async fn run_read_barrier(self, mut queue: ReadBarrierQueue) {
        while let Some(first) = queue.queue.recv().await {
            let mut round = vec![first];
            while let Ok(next) = queue.queue.try_recv() {
                round.push(next);
            }
            let outcome = self.read_barrier_once().await;
            for waiter in round {
                let result = match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.for_each_waiter()),
                };
                let _ = waiter.send(result);
            }
        }
    }
}
