//! The 3D E-step: each particle against the central slice of every class volume at the
//! particle's known pose, with its CTF and per-particle scale, under the per-shell Gaussian
//! noise model:
//!
//! ```text
//!   LL_ik = −Σ_{c: 1 ≤ shell(c) ≤ k_max} w_c·|X_ic − α_i·C_ic·P_k(A_i)_c|² / σ²(shell(c))
//!   w_c   = 1 for kx > 0, ½ for kx = 0 (the column holds k and −k, and the DC term)
//! ```
//!
//! which is the log-likelihood of the real image up to a constant when the noise of each
//! complex coefficient has power σ² (each independent coefficient counted once). Cost per
//! particle: K slices of ≈ π·k_max²/2 coefficients (8 trilinear reads each, shared between
//! classes) and as many complex multiply-adds; poses are known, so there is no pose search
//! to batch into matrix products.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::backend::phases::{Accumulate, BlockRef, ClassScores, Score};
use crate::backend::Cpu;
use crate::em::responsibilities::Responsibilities;
use crate::em::stats::Stats;
use crate::error::Result;
use crate::numerics::fft::Complex32;
use crate::numerics::project3d::Projector;
use crate::numerics::rotation::Mat3;
use crate::particles::{Particles, WorkGrid};

use super::gpu::DeviceCopy;
use super::model;

/// Log-likelihoods and residual power of a set of particles.
pub struct Scores {
    /// `len × K` log-likelihoods.
    pub ll: Array2<f64>,
    /// Residual power per particle, class and shell: `len × K × n_shells` (weighted by w_c).
    pub resid: Vec<f64>,
    /// Σ w_c per shell of one particle (the same for all).
    pub counts: Vec<f64>,
}

/// Coefficient weight `w_c` and shell, or None outside shells `1..=k_max`.
pub(super) fn coeff(grid: &WorkGrid, c: usize) -> Option<(usize, f64)> {
    let s = grid.shell[c] as usize;
    if s == 0 || s > grid.k_max || (grid.kx[c] == 0 && grid.ky[c] < 0) {
        return None;
    }
    Some((s, if grid.kx[c] == 0 { 0.5 } else { 1.0 }))
}

/// Scores particles `idx` of `block` (scales `scale[j]` for `idx[j]`) against the
/// projections of `projs` (one per class).
pub fn score(
    block: &Particles,
    grid: &WorkGrid,
    projs: &[&Projector],
    idx: &[usize],
    scale: &[f64],
    sigma2: &[f64],
) -> Scores {
    let k = projs.len();
    let ns = grid.n_shells();
    let counts = shell_counts(grid);
    let rows: Vec<(Vec<f64>, Vec<f64>)> = idx
        .par_iter()
        .zip(scale)
        .map_init(
            || (vec![0.0f32; grid.len()], vec![Vec::<Complex32>::new(); k]),
            |(ctf, slices), (&i, &alpha)| {
                block.ctf_into(i, grid, ctf);
                Projector::project_many(projs, block.pose(i), grid.k_max, slices);
                let x = block.spectrum(i);
                let alpha = alpha as f32;
                let mut resid = vec![0.0; k * ns];
                for (kk, p) in slices.iter().enumerate() {
                    let r = &mut resid[kk * ns..(kk + 1) * ns];
                    for c in 0..grid.len() {
                        if let Some((s, w)) = coeff(grid, c) {
                            let d = x[c] - p[c] * (alpha * ctf[c]);
                            r[s] += w * d.norm_sqr() as f64;
                        }
                    }
                }
                let ll = (0..k)
                    .map(|kk| log_likelihood(&resid[kk * ns..(kk + 1) * ns], sigma2))
                    .collect();
                (ll, resid)
            },
        )
        .collect();
    let mut ll = Array2::zeros((idx.len(), k));
    let mut resid = Vec::with_capacity(idx.len() * k * ns);
    for (i, (l, r)) in rows.into_iter().enumerate() {
        for (kk, v) in l.into_iter().enumerate() {
            ll[[i, kk]] = v;
        }
        resid.extend(r);
    }
    Scores { ll, resid, counts }
}

/// Σ w_c per shell of one particle's half plane (shells `1..=k_max`; shell 0 is 0).
pub(super) fn shell_counts(grid: &WorkGrid) -> Vec<f64> {
    let mut counts = vec![0.0; grid.n_shells()];
    for c in 0..grid.len() {
        if let Some((s, w)) = coeff(grid, c) {
            counts[s] += w;
        }
    }
    counts
}

/// `−Σ_{s ≥ 1} resid_s / σ²_s`: the log-likelihood of one particle and class from its
/// residual power per shell.
pub(super) fn log_likelihood(resid: &[f64], sigma2: &[f64]) -> f64 {
    -resid
        .iter()
        .zip(sigma2)
        .skip(1)
        .map(|(r, s)| r / s)
        .sum::<f64>()
}

/// Adds the per-shell residual power of a block's particles, weighted by their class
/// probabilities (`probs`, `len × K` row-major), and their coefficient counts to `st`.
pub(super) fn add_block_noise(st: &mut Stats, sc: &Scores, probs: &[f64], k: usize) -> Result<()> {
    let ns = sc.counts.len();
    let mut noise = vec![0.0; ns];
    for j in 0..probs.len() / k.max(1) {
        for c in 0..k {
            let p = probs[j * k + c];
            let r = &sc.resid[(j * k + c) * ns..(j * k + c + 1) * ns];
            noise.iter_mut().zip(r).for_each(|(a, b)| *a += p * b);
        }
        model::add_noise(st, &noise, &sc.counts)?;
        noise.iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(())
}

/// Least-squares per-particle scales against one reference volume (the consensus):
/// `α_i = Σ_c w_c Re(conj(C P)_c X_c)/σ²_c / Σ_c w_c |C P|²_c/σ²_c`, clamped to [0.05, 20].
/// One scale per particle of `idx`.
pub fn fit_scales(
    block: &Particles,
    idx: &[usize],
    grid: &WorkGrid,
    proj: &Projector,
    sigma2: &[f64],
) -> Vec<f64> {
    idx.par_iter()
        .map_init(
            || (vec![0.0f32; grid.len()], vec![Vec::<Complex32>::new()]),
            |(ctf, slice), &i| {
                block.ctf_into(i, grid, ctf);
                Projector::project_many(&[proj], block.pose(i), grid.k_max, slice);
                let x = block.spectrum(i);
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for c in 0..grid.len() {
                    if let Some((s, w)) = coeff(grid, c) {
                        let m = slice[0][c] * ctf[c];
                        num += w * (m.conj() * x[c]).re as f64 / sigma2[s];
                        den += w * m.norm_sqr() as f64 / sigma2[s];
                    }
                }
                if den > 0.0 {
                    (num / den).clamp(0.05, 20.0)
                } else {
                    1.0
                }
            },
        )
        .collect()
}

/// The model of one 3D iteration as the E-step phases use it: the projectors of the
/// effective class volumes, the noise model and the symmetry operators (and, for the GPU
/// phases, the device copy of the volumes, made on first use: once per iteration).
pub struct VolumeModel<'a> {
    pub grid: &'a WorkGrid,
    pub projs: Vec<Projector>,
    pub sigma2: Vec<f64>,
    pub syms: Vec<Mat3>,
    pub device: DeviceCopy,
}

impl ClassScores for Scores {
    fn class_ll(&self) -> ArrayView2<'_, f64> {
        self.ll.view()
    }
}

impl Score<VolumeModel<'_>> for Cpu {
    type Scores = Scores;
    fn score(&self, m: &VolumeModel, b: &BlockRef) -> Result<Scores> {
        let prefs: Vec<&Projector> = m.projs.iter().collect();
        Ok(score(
            b.particles,
            m.grid,
            &prefs,
            b.idx,
            b.scale,
            &m.sigma2,
        ))
    }
}

impl Accumulate<VolumeModel<'_>> for Cpu {
    /// Back-projection of the particles at their class weights (symmetry copies included)
    /// and their per-shell residual power weighted by class probability.
    fn accumulate(
        &self,
        m: &VolumeModel,
        b: &BlockRef,
        sc: &Scores,
        resp: &Responsibilities,
        st: &mut Stats,
    ) -> Result<()> {
        let k = m.projs.len();
        let probs = resp
            .probs()
            .as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset()
            .0;
        model::backproject(st, m.grid, b.particles, b.idx, b.scale, &probs, &m.syms)?;
        add_block_noise(st, sc, &probs, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::em::responsibilities::EStepParams;
    use crate::em::stats::StatsLayout;
    use crate::numerics::rotation::pose_to_matrix;
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};

    /// The CPU phases run on one thread: a second implementation whose sums must not
    /// depend on the thread count.
    struct Serial;

    fn one_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(f)
    }

    impl Score<VolumeModel<'_>> for Serial {
        type Scores = Scores;
        fn score(&self, m: &VolumeModel, b: &BlockRef) -> Result<Scores> {
            one_thread(|| Cpu.score(m, b))
        }
    }

    impl Accumulate<VolumeModel<'_>> for Serial {
        fn accumulate(
            &self,
            m: &VolumeModel,
            b: &BlockRef,
            sc: &Scores,
            resp: &Responsibilities,
            st: &mut Stats,
        ) -> Result<()> {
            one_thread(|| Cpu.accumulate(m, b, sc, resp, st))
        }
    }

    type Setup3d = (
        Cpu,
        VolumeModel<'static>,
        Serial,
        VolumeModel<'static>,
        (Particles, Vec<usize>, Vec<f64>),
        StatsLayout,
        Vec<f64>,
        EStepParams,
    );

    fn setup() -> Setup3d {
        let grid: &'static WorkGrid = Box::leak(Box::new(WorkGrid::new(24, 3.0, 9.0)));
        let n = grid.n;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let vols: Vec<Array3<f32>> = (0..2)
            .map(|_| Array3::from_shape_fn((n, n, n), |_| rng.gen_range(-1.0f32..1.0)))
            .collect();
        let model = || VolumeModel {
            grid,
            projs: vols
                .iter()
                .map(|v| Projector::new(v.view(), model::PAD))
                .collect(),
            sigma2: vec![50.0; grid.n_shells()],
            syms: vec![pose_to_matrix([0.0, 0.0, 0.0])],
            device: DeviceCopy::default(),
        };
        let m = 30;
        let spectra: Vec<Complex32> = (0..m * grid.len())
            .map(|_| Complex32::new(rng.gen_range(-3.0..3.0), rng.gen_range(-3.0..3.0)))
            .collect();
        let poses = (0..m)
            .map(|_| {
                pose_to_matrix([
                    rng.gen_range(0.0..std::f64::consts::TAU),
                    rng.gen_range(0.0..std::f64::consts::PI),
                    rng.gen_range(0.0..std::f64::consts::TAU),
                ])
            })
            .collect();
        let parts = Particles::with_poses(0, spectra, None, poses, grid);
        let idx: Vec<usize> = (0..m).collect();
        let scale: Vec<f64> = (0..m).map(|i| 0.8 + 0.01 * i as f64).collect();
        (
            Cpu,
            model(),
            Serial,
            model(),
            (parts, idx, scale),
            model::layout(2, grid).unwrap(),
            vec![(0.4f64).ln(), (0.6f64).ln()],
            EStepParams::new(1.0, 0.1, false).unwrap(),
        )
    }

    // The 3D phases on rayon's threads against one thread: the same bits are expected, the
    // stated tolerance is rounding.
    crate::backend_parity_test!(
        volume_phases_do_not_depend_on_the_thread_count,
        setup,
        1e-12
    );
}
