//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): the leader
//! compacts history through Raft, as etcd's compactor does.
//!
//! - periodic: keep `retention` of history. The leader samples the revision every tenth of the
//!   retention (at most every hour) and compacts to the revision it saw `retention` ago.
//! - revision: keep the last `retention` revisions, checked every five minutes (etcd's period).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use etcd_client::proto::PbCompactionRequest;

use super::Server;
use ferrokv_raft::types::Request;

/// How history is kept, from `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Periodic(Duration),
    Revision(i64),
}

/// etcd's revision-mode check period.
const REVISION_CHECK: Duration = Duration::from_secs(300);

impl Server {
    pub async fn run_auto_compaction(self, policy: AutoCompaction) {
        match policy {
            AutoCompaction::Periodic(retention) => self.compact_periodically(retention).await,
            AutoCompaction::Revision(keep) => self.compact_by_revision(keep).await,
        }
    }

    async fn compact_periodically(self, retention: Duration) {
        let interval =
            (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(3600));
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        loop {
            tokio::time::sleep(interval).await;
            if !self.is_leader() {
                // A new leader starts its own window, as etcd's does.
                samples.clear();
                continue;
            }
            let now = Instant::now();
            let Ok(revision) = self.store().current_revision() else {
                continue;
            };
            samples.push_back((now, revision));
            // The newest sample at least `retention` old is what may go.
            let mut target = None;
            while let Some((at, rev)) = samples.front().copied() {
                if now.duration_since(at) >= retention {
                    target = Some(rev);
                    samples.pop_front();
                } else {
                    break;
                }
            }
            if let Some(rev) = target {
                self.auto_compact(rev).await;
            }
        }
    }

    async fn compact_by_revision(self, keep: i64) {
        loop {
            tokio::time::sleep(REVISION_CHECK).await;
            if !self.is_leader() {
                continue;
            }
            let Ok(revision) = self.store().current_revision() else {
                continue;
            };
            let target = revision - keep;
            if target > 0 {
                self.auto_compact(target).await;
            }
        }
    }

    async fn auto_compact(&self, revision: i64) {
        let compacted = self.store().compact_revision().unwrap_or(-1);
        if revision <= compacted {
            return;
        }
        let req = Request::Compact(PbCompactionRequest {
            revision,
            physical: false,
        });
        match self.propose(req).await {
            Ok(_) => tracing::info!(revision, "auto-compaction: compacted history"),
            Err(e) => tracing::warn!(revision, error = %e, "auto-compaction failed; will retry"),
        }
    }
}

/// Parses `--auto-compaction-retention` for `mode`: a duration ("30s", "5m", "1h") or a number
/// of hours in periodic mode, a number of revisions in revision mode; None when it is 0.
pub fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<AutoCompaction>, String> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let duration = if let Ok(hours) = retention.parse::<f64>() {
                if !(hours >= 0.0 && hours.is_finite()) {
                    return Err(format!(
                        "--auto-compaction-retention: invalid {retention:?}"
                    ));
                }
                Duration::from_secs_f64(hours * 3600.0)
            } else {
                parse_duration(retention).ok_or_else(|| {
                    format!("--auto-compaction-retention: {retention:?} is neither a number of hours nor a duration like 30m")
                })?
            };
            Ok((!duration.is_zero()).then_some(AutoCompaction::Periodic(duration)))
        }
        "revision" => {
            let keep: i64 = retention.parse().map_err(|_| {
                format!("--auto-compaction-retention: {retention:?} is not a number of revisions")
            })?;
            if keep < 0 {
                return Err("--auto-compaction-retention must not be negative".into());
            }
            Ok((keep > 0).then_some(AutoCompaction::Revision(keep)))
        }
        other => Err(format!(
            "--auto-compaction-mode: invalid value {other:?} (expected 'periodic' or 'revision')"
        )),
    }
}

/// Go-style durations: a sequence of number+unit (h, m, s, ms).
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = tail;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_hours_or_durations_in_periodic_mode_and_revisions_in_revision_mode() {
        assert_eq!(
            parse_auto_compaction("periodic", "1").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "1h30m").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "500ms").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_millis(500)))
        );
        assert_eq!(parse_auto_compaction("periodic", "0").unwrap(), None);
        assert_eq!(
            parse_auto_compaction("revision", "1000").unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        assert!(parse_auto_compaction("revision", "1h").is_err());
        assert!(parse_auto_compaction("daily", "1")
            .unwrap_err()
            .contains("--auto-compaction-mode"));
    }
}
