//! Iteration schedules of the EM engine: ICUF noise annealing (2D), the online-EM learning
//! rate (3D and 2D) and class-similarity annealing with `hard_after_anneal` (3D).
//!
//! Iterations are counted from 0 over the whole run (online-EM iterations first, then full
//! iterations), so a schedule is a pure function of the iteration index and a resumed run
//! gets the same values as an uninterrupted one.

use super::invalid;
use crate::error::Result;

/// ICUF ("initial classification uncertainty factor") annealing of the noise model.
///
/// The schedule, per resolution shell ℓ, at iteration t of a run with T online-EM
/// iterations:
///
/// ```text
///   w(t)       = 1 − t/T           for t < T,   0 for t ≥ T (full iterations)
///   σ²_t(ℓ)    = w(t)·ICUF·σ²_init(ℓ) + (1 − w(t))·σ²_cur(ℓ)
/// ```
///
/// σ²_init is the noise measured on 100 random images at the start (signal + noise, so it
/// is already larger than the true noise) and σ²_cur the noise estimated from the current
/// class averages. Log-likelihoods scale as 1/σ², so ICUF·σ²_init flattens the early
/// posteriors; the inflation factor σ²_t/σ²_cur ≈ 1 + w(t)·(ICUF·σ²_init/σ²_cur − 1) is
/// larger at every t for a larger ICUF, so a high ICUF keeps assignments uncertain for more
/// iterations (the seed's description), and every run ends on the current noise.
/// Interpolation is linear in σ² (a mixture of the two noise levels), reaching σ²_cur
/// exactly when the online-EM phase ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IcufSchedule {
    icuf: f64,
    online_iterations: usize,
}

impl IcufSchedule {
    /// `icuf` finite and > 0 (1 = start from the initial noise as measured).
    pub fn new(icuf: f64, online_iterations: usize) -> Result<Self> {
        if !(icuf.is_finite() && icuf > 0.0) {
            return Err(invalid("icuf", format!("{icuf} is not a finite value > 0")));
        }
        Ok(Self {
            icuf,
            online_iterations,
        })
    }
    /// w(t) = 1 − t/T for t < T, else 0.
    pub fn weight(&self, t: usize) -> f64 {
        if t >= self.online_iterations {
            0.0
        } else {
            1.0 - t as f64 / self.online_iterations as f64
        }
    }
    /// σ²_t(ℓ) = w(t)·ICUF·σ²_init(ℓ) + (1 − w(t))·σ²_cur(ℓ), written into `out`.
    pub fn sigma2(
        &self,
        t: usize,
        initial: &[f64],
        current: &[f64],
        out: &mut [f64],
    ) -> Result<()> {
        if initial.len() != current.len() || out.len() != current.len() {
            return Err(invalid(
                "sigma2",
                format!(
                    "{} initial, {} current and {} output shells",
                    initial.len(),
                    current.len(),
                    out.len()
                ),
            ));
        }
        let w = self.weight(t);
        for ((o, &s0), &sc) in out.iter_mut().zip(initial).zip(current) {
            if !(s0.is_finite() && sc.is_finite() && s0 > 0.0 && sc > 0.0) {
                return Err(invalid(
                    "sigma2",
                    format!("noise power must be finite and > 0 (initial {s0}, current {sc})"),
                ));
            }
            *o = w * self.icuf * s0 + (1.0 - w) * sc;
        }
        Ok(())
    }
}

/// Online-EM learning rate η(t) with an initial value and a half-life (3D seed:
/// `oem_learning_rate_init`, `oem_learning_rate_halflife`).
///
/// ```text
///   η(t) = η0 / (1 + t/h)     (h > 0: η halves at t = h, is η0/3 at t = 2h, ...)
///   η(t) = η0                 (h = 0: a fixed learning rate, as the forum thread uses)
/// ```
///
/// The hyperbolic decay (rather than η0·2^(−t/h)) keeps Σ_t η(t) = ∞, so late batches still
/// move the model (Robbins–Monro), while Σ η² < ∞ averages the batch noise out. The
/// statistics are updated as S ← (1 − η)·S + η·S_batch (see `Stats::blend`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearningRate {
    init: f64,
    halflife: f64,
}

impl LearningRate {
    /// `init` in (0, 1]; `halflife` ≥ 0 iterations (0 = constant).
    pub fn new(init: f64, halflife: f64) -> Result<Self> {
        if !(init > 0.0 && init <= 1.0) {
            return Err(invalid(
                "oem_learning_rate_init",
                format!("{init} is not in (0, 1]"),
            ));
        }
        if !(halflife.is_finite() && halflife >= 0.0) {
            return Err(invalid(
                "oem_learning_rate_halflife",
                format!("{halflife} is not a finite value >= 0"),
            ));
        }
        Ok(Self { init, halflife })
    }
    /// η(t).
    pub fn at(&self, t: usize) -> f64 {
        if self.halflife == 0.0 {
            self.init
        } else {
            self.init / (1.0 + t as f64 / self.halflife)
        }
    }
}

/// Class similarity annealed linearly from `initial` to 0 between iterations `start` and
/// `end`, the forum thread's `hard_after_anneal`, and its reverse, `hard_first` (hard
/// classification for the first iterations, to let the volumes diverge, then weighted):
///
/// ```text
///   s(t) = s0                          t ≤ start
///   s(t) = s0·(end − t)/(end − start)  start < t < end
///   s(t) = 0                           t ≥ end
///   hard(t) = force_hard  or  (hard_after_anneal and t ≥ end)  or  t < hard_first
/// ```
///
/// `hard_after_anneal` switches on at the first iteration whose similarity is 0 after the
/// annealing window (also when s0 = 0: the window still marks the soft phase). Iterations
/// t count O-EM first, from 0, then F-EM, like `start` and `end`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimilaritySchedule {
    initial: f64,
    start: usize,
    end: usize,
    force_hard: bool,
    hard_after_anneal: bool,
    hard_first: usize,
}

impl SimilaritySchedule {
    /// `initial` in [0, 1]; `start` ≤ `end` (equal: a step from s0 to 0 at `end`).
    pub fn new(
        initial: f64,
        start: usize,
        end: usize,
        force_hard: bool,
        hard_after_anneal: bool,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&initial) {
            return Err(invalid(
                "class_similarity",
                format!("{initial} is not in [0, 1]"),
            ));
        }
        if start > end {
            return Err(invalid(
                "class_similarity_anneal_start",
                format!("start iteration {start} is after the end iteration {end}"),
            ));
        }
        Ok(Self {
            initial,
            start,
            end,
            force_hard,
            hard_after_anneal,
            hard_first: 0,
        })
    }
    /// The same schedule, hard in iterations `t < n` (`hard_first_iterations`; 0 = off).
    pub fn with_hard_first(self, n: usize) -> Self {
        Self {
            hard_first: n,
            ..self
        }
    }
    /// Whether iteration t is one of the `hard_first` iterations.
    pub fn in_hard_first(&self, t: usize) -> bool {
        t < self.hard_first
    }
    /// s(t).
    pub fn similarity(&self, t: usize) -> f64 {
        if t >= self.end {
            0.0
        } else if t <= self.start {
            self.initial
        } else {
            self.initial * (self.end - t) as f64 / (self.end - self.start) as f64
        }
    }
    /// Whether posteriors are one-hot at iteration t.
    pub fn hard(&self, t: usize) -> bool {
        self.force_hard || (self.hard_after_anneal && t >= self.end) || self.in_hard_first(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icuf_starts_inflated_and_ends_on_current_noise() {
        let s = IcufSchedule::new(2.0, 4).unwrap();
        let (init, cur) = ([4.0, 2.0], [1.0, 1.0]);
        let mut out = [0.0; 2];
        s.sigma2(0, &init, &cur, &mut out).unwrap();
        assert_eq!(out, [8.0, 4.0]);
        s.sigma2(2, &init, &cur, &mut out).unwrap();
        assert_eq!(out, [4.5, 2.5]);
        for t in [4, 5, 100] {
            s.sigma2(t, &init, &cur, &mut out).unwrap();
            assert_eq!(out, cur);
        }
        // Monotone non-increasing while σ²_init·ICUF > σ²_cur.
        let mut prev = f64::INFINITY;
        for t in 0..6 {
            s.sigma2(t, &init, &cur, &mut out).unwrap();
            assert!(out[0] <= prev);
            prev = out[0];
        }
    }

    #[test]
    fn higher_icuf_stays_uncertain_for_more_iterations() {
        // Iterations with noise inflation ≥ 1.5 × current: more for the higher ICUF.
        let count = |icuf: f64| {
            let s = IcufSchedule::new(icuf, 20).unwrap();
            let mut out = [0.0];
            (0..30)
                .filter(|&t| {
                    s.sigma2(t, &[1.0], &[1.0], &mut out).unwrap();
                    out[0] >= 1.5
                })
                .count()
        };
        assert!(count(4.0) > count(2.0));
        assert!(count(2.0) > count(1.2));
        assert_eq!(count(1.0), 0);
    }

    #[test]
    fn icuf_rejects_bad_values() {
        assert!(IcufSchedule::new(0.0, 5).is_err());
        assert!(IcufSchedule::new(f64::NAN, 5).is_err());
        let s = IcufSchedule::new(2.0, 0).unwrap();
        assert_eq!(s.weight(0), 0.0);
        let mut out = [0.0];
        assert!(s.sigma2(0, &[1.0, 2.0], &[1.0], &mut out).is_err());
        assert!(s.sigma2(0, &[0.0], &[1.0], &mut out).is_err());
    }

    #[test]
    fn learning_rate_halves_at_the_half_life_and_zero_is_fixed() {
        let r = LearningRate::new(0.4, 10.0).unwrap();
        assert_eq!(r.at(0), 0.4);
        assert!((r.at(10) - 0.2).abs() < 1e-15);
        assert!((r.at(20) - 0.4 / 3.0).abs() < 1e-15);
        assert!((1..50).all(|t| r.at(t) < r.at(t - 1)));
        let fixed = LearningRate::new(1.0, 0.0).unwrap();
        assert!((0..100).all(|t| fixed.at(t) == 1.0));
        assert!(LearningRate::new(0.0, 1.0).is_err());
        assert!(LearningRate::new(1.5, 1.0).is_err());
        assert!(LearningRate::new(0.5, -1.0).is_err());
    }

    #[test]
    fn similarity_anneals_linearly_and_hard_after_anneal_switches_at_end() {
        let s = SimilaritySchedule::new(0.5, 2, 6, false, true).unwrap();
        let got: Vec<f64> = (0..8).map(|t| s.similarity(t)).collect();
        assert_eq!(got, vec![0.5, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]);
        let hard: Vec<bool> = (0..8).map(|t| s.hard(t)).collect();
        assert_eq!(
            hard,
            vec![false, false, false, false, false, false, true, true]
        );
        // The switch is exactly where similarity first reaches 0.
        let first_zero = (0..8).position(|t| s.similarity(t) == 0.0).unwrap();
        assert_eq!(first_zero, (0..8).position(|t| s.hard(t)).unwrap());
        let off = SimilaritySchedule::new(0.5, 2, 6, false, false).unwrap();
        assert!((0..20).all(|t| !off.hard(t)));
        let forced = SimilaritySchedule::new(0.5, 2, 6, true, false).unwrap();
        assert!((0..20).all(|t| forced.hard(t)));
    }

    #[test]
    fn hard_first_is_hard_before_and_soft_after() {
        let s = SimilaritySchedule::new(0.5, 0, 4, false, false)
            .unwrap()
            .with_hard_first(3);
        let hard: Vec<bool> = (0..6).map(|t| s.hard(t)).collect();
        assert_eq!(hard, vec![true, true, true, false, false, false]);
        assert!(s.in_hard_first(2) && !s.in_hard_first(3));
        // Similarity is unchanged by it.
        assert_eq!(s.similarity(2), 0.25);
        let off = s.with_hard_first(0);
        assert!((0..6).all(|t| !off.hard(t) && !off.in_hard_first(t)));
    }

    #[test]
    fn similarity_step_and_validation() {
        let step = SimilaritySchedule::new(1.0, 3, 3, false, false).unwrap();
        assert_eq!(step.similarity(2), 1.0);
        assert_eq!(step.similarity(3), 0.0);
        assert!(SimilaritySchedule::new(1.1, 0, 1, false, false).is_err());
        assert!(SimilaritySchedule::new(0.5, 4, 2, false, false).is_err());
        // Frozen similarity: end beyond the run keeps s = s0.
        let frozen = SimilaritySchedule::new(1.0, 1000, 1000, false, true).unwrap();
        assert!((0..100).all(|t| frozen.similarity(t) == 1.0 && !frozen.hard(t)));
    }
}
