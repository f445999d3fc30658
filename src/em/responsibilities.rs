//! Responsibilities (posterior class probabilities) from log-likelihoods: the E-step
//! arithmetic that 2D and 3D classification share.
//!
//! For particle i and class k, with log-likelihood LL[i,k], log prior ln π_k and inverse
//! temperature β (annealing):
//!
//! ```text
//!   a[i,k]   = β·LL[i,k] + ln π_k
//!   ln Z_i   = m_i + ln Σ_k exp(a[i,k] − m_i),   m_i = max_k a[i,k]   (log-sum-exp)
//!   p[i,k]   = exp(a[i,k] − ln Z_i) = exp(a[i,k] − m_i) / Σ_k' exp(a[i,k'] − m_i)
//!   p'[i,k]  = (1 − s)·p[i,k] + s/K          (class similarity s ∈ [0,1]; s = 1 → 1/K)
//!   best_i   = argmax_k p'[i,k] (ties → lowest k), best-class probability p'[i,best_i]
//!   ESS_i    = 1 / Σ_k p'[i,k]²              (1 for one-hot, K for uniform)
//!   w[i,k]   = p'[i,k]                       (the weights the M-step uses), or, hard:
//!   w[i,k]   = 1 if k = best_i, else 0       (one-hot; best_i is argmax_k a[i,k] then)
//! ```
//!
//! A hard pass changes only the M-step weights w: the posterior p', the best-class
//! probability and the ESS reported for it are the soft ones of the same β and s, so a hard
//! final pass still says how certain each assignment is (issue 19: a one-hot posterior made
//! every threshold of `subset` keep every particle).
//!
//! Subtracting the row maximum (and dividing by the sum rather than subtracting ln Z)
//! keeps this exact for log-likelihoods of order −1e6, where a
//! naive `exp` underflows to 0 for every class. Rows are processed in parallel (rayon).

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::invalid;
use crate::error::Result;

/// Validated E-step parameters: inverse temperature, class similarity, force-hard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EStepParams {
    beta: f64,
    similarity: f64,
    hard: bool,
}

impl EStepParams {
    /// `beta` ≥ 0 and finite (1 = plain posterior, 0 = the prior); `similarity` in [0, 1];
    /// `hard` gives one-hot M-step weights (similarity then has no effect on them; the
    /// reported posterior stays soft).
    pub fn new(beta: f64, similarity: f64, hard: bool) -> Result<Self> {
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(invalid(
                "beta",
                format!("{beta} is not a finite value >= 0"),
            ));
        }
        if !(0.0..=1.0).contains(&similarity) {
            return Err(invalid(
                "class_similarity",
                format!("{similarity} is not in [0, 1]"),
            ));
        }
        Ok(Self {
            beta,
            similarity,
            hard,
        })
    }
    /// Plain posteriors: β = 1, no similarity, soft.
    pub fn plain() -> Self {
        Self {
            beta: 1.0,
            similarity: 0.0,
            hard: false,
        }
    }
    pub fn beta(&self) -> f64 {
        self.beta
    }
    pub fn similarity(&self) -> f64 {
        self.similarity
    }
    pub fn hard(&self) -> bool {
        self.hard
    }
}

/// The E-step result for a block of particles.
#[derive(Clone, Debug)]
pub struct Responsibilities {
    /// The M-step weights w (one-hot in a hard pass).
    probs: Array2<f64>,
    /// The soft posterior p' when it differs from `probs` (hard passes), else None.
    soft: Option<Array2<f64>>,
    log_evidence: Vec<f64>,
    best_class: Vec<usize>,
    best_prob: Vec<f64>,
    ess: Vec<f64>,
}

impl Responsibilities {
    /// The M-step weights w[i,k], particles × classes, rows sum to 1: p' in a soft pass,
    /// one-hot at `best_class` in a hard pass.
    pub fn probs(&self) -> &Array2<f64> {
        &self.probs
    }
    /// The soft posterior p'[i,k] (rows sum to 1), also in a hard pass: what the job writes
    /// as the class probabilities.
    pub fn posterior(&self) -> &Array2<f64> {
        self.soft.as_ref().unwrap_or(&self.probs)
    }
    /// ln Z_i = ln Σ_k exp(β·LL[i,k]) π_k, before similarity blending (for a lower bound
    /// or convergence check).
    pub fn log_evidence(&self) -> &[f64] {
        &self.log_evidence
    }
    /// argmax_k p'[i,k], ties → lowest index (the class of the one-hot weights when hard).
    pub fn best_class(&self) -> &[usize] {
        &self.best_class
    }
    /// p'[i, best_i], soft also in a hard pass (CryoSPARC's "probability of best class",
    /// `class_posterior`).
    pub fn best_prob(&self) -> &[f64] {
        &self.best_prob
    }
    /// ESS_i = 1 / Σ_k p'[i,k]² of the soft posterior (`class_ess`).
    pub fn ess(&self) -> &[f64] {
        &self.ess
    }
    /// Number of particles.
    pub fn len(&self) -> usize {
        self.best_class.len()
    }
    pub fn is_empty(&self) -> bool {
        self.best_class.is_empty()
    }
    /// Σ_i w[i,k] per class (the effective class sizes the M-step sees).
    pub fn class_weights(&self) -> Vec<f64> {
        self.probs.sum_axis(ndarray::Axis(0)).to_vec()
    }
}

/// ln Σ_j exp(x_j), stable; −∞ for an empty slice or when every x_j = −∞.
pub fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    // ln Σ exp(x) = m + ln Σ exp(x − m); every term ≤ 1 and the largest is exactly 1.
    m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// ESS = 1 / Σ_k p_k² of one probability vector.
pub fn ess(p: &[f64]) -> f64 {
    1.0 / p.iter().map(|v| v * v).sum::<f64>()
}

/// Index of the largest value, ties → lowest index (NaN never wins).
fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (k, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = k;
        }
    }
    best
}

/// Posteriors for every particle (rows of `ll`) over classes (columns).
///
/// Errors: `log_prior.len()` ≠ number of classes, zero classes, NaN or +∞ anywhere, or a
/// particle whose every class has a = −∞ (zero likelihood under all classes).
pub fn responsibilities(
    ll: ArrayView2<f64>,
    log_prior: &[f64],
    params: &EStepParams,
) -> Result<Responsibilities> {
    let (n, k) = ll.dim();
    if k == 0 {
        return Err(invalid("num_classes", "must be at least 1"));
    }
    if log_prior.len() != k {
        return Err(invalid(
            "log_prior",
            format!("{} values for {k} classes", log_prior.len()),
        ));
    }
    if let Some(j) = log_prior
        .iter()
        .position(|v| v.is_nan() || *v == f64::INFINITY)
    {
        return Err(invalid(
            "log_prior",
            format!("class {j} is {}", log_prior[j]),
        ));
    }
    let ll = ll.as_standard_layout();
    let ll = ll.as_slice().expect("standard layout is contiguous");
    let mut probs = vec![0.0; n * k];
    let (beta, s, hard) = (params.beta, params.similarity, params.hard);
    let uniform = 1.0 / k as f64;
    let rows: Vec<(f64, usize, f64, f64)> = probs
        .par_chunks_mut(k)
        .zip(ll.par_chunks(k))
        .enumerate()
        .map(|(i, (p, l))| {
            // a_k = β·LL_k + ln π_k, written into p first.
            for ((pk, &lk), &prior) in p.iter_mut().zip(l).zip(log_prior) {
                if lk.is_nan() || lk == f64::INFINITY {
                    return Err(invalid(
                        "log_likelihood",
                        format!("particle {i} has {lk} for a class"),
                    ));
                }
                // β = 0 with LL = −∞ is 0·(−∞): the prior alone decides.
                *pk = if beta == 0.0 { 0.0 } else { beta * lk } + prior;
            }
            let m = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                return Err(invalid(
                    "log_likelihood",
                    format!("particle {i} has zero probability under every class"),
                ));
            }
            // Σ_k exp(a_k − m) ≥ 1 (the largest term is exactly 1); p_k = exp(a_k − m) / Σ
            // equals exp(a_k − ln Z) without the cancellation of subtracting ln Z ≈ −1e6.
            p.iter_mut().for_each(|a| *a = (*a - m).exp());
            let sum: f64 = p.iter().sum();
            let log_z = m + sum.ln();
            // argmax a before blending (ties → lowest index): the hard class. Blending is
            // monotone, so it is also argmax p' up to rounding; using it for both keeps
            // `class` and the one-hot weights the same in a hard pass.
            let b = argmax(p);
            for v in p.iter_mut() {
                // p' = (1 − s)·p + s/K (s = 1 gives exactly 1/K).
                *v = (1.0 - s) * (*v / sum) + s * uniform;
            }
            let b = if hard { b } else { argmax(p) };
            Ok((log_z, b, p[b], ess(p)))
        })
        .collect::<Result<Vec<_>>>()?;
    let soft = Array2::from_shape_vec((n, k), probs).expect("n × k buffer");
    let (probs, soft) = if hard {
        // One-hot M-step weights at the hard class; the soft posterior is kept for output.
        let mut w = Array2::zeros((n, k));
        for (i, r) in rows.iter().enumerate() {
            w[[i, r.1]] = 1.0;
        }
        (w, Some(soft))
    } else {
        (soft, None)
    };
    let mut out = Responsibilities {
        probs,
        soft,
        log_evidence: Vec::with_capacity(n),
        best_class: Vec::with_capacity(n),
        best_prob: Vec::with_capacity(n),
        ess: Vec::with_capacity(n),
    };
    for (z, b, pb, e) in rows {
        out.log_evidence.push(z);
        out.best_class.push(b);
        out.best_prob.push(pb);
        out.ess.push(e);
    }
    Ok(out)
}

/// Per-class marginal over poses (2D: in-plane rotations × shifts; any pose grid).
#[derive(Clone, Debug)]
pub struct PoseMarginal {
    log_marginal: Array2<f64>,
    best_pose: Array2<usize>,
}

impl PoseMarginal {
    /// M[i,k] = ln( (1/P) Σ_j exp(β·LL[i,k,j]) ), particles × classes: the log-likelihood of
    /// class k with a uniform prior over the P poses. Feed it to [`responsibilities`] with
    /// β = 1 (the temperature was already applied here).
    pub fn log_marginal(&self) -> &Array2<f64> {
        &self.log_marginal
    }
    /// argmax_j LL[i,k,j] per particle and class (ties → lowest pose): the pose used when
    /// `force_max` is on.
    pub fn best_pose(&self) -> &Array2<usize> {
        &self.best_pose
    }
}

/// Marginalises a log-likelihood laid out as `ll[(i·K + k)·P + j]` (particle i, class k,
/// pose j, poses contiguous) over poses, per class:
///
/// ```text
///   M[i,k] = ln Σ_j exp(β·LL[i,k,j]) − ln P      (log-sum-exp over poses)
///   best[i,k] = argmax_j LL[i,k,j]               (ties → lowest j)
/// ```
///
/// A class whose poses are all −∞ gets M = −∞ (allowed; [`responsibilities`] rejects a
/// particle only if every class is −∞). NaN or +∞ is an error.
pub fn marginalize_poses(
    ll: &[f64],
    n_particles: usize,
    n_classes: usize,
    n_poses: usize,
    beta: f64,
) -> Result<PoseMarginal> {
    if n_poses == 0 || n_classes == 0 {
        return Err(invalid("poses", "need at least one class and one pose"));
    }
    if ll.len() != n_particles * n_classes * n_poses {
        return Err(invalid(
            "log_likelihood",
            format!(
                "{} values for {n_particles} particles × {n_classes} classes × {n_poses} poses",
                ll.len()
            ),
        ));
    }
    if !(beta.is_finite() && beta > 0.0) {
        return Err(invalid("beta", format!("{beta} is not a finite value > 0")));
    }
    if let Some(at) = ll.iter().position(|v| v.is_nan() || *v == f64::INFINITY) {
        return Err(invalid(
            "log_likelihood",
            format!(
                "particle {} class {} pose {} is {}",
                at / (n_classes * n_poses),
                (at / n_poses) % n_classes,
                at % n_poses,
                ll[at]
            ),
        ));
    }
    let ln_p = (n_poses as f64).ln();
    let (marg, best): (Vec<f64>, Vec<usize>) = ll
        .par_chunks(n_poses)
        .map(|poses| {
            let b = argmax(poses);
            let m = beta * poses[b];
            if m == f64::NEG_INFINITY {
                return (f64::NEG_INFINITY, b);
            }
            // ln Σ_j exp(β·LL_j) = m + ln Σ_j exp(β·LL_j − m), m = β·max LL.
            let sum: f64 = poses.iter().map(|&v| (beta * v - m).exp()).sum();
            (m + sum.ln() - ln_p, b)
        })
        .unzip();
    let shape = (n_particles, n_classes);
    Ok(PoseMarginal {
        log_marginal: Array2::from_shape_vec(shape, marg).expect("n × k"),
        best_pose: Array2::from_shape_vec(shape, best).expect("n × k"),
    })
}

/// Posterior over poses within one (particle, class): w_j = exp(β·LL_j − ln Σ exp(β·LL)),
/// written into `out` (for marginalising over poses when `force_max` is off). At least one
/// LL_j must be finite.
pub fn pose_weights(ll_poses: &[f64], beta: f64, out: &mut [f64]) {
    assert_eq!(ll_poses.len(), out.len(), "pose weights: length mismatch");
    // w_j = exp(β·LL_j − m) / Σ_j exp(β·LL_j − m), m = max_j β·LL_j.
    let m = ll_poses
        .iter()
        .map(|&v| beta * v)
        .fold(f64::NEG_INFINITY, f64::max);
    for (o, &v) in out.iter_mut().zip(ll_poses) {
        *o = (beta * v - m).exp();
    }
    let sum: f64 = out.iter().sum();
    out.iter_mut().for_each(|o| *o /= sum);
}

/// Five-number summary for the per-iteration log line (ESS, best-class probability).
/// Quantiles use linear interpolation between order statistics at q·(n − 1) (numpy's
/// default), so the median of an even count is the mean of the two middle values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quartiles {
    pub min: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub max: f64,
}

impl Quartiles {
    /// Errors on an empty slice or a NaN.
    pub fn of(values: &[f64]) -> Result<Self> {
        if values.is_empty() {
            return Err(invalid("quartiles", "no values"));
        }
        if values.iter().any(|v| v.is_nan()) {
            return Err(invalid("quartiles", "NaN among the values"));
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| {
            let pos = f * (v.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
        };
        Ok(Self {
            min: v[0],
            q25: q(0.25),
            median: q(0.5),
            q75: q(0.75),
            max: v[v.len() - 1],
        })
    }
}

impl std::fmt::Display for Quartiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.3} | 25% {:.3} | median {:.3} | 75% {:.3} | max {:.3}",
            self.min, self.q25, self.median, self.q75, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn matches_naive_softmax_on_small_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (n, k) = (37, 5);
        let ll = Array2::from_shape_fn((n, k), |_| rng.gen_range(-5.0..5.0));
        let prior: Vec<f64> = [0.1, 0.2, 0.3, 0.25, 0.15]
            .iter()
            .map(|v| f64::ln(*v))
            .collect();
        let r = responsibilities(ll.view(), &prior, &EStepParams::plain()).unwrap();
        for i in 0..n {
            let w: Vec<f64> = (0..k).map(|c| ll[[i, c]].exp() * prior[c].exp()).collect();
            let z: f64 = w.iter().sum();
            for (c, wc) in w.iter().enumerate() {
                assert!(close(r.probs()[[i, c]], wc / z, 1e-12));
            }
            assert!(close(r.log_evidence()[i], z.ln(), 1e-12));
        }
    }

    #[test]
    fn stable_for_huge_negative_log_likelihoods() {
        // Differences of 1 and 2 on top of −1e6: exp(−1e6) underflows, log-sum-exp does not.
        let ll = array![[-1e6, -1e6 - 1.0, -1e6 - 2.0]];
        let r = responsibilities(ll.view(), &[0.0; 3], &EStepParams::plain()).unwrap();
        let z = 1.0 + (-1.0f64).exp() + (-2.0f64).exp();
        assert!(close(r.probs()[[0, 0]], 1.0 / z, 1e-12));
        assert!(close(r.probs()[[0, 2]], (-2.0f64).exp() / z, 1e-12));
        assert!(close(r.log_evidence()[0], -1e6 + z.ln(), 1e-15));
    }

    #[test]
    fn beta_tempers_and_zero_gives_the_prior() {
        let ll = array![[0.0, -2.0]];
        let half = EStepParams::new(0.5, 0.0, false).unwrap();
        let r = responsibilities(ll.view(), &[0.0, 0.0], &half).unwrap();
        let want = 1.0 / (1.0 + (-1.0f64).exp());
        assert!(close(r.probs()[[0, 0]], want, 1e-12));
        let zero = EStepParams::new(0.0, 0.0, false).unwrap();
        let prior = [0.3f64.ln(), 0.7f64.ln()];
        let ll = array![[0.0, f64::NEG_INFINITY]];
        let r = responsibilities(ll.view(), &prior, &zero).unwrap();
        assert!(close(r.probs()[[0, 1]], 0.7, 1e-12));
    }

    #[test]
    fn similarity_one_is_exactly_uniform_and_blends_linearly() {
        let ll = array![[0.0, -30.0, -60.0, -90.0], [-1e6, 0.0, -3.0, -5.0]];
        let p1 = EStepParams::new(1.0, 1.0, false).unwrap();
        let r = responsibilities(ll.view(), &[0.0; 4], &p1).unwrap();
        assert!(r.probs().iter().all(|&v| v == 0.25));
        assert!(r.ess().iter().all(|&e| close(e, 4.0, 1e-15)));
        let plain = responsibilities(ll.view(), &[0.0; 4], &EStepParams::plain()).unwrap();
        let s = 0.3;
        let ps = EStepParams::new(1.0, s, false).unwrap();
        let r = responsibilities(ll.view(), &[0.0; 4], &ps).unwrap();
        for (a, b) in r.probs().iter().zip(plain.probs().iter()) {
            assert!(close(*a, (1.0 - s) * b + s / 4.0, 1e-14));
        }
        for row in r.probs().rows() {
            assert!(close(row.sum(), 1.0, 1e-14));
        }
    }

    #[test]
    fn hard_weights_are_one_hot_ties_lowest_and_ignore_similarity() {
        let ll = array![
            [-3.0, -1.0, -1.0],
            [5.0, 5.0, 5.0],
            [-1e6, -2e6, -1e6 + 0.5]
        ];
        let p = EStepParams::new(1.0, 0.9, true).unwrap();
        let r = responsibilities(ll.view(), &[0.0; 3], &p).unwrap();
        assert_eq!(r.best_class(), &[1, 0, 2]);
        for (i, row) in r.probs().rows().into_iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(v, if c == r.best_class()[i] { 1.0 } else { 0.0 });
            }
        }
        assert_eq!(r.class_weights(), vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn hard_pass_reports_the_soft_posterior_and_its_ess() {
        // Issue 19: the written posterior of a hard pass is the soft one of the same β, s.
        let ll = array![
            [-3.0, -1.0, -1.0],
            [0.0, -1.0, -40.0],
            [-1e6, -2e6, -1e6 + 0.5]
        ];
        for s in [0.0, 0.3] {
            let hard = EStepParams::new(1.0, s, true).unwrap();
            let soft = EStepParams::new(1.0, s, false).unwrap();
            let h = responsibilities(ll.view(), &[0.0; 3], &hard).unwrap();
            let w = responsibilities(ll.view(), &[0.0; 3], &soft).unwrap();
            assert_eq!(h.posterior(), w.probs());
            assert_eq!(h.ess(), w.ess());
            assert_eq!(h.log_evidence(), w.log_evidence());
            assert!(h.ess().iter().all(|&e| e > 1.0), "{:?}", h.ess());
            for i in 0..3 {
                let b = h.best_class()[i];
                assert_eq!(h.best_prob()[i], w.probs()[[i, b]]);
                assert!(h.best_prob()[i] < 1.0);
            }
            // Ties: the hard class is the lowest index, its soft probability is reported.
            assert_eq!(h.best_class()[0], 1);
            assert!(close(h.best_prob()[0], h.posterior()[[0, 2]], 0.0));
            // Soft passes: the posterior is the M-step weights.
            assert_eq!(w.posterior(), w.probs());
        }
        // Row 1, s = 0: p = softmax(0, −1, −40).
        let h = responsibilities(
            ll.view(),
            &[0.0; 3],
            &EStepParams::new(1.0, 0.0, true).unwrap(),
        )
        .unwrap();
        let z = 1.0 + (-1.0f64).exp() + (-40.0f64).exp();
        assert!(close(h.best_prob()[1], 1.0 / z, 1e-14));
    }

    #[test]
    fn ess_and_best_probability_follow_the_seed_examples() {
        // 50/25/25 split: ESS = 1/(0.25 + 2·0.0625) = 2.67, between 2 and 3 (the formal
        // definition; the seed's prose "slightly less than 2" does not match its formula).
        let p = [0.5, 0.25, 0.25];
        assert!(close(ess(&p), 1.0 / 0.375, 1e-15));
        assert!(ess(&p) > 2.0 && ess(&p) < 3.0);
        assert_eq!(ess(&[1.0, 0.0, 0.0]), 1.0);
        assert!(close(ess(&[0.1; 10]), 10.0, 1e-12));
        let ll = array![[0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln()]];
        let r = responsibilities(ll.view(), &[0.0; 3], &EStepParams::plain()).unwrap();
        assert!(close(r.best_prob()[0], 0.5, 1e-14));
        assert_eq!(r.best_class()[0], 0);
        assert!(close(r.ess()[0], 1.0 / 0.375, 1e-12));
        assert!(close(r.class_weights()[1], 0.25, 1e-14));
    }

    #[test]
    fn bad_input_is_an_error() {
        let ok = array![[0.0, 1.0]];
        assert!(responsibilities(ok.view(), &[0.0], &EStepParams::plain()).is_err());
        assert!(responsibilities(ok.view(), &[0.0, f64::NAN], &EStepParams::plain()).is_err());
        let nan = array![[0.0, f64::NAN]];
        assert!(responsibilities(nan.view(), &[0.0; 2], &EStepParams::plain()).is_err());
        let dead = array![[0.0, 0.0], [f64::NEG_INFINITY, f64::NEG_INFINITY]];
        let e = responsibilities(dead.view(), &[0.0; 2], &EStepParams::plain()).unwrap_err();
        assert!(e.to_string().contains("particle 1"), "{e}");
        assert!(EStepParams::new(-1.0, 0.0, false).is_err());
        assert!(EStepParams::new(1.0, 1.5, false).is_err());
        assert!(EStepParams::new(f64::NAN, 0.0, false).is_err());
    }

    #[test]
    fn non_standard_layout_is_accepted() {
        let ll = array![[0.0, -1.0], [-2.0, 0.0], [1.0, 1.0]];
        let t = ll.t().to_owned(); // 2 × 3, transpose back as a view with swapped strides
        let r = responsibilities(t.t(), &[0.0; 2], &EStepParams::plain()).unwrap();
        let d = responsibilities(ll.view(), &[0.0; 2], &EStepParams::plain()).unwrap();
        assert_eq!(r.probs(), d.probs());
    }

    #[test]
    fn pose_marginal_matches_naive_and_finds_the_best_pose() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n, k, p) = (4, 3, 6);
        let ll: Vec<f64> = (0..n * k * p)
            .map(|_| rng.gen_range(-4.0..0.0) - 1e5)
            .collect();
        let m = marginalize_poses(&ll, n, k, p, 1.0).unwrap();
        for i in 0..n {
            for c in 0..k {
                let poses = &ll[(i * k + c) * p..(i * k + c + 1) * p];
                let shifted: f64 = poses.iter().map(|v| (v + 1e5).exp()).sum::<f64>() / p as f64;
                assert!(close(m.log_marginal()[[i, c]], shifted.ln() - 1e5, 1e-14));
                let b = m.best_pose()[[i, c]];
                assert!(poses.iter().all(|&v| v <= poses[b]));
            }
        }
        // Ties → lowest pose; all −∞ class → −∞ marginal.
        let ll = [
            1.0,
            2.0,
            2.0,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        let m = marginalize_poses(&ll, 1, 2, 3, 2.0).unwrap();
        assert_eq!(m.best_pose()[[0, 0]], 1);
        assert_eq!(m.log_marginal()[[0, 1]], f64::NEG_INFINITY);
        let want = (2f64.exp() + 2.0 * 4f64.exp()).ln() - 3f64.ln();
        assert!(close(m.log_marginal()[[0, 0]], want, 1e-14));
        assert!(marginalize_poses(&ll, 1, 2, 2, 1.0).is_err());
        assert!(marginalize_poses(&[f64::NAN], 1, 1, 1, 1.0).is_err());
    }

    #[test]
    fn log_sum_exp_is_stable_and_handles_empty() {
        assert!(close(log_sum_exp(&[-1e6, -1e6]), -1e6 + 2f64.ln(), 1e-15));
        assert!(close(log_sum_exp(&[0.0, 0.0, 0.0]), 3f64.ln(), 1e-15));
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY]), f64::NEG_INFINITY);
    }

    #[test]
    fn pose_weights_sum_to_one() {
        let mut w = [0.0; 3];
        pose_weights(&[-1e6, -1e6, -1e6 - 1.0], 1.0, &mut w);
        assert!(close(w.iter().sum::<f64>(), 1.0, 1e-14));
        assert!(close(w[0], w[1], 1e-15) && w[2] < w[0]);
    }

    #[test]
    fn quartiles_interpolate_like_numpy() {
        let q = Quartiles::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((q.min, q.max), (1.0, 4.0));
        assert!(close(q.q25, 1.75, 1e-15));
        assert!(close(q.median, 2.5, 1e-15));
        assert!(close(q.q75, 3.25, 1e-15));
        let one = Quartiles::of(&[7.0]).unwrap();
        assert_eq!(
            (one.min, one.q25, one.median, one.q75, one.max),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
        assert!(Quartiles::of(&[]).is_err());
        assert!(Quartiles::of(&[1.0, f64::NAN]).is_err());
        assert!(q.to_string().contains("median 2.500"));
    }
}
