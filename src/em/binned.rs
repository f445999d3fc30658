//! A distribution over many particles summarised in fixed, equal bins, so per-iteration
//! diagnostics (quartiles of ESS and best-class probability, their histograms) cost the same
//! memory for 10⁴ or 10⁷ particles and are summed over ranks by one all-reduce instead of
//! gathering a value per particle. Quartiles are interpolated within their bin (error at most
//! one bin width: 1/4096 of the range with [`BINS`]); min and max are exact.

use crate::comm::Comm;

use super::responsibilities::Quartiles;

/// Bins of a summary.
pub const BINS: usize = 4096;

/// Counts of values in equal bins over `[lo, hi]` (values outside go to the end bins).
#[derive(Clone, Debug, PartialEq)]
pub struct Binned {
    lo: f64,
    hi: f64,
    counts: Vec<u64>,
    min: f64,
    max: f64,
}

impl Binned {
    /// `bins` equal bins over `[lo, hi]` (`hi > lo`).
    pub fn new(lo: f64, hi: f64, bins: usize) -> Binned {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        Binned {
            lo,
            hi,
            counts: vec![0; bins.max(1)],
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len() as f64
    }

    /// Counts `v` (NaN is ignored).
    pub fn add(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        let b = ((v - self.lo) / self.width()).floor().max(0.0) as usize;
        let last = self.counts.len() - 1;
        self.counts[b.min(last)] += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sums the counts over ranks and takes the overall min and max (two all-reduces, the
    /// same result on every rank). Returns the bytes this rank contributed.
    pub fn all_reduce(&mut self, comm: &dyn Comm) -> usize {
        comm.all_reduce_sum_u64(&mut self.counts);
        let mut ext = [-self.min, self.max];
        comm.all_reduce_max_f64(&mut ext);
        (self.min, self.max) = (-ext[0], ext[1]);
        8 * (self.counts.len() + ext.len())
    }

    /// Every rank's `values` (NaN ignored) in [`BINS`] bins over their overall range, summed
    /// over ranks; collective. Any rank may have no values.
    pub fn of_all_ranks(comm: &dyn Comm, values: &[f64]) -> Binned {
        let (lo, hi) = values
            .iter()
            .filter(|v| !v.is_nan())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let mut ext = [-lo, hi];
        comm.all_reduce_max_f64(&mut ext);
        let (lo, hi) = (-ext[0], ext[1]);
        let mut b = if lo.is_finite() && hi.is_finite() {
            Binned::new(lo, hi, BINS)
        } else {
            Binned::new(0.0, 1.0, 1)
        };
        values.iter().for_each(|&v| b.add(v));
        b.all_reduce(comm);
        b
    }

    /// The value below which a fraction `q` of the values lie, interpolated within its bin
    /// and kept within [min, max].
    fn quantile(&self, q: f64) -> f64 {
        let n = self.count();
        let target = q * (n - 1) as f64;
        let mut before = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            if c > 0 && (before + c) as f64 > target {
                let frac = ((target - before as f64 + 0.5) / c as f64).clamp(0.0, 1.0);
                let v = self.lo + (b as f64 + frac) * self.width();
                return v.clamp(self.min, self.max);
            }
            before += c;
        }
        self.max
    }

    /// Min, quartiles and max (None when empty).
    pub fn quartiles(&self) -> Option<Quartiles> {
        (self.count() > 0).then(|| Quartiles {
            min: self.min,
            q25: self.quantile(0.25),
            median: self.quantile(0.5),
            q75: self.quantile(0.75),
            max: self.max,
        })
    }

    /// At most `bars` bins over the occupied range (whole input bins merged), as
    /// `(lo, hi, counts)` for a histogram plot; None when empty.
    pub fn bars(&self, bars: usize) -> Option<(f64, f64, Vec<u64>)> {
        let first = self.counts.iter().position(|&c| c > 0)?;
        let last = self.counts.iter().rposition(|&c| c > 0)?;
        let span = last - first + 1;
        let merge = span.div_ceil(bars.max(1));
        let counts: Vec<u64> = self.counts[first..=last]
            .chunks(merge)
            .map(|c| c.iter().sum())
            .collect();
        let w = self.width();
        let lo = self.lo + first as f64 * w;
        Some((lo, lo + (counts.len() * merge) as f64 * w, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;

    #[test]
    fn quartiles_are_within_a_bin_of_the_exact_ones() {
        let values: Vec<f64> = (0..10_001)
            .map(|i| ((i * 7919) % 10_001) as f64 / 10_000.0)
            .collect();
        let mut b = Binned::new(0.0, 1.0, BINS);
        for &v in &values {
            b.add(v);
        }
        b.add(f64::NAN);
        b.all_reduce(&Single);
        let exact = Quartiles::of(&values).unwrap();
        let q = b.quartiles().unwrap();
        let w = 1.0 / BINS as f64;
        assert_eq!((q.min, q.max), (exact.min, exact.max));
        for (a, e) in [
            (q.q25, exact.q25),
            (q.median, exact.median),
            (q.q75, exact.q75),
        ] {
            assert!((a - e).abs() <= w, "{a} vs {e}");
        }
        assert_eq!(b.count(), 10_001);
        let all = Binned::of_all_ranks(&Single, &values);
        assert_eq!(all.quartiles().unwrap().min, exact.min);
        assert_eq!(all.count(), 10_001);
        assert!(Binned::of_all_ranks(&Single, &[]).quartiles().is_none());
    }

    #[test]
    fn bars_cover_the_occupied_range_and_keep_every_count() {
        let mut b = Binned::new(1.0, 51.0, BINS);
        for i in 0..1000 {
            b.add(1.0 + (i % 100) as f64 / 100.0);
        }
        b.add(100.0); // beyond hi: the last bin
        let (lo, hi, counts) = b.bars(40).unwrap();
        assert!(counts.len() <= 40);
        assert_eq!(counts.iter().sum::<u64>(), 1001);
        assert!((lo - 1.0).abs() < 1e-9 && hi >= 51.0 - 1e-9, "{lo} {hi}");
        assert!(Binned::new(0.0, 1.0, 8).bars(4).is_none());
        assert!(Binned::new(0.0, 1.0, 8).quartiles().is_none());
        let mut one = Binned::new(0.0, 1.0, 8);
        one.add(0.3);
        let q = one.quartiles().unwrap();
        assert_eq!((q.min, q.median, q.max), (0.3, 0.3, 0.3));
    }
}
