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

/// Bins of each class's ESS in [`PerClassEss`].
pub const CLASS_ESS_BINS: usize = 100;

/// The ESS of the particles whose best class is `c`, per class, in [`CLASS_ESS_BINS`] equal
/// bins over `[1, min(K, 11)]` (larger values go to the last bin): each class's hard count
/// and median ESS after one all-reduce of K × 100 counts (800 B per class), whatever the
/// particle count. The median is interpolated within its bin (error at most one bin width,
/// 0.1 or less); a median in the last bin is reported as at least its lower edge.
#[derive(Clone, Debug, PartialEq)]
pub struct PerClassEss {
    hi: f64,
    counts: Vec<u64>,
}

impl PerClassEss {
    /// Empty summaries for `k` classes.
    pub fn new(k: usize) -> PerClassEss {
        PerClassEss {
            hi: (k.max(2) as f64).min(11.0),
            counts: vec![0; k.max(1) * CLASS_ESS_BINS],
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.counts.len() / CLASS_ESS_BINS
    }

    fn width(&self) -> f64 {
        (self.hi - 1.0) / CLASS_ESS_BINS as f64
    }

    fn class(&self, c: usize) -> &[u64] {
        &self.counts[c * CLASS_ESS_BINS..(c + 1) * CLASS_ESS_BINS]
    }

    /// Counts a particle of best class `class` with effective number of classes `ess`
    /// (a class out of range or a NaN ESS is ignored).
    pub fn add(&mut self, class: usize, ess: f64) {
        if class >= self.num_classes() || ess.is_nan() {
            return;
        }
        let b = ((ess - 1.0) / self.width()).floor().max(0.0) as usize;
        self.counts[class * CLASS_ESS_BINS + b.min(CLASS_ESS_BINS - 1)] += 1;
    }

    /// Sums the counts over ranks (one all-reduce); returns this rank's bytes.
    pub fn all_reduce(&mut self, comm: &dyn Comm) -> usize {
        comm.all_reduce_sum_u64(&mut self.counts);
        8 * self.counts.len()
    }

    /// Particles whose best class is each class (hard counts).
    pub fn hard_counts(&self) -> Vec<u64> {
        (0..self.num_classes())
            .map(|c| self.class(c).iter().sum())
            .collect()
    }

    /// Median ESS of class `c`'s particles (None when it has none), interpolated within its
    /// bin; `(median, true)` when the median lies in the last, open-ended bin.
    pub fn median(&self, c: usize) -> Option<(f64, bool)> {
        let counts = self.class(c);
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return None;
        }
        let target = 0.5 * n as f64;
        let mut before = 0u64;
        for (b, &k) in counts.iter().enumerate() {
            if k > 0 && (before + k) as f64 >= target {
                let frac = ((target - before as f64) / k as f64).clamp(0.0, 1.0);
                let open = b == CLASS_ESS_BINS - 1;
                let v = 1.0 + (b as f64 + if open { 0.0 } else { frac }) * self.width();
                return Some((v, open));
            }
            before += k;
        }
        None
    }

    /// Class `c`'s median ESS as a montage corner label: `"ESS 1.3"`, `"ESS ≥10.9"`, or
    /// `"ESS –"` for an empty class.
    pub fn median_label(&self, c: usize) -> String {
        match self.median(c) {
            Some((m, false)) => format!("ESS {m:.1}"),
            Some((m, true)) => format!("ESS ≥{m:.1}"),
            None => "ESS –".to_string(),
        }
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

    #[test]
    fn per_class_counts_and_medians_from_bins() {
        let mut p = PerClassEss::new(4);
        // Class 0: ESS 1.0 … 1.99 (median 1.495); class 1: all at 2.5; class 2 empty;
        // class 3: beyond the binned range (K = 4 → bins over [1, 4]).
        for i in 0..100 {
            p.add(0, 1.0 + i as f64 / 100.0);
        }
        for _ in 0..7 {
            p.add(1, 2.5);
        }
        p.add(3, 9.0);
        p.add(3, f64::NAN);
        p.add(9, 1.0);
        assert_eq!(p.all_reduce(&Single), 8 * 4 * CLASS_ESS_BINS);
        assert_eq!(p.hard_counts(), vec![100, 7, 0, 1]);
        let w = 3.0 / CLASS_ESS_BINS as f64;
        let (m0, open0) = p.median(0).unwrap();
        assert!((m0 - 1.495).abs() <= w && !open0, "{m0}");
        let (m1, _) = p.median(1).unwrap();
        assert!((m1 - 2.5).abs() <= w, "{m1}");
        assert_eq!(p.median(2), None);
        assert_eq!(p.median(3).map(|m| m.1), Some(true));
        assert_eq!(p.median_label(1), format!("ESS {m1:.1}"));
        assert_eq!(p.median_label(2), "ESS –");
        assert!(
            p.median_label(3).starts_with("ESS ≥4.0"),
            "{}",
            p.median_label(3)
        );
        // Many classes: the range stops at 11, bins of 0.1.
        let q = PerClassEss::new(50);
        assert!((q.width() - 0.1).abs() < 1e-12);
    }
}
