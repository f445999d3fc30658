//! A one-dimensional Gaussian mixture fitted by EM, for clustering particles by a statistic
//! (CryoSPARC's "cluster by GMM" in Subset Particles by Statistic).
//!
//! Model: p(x) = Σ_c w_c N(x; μ_c, σ_c²). The values may be spread over ranks: every sum is
//! all-reduced and the start is found by exact order statistics over ranks
//! ([`super::order_stats`]), so the fit is the same on any number of ranks (up to the order
//! of floating-point sums). Start: means at the (c + ½)/C quantiles of the sorted values, every σ_c = the overall standard deviation / C, equal weights — so a fit is
//! deterministic (no seed). Each EM iteration costs ≈ 10·n·C flops (one exp per particle and
//! component). Variances are floored at 10⁻⁶ of the overall variance (and at a tiny absolute
//! value) so a component sitting on a spike of identical values (e.g. probabilities of
//! exactly 1) cannot collapse to zero width. Stops when the mean log-likelihood per particle
//! changes by less than `tolerance` or after `max_iterations`. Components are returned in
//! increasing order of their means; a particle is assigned to the component with the largest
//! w_c N(x; μ_c, σ_c²) (the lowest index on an exact tie).

use rayon::prelude::*;

use crate::comm::Comm;

use super::order_stats::{f64_key, key_f64, kth_smallest};

/// A fitted mixture (components sorted by mean).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Gmm1d {
    pub weights: Vec<f64>,
    pub means: Vec<f64>,
    pub sds: Vec<f64>,
    /// Mean log-likelihood per value at the end.
    pub mean_log_likelihood: f64,
    pub iterations: usize,
    pub converged: bool,
}

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_7;

impl Gmm1d {
    /// Fits `components` Gaussians to every rank's `values` (all finite; at least
    /// `components` values in all); collective, the same result on every rank.
    pub fn fit(
        comm: &dyn Comm,
        values: &[f64],
        components: usize,
        max_iterations: usize,
        tolerance: f64,
    ) -> Result<Gmm1d, String> {
        let mut sums = [
            values.len() as f64,
            values.iter().sum::<f64>(),
            f64::from(u8::from(values.iter().any(|v| !v.is_finite()))),
        ];
        comm.all_reduce_sum_f64(&mut sums);
        let n = sums[0] as usize;
        if components == 0 {
            return Err("need at least one component".into());
        }
        if n < components {
            return Err(format!(
                "{n} values cannot be clustered into {components} components"
            ));
        }
        if sums[2] > 0.0 {
            return Err("values must be finite".into());
        }
        let mean = sums[1] / n as f64;
        let mut var = [values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()];
        comm.all_reduce_sum_f64(&mut var);
        let var = var[0] / n as f64;
        let floor = (var * 1e-6).max(1e-12 * mean.abs().max(1.0).powi(2));
        let c = components;
        let keys: Vec<(usize, u128)> = values.iter().map(|&v| (0, f64_key(v))).collect();
        let starts: Vec<(usize, u64)> = (0..c)
            .map(|i| {
                (
                    0,
                    ((((i as f64 + 0.5) / c as f64) * n as f64) as usize % n) as u64 + 1,
                )
            })
            .collect();
        let means = kth_smallest(comm, &keys, &starts)
            .into_iter()
            .map(|k| key_f64(k.expect("n values")))
            .collect();
        drop(keys);
        let mut g = Gmm1d {
            weights: vec![1.0 / c as f64; c],
            means,
            sds: vec![(var.sqrt() / c as f64).max(floor.sqrt()); c],
            mean_log_likelihood: f64::NEG_INFINITY,
            iterations: 0,
            converged: false,
        };
        for it in 1..=max_iterations.max(1) {
            // E-step and sufficient statistics [Σr, Σr·x, Σr·x²] per component, in one pass.
            let (stats, ll) = values
                .par_chunks(4096)
                .map(|chunk| {
                    let mut s = vec![0.0f64; 3 * c];
                    let mut ll = 0.0;
                    let mut r = vec![0.0f64; c];
                    for &x in chunk {
                        let lse = g.log_resp(x, &mut r);
                        ll += lse;
                        for k in 0..c {
                            s[3 * k] += r[k];
                            s[3 * k + 1] += r[k] * x;
                            s[3 * k + 2] += r[k] * x * x;
                        }
                    }
                    (s, ll)
                })
                .reduce(
                    || (vec![0.0; 3 * c], 0.0),
                    |(mut a, la), (b, lb)| {
                        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                        (a, la + lb)
                    },
                );
            let mut stats = stats;
            stats.push(ll);
            comm.all_reduce_sum_f64(&mut stats);
            let ll = stats[3 * c] / n as f64;
            // M-step. A component with (almost) no responsibility keeps its place and width.
            for k in 0..c {
                let nk = stats[3 * k];
                g.weights[k] = nk / n as f64;
                if nk > 1e-10 * n as f64 {
                    let mu = stats[3 * k + 1] / nk;
                    let v = (stats[3 * k + 2] / nk - mu * mu).max(floor);
                    g.means[k] = mu;
                    g.sds[k] = v.sqrt();
                }
            }
            g.iterations = it;
            let change = (ll - g.mean_log_likelihood).abs();
            g.mean_log_likelihood = ll;
            if change < tolerance {
                g.converged = true;
                break;
            }
        }
        g.sort_by_mean();
        Ok(g)
    }

    /// Number of components.
    pub fn len(&self) -> usize {
        self.means.len()
    }

    /// Always false: a mixture has at least one component.
    pub fn is_empty(&self) -> bool {
        self.means.is_empty()
    }

    /// Fills `r` with the responsibilities of each component for `x`; returns log p(x).
    fn log_resp(&self, x: f64, r: &mut [f64]) -> f64 {
        let mut m = f64::NEG_INFINITY;
        for (k, rk) in r.iter_mut().enumerate() {
            *rk = self.log_weighted_density(k, x);
            m = m.max(*rk);
        }
        let mut s = 0.0;
        for rk in r.iter_mut() {
            *rk = (*rk - m).exp();
            s += *rk;
        }
        r.iter_mut().for_each(|rk| *rk /= s);
        m + s.ln()
    }

    /// ln(w_k N(x; μ_k, σ_k²)).
    fn log_weighted_density(&self, k: usize, x: f64) -> f64 {
        let z = (x - self.means[k]) / self.sds[k];
        self.weights[k].ln() - self.sds[k].ln() - LN_SQRT_2PI - 0.5 * z * z
    }

    /// w_k N(x; μ_k, σ_k²), for plotting.
    pub fn weighted_density(&self, k: usize, x: f64) -> f64 {
        self.log_weighted_density(k, x).exp()
    }

    /// The most likely component of `x` (lowest index on an exact tie).
    pub fn assign(&self, x: f64) -> usize {
        let mut best = (0, f64::NEG_INFINITY);
        for k in 0..self.len() {
            let l = self.log_weighted_density(k, x);
            if l > best.1 {
                best = (k, l);
            }
        }
        best.0
    }

    fn sort_by_mean(&mut self) {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by(|&a, &b| self.means[a].total_cmp(&self.means[b]));
        let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        (self.weights, self.means, self.sds) =
            (pick(&self.weights), pick(&self.means), pick(&self.sds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn sample(parts: &[(usize, f64, f64)], seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v = Vec::new();
        for &(n, mu, sd) in parts {
            let d = Normal::new(mu, sd).unwrap();
            v.extend((0..n).map(|_| d.sample(&mut rng)));
        }
        v
    }

    #[test]
    fn recovers_two_separated_components() {
        let v = sample(&[(3000, 5.0, 1.0), (1000, -2.0, 0.5)], 1);
        let g = Gmm1d::fit(&Single, &v, 2, 500, 1e-10).unwrap();
        assert!(g.converged);
        assert!(
            (g.means[0] + 2.0).abs() < 0.05 && (g.means[1] - 5.0).abs() < 0.08,
            "{g:?}"
        );
        assert!(
            (g.sds[0] - 0.5).abs() < 0.05 && (g.sds[1] - 1.0).abs() < 0.05,
            "{g:?}"
        );
        assert!((g.weights[0] - 0.25).abs() < 0.01, "{g:?}");
        // Assignment: every value from the first block goes to component 1 (mean 5), etc.
        let wrong = v[..3000].iter().filter(|&&x| g.assign(x) != 1).count()
            + v[3000..].iter().filter(|&&x| g.assign(x) != 0).count();
        assert!(wrong < 5, "{wrong} misassigned");
    }

    #[test]
    fn three_components_and_determinism() {
        let v = sample(&[(500, 0.0, 0.3), (500, 3.0, 0.3), (500, 6.0, 0.3)], 2);
        let a = Gmm1d::fit(&Single, &v, 3, 500, 1e-10).unwrap();
        let b = Gmm1d::fit(&Single, &v, 3, 500, 1e-10).unwrap();
        assert_eq!(a, b);
        for (m, want) in a.means.iter().zip([0.0, 3.0, 6.0]) {
            assert!((m - want).abs() < 0.1, "{a:?}");
        }
    }

    #[test]
    fn degenerate_inputs_do_not_break() {
        // All values identical: one spike, finite widths, everything in one place.
        let g = Gmm1d::fit(&Single, &[1.0; 10], 2, 100, 1e-10).unwrap();
        assert!(g.sds.iter().all(|s| s.is_finite() && *s > 0.0), "{g:?}");
        assert!(g.mean_log_likelihood.is_finite());
        // A spike at 1 plus a spread: the spike's component stays narrow but finite.
        let mut v = vec![1.0; 200];
        v.extend(sample(&[(200, 0.4, 0.1)], 3));
        let g = Gmm1d::fit(&Single, &v, 2, 500, 1e-10).unwrap();
        assert!(g.means[1] > 0.99 && g.sds[1] > 0.0, "{g:?}");
        assert_eq!(g.assign(1.0), 1);
        // One component: the sample mean and s.d.
        let g = Gmm1d::fit(&Single, &[1.0, 2.0, 3.0], 1, 10, 1e-12).unwrap();
        assert!(
            (g.means[0] - 2.0).abs() < 1e-12 && (g.sds[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12
        );
        assert!(Gmm1d::fit(&Single, &[1.0], 2, 10, 1e-9)
            .unwrap_err()
            .contains("cannot be clustered"));
        assert!(Gmm1d::fit(&Single, &[1.0], 0, 10, 1e-9).is_err());
        assert!(Gmm1d::fit(&Single, &[f64::NAN, 1.0], 1, 10, 1e-9).is_err());
    }
}
