//! Where the bytes of the database file go: for each table of the layout (`tables`), how many
//! entries it holds, the bytes of their keys and values, and the pages redb spends on them; and
//! for the file, how much of it is allocated pages and how much is free or not yet reusable.
//! What `ferrokv-storage`'s `footprint` example prints, and what the layout was measured with.

use redb::{ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};

use super::tables::{LEASES, LEASE_KEYS, META, REVISIONS, REVS, VALUES};
use crate::Result;

/// One table's share of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFootprint {
    pub name: String,
    pub entries: u64,
    /// Bytes of keys and values as stored.
    pub stored_bytes: u64,
    /// Bytes of branch pages' keys and other indexing.
    pub metadata_bytes: u64,
    /// Bytes of the table's pages holding nothing.
    pub fragmented_bytes: u64,
    pub leaf_pages: u64,
    pub branch_pages: u64,
}

/// The whole file's use of space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub file_bytes: u64,
    pub page_size: u64,
    /// Pages in use by the tables and by redb's own bookkeeping, as of the last commit.
    pub allocated_pages: u64,
    pub tables: Vec<TableFootprint>,
}

impl Footprint {
    /// Bytes of the file that are not in an allocated page: free, or freed but not yet
    /// reusable, or grown ahead of use.
    pub fn unallocated_bytes(&self) -> u64 {
        self.file_bytes
            .saturating_sub(self.allocated_pages * self.page_size)
    }
}

pub(super) fn measure(txn: &WriteTransaction, file_bytes: u64) -> Result<Footprint> {
    let stats = txn.stats()?;
    let tables = vec![
        table(txn, REVS)?,
        table(txn, VALUES)?,
        table(txn, LEASES)?,
        table(txn, LEASE_KEYS)?,
        table(txn, REVISIONS)?,
        table(txn, META)?,
    ];
    Ok(Footprint {
        file_bytes,
        page_size: stats.page_size() as u64,
        allocated_pages: stats.allocated_pages(),
        tables,
    })
}

fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<TableFootprint> {
    let table = txn.open_table(definition)?;
    let stats = table.stats()?;
    Ok(TableFootprint {
        name: definition.name().to_string(),
        entries: table.len()?,
        stored_bytes: stats.stored_bytes(),
        metadata_bytes: stats.metadata_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
        leaf_pages: stats.leaf_pages(),
        branch_pages: stats.branch_pages(),
    })
}
