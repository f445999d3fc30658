//! The E-step of 2D classification over a chunk of particles, and its M-step
//! contributions: scores against every class × in-plane pose (the backend's matrix
//! products), marginalisation over poses, responsibilities, then each particle's
//! CTF-weighted spectrum back-rotated into the class sums at its pose weights (or its best
//! pose under `force_max` / hard classification) and its residual power at the best class
//! and pose into the noise sums.

use ndarray::Array2;

use crate::em::responsibilities::{marginalize_poses, pose_weights, responsibilities, EStepParams};
use crate::em::stats::Stats;
use crate::error::Result;
use crate::numerics::fft::Complex32;
use crate::particles::{Particles, WorkGrid};

use super::config::Classify2dConfig;
use super::estep::{rotated_spectrum, Scorer};
use super::model::{self, ClassUpdate};
use super::results::ResultRow;

/// Class probabilities below this are not back-projected.
const MIN_WEIGHT: f64 = 1e-3;

/// One block's particles with what the E-step of a chunk of them needs (shared by the rayon
/// workers).
#[derive(Clone, Copy)]
pub struct Local<'a> {
    pub cfg: &'a Classify2dConfig,
    pub grid: &'a WorkGrid,
    pub particles: &'a Particles,
}

impl<'a> Local<'a> {
    pub fn ctf(&self, i: usize) -> Option<&crate::numerics::ctf::Ctf> {
        self.particles.ctf.as_ref().map(|v| &v[i])
    }

    /// CTF of particle i on the whole working half plane.
    fn full_ctf(&self, i: usize) -> Option<Vec<f32>> {
        self.ctf(i).map(|c| {
            let mut out = vec![0.0f32; self.grid.len()];
            c.half_plane_into(self.grid.n, self.grid.n, self.grid.psize_a(), &mut out);
            out
        })
    }

    /// `C·X·ramp` on the working half plane (`ramp` = None: no shift).
    pub fn ctf_times_x(&self, i: usize, ramp: Option<&[Complex32]>) -> Vec<Complex32> {
        let x = self.particles.spectrum(i);
        let ctf = self.full_ctf(i);
        (0..x.len())
            .map(|c| {
                let mut v = x[c];
                if let Some(r) = ramp {
                    v *= r[c];
                }
                if let Some(ctf) = &ctf {
                    v *= ctf[c];
                }
                v
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn chunk(
        &self,
        scorer: &Scorer,
        chunk: &[usize],
        images: &[Array2<f32>],
        params: &EStepParams,
        log_prior: &[f64],
        ramps: &[Complex32],
        st: &mut Stats,
        rows: &mut Vec<(usize, ResultRow)>,
    ) -> Result<()> {
        let k = self.cfg.num_classes;
        let poses = &scorer.poses;
        let np = poses.len();
        let nt = poses.n_shift();
        let len = self.grid.len();
        let ll = scorer.score(self.particles, chunk)?;
        let marg = marginalize_poses(&ll, chunk.len(), k, np, 1.0)?;
        let resp = responsibilities(marg.log_marginal().view(), log_prior, params)?;
        let mut wbuf = vec![0.0f64; np];
        for (bi, &i) in chunk.iter().enumerate() {
            let probs = resp.probs().row(bi);
            let best_k = resp.best_class()[bi];
            let best_j = marg.best_pose()[[bi, best_k]];
            let (br, bt) = poses.split(best_j);
            let half = self.particles.half[i];
            let ctf = self.ctf(i);
            let full_ctf = self.full_ctf(i);
            let x = self.particles.spectrum(i);
            for kk in 0..k {
                let p = probs[kk];
                if p < MIN_WEIGHT {
                    continue;
                }
                if self.cfg.force_max || params.hard() {
                    let (r, t) = poses.split(marg.best_pose()[[bi, kk]]);
                    let y = combine(
                        x,
                        full_ctf.as_deref(),
                        &[(&ramps[t * len..(t + 1) * len], 1.0)],
                    );
                    model::add_contribution(st, self.grid, kk, half, &y, ctf, poses.psi_rad[r], p);
                } else {
                    let base = (bi * k + kk) * np;
                    pose_weights(&ll[base..base + np], 1.0, &mut wbuf);
                    for r in 0..poses.n_rot() {
                        let w = &wbuf[r * nt..(r + 1) * nt];
                        let wr: f64 = w.iter().sum();
                        if wr * p < MIN_WEIGHT * 1e-2 {
                            continue;
                        }
                        let terms: Vec<(&[Complex32], f64)> = (0..nt)
                            .filter(|&t| w[t] > 1e-4 * wr)
                            .map(|t| (&ramps[t * len..(t + 1) * len], w[t] / wr))
                            .collect();
                        let y = combine(x, full_ctf.as_deref(), &terms);
                        model::add_contribution(
                            st,
                            self.grid,
                            kk,
                            half,
                            &y,
                            ctf,
                            poses.psi_rad[r],
                            p * wr,
                        );
                    }
                }
            }
            // Noise: residual at the best class and pose.
            let tmpl = rotated_spectrum(&images[best_k], poses.psi_rad[br]);
            let ramp = &ramps[bt * len..(bt + 1) * len];
            let resid: Vec<Complex32> = (0..len)
                .map(|c| {
                    let cv = full_ctf.as_ref().map_or(1.0, |f| f[c]);
                    x[c] * ramp[c] - tmpl[c] * cv
                })
                .collect();
            model::add_noise(st, self.grid, &resid);
            let s = poses.shifts_px[bt];
            rows.push((
                i,
                ResultRow {
                    probs: probs.iter().map(|&v| v as f32).collect(),
                    class: best_k as u32,
                    prob: resp.best_prob()[bi] as f32,
                    ess: resp.ess()[bi] as f32,
                    psi: poses.psi_rad[br] as f32,
                    shift: [s[0] as f32, s[1] as f32],
                },
            ));
        }
        Ok(())
    }
}

/// `C·X·Σ_t w_t ρ_t` on the working half plane.
fn combine(x: &[Complex32], ctf: Option<&[f32]>, terms: &[(&[Complex32], f64)]) -> Vec<Complex32> {
    (0..x.len())
        .map(|c| {
            let mut ramp = Complex32::new(0.0, 0.0);
            for (r, w) in terms {
                ramp += r[c] * *w as f32;
            }
            let v = x[c] * ramp;
            match ctf {
                Some(f) => v * f[c],
                None => v,
            }
        })
        .collect()
}

/// The count-weighted median over classes of the last shell before the half-set FRC first
/// drops below `threshold`.
pub fn signal_shell(classes: &ClassUpdate, threshold: f64) -> usize {
    let mut v: Vec<(usize, f64)> = classes
        .frc
        .iter()
        .zip(&classes.counts)
        .filter(|(_, &c)| c > 0.0)
        .map(|(f, &c)| {
            let k = (1..f.len())
                .find(|&s| f[s] < threshold)
                .unwrap_or(f.len())
                .saturating_sub(1);
            (k, c)
        })
        .collect();
    if v.is_empty() {
        return 0;
    }
    v.sort_by_key(|p| p.0);
    let total: f64 = v.iter().map(|p| p.1).sum();
    let mut acc = 0.0;
    for (k, c) in &v {
        acc += c;
        if acc >= 0.5 * total {
            return *k;
        }
    }
    v[v.len() - 1].0
}
