//! SHIM (not committed)
use crate::Result;
use std::path::Path;
#[derive(Default)]
pub struct WalOptions {
    pub segment_bytes: u64,
}
pub struct Recovered {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purged: Option<Vec<u8>>,
    pub entries: Vec<(u64, Vec<u8>)>,
}
pub struct Wal;
impl Wal {
    pub fn open(_dir: &Path, _opts: WalOptions) -> Result<(Wal, Recovered)> {
        todo!()
    }
    pub fn append(&self, _entries: Vec<(u64, Vec<u8>)>, _done: Box<dyn FnOnce(Result<()>) + Send>) {
        todo!()
    }
    pub async fn save_vote(&self, _vote: Vec<u8>) -> Result<()> {
        todo!()
    }
    pub fn save_committed(&self, _c: Vec<u8>) {
        todo!()
    }
    pub async fn truncate(&self, _from_index: u64) -> Result<()> {
        todo!()
    }
    pub async fn purge(&self, _up_to_index: u64, _purged: Vec<u8>) -> Result<()> {
        todo!()
    }
}
