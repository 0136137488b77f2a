//! Summaries of measured durations.

use std::time::Duration;

/// p50, p99, max, mean and count of a set of samples, in seconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
    /// Whether the p99 is the largest sample (nearest rank with fewer than 100 samples): such a
    /// p99 says how bad the worst one was, not where 99% of them end.
    pub p99_is_max: bool,
}

impl Summary {
    /// Summarizes `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        Some(Self {
            count: s.len(),
            p50_s: percentile(&s, 50.0),
            p99_s: percentile(&s, 99.0),
            max_s: s[s.len() - 1],
            mean_s: mean,
            p99_is_max: rank(s.len(), 99.0) == s.len(),
        })
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with at least `p`% of the
/// samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    sorted[rank(sorted.len(), p) - 1]
}

/// The 1-based nearest rank of percentile `p` among `n` samples.
fn rank(n: usize, p: f64) -> usize {
    (((p / 100.0) * n as f64).ceil() as usize).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_of_durations() {
        let d: Vec<Duration> = [3, 1, 2]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        let s = Summary::of(&d).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.p50_s, 0.002);
        assert_eq!(s.max_s, 0.003);
        assert!(s.p99_is_max);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn a_p99_is_the_max_below_100_samples() {
        let of = |n: u64| Summary::of(&(1..=n).map(Duration::from_millis).collect::<Vec<_>>());
        assert!(of(20).unwrap().p99_is_max);
        assert!(of(99).unwrap().p99_is_max);
        let s = of(100).unwrap();
        assert!(!s.p99_is_max);
        assert_eq!(s.p99_s, 0.099);
    }
}
