//! Round-trip latency recording for `echo_bench` and the benchmark probes, on the
//! `hdrhistogram` crate (HdrHistogram: 3 significant digits, so every percentile is
//! within 0.1 % of a recorded sample, in fixed memory whatever the number of samples).
//!
//! [`LatencyHistogram`] only adapts it to [`Duration`]s: samples are recorded in
//! nanoseconds, from 1 ns to one hour (longer ones count as one hour).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded as itself (larger samples are clamped to it): one hour.
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// Significant decimal digits kept per sample (relative error at most 10^-3).
const SIGFIG: u8 = 3;

/// A latency histogram: HdrHistogram over nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for LatencyHistogram {
    /// The same samples (as the histogram resolves them).
    fn eq(&self, other: &Self) -> bool {
        self.hist == other.hist
    }
}

impl LatencyHistogram {
    /// An empty histogram (1 ns to one hour, 3 significant digits).
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG)
            .expect("constant histogram bounds are valid");
        Self { hist }
    }

    /// Adds one sample (longer than one hour: recorded as one hour).
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(ns);
    }

    /// Adds all samples of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both have the same bounds, so no sample of `other` can be out of range.
        self.hist
            .add(&other.hist)
            .expect("histograms with equal bounds add");
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q` quantile (`0.5`, `0.99`, `0.999`...): the sample of rank
    /// `ceil(q × count)` (at least 1), as the highest value its bucket stands for.
    /// `None` without samples.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        (!self.hist.is_empty())
            .then(|| Duration::from_nanos(self.hist.value_at_quantile(q.clamp(0.0, 1.0))))
    }

    /// Largest sample (to the histogram's resolution).
    pub fn max(&self) -> Option<Duration> {
        (!self.hist.is_empty()).then(|| Duration::from_nanos(self.hist.max()))
    }

    /// Mean of the samples (to the histogram's resolution).
    pub fn mean(&self) -> Option<Duration> {
        (!self.hist.is_empty()).then(|| Duration::from_secs_f64(self.hist.mean() / 1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(d: Option<Duration>) -> f64 {
        d.expect("samples were recorded").as_secs_f64() * 1e6
    }

    /// `got` is `want` within HdrHistogram's 3 significant digits (0.1 %).
    fn near(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 1e-3
    }

    #[test]
    fn empty_has_no_percentiles() {
        let h = LatencyHistogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(0.5), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.mean(), None);
    }

    #[test]
    fn percentiles_of_a_uniform_sequence() {
        let mut h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        for (q, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0), (1.0, 1000.0)] {
            let got = us(h.percentile(q));
            assert!(near(got, want), "q {q}: {got} us, want {want}");
        }
        assert!(near(us(h.max()), 1000.0));
        assert!(near(us(h.mean()), 500.5), "mean {}", us(h.mean()));
    }

    #[test]
    fn percentiles_of_a_skewed_sample() {
        // 990 fast samples of 10 us and 10 slow ones of 5 ms: p50 and p99 are fast, the
        // p99.9 is the 999th sample, a slow one.
        let mut h = LatencyHistogram::new();
        for _ in 0..990 {
            h.record(Duration::from_micros(10));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(5));
        }
        assert!(near(us(h.percentile(0.5)), 10.0));
        assert!(near(us(h.percentile(0.99)), 10.0));
        assert!(near(us(h.percentile(0.991)), 5000.0));
        assert!(near(us(h.percentile(0.999)), 5000.0));
        assert!(near(us(h.mean()), (990.0 * 10.0 + 10.0 * 5000.0) / 1000.0));
    }

    #[test]
    fn merge_adds_the_samples_of_both() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        for us in 1..=500u64 {
            a.record(Duration::from_micros(us));
        }
        for us in 501..=1000u64 {
            b.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert!(near(us(a.percentile(0.5)), 500.0));
        assert!(near(us(a.percentile(0.99)), 990.0));
        assert!(near(us(a.max()), 1000.0));
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(7200));
        assert_eq!(h.count(), 2);
        assert_eq!(h.percentile(0.0), Some(Duration::ZERO));
        let top = h.max().unwrap().as_nanos() as f64;
        assert!(near(top, HIGHEST_NS as f64), "max {top}");
    }
}
