//! SHIM (not committed)
use crate::Result;
use etcd_client::proto::*;
use std::path::Path;
#[derive(Clone)]
pub struct MvccStore;
pub struct MvccWrite;
impl MvccStore {
    pub fn open(_path: &Path) -> Result<MvccStore> {
        todo!()
    }
    pub fn range(&self, _req: &PbRangeRequest) -> Result<PbRangeResponse> {
        todo!()
    }
    pub fn current_revision(&self) -> Result<i64> {
        todo!()
    }
    pub fn meta(&self, _key: &str) -> Result<Option<Vec<u8>>> {
        todo!()
    }
    pub fn meta_with_prefix(&self, _key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        todo!()
    }
    pub fn begin_write(&self) -> Result<MvccWrite> {
        todo!()
    }
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn restore(&self, _s: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn db_size_bytes(&self) -> u64 {
        todo!()
    }
}
impl MvccWrite {
    pub fn put(&mut self, _req: &PbPutRequest) -> Result<PbPutResponse> {
        todo!()
    }
    pub fn delete_range(&mut self, _req: &PbDeleteRequest) -> Result<PbDeleteResponse> {
        todo!()
    }
    pub fn txn(&mut self, _req: &PbTxnRequest) -> Result<PbTxnResponse> {
        todo!()
    }
    pub fn compact(&mut self, _revision: i64) -> Result<PbCompactionResponse> {
        todo!()
    }
    pub fn lease_grant(&mut self, _id: i64, _ttl: i64) -> Result<()> {
        todo!()
    }
    pub fn lease_revoke(&mut self, _id: i64) -> Result<()> {
        todo!()
    }
    pub fn set_meta(&mut self, _key: &str, _value: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn revision(&self) -> i64 {
        todo!()
    }
    pub fn commit(self, _durable: bool) -> Result<Vec<PbEvent>> {
        todo!()
    }
}
