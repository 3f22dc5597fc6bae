//! Latency percentiles of a benchmark run, computed exactly from every recorded sample (a run is
//! bounded, so keeping all samples is cheap and avoids a histogram's rounding).

use std::time::Duration;

use serde::Serialize;

/// Nearest-rank percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Summarises `samples`; `None` when there are none.
    pub fn from_samples(samples: Vec<Duration>) -> Option<LatencySummary> {
        summarise(samples, millis)
    }

    /// Summarises latencies given in whole microseconds: a quarter of the memory of
    /// [`Duration`]s, for runs that record millions of samples (one per watch event delivered).
    pub fn from_micros(samples: Vec<u32>) -> Option<LatencySummary> {
        summarise(samples, |micros| f64::from(micros) / 1000.0)
    }
}

fn summarise<T: Ord + Copy>(
    mut samples: Vec<T>,
    to_millis: impl Fn(T) -> f64,
) -> Option<LatencySummary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |percent: f64| to_millis(samples[nearest_rank(samples.len(), percent) - 1]);
    Some(LatencySummary {
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: to_millis(*samples.last().expect("not empty")),
    })
}

/// The 1-based rank of the `percent`th percentile among `count` sorted samples: the smallest
/// rank whose sample is at least `percent`% of the way through.
fn nearest_rank(count: usize, percent: f64) -> usize {
    let rank = (percent / 100.0 * count as f64).ceil() as usize;
    rank.clamp(1, count)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentiles_of_one_to_hundred_are_their_ranks() {
        let summary = LatencySummary::from_samples(ms((1..=100).rev())).unwrap();
        assert_eq!(
            summary,
            LatencySummary {
                p50: 50.0,
                p90: 90.0,
                p99: 99.0,
                max: 100.0
            }
        );
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let summary = LatencySummary::from_samples(ms([7])).unwrap();
        assert_eq!((summary.p50, summary.p99, summary.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn a_rare_outlier_shows_in_max_but_not_in_p99() {
        let mut samples = vec![Duration::from_millis(2); 999];
        samples.push(Duration::from_millis(500));
        let summary = LatencySummary::from_samples(samples).unwrap();
        assert_eq!((summary.p99, summary.max), (2.0, 500.0));
    }

    #[test]
    fn microsecond_samples_are_reported_in_milliseconds() {
        let summary = LatencySummary::from_micros((1..=100).map(|n| n * 1000).collect()).unwrap();
        assert_eq!((summary.p50, summary.p99, summary.max), (50.0, 99.0, 100.0));
    }

    #[test]
    fn no_samples_have_no_summary() {
        assert_eq!(LatencySummary::from_samples(Vec::new()), None);
        assert_eq!(LatencySummary::from_micros(Vec::new()), None);
    }
}
