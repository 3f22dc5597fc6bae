//! [`Background`]: a task of the tokio runtime that ends when its handle is dropped — how the
//! in-process controllers (StatefulSet, scheduler, node lifecycle, cluster DNS) stop with the
//! test that started them.

use std::future::Future;

use tokio::task::JoinHandle;

/// A spawned task, aborted when dropped.
pub struct Background(JoinHandle<()>);

impl Background {
    /// Spawns `task` on the current tokio runtime.
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Background {
        Background(tokio::spawn(task))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}
