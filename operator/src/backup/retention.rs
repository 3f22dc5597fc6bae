//! Which scheduled backups retention deletes: a pure choice over what the bucket lists.

use std::time::Duration;

use ferrokv_storage::backup_file;
use k8s_openapi::jiff::Timestamp;

/// Which scheduled backups to keep, as `spec.backup.retention` says once parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub count: Option<u32>,
    pub max_age: Option<Duration>,
}

/// One backup the bucket holds: its snapshot key and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBackup {
    pub key: String,
    pub time: Timestamp,
}

/// The backups to delete: those beyond the `count` newest, and those older than `max_age` at
/// `now`. The newest backup is always kept, so that retention never leaves nothing
/// (`backup_file::expired`, the rule a backup to a volume follows too).
pub fn expired(
    backups: &[StoredBackup],
    count: Option<u32>,
    max_age: Option<Duration>,
    now: Timestamp,
) -> Vec<StoredBackup> {
    let mut newest_first = backups.to_vec();
    newest_first.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
    backup_file::expired(&newest_first, count, |backup| {
        max_age.is_some_and(|max_age| {
            now.as_second() - backup.time.as_second() > max_age.as_secs() as i64
        })
    })
    .into_iter()
    .cloned()
    .collect()
}

/// `retention.maxAge`, e.g. `7d`, `36h` or `90m`, as a duration (days of 24 hours).
pub fn parse_max_age(text: &str) -> Result<Duration, String> {
    use k8s_openapi::jiff::{Span, SpanRelativeTo};
    let span: Span = text
        .parse()
        .map_err(|e| format!("retention.maxAge {text:?}: {e}"))?;
    let duration = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("retention.maxAge {text:?}: {e}"))?;
    duration
        .try_into()
        .map_err(|_| format!("retention.maxAge {text:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minute * 60).unwrap()
    }

    fn backups(minutes: &[i64]) -> Vec<StoredBackup> {
        minutes
            .iter()
            .map(|&m| StoredBackup {
                key: format!("b{m}.db"),
                time: at(m),
            })
            .collect()
    }

    fn keys(list: Vec<StoredBackup>) -> Vec<String> {
        list.into_iter().map(|b| b.key).collect()
    }

    #[test]
    fn retention_count_keeps_the_newest() {
        let all = backups(&[3, 1, 4, 0, 2]);
        assert_eq!(
            keys(expired(&all, Some(2), None, at(5))),
            ["b2.db", "b1.db", "b0.db"]
        );
        assert!(expired(&all, Some(5), None, at(5)).is_empty());
        assert!(expired(&all, None, None, at(5)).is_empty());
    }

    #[test]
    fn retention_max_age_deletes_the_old_but_never_the_newest() {
        let all = backups(&[0, 10, 20]);
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(
            keys(expired(&all, None, Some(ten_minutes), at(25))),
            ["b10.db", "b0.db"]
        );
        // Everything is old: the newest stays.
        assert_eq!(
            keys(expired(&all, None, Some(ten_minutes), at(100))),
            ["b10.db", "b0.db"]
        );
    }

    #[test]
    fn retention_count_and_max_age_together_delete_either() {
        let all = backups(&[0, 10, 20, 30]);
        let deleted = expired(&all, Some(3), Some(Duration::from_secs(900)), at(31));
        assert_eq!(keys(deleted), ["b10.db", "b0.db"]);
    }

    #[test]
    fn retention_max_age_parses_days_and_hours() {
        assert_eq!(parse_max_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_max_age("36h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_max_age("1h30m"), Ok(Duration::from_secs(5_400)));
        assert!(parse_max_age("soon").is_err());
    }
}
