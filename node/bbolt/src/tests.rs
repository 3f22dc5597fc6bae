//! Round trips through the writer and reader, and the damage the reader must refuse.

use crate::page::{Meta, PageHeader, FLAG_BRANCH, FLAG_LEAF, PAGE_HEADER_SIZE};
use crate::{write_db, BboltError, BucketData, Db, Entry, DEFAULT_PAGE_SIZE};

/// Reads a whole bucket back into a `BucketData`, nested buckets included.
fn read_back(bucket: crate::Bucket) -> BucketData {
    let mut data = BucketData::new();
    for (key, entry) in bucket.entries().expect("entries") {
        match entry {
            Entry::Value(value) => data.put(key, value).expect("put"),
            Entry::Bucket(nested) => *data.bucket(key).expect("bucket") = read_back(nested),
        }
    }
    data
}

fn round_trip(root: &BucketData) -> Vec<u8> {
    let file = write_db(root, DEFAULT_PAGE_SIZE).expect("write");
    assert_eq!(file.len() % DEFAULT_PAGE_SIZE, 0);
    let db = Db::open(&file).expect("open");
    assert_eq!(db.size(), file.len() as u64);
    assert_eq!(&read_back(db.root()), root);
    file
}

/// The header of the page a top-level bucket's root is on (`None` when it is inline).
fn bucket_root_header(file: &[u8], name: &[u8]) -> Option<PageHeader> {
    let db = Db::open(file).unwrap();
    let root = db.root();
    let (_, header) = root.pages_for_test(root.root_pgid_for_test().unwrap());
    assert_eq!(header.flags, FLAG_LEAF);
    let bucket = db.bucket(name).unwrap().unwrap();
    bucket
        .root_pgid_for_test()
        .map(|pgid| bucket.pages_for_test(pgid).1)
}

#[test]
fn nested_and_inline_buckets_round_trip() {
    let mut root = BucketData::new();
    root.bucket(b"empty").unwrap();
    let small = root.bucket(b"small").unwrap();
    small.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    small.put(b"b".to_vec(), b"".to_vec()).unwrap();
    let outer = root.bucket(b"outer").unwrap();
    outer.put(b"x".to_vec(), b"outer value".to_vec()).unwrap();
    let inner = outer.bucket(b"inner").unwrap();
    for n in 0..200u32 {
        inner
            .put(format!("k{n:04}"), format!("value {n}").into_bytes())
            .unwrap();
    }
    let file = round_trip(&root);
    // Small buckets live inline in their parent, as bbolt stores them; big ones get pages.
    assert_eq!(bucket_root_header(&file, b"small"), None);
    assert_eq!(bucket_root_header(&file, b"empty"), None);
    assert!(bucket_root_header(&file, b"outer").is_some());
}

#[test]
fn values_larger_than_a_page_get_overflow_pages() {
    let mut root = BucketData::new();
    let bucket = root.bucket(b"big").unwrap();
    let large: Vec<u8> = (0..3 * 1024 * 1024u32).map(|n| (n % 251) as u8).collect();
    bucket.put(b"large".to_vec(), large.clone()).unwrap();
    bucket.put(b"after".to_vec(), b"small".to_vec()).unwrap();
    bucket.put(b"before".to_vec(), vec![7u8; 5000]).unwrap();
    let file = round_trip(&root);
    let db = Db::open(&file).unwrap();
    let values = db.bucket(b"big").unwrap().unwrap().values().unwrap();
    assert_eq!(values[2], (&b"large"[..], large.as_slice()));
    // Walk the pages in file order, stepping over each page's overflow pages.
    let mut pgid = 2;
    let mut longest_overflow = 0;
    while pgid < db.size() / DEFAULT_PAGE_SIZE as u64 {
        let header = PageHeader::read(&file[pgid as usize * DEFAULT_PAGE_SIZE..]);
        assert_eq!(header.id, pgid);
        longest_overflow = longest_overflow.max(header.overflow);
        pgid += 1 + u64::from(header.overflow);
    }
    assert!(longest_overflow as usize >= large.len() / DEFAULT_PAGE_SIZE);
}

#[test]
fn many_keys_are_split_into_leaves_under_branch_pages() {
    let mut root = BucketData::new();
    let bucket = root.bucket(b"key").unwrap();
    // Enough for more than one level of branch pages.
    for n in 0..100_000u64 {
        bucket
            .put(
                n.to_be_bytes().to_vec(),
                format!("value of {n}").into_bytes(),
            )
            .unwrap();
    }
    let file = round_trip(&root);
    let header = bucket_root_header(&file, b"key").expect("a bucket with pages");
    assert_eq!(header.flags, FLAG_BRANCH);
    let db = Db::open(&file).unwrap();
    let bucket = db.bucket(b"key").unwrap().unwrap();
    let (page, _) = bucket.pages_for_test(bucket.root_pgid_for_test().unwrap());
    let first_child = crate::page::u64_at(page, PAGE_HEADER_SIZE + 8);
    assert_eq!(bucket.pages_for_test(first_child).1.flags, FLAG_BRANCH);
}

fn sample() -> Vec<u8> {
    let mut root = BucketData::new();
    let bucket = root.bucket(b"meta").unwrap();
    for n in 0..500u32 {
        bucket
            .put(format!("key {n:05}"), vec![n as u8; 40])
            .unwrap();
    }
    write_db(&root, DEFAULT_PAGE_SIZE).unwrap()
}

fn corrupt_meta(file: &mut [u8], page: usize) {
    file[page * DEFAULT_PAGE_SIZE + PAGE_HEADER_SIZE + 20] ^= 0xff;
}

#[test]
fn a_damaged_meta_page_falls_back_to_the_other() {
    let mut file = sample();
    assert_eq!(Db::open(&file).unwrap().txid(), 1);
    corrupt_meta(&mut file, 1);
    let db = Db::open(&file).expect("meta 0 still valid");
    assert_eq!(db.txid(), 0);
    assert_eq!(
        db.bucket(b"meta").unwrap().unwrap().values().unwrap().len(),
        500
    );
}

#[test]
fn both_meta_pages_damaged_is_refused() {
    let mut file = sample();
    corrupt_meta(&mut file, 0);
    corrupt_meta(&mut file, 1);
    let err = Db::open(&file).unwrap_err();
    assert!(
        matches!(&err, BboltError::NoValidMeta { meta0, meta1 }
            if meta0.contains("checksum") && meta1.contains("checksum")),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_bbolt_is_refused() {
    let file = vec![0x42u8; 3 * DEFAULT_PAGE_SIZE];
    let err = Db::open(&file).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
    assert_eq!(
        Db::open(b"short").unwrap_err(),
        BboltError::TooSmall { len: 5 }
    );
}

#[test]
fn a_truncated_file_is_refused() {
    let file = sample();
    let err = Db::open(&file[..file.len() - DEFAULT_PAGE_SIZE]).unwrap_err();
    assert!(matches!(err, BboltError::Truncated { .. }), "{err}");
}

#[test]
fn a_damaged_data_page_is_refused_naming_it() {
    let mut file = sample();
    let db = Db::open(&file).unwrap();
    let bucket = db.bucket(b"meta").unwrap().unwrap();
    let pgid = bucket.root_pgid_for_test().unwrap();
    // A child page of the bucket's root branch, its header ID overwritten.
    let (page, _) = bucket.pages_for_test(pgid);
    let child = crate::page::u64_at(page, PAGE_HEADER_SIZE + 8) as usize;
    file[child * DEFAULT_PAGE_SIZE] ^= 0x55;
    let err = Db::open(&file)
        .unwrap()
        .bucket(b"meta")
        .unwrap()
        .unwrap()
        .entries()
        .unwrap_err();
    assert!(
        matches!(&err, BboltError::CorruptPage { pgid, .. } if *pgid == child as u64),
        "{err}"
    );
}

#[test]
fn the_writer_refuses_what_bbolt_cannot_hold() {
    let mut root = BucketData::new();
    assert!(root.put(b"x".to_vec(), b"y".to_vec()).is_ok());
    assert!(
        write_db(&root, DEFAULT_PAGE_SIZE).is_err(),
        "values in the root bucket"
    );
    let mut root = BucketData::new();
    let bucket = root.bucket(b"b").unwrap();
    assert!(bucket.put(Vec::new(), b"v".to_vec()).is_err());
    assert!(bucket.put(vec![1u8; 40_000], b"v".to_vec()).is_err());
    bucket.bucket(b"nested").unwrap();
    assert!(bucket.put(b"nested".to_vec(), b"v".to_vec()).is_err());
    assert!(write_db(&root, 1000).is_err());
}

#[test]
fn meta_checksum_is_fnv1a_of_the_fields_before_it() {
    let file = sample();
    let meta = Meta::read(&file[PAGE_HEADER_SIZE..]);
    assert_eq!(meta.problem(), None);
    assert_eq!(meta.pgid as usize * DEFAULT_PAGE_SIZE, file.len());
    assert_eq!(meta.freelist, 2);
}
