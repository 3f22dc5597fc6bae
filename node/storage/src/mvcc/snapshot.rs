//! The state machine snapshot: everything the store holds (all kept history, leases, revisions
//! and the Raft state machine's metadata) as one value, [`StoreContents`], its self-describing
//! dump (what members send each other) and its restore. The snapshot file that
//! `etcdctl snapshot save` writes is built from the same value (`crate::snapshot_file`).
//!
//! Format: a bincode `SnapshotHeader` (magic string and format version), then the bincode body
//! of that version. Only the source of truth is dumped; the derived tables (`kv_latest`,
//! `lease_keys`, and the key index in memory) are rebuilt on restore, so a snapshot cannot carry an index that
//! disagrees with its history.

use std::io::Cursor;

use bincode::Options;
use etcd_client::proto::PbKeyValue;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    HistoryRecord, COMPACT_REVISION, CURRENT_REVISION, LEASES, LEASE_KEYS, LEGACY_EVENTS,
    LEGACY_HISTORY, LEGACY_LATEST, META, REVISIONS, REVS, VALUES,
};
use crate::{Result, StorageError as Error};

const MAGIC: &str = "ferrokv mvcc snapshot";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    magic: String,
    format_version: u32,
}

/// Everything the store holds; the body of dump format version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreContents {
    pub current_revision: i64,
    /// -1 when the store was never compacted.
    pub compact_revision: i64,
    /// Every kept change. Dumps list them in (key, main, sub) order; restore sorts them.
    pub history: Vec<Change>,
    pub leases: Vec<Lease>,
    /// The Raft state machine's metadata (applied index, members, alarms).
    pub meta: Vec<(String, Vec<u8>)>,
}

/// One change of a key at revision (main, sub).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: Vec<u8>,
    pub main: i64,
    pub sub: i64,
    /// The version written, or `None` for a deletion.
    pub put: Option<Version>,
}

/// A version of a key, as a put wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub create_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// A lease: its ID and granted TTL in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

impl StoreContents {
    /// Reads a dump that [`MvccStore::snapshot`](super::MvccStore::snapshot) made.
    pub fn from_dump(snapshot: &[u8]) -> Result<StoreContents> {
        decode(snapshot)
    }

    /// The dump of these contents, as [`MvccStore::snapshot`](super::MvccStore::snapshot)
    /// makes it.
    pub fn to_dump(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let header = SnapshotHeader {
            magic: MAGIC.to_string(),
            format_version: FORMAT_VERSION,
        };
        encoding()
            .serialize_into(&mut out, &header)
            .map_err(encode_error)?;
        encoding()
            .serialize_into(&mut out, self)
            .map_err(encode_error)?;
        Ok(out)
    }
}

/// Dumps the state seen by `txn`.
pub(super) fn dump(txn: &ReadTransaction) -> Result<Vec<u8>> {
    contents(txn)?.to_dump()
}

/// Everything the store holds, as seen by `txn`.
pub(super) fn contents(txn: &ReadTransaction) -> Result<StoreContents> {
    let revisions = txn.open_table(REVISIONS)?;
    let (current_revision, compact_revision) = super::read_revisions(&revisions)?;
    let mut history = Vec::new();
    let values = txn.open_table(VALUES)?;
    for entry in txn.open_table(REVS)?.iter()? {
        let (rev, change) = entry?;
        let (main, sub) = rev.value();
        let (key, record) = change.value();
        let put = HistoryRecord::load(key, main, sub, record, &values)?
            .into_kv()
            .map(|kv| Version {
                create_revision: kv.create_revision,
                version: kv.version,
                value: kv.value,
                lease: kv.lease,
            });
        history.push(Change {
            key: key.to_vec(),
            main,
            sub,
            put,
        });
    }
    // Dumps list changes by key, as releases before the key index did.
    history.sort_by(|a, b| (&a.key, a.main, a.sub).cmp(&(&b.key, b.main, b.sub)));
    let mut leases = Vec::new();
    for entry in txn.open_table(LEASES)?.iter()? {
        let (id, ttl) = entry?;
        leases.push(Lease {
            id: id.value(),
            ttl: ttl.value(),
        });
    }
    let mut meta = Vec::new();
    for entry in txn.open_table(META)?.iter()? {
        let (key, value) = entry?;
        meta.push((key.value().to_string(), value.value().to_vec()));
    }
    Ok(StoreContents {
        current_revision,
        compact_revision,
        history,
        leases,
        meta,
    })
}

/// Replaces everything in the store with `body`, inside `txn`.
pub(super) fn load(txn: &WriteTransaction, mut body: StoreContents) -> Result<()> {
    // The derivation of the live state relies on this order; restore must not trust the sender.
    body.history
        .sort_by(|a, b| (&a.key, a.main, a.sub).cmp(&(&b.key, b.main, b.sub)));

    txn.delete_table(LEGACY_LATEST)?;
    txn.delete_table(LEGACY_HISTORY)?;
    txn.delete_table(LEGACY_EVENTS)?;
    txn.delete_table(REVS)?;
    txn.delete_table(VALUES)?;
    txn.delete_table(LEASES)?;
    txn.delete_table(LEASE_KEYS)?;
    txn.delete_table(REVISIONS)?;
    txn.delete_table(META)?;

    // `history` is in (key, main, sub) order, so a key's last change is its live state.
    let mut lease_attachments = Vec::new();
    for (i, change) in body.history.iter().enumerate() {
        let is_last_of_key = body
            .history
            .get(i + 1)
            .is_none_or(|next| next.key != change.key);
        if let (true, Some(version)) = (is_last_of_key, &change.put) {
            if version.lease != 0 {
                lease_attachments.push((version.lease, change.key.clone()));
            }
        }
    }
    let mut lease_keys = txn.open_table(LEASE_KEYS)?;
    for (lease, key) in &lease_attachments {
        lease_keys.insert((*lease, key.as_slice()), ())?;
    }

    // Written in revision order, the order of the tables' keys, so that their leaves fill up.
    body.history.sort_by_key(|change| (change.main, change.sub));
    let mut revs = txn.open_table(REVS)?;
    let mut values = txn.open_table(VALUES)?;
    for change in body.history {
        let record = match change.put {
            Some(version) => HistoryRecord::Put(PbKeyValue {
                key: change.key.clone(),
                create_revision: version.create_revision,
                mod_revision: change.main,
                version: version.version,
                value: version.value,
                lease: version.lease,
            }),
            None => HistoryRecord::Tombstone,
        };
        let stored = record.store(change.main, change.sub, &mut values)?;
        revs.insert(
            (change.main, change.sub),
            (change.key.as_slice(), stored.as_slice()),
        )?;
    }
    let mut leases = txn.open_table(LEASES)?;
    for lease in &body.leases {
        leases.insert(lease.id, lease.ttl)?;
    }
    let mut meta = txn.open_table(META)?;
    for (key, value) in &body.meta {
        meta.insert(key.as_str(), value.as_slice())?;
    }
    let mut revisions = txn.open_table(REVISIONS)?;
    revisions.insert(CURRENT_REVISION, body.current_revision)?;
    revisions.insert(COMPACT_REVISION, body.compact_revision)?;
    Ok(())
}

fn decode(snapshot: &[u8]) -> Result<StoreContents> {
    let mut reader = Cursor::new(snapshot);
    // The limit makes a corrupt length fail as a read past the end instead of an allocation of
    // whatever size it claims.
    let limit = snapshot.len() as u64;
    let header: SnapshotHeader = encoding()
        .with_limit(limit)
        .deserialize_from(&mut reader)
        .map_err(|e| Error::SnapshotInvalid(format!("unreadable header: {e}")))?;
    if header.magic != MAGIC {
        return Err(Error::SnapshotInvalid(format!(
            "not an mvcc snapshot (magic {:?})",
            header.magic
        )));
    }
    if header.format_version != FORMAT_VERSION {
        return Err(Error::SnapshotInvalid(format!(
            "format version {} is not supported (this build reads {FORMAT_VERSION})",
            header.format_version
        )));
    }
    let body: StoreContents = encoding()
        .with_limit(limit)
        .deserialize_from(&mut reader)
        .map_err(|e| Error::SnapshotInvalid(format!("unreadable body: {e}")))?;
    if reader.position() != snapshot.len() as u64 {
        return Err(Error::SnapshotInvalid(format!(
            "{} trailing bytes after the body",
            snapshot.len() as u64 - reader.position()
        )));
    }
    Ok(body)
}

/// bincode's classic encoding: fixed-width little-endian integers, u64 lengths.
fn encoding() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

fn encode_error(e: bincode::Error) -> Error {
    Error::Backend(format!("encoding snapshot: {e}"))
}
