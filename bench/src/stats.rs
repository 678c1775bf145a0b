//! Small statistics: percentiles of one run's latencies, and mean with min–max over the
//! repetitions of a figure.

use std::fmt;
use std::time::Duration;

/// The mean of a figure over repetitions, with the smallest and largest value seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    /// The arithmetic mean.
    pub(crate) mean: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
    /// How many values.
    pub(crate) n: usize,
}

impl Spread {
    /// The spread of `values`, or `None` when there are none (or only non-finite ones).
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        let sum: f64 = values.iter().sum();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            mean: sum / values.len() as f64,
            min,
            max,
            n: values.len(),
        })
    }

    /// Formats as `mean (min–max)` with `decimals` digits after the point; a single value has
    /// no range.
    pub(crate) fn show(&self, decimals: usize) -> String {
        self.show_with(decimals, "")
    }

    /// Like [`show`](Self::show), with a unit suffix: `0.93x (0.88–0.97x)`.
    pub(crate) fn show_with(&self, decimals: usize, suffix: &str) -> String {
        if self.n < 2 {
            return format!("{:.decimals$}{suffix}", self.mean);
        }
        format!(
            "{:.decimals$}{suffix} ({:.decimals$}–{:.decimals$}{suffix})",
            self.mean, self.min, self.max
        )
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(2))
    }
}

/// Formats an optional spread, `-` when absent.
pub(crate) fn show(spread: Option<Spread>, decimals: usize) -> String {
    spread.map_or_else(|| "-".to_owned(), |s| s.show(decimals))
}

/// `count` things in `elapsed`, per second (0 when no time passed).
pub(crate) fn per_second(count: usize, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

/// The `p`-th percentile (0..=100, nearest rank) of `samples`, in milliseconds; `None` when
/// there are no samples.
pub(crate) fn percentile_ms(samples: &[Duration], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p / 100.0 * sorted.len() as f64).ceil();
    // Nearest rank: 1-based, clamped into the samples.
    let index = (rank as usize).clamp(1, sorted.len()) - 1;
    sorted.get(index).map(|d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_values() {
        let s = Spread::of([1.0, 2.0, 6.0]).expect("values");
        assert_eq!((s.mean, s.min, s.max, s.n), (3.0, 1.0, 6.0, 3));
        assert_eq!(s.show(1), "3.0 (1.0–6.0)");
        assert_eq!(s.show_with(2, "x"), "3.00x (1.00–6.00x)");
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::of([2.0]).expect("one").show(1), "2.0");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&samples, 95.0), Some(95.0));
        assert_eq!(percentile_ms(&samples, 0.0), Some(1.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile_ms(&one, 95.0), Some(7.0));
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(10, Duration::from_millis(2500)), 4.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
