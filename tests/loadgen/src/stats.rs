//! Latency histogram and the median used to summarise rounds.

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two: 64 sub-buckets keep every
/// recorded value within 1/64 (1.6 %) of the truth.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `2 * SUB` get a bucket each; every further power of two up to 2^64
/// gets `SUB` buckets.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) << SUB_BITS;

/// A log-linear histogram of latencies in nanoseconds (the idea of `HdrHistogram`).
///
/// Fixed size (30 KiB) whatever the number of samples, so every client thread keeps
/// its own and the threads' histograms are merged at the end; recording is a few
/// instructions. Percentiles are exact below 128 ns and within 1/64 above; the
/// maximum is exact.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, max: 0 }
    }

    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)] += 1;
        self.count += 1;
        self.max = self.max.max(nanos);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest sample, or zero if there are none.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The smallest value at least `percent` % of the samples do not exceed (the
    /// nearest-rank percentile), up to the bucket's precision; zero if there are no
    /// samples.
    pub fn percentile(&self, percent: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        // Float-to-int casts saturate, so out-of-range percents clamp to 1..=count.
        let rank = ((percent / 100.0 * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds_of(bucket);
                // The middle of the bucket halves the worst-case error; the maximum
                // can lie below it when it is the only sample in its bucket.
                return Duration::from_nanos((low + (width - 1) / 2).min(self.max));
            }
        }
        unreachable!("the buckets hold `count` samples")
    }
}

fn bucket_of(nanos: u64) -> usize {
    if nanos < 2 * SUB {
        return nanos as usize;
    }
    let shift = nanos.ilog2() - SUB_BITS;
    // `nanos >> shift` keeps the leading one and SUB_BITS bits after it: SUB..2*SUB.
    (((shift + 1) as usize) << SUB_BITS) + (nanos >> shift) as usize - SUB as usize
}

/// The lowest value of `bucket` and how many values it spans.
fn bounds_of(bucket: usize) -> (u64, u64) {
    if bucket < 2 * SUB as usize {
        return (bucket as u64, 1);
    }
    let shift = (bucket >> SUB_BITS) as u32 - 1;
    let low = ((bucket as u64 & (SUB - 1)) + SUB) << shift;
    (low, 1 << shift)
}

/// The median of `values` (the mean of the middle two for an even count); NaN if
/// there are none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { f64::midpoint(sorted[mid - 1], sorted[mid]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut expected = 0;
        for v in 0..100_000u64 {
            let b = bucket_of(v);
            assert!(b == expected || b == expected + 1, "value {v}");
            expected = b;
            let (low, width) = bounds_of(b);
            assert!(low <= v && v - low < width, "value {v} outside bucket {b}");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let (low, width) = bounds_of(BUCKETS - 1);
        assert_eq!(low.checked_add(width - 1), Some(u64::MAX));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(nanos(v));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), nanos(50));
        assert_eq!(h.percentile(99.0), nanos(99));
        assert_eq!(h.percentile(100.0), nanos(100));
        assert_eq!(h.percentile(0.0), nanos(1));
        assert_eq!(h.max(), nanos(100));
    }

    #[test]
    fn large_values_are_within_precision() {
        let mut h = Histogram::new();
        // 1 us .. 10 ms in 1 us steps: the p-th percentile is p * 100 us.
        for us in 1..=10_000 {
            h.record(Duration::from_micros(us));
        }
        for p in [1.0, 25.0, 50.0, 90.0, 99.0, 99.9] {
            let want = p * 100_000.0;
            let got = h.percentile(p).as_nanos() as f64;
            let error = (got - want).abs() / want;
            assert!(error < 1.0 / 64.0, "p{p}: {got} ns vs {want} ns");
        }
        assert_eq!(h.max(), Duration::from_millis(10));
    }

    #[test]
    fn percentile_never_exceeds_max() {
        let mut h = Histogram::new();
        h.record(nanos(1_000_001));
        assert_eq!(h.percentile(50.0), nanos(1_000_001));
        assert_eq!(h.percentile(100.0), h.max());
    }

    #[test]
    fn merge_adds_samples() {
        let mut fast = Histogram::new();
        let mut slow = Histogram::new();
        for _ in 0..99 {
            fast.record(nanos(10));
        }
        slow.record(Duration::from_secs(3));
        fast.merge(&slow);
        assert_eq!(fast.count(), 100);
        assert_eq!(fast.percentile(99.0), nanos(10));
        assert_eq!(fast.max(), Duration::from_secs(3));
        assert_eq!(fast.percentile(100.0), Duration::from_secs(3));
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::default();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(50.0), Duration::ZERO);
        assert_eq!(h.max(), Duration::ZERO);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }
}
