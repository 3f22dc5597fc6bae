//! When scheduled backups are due: `spec.backup.schedule`, five cron fields in UTC.

use croner::Cron;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;

/// `spec.backup.schedule`, parsed, or why it does not parse.
pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!(
            "spec.backup.schedule {text:?}: a schedule has five fields (minute hour day month weekday)"
        ));
    }
    text.parse::<Cron>()
        .map_err(|e| format!("spec.backup.schedule {text:?}: {e}"))
}

/// The first time the schedule names strictly after `after`.
pub fn next_backup_after(cron: &Cron, after: Timestamp) -> Option<Timestamp> {
    cron.find_next_occurrence(&after.to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|next| next.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_the_next_time_in_utc() {
        let cron = parse_schedule("0 */6 * * *").unwrap();
        let after: Timestamp = "2026-12-05T23:40:00Z".parse().unwrap();
        let next = next_backup_after(&cron, after).unwrap();
        assert_eq!(next.to_string(), "2026-12-06T00:00:00Z");
        let then = next_backup_after(&cron, next).unwrap();
        assert_eq!(then.to_string(), "2026-12-06T06:00:00Z");
    }

    #[test]
    fn schedule_every_minute_is_due_at_the_next_minute() {
        let cron = parse_schedule("* * * * *").unwrap();
        let after: Timestamp = "2026-12-05T23:40:30Z".parse().unwrap();
        assert_eq!(
            next_backup_after(&cron, after).unwrap().to_string(),
            "2026-12-05T23:41:00Z"
        );
    }

    #[test]
    fn schedule_refuses_what_is_not_five_fields() {
        assert!(parse_schedule("0 0 */6 * * *")
            .unwrap_err()
            .contains("five fields"));
        assert!(parse_schedule("61 * * * *").is_err());
        assert!(parse_schedule("every day").is_err());
    }
}
