//! Reading a whole key range back for verification, page by page, so a test can compare
//! everything a member holds under a prefix with what it wrote, however many keys that is.

use std::collections::BTreeMap;

use anyhow::Context;
use etcd_client::{Client, GetOptions};

/// Keys per Range request; small enough to stay far below gRPC's message size limit.
const PAGE: i64 = 1000;

/// The pairs under a prefix as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixView {
    /// The store revision the pairs were read at.
    pub revision: i64,
    pub pairs: BTreeMap<String, String>,
}

/// Every key under `prefix` with its value, read linearizably through `client` at the current
/// revision.
pub async fn read_prefix(client: &mut Client, prefix: &str) -> anyhow::Result<PrefixView> {
    read_prefix_at(client, prefix, 0).await
}

/// Every key under `prefix` with its value as of `revision` (0: the current one), read
/// linearizably through `client`. Reading two members at one revision must give equal views.
pub async fn read_prefix_at(
    client: &mut Client,
    prefix: &str,
    revision: i64,
) -> anyhow::Result<PrefixView> {
    let range_end = prefix_end(prefix.as_bytes());
    let mut pairs = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    // Pinning the revision of the first page makes the pages one consistent view.
    let mut revision = revision;
    loop {
        let options = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let page = client
            .get(from.clone(), Some(options))
            .await
            .with_context(|| format!("reading keys under {prefix:?} at revision {revision}"))?;
        if revision == 0 {
            revision = page.header().map_or(0, |header| header.revision());
        }
        for kv in page.kvs() {
            pairs.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            );
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                // The smallest key after `last`.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(PrefixView { revision, pairs }),
        }
    }
}

/// The range end that makes a Range cover every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff (or the prefix is empty): the range runs to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"crash/"), b"crash0");
    }

    #[test]
    fn prefix_end_carries_over_trailing_0xff() {
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    }

    #[test]
    fn prefix_end_of_all_0xff_is_the_end_of_the_key_space() {
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
