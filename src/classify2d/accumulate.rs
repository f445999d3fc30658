//! The E-step of 2D classification over a chunk of particles, and its M-step
//! contributions: scores against every class × in-plane pose (the backend's matrix
//! products), marginalisation over poses, responsibilities, then each particle's
//! CTF-weighted spectrum back-rotated into the class sums at its pose weights (or its best
//! pose under `force_max` / hard classification) and its residual power at the best class
//! and pose into the noise sums.

use ndarray::{Array2, ArrayView2};

use rayon::prelude::*;

use crate::backend::phases::{e_step_block, Accumulate, BlockRef, ClassScores, Score};
use crate::backend::Cpu;
use crate::em::responsibilities::EStepParams;
use crate::em::responsibilities::{
    marginalize_poses, pose_weights, PoseMarginal, Responsibilities,
};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::fft::Complex32;
use crate::particles::{Particles, WorkGrid};

use super::estep::{rotated_spectrum, Scorer};
use super::model::{self, ClassUpdate};
use super::results::ResultRow;

/// Class probabilities below this are not back-projected.
const MIN_WEIGHT: f64 = 1e-3;

/// One block's particles with what the E-step of a chunk of them needs (shared by the rayon
/// workers).
#[derive(Clone, Copy)]
pub struct Local<'a> {
    pub num_classes: usize,
    pub grid: &'a WorkGrid,
    pub particles: &'a Particles,
}

impl<'a> Local<'a> {
    pub fn ctf(&self, i: usize) -> Option<&crate::numerics::ctf::Ctf> {
        self.particles.ctf.as_ref().map(|v| &v[i])
    }

    /// CTF of particle i on the whole working half plane.
    pub(super) fn full_ctf(&self, i: usize) -> Option<Vec<f32>> {
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
}

/// The model of one 2D iteration as the E-step phases use it.
pub struct PlaneModel<'a> {
    pub num_classes: usize,
    pub scorer: Scorer<'a>,
    /// Class averages (the residual for the noise model is taken against them).
    pub images: Vec<Array2<f32>>,
    /// Phase ramps ρ_t on the whole working half plane, `T × len`.
    pub ramps: Vec<Complex32>,
    /// Back-project each class at its best pose only (`force_max`, hard classification).
    pub best_pose_only: bool,
    /// The iteration's data on the GPU (CUDA backend only; [`super::gpu`]).
    pub device: Option<crate::backend::cuda::plane::PlaneDevice>,
}

/// Scores of a chunk: `[(i·K + k)·P + j]` log-likelihoods and their pose marginals.
pub struct PlaneScores {
    pub ll: Vec<f64>,
    pub marg: PoseMarginal,
}

impl ClassScores for PlaneScores {
    fn class_ll(&self) -> ArrayView2<'_, f64> {
        self.marg.log_marginal().view()
    }
}

impl Score<PlaneModel<'_>> for Cpu {
    type Scores = PlaneScores;
    fn score(&self, m: &PlaneModel, b: &BlockRef) -> Result<PlaneScores> {
        let ll = m.scorer.score(b.particles, b.idx)?;
        let (k, np) = (m.num_classes, m.scorer.poses.len());
        let marg = marginalize_poses(&ll, b.idx.len(), k, np, 1.0)?;
        Ok(PlaneScores { ll, marg })
    }
}

impl Accumulate<PlaneModel<'_>> for Cpu {
    fn accumulate(
        &self,
        m: &PlaneModel,
        b: &BlockRef,
        sc: &PlaneScores,
        resp: &Responsibilities,
        st: &mut Stats,
    ) -> Result<()> {
        let local = Local {
            num_classes: m.num_classes,
            grid: m.scorer.grid,
            particles: b.particles,
        };
        let mut wbuf = vec![0.0f64; m.scorer.poses.len()];
        for (bi, &i) in b.idx.iter().enumerate() {
            local.accumulate_one(m, sc, resp, bi, i, &mut wbuf, st);
        }
        Ok(())
    }
}

impl Local<'_> {
    /// Particle `i` (row `bi` of the chunk): its class sums at its pose weights and its
    /// residual at the best class and pose.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_one(
        &self,
        m: &PlaneModel,
        sc: &PlaneScores,
        resp: &Responsibilities,
        bi: usize,
        i: usize,
        wbuf: &mut [f64],
        st: &mut Stats,
    ) {
        let k = self.num_classes;
        let poses = &m.scorer.poses;
        let (np, nt, len) = (poses.len(), poses.n_shift(), self.grid.len());
        let ramps = &m.ramps;
        let probs = resp.probs().row(bi);
        let best_k = resp.best_class()[bi];
        let (br, bt) = poses.split(sc.marg.best_pose()[[bi, best_k]]);
        let half = self.particles.half[i];
        let ctf = self.ctf(i);
        let full_ctf = self.full_ctf(i);
        let x = self.particles.spectrum(i);
        for kk in 0..k {
            let p = probs[kk];
            if p < MIN_WEIGHT {
                continue;
            }
            if m.best_pose_only {
                let (r, t) = poses.split(sc.marg.best_pose()[[bi, kk]]);
                let y = combine(
                    x,
                    full_ctf.as_deref(),
                    &[(&ramps[t * len..(t + 1) * len], 1.0)],
                );
                model::add_contribution(st, self.grid, kk, half, &y, ctf, poses.psi_rad[r], p);
            } else {
                let base = (bi * k + kk) * np;
                pose_weights(&sc.ll[base..base + np], 1.0, wbuf);
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
        let resid = self.residual(m, i, best_k, (br, bt), full_ctf.as_deref());
        model::add_noise(st, self.grid, &resid);
    }

    /// `X_i ρ_t − C_i T_k,r` on the working half plane at pose `(r, t)` of class `k`
    /// (`full_ctf`: particle i's CTF on the half plane, none for CTF = 1).
    pub(super) fn residual(
        &self,
        m: &PlaneModel,
        i: usize,
        k: usize,
        (r, t): (usize, usize),
        full_ctf: Option<&[f32]>,
    ) -> Vec<Complex32> {
        let len = self.grid.len();
        let x = self.particles.spectrum(i);
        let tmpl = rotated_spectrum(&m.images[k], m.scorer.poses.psi_rad[r]);
        let ramp = &m.ramps[t * len..(t + 1) * len];
        (0..len)
            .map(|c| {
                let cv = full_ctf.map_or(1.0, |f| f[c]);
                x[c] * ramp[c] - tmpl[c] * cv
            })
            .collect()
    }
}

/// Particles scored per GEMM batch on the CPU.
const CHUNK: usize = 16;

/// The E-step of block particles `idx` on the CPU: chunks of [`CHUNK`] particles on rayon's
/// threads, each through the backend phases, their partial sums added in chunk order (so
/// the sums do not depend on the thread count); adds them to `stats` and returns each
/// particle's result, keyed by its block index.
pub fn cpu_e_step(
    m: &PlaneModel,
    params: &EStepParams,
    layout: &StatsLayout,
    block: &Particles,
    idx: &[usize],
    stats: &mut Stats,
) -> Result<Vec<(usize, ResultRow)>> {
    let log_prior = vec![0.0; m.num_classes];
    let ones = [1.0; CHUNK];
    type Partial = Result<(Stats, Vec<(usize, ResultRow)>)>;
    let folded: Vec<Partial> = idx
        .par_chunks(CHUNK)
        .fold(
            || Ok((Stats::zeros(layout), Vec::new())),
            |acc: Partial, chunk| {
                let (mut st, mut rows) = acc?;
                let b = BlockRef {
                    particles: block,
                    idx: chunk,
                    scale: &ones[..chunk.len()],
                };
                let (sc, resp) = e_step_block(&Cpu, m, &b, &log_prior, params, true, &mut st)?;
                rows.extend(chunk.iter().enumerate().map(|(bi, &i)| {
                    let x = block.spectrum(i);
                    (i, result_row(m, sc.marg.best_pose(), &resp, bi, x))
                }));
                Ok((st, rows))
            },
        )
        .collect();
    let mut st = Stats::zeros(layout);
    let mut rows = Vec::with_capacity(idx.len());
    for part in folded {
        let (s, r) = part?;
        st.add(&s)?;
        rows.extend(r);
    }
    stats.add(&st)?;
    Ok(rows)
}

/// The result of row `bi` of a scored chunk, particle spectrum `x`.
/// `best_pose[[bi, k]]`: the best pose `r·T + t` of each row and class.
pub fn result_row(
    m: &PlaneModel,
    best_pose: &Array2<usize>,
    resp: &Responsibilities,
    bi: usize,
    x: &[Complex32],
) -> ResultRow {
    let poses = &m.scorer.poses;
    let best_k = resp.best_class()[bi];
    let (br, bt) = poses.split(best_pose[[bi, best_k]]);
    let s = poses.shifts_px[bt];
    ResultRow {
        // The soft posterior, also in a hard pass (`class` is then the hard assignment).
        probs: resp.posterior().row(bi).iter().map(|&v| v as f32).collect(),
        class: best_k as u32,
        prob: resp.best_prob()[bi] as f32,
        ess: resp.ess()[bi] as f32,
        psi: poses.psi_rad[br] as f32,
        shift: [s[0] as f32, s[1] as f32],
        // ln Z_i is ln Σ_k mean_poses exp(LL) with LL short of −Σ|X|²/σ² (uniform class
        // prior 1 here): the mean over classes of the full residual likelihood.
        log_likelihood: (resp.log_evidence()[bi]
            - (m.num_classes as f64).ln()
            - m.scorer.band_power(x)) as f32,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::classify2d::estep::Templates;
    use crate::classify2d::grid::{Band, PoseGrid};
    use crate::em::responsibilities::EStepParams;
    use crate::em::stats::StatsLayout;
    use crate::numerics::ctf::{Ctf, CtfParams};
    use rand::{Rng, SeedableRng};

    /// Noisy particles made from random blob classes, with a CTF each.
    pub(crate) fn fixture() -> (&'static WorkGrid, Vec<Array2<f32>>, Particles) {
        let grid: &'static WorkGrid = Box::leak(Box::new(WorkGrid::new(32, 2.0, 6.0)));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let blob = |rng: &mut rand_chacha::ChaCha8Rng| {
            let c: Vec<(f64, f64)> = (0..5)
                .map(|_| (rng.gen_range(10.0..22.0), rng.gen_range(10.0..22.0)))
                .collect();
            Array2::from_shape_fn((32, 32), |(i, j)| {
                c.iter()
                    .map(|(y, x)| (-((i as f64 - y).powi(2) + (j as f64 - x).powi(2)) / 8.0).exp())
                    .sum::<f64>() as f32
            })
        };
        let classes: Vec<Array2<f32>> = (0..3).map(|_| blob(&mut rng)).collect();
        let images: Vec<Array2<f32>> = (0..40)
            .map(|i| classes[i % 3].mapv(|v| v + rng.gen_range(-0.5f32..0.5)))
            .collect();
        let ctf = (0..40)
            .map(|i| {
                Ctf::new(&CtfParams {
                    accel_kv: 300.0,
                    cs_mm: 2.7,
                    amp_contrast: 0.1,
                    df1_a: 15000.0 + 100.0 * i as f64,
                    df2_a: 14500.0 + 100.0 * i as f64,
                    df_angle_rad: 0.3,
                    phase_shift_rad: 0.0,
                    bfactor_a2: 0.0,
                    scale: 1.0,
                })
            })
            .collect();
        let small: Vec<Array2<f32>> = {
            let p = Particles::from_images(&classes, None, 0, grid, false);
            (0..3)
                .map(|k| {
                    let s = p.spectrum(k).to_vec();
                    crate::numerics::fft::irfft2(
                        ndarray::Array2::from_shape_vec((grid.n, grid.h()), s)
                            .unwrap()
                            .view(),
                        grid.n,
                    )
                })
                .collect()
        };
        (
            grid,
            small,
            Particles::from_images(&images, Some(ctf), 0, grid, true),
        )
    }

    pub(crate) fn model(
        grid: &'static WorkGrid,
        classes: &[Array2<f32>],
        backend: &dyn crate::backend::Backend,
        best_pose_only: bool,
    ) -> PlaneModel<'static> {
        let poses = PoseGrid::new(8, 2.0);
        let band = Band::new(grid, 1, 8);
        let templates = Templates::build(classes, &poses, &band, None);
        let sigma2 = vec![1.0; grid.n_shells()];
        let g = grid;
        let nb = g.box_in as f64;
        let ramps = poses
            .shifts_px
            .iter()
            .flat_map(|s| {
                (0..g.len()).map(move |c| {
                    let ph = -std::f64::consts::TAU
                        * (g.kx[c] as f64 * s[0] + g.ky[c] as f64 * s[1])
                        / nb;
                    Complex32::new(ph.cos() as f32, ph.sin() as f32)
                })
            })
            .collect();
        let mut m = PlaneModel {
            num_classes: 3,
            scorer: Scorer::new(grid, band, poses, templates, &sigma2, backend).unwrap(),
            images: classes.to_vec(),
            ramps,
            best_pose_only,
            device: None,
        };
        if let Some(gpu) = backend.as_cuda() {
            let cfg = std::path::Path::new("test.yaml");
            let dev = super::super::gpu::plane_device(gpu, &m.scorer, grid, &m.ramps, cfg);
            m.device = Some(dev.unwrap().0);
        }
        m
    }

    type Setup2d = (
        Cpu,
        PlaneModel<'static>,
        Cpu,
        PlaneModel<'static>,
        (Particles, Vec<usize>, Vec<f64>),
        StatsLayout,
        Vec<f64>,
        EStepParams,
    );

    fn setup(hard: bool) -> Setup2d {
        let (grid, classes, parts) = fixture();
        let idx: Vec<usize> = (0..parts.len()).step_by(2).collect();
        let scale = vec![1.0; idx.len()];
        (
            Cpu,
            model(grid, &classes, &crate::backend::Cpu, hard),
            Cpu,
            model(grid, &classes, &crate::backend::Naive, hard),
            (parts, idx, scale),
            crate::classify2d::model::layout(3, grid).unwrap(),
            vec![0.0; 3],
            EStepParams::new(1.0, 0.0, hard).unwrap(),
        )
    }

    /// The written log-likelihood is ln of the mean over classes, rotations and shifts of
    /// exp(−Σ_{f∈B} |X ρ_t − C T_kr|² / σ²), recomputed here from the residuals directly.
    #[test]
    fn log_likelihood_is_the_mean_residual_likelihood_over_classes_and_poses() {
        let (grid, classes, parts) = fixture();
        let m = model(grid, &classes, &Cpu, false);
        let layout = crate::classify2d::model::layout(3, grid).unwrap();
        let idx: Vec<usize> = (0..parts.len()).collect();
        let mut st = Stats::zeros(&layout);
        let params = EStepParams::plain();
        let rows = cpu_e_step(&m, &params, &layout, &parts, &idx, &mut st).unwrap();
        let (poses, band, len) = (&m.scorer.poses, &m.scorer.band, grid.len());
        for (i, row) in rows {
            let x = parts.spectrum(i);
            let ctf = parts.ctf.as_ref().map(|v| &v[i]);
            let mut terms = Vec::new();
            for k in 0..3 {
                for r in 0..poses.n_rot() {
                    let t_kr = rotated_spectrum(&m.images[k], poses.psi_rad[r]);
                    for t in 0..poses.n_shift() {
                        let ramp = &m.ramps[t * len..(t + 1) * len];
                        // σ² = 1 in the fixture's model.
                        let e: f64 = band
                            .idx
                            .iter()
                            .map(|&c| {
                                let c = c as usize;
                                let (fx, fy) = grid.freq_a(c);
                                let cv = ctf.map_or(1.0, |z| z.eval_f32(fx, fy));
                                (x[c] * ramp[c] - t_kr[c] * cv).norm_sqr() as f64
                            })
                            .sum();
                        terms.push(-e);
                    }
                }
            }
            let want = crate::em::responsibilities::log_sum_exp(&terms) - (terms.len() as f64).ln();
            // f32 products: ~1e-7 relative here; the spread over particles is ~30 %.
            let tol = 1e-6 * (m.scorer.band_power(x) + want.abs());
            let got = row.log_likelihood as f64;
            assert!((got - want).abs() < tol, "particle {i}: {got} vs {want}");
        }
    }

    // The 2D phases with the templates on ndarray's SGEMM against the naive f64 products.
    crate::backend_parity_test!(
        plane_phases_sgemm_match_the_naive_products,
        || setup(false),
        1e-4
    );
    crate::backend_parity_test!(
        plane_phases_hard_sgemm_match_the_naive_products,
        || setup(true),
        1e-4
    );
}
