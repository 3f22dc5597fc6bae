//! Loads an MVCC store the way a member's apply stage does and prints where the bytes of its
//! file go, table by table. The figures in docs/storage.md come from it.
//!
//! ```sh
//! cargo run --release -p ferrokv-storage --example footprint -- KEYS VALUE_BYTES [ROUNDS] [BATCH]
//! ```
//!
//! Writes ROUNDS (default 1) versions of KEYS keys of 8 bytes with VALUE_BYTES-byte values, in
//! batches of BATCH (default 64) puts, committing durably whenever 256 KiB of values were
//! applied since the last durable commit (the apply stage's rule), printing the rate of each
//! tenth of the load, then the footprint; with ROUNDS > 1 it also compacts at the last
//! revision, defragments and prints it again.

use std::time::Instant;

use etcd_client::proto::PbPutRequest;
use ferrokv_storage::mvcc::{Footprint, MvccStore};

const DURABLE_COMMIT_BYTES: usize = 256 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(keys), Some(value_bytes)) = (args.first(), args.get(1)) else {
        return Err("usage: footprint KEYS VALUE_BYTES [ROUNDS] [BATCH]".into());
    };
    let keys: usize = keys.parse()?;
    let value_bytes: usize = value_bytes.parse()?;
    let rounds: usize = args.get(2).map_or(Ok(1), |r| r.parse())?;
    let batch_puts: usize = args.get(3).map_or(Ok(64), |b| b.parse())?;
    let dir = std::env::temp_dir().join(format!("ferrokv-footprint-{}", std::process::id()));
    let store = MvccStore::open(&dir.join("db"))?;

    let started = Instant::now();
    let total = keys * rounds;
    let mut tenth_started = Instant::now();
    let mut tenth_puts = 0;
    let mut undurable = 0;
    let mut applied = 0u64;
    for round in 0..rounds {
        let value = vec![b'a' + (round % 26) as u8; value_bytes];
        let mut i = 0;
        while i < keys {
            let mut batch = store.begin_write()?;
            for k in i..(i + batch_puts).min(keys) {
                batch.put(&PbPutRequest {
                    key: format!("{k:08}").into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })?;
                undurable += value_bytes;
            }
            applied += 1;
            batch.set_meta("raft/applied", &applied.to_le_bytes())?;
            let durable = undurable >= DURABLE_COMMIT_BYTES;
            if durable {
                undurable = 0;
            }
            batch.commit(durable)?;
            let done = (i + batch_puts).min(keys) - i;
            i += done;
            tenth_puts += done;
            if tenth_puts >= total.div_ceil(10) {
                println!(
                    "{:>10} puts: {:.0} puts/s, file {:.1} MiB",
                    round * keys + i,
                    tenth_puts as f64 / tenth_started.elapsed().as_secs_f64(),
                    store.db_size_bytes() as f64 / (1024.0 * 1024.0)
                );
                tenth_puts = 0;
                tenth_started = Instant::now();
            }
        }
    }
    store.persist()?;
    println!(
        "{rounds} round(s) of {keys} keys x {value_bytes} B in {:.1?}",
        started.elapsed()
    );
    print(&store.footprint()?);

    if rounds > 1 {
        let revision = store.current_revision()?;
        let mut batch = store.begin_write()?;
        batch.compact(revision)?;
        batch.commit(true)?;
        println!("\nafter compact({revision}):");
        print(&store.footprint()?);
        let started = Instant::now();
        store.defragment()?;
        println!("\nafter defragment ({:.1?}):", started.elapsed());
        print(&store.footprint()?);
    }
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn print(footprint: &Footprint) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "file {:.1} MiB, allocated pages {:.1} MiB, unallocated {:.1} MiB",
        footprint.file_bytes as f64 / MIB,
        (footprint.allocated_pages * footprint.page_size) as f64 / MIB,
        footprint.unallocated_bytes() as f64 / MIB
    );
    println!("| table | entries | stored MiB | metadata MiB | fragmented MiB | leaf pages | branch pages |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for t in &footprint.tables {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            t.name,
            t.entries,
            t.stored_bytes as f64 / MIB,
            t.metadata_bytes as f64 / MIB,
            t.fragmented_bytes as f64 / MIB,
            t.leaf_pages,
            t.branch_pages
        );
    }
}
