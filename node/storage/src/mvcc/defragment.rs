//! Defragment (etcd's `defrag`): the database is copied, table by table in key order, into a
//! fresh file beside it, which then replaces it. The copy holds only live data, in pages packed
//! full (redb fills a leaf completely when keys arrive in ascending order), so the file ends up
//! the size of a fresh load of the same data, whatever the history of the old one.
//!
//! Why not redb's `Database::compact`: it moves pages towards the start of the file and trims the
//! free tail, but stops at the first page it cannot move lower. A value of more than one page
//! lives in a run of 2^n pages that needs an aligned hole of that size below it, and a file whose
//! holes are smaller (freed leaves of small keys) keeps its whole length — a member's 4.3 GB file
//! of 1 MiB values stayed 4.3 GB. Nor does it repack half-empty leaves.
//!
//! Crash safety: the copy is made durable under a temporary name and renamed over the database
//! (atomic on POSIX), then the directory is synced. A crash before the rename leaves the old file
//! and a stray copy, which [`remove_stray_copy`] deletes when the store is next opened; a crash
//! after it leaves the complete copy. The failpoints `defragBeforeCopy` and `defragBeforeRename`
//! (failpoint builds only; docs/robustness.md) crash a member at those two moments.

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::tables::{LEASES, LEASE_KEYS, META, REVISIONS, REVS, VALUES};
use crate::{Result, StorageError as Error};

/// The name of the copy being made of the database at `path`.
pub(super) fn copy_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".defrag");
    path.with_file_name(name)
}

/// Deletes what a defragment interrupted by a crash left beside the database at `path`.
pub(super) fn remove_stray_copy(path: &Path) -> Result<()> {
    match std::fs::remove_file(copy_path(path)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Backend(format!(
            "removing the copy an interrupted defragment left: {e}"
        ))),
    }
}

/// Copies everything `db` holds into a new database at `copy_path(path)`, made by `create`,
/// durably, and renames it over `path`. The caller holds `db` exclusively, so nothing changes
/// meanwhile, and reopens `path` afterwards.
pub(super) fn rewrite(
    db: &Database,
    path: &Path,
    create: impl FnOnce(&Path) -> Result<Database>,
) -> Result<()> {
    let copy = copy_path(path);
    remove_stray_copy(path)?;
    let result = (|| {
        let mut fresh = create(&copy)?;
        fail::fail_point!("defragBeforeCopy");
        let source = db.begin_read()?;
        let txn = fresh.begin_write()?;
        copy_table(&source, &txn, REVS)?;
        copy_table(&source, &txn, VALUES)?;
        copy_table(&source, &txn, LEASES)?;
        copy_table(&source, &txn, LEASE_KEYS)?;
        copy_table(&source, &txn, REVISIONS)?;
        copy_table(&source, &txn, META)?;
        txn.commit()?;
        drop(source);
        // The copy grew by doubling as it filled; compacting it (nothing to move in a fresh
        // file) trims the unused tail.
        fresh
            .compact()
            .map_err(|e| Error::Backend(format!("defragment: trimming the copy: {e}")))?;
        drop(fresh);
        fail::fail_point!("defragBeforeRename");
        std::fs::rename(&copy, path)
            .map_err(|e| Error::Backend(format!("defragment: replacing the database: {e}")))?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&copy);
    }
    result
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    source: &ReadTransaction,
    target: &redb::WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<()> {
    let from = source.open_table(definition)?;
    let mut to = target.open_table(definition)?;
    for entry in from.iter()? {
        let (key, value) = entry?;
        to.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// Makes the rename durable: the directory entry lives in the directory's own data.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::Backend(format!("defragment: syncing {}: {e}", dir.display())))
}
