//! The 3D E-step phases on the GPU: [`Score`] and [`Accumulate`] of [`VolumeModel`] for
//! [`Cuda`], the per-particle scale fit, and the device memory a run needs. The kernels
//! (`backend/cuda/kernels/volume.cu`) and their plain-data API
//! ([`crate::backend::cuda::volume`]) know nothing of this job; this file converts the
//! model and the block into that API's inputs and its outputs into the CPU's [`Scores`]
//! and statistics layout ([`super::model`]), so responsibilities and the M-step are the
//! same code for both backends.
//!
//! Split between host and device:
//! - scoring: the device projects the K volumes at each particle's pose (trilinear gather),
//!   evaluates the CTF and returns the residual power per particle, class and shell; the
//!   host forms the log-likelihoods from it exactly as the CPU does;
//! - accumulation: the host computes each weighted particle's padded slice (the zero-padded
//!   transform of C·X, two 2D FFTs; not yet on the device) and the pose × symmetry
//!   matrices; the device evaluates C², spreads the slices trilinearly into the (class,
//!   half) accumulators in fixed point (per block) and adds them into f64 sums resident on
//!   the device for the whole iteration; [`flush`] brings those down once (48·K·V bytes,
//!   V = m²·(m/2+1), m = 2n) and adds them to the statistics, from the engine's
//!   `finish_e_step` ([`e_step_block`] defers to it) or at the end of each
//!   [`Accumulate::accumulate`] call (which leaves complete statistics, as the parity
//!   tests need); the class weights and noise sums are the CPU's code, added per block.

use std::sync::OnceLock;

use ndarray::Array2;
use rayon::prelude::*;

use crate::backend::cuda::volume::{Backprojection, Geometry, ParticleBlock, VolumeDevice};
use crate::backend::cuda::Cuda;
use crate::backend::phases::{Accumulate, BlockRef, ClassScores, Score};
use crate::em::responsibilities::{responsibilities, EStepParams, Responsibilities};
use crate::em::stats::Stats;
use crate::error::{Error, Result};
use crate::numerics::fft::Complex32;
use crate::numerics::project3d::{PaddedSlice, Projector};
use crate::numerics::rotation::{matmul, transpose};
use crate::particles::source::BLOCK_PARTICLES;
use crate::particles::{Particles, WorkGrid};

use super::estep::{add_block_noise, coeff, log_likelihood, shell_counts, Scores, VolumeModel};
use super::model::{self, MIN_WEIGHT, PAD};

/// The device copy of a model's volumes, made on first use by the GPU phases (the model
/// is rebuilt for every iteration, so the volumes go up once per iteration). Empty on the
/// CPU.
#[derive(Default)]
pub struct DeviceCopy(OnceLock<std::result::Result<(VolumeDevice, usize), String>>);

impl DeviceCopy {
    /// The volumes of `projs` on `gpu`, and the number of padded-slice points.
    fn get(
        &self,
        gpu: &Cuda,
        grid: &WorkGrid,
        projs: &[Projector],
    ) -> Result<(&VolumeDevice, usize)> {
        let r = self.0.get_or_init(|| {
            let geom = geometry(grid);
            let vols: Vec<&[Complex32]> = projs.iter().map(|p| p.spectrum()).collect();
            VolumeDevice::upload(gpu, &geom, &vols)
                .map(|d| (d, geom.points.len()))
                .map_err(|e| e.to_string())
        });
        match r {
            Ok((d, np)) => Ok((d, *np)),
            Err(e) => Err(Error::Backend(e.clone())),
        }
    }

    /// The device copy if one was made (and made without error).
    fn made(&self) -> Option<&VolumeDevice> {
        match self.0.get() {
            Some(Ok((d, _))) => Some(d),
            _ => None,
        }
    }
}

/// The shell lists and padded-slice points of `grid` (the same for every particle).
pub fn geometry(grid: &WorkGrid) -> Geometry {
    let mut shells = vec![Vec::new(); grid.n_shells()];
    for c in 0..grid.len() {
        if let Some((s, _)) = coeff(grid, c) {
            shells[s].push(c as u32);
        }
    }
    let zero = Array2::<Complex32>::zeros((grid.n, grid.h()));
    let slice = PaddedSlice::new(zero.view(), PAD, grid.k_max, |_, _| 0.0);
    Geometry {
        n: grid.n,
        pad: PAD,
        k_max: grid.k_max,
        shells,
        points: slice.points().iter().map(|p| (p.0, p.1)).collect(),
    }
}

/// Device bytes of a run with `k` classes and `n_syms` symmetry operators on `grid`: the
/// resident volumes and accumulators (`104·k·V`, V = m²·(m/2+1), m = 2n: 8·k·V of volumes,
/// 48·k·V of one block's fixed-point sums, 48·k·V of the iteration's f64 sums) plus one
/// block's buffers (`BLOCK_PARTICLES` × (spectrum + padded slice + residuals +
/// probabilities + matrices)).
pub fn device_bytes(k: usize, grid: &WorkGrid, n_syms: usize) -> usize {
    let pts = geometry(grid).points.len();
    let per_particle =
        8 * grid.len() + 8 * pts + 8 * k * grid.n_shells() + 8 * k + 72 * n_syms + 256;
    VolumeDevice::resident_bytes(grid.n, PAD, k) + BLOCK_PARTICLES * per_particle
}

/// Spectra, poses and CTF coefficients of particles `idx` of `p`, in that order.
#[allow(clippy::type_complexity)]
fn block_inputs(
    grid: &WorkGrid,
    p: &Particles,
    idx: &[usize],
) -> (Vec<Complex32>, Vec<[f64; 9]>, Option<Vec<[f64; 9]>>) {
    let mut spectra = Vec::with_capacity(idx.len() * grid.len());
    for &i in idx {
        spectra.extend_from_slice(p.spectrum(i));
    }
    let flat = |a: &[[f64; 3]; 3]| {
        let mut o = [0.0; 9];
        for r in 0..3 {
            o[3 * r..3 * r + 3].copy_from_slice(&a[r]);
        }
        o
    };
    let poses = idx.iter().map(|&i| flat(p.pose(i))).collect();
    let ctfs = p
        .ctf
        .as_ref()
        .map(|c| idx.iter().map(|&i| c[i].coefficients()).collect());
    (spectra, poses, ctfs)
}

fn particle_block<'b>(
    grid: &WorkGrid,
    spectra: &'b [Complex32],
    poses: &'b [[f64; 9]],
    ctfs: Option<&'b [[f64; 9]]>,
) -> ParticleBlock<'b> {
    ParticleBlock {
        spectra,
        poses,
        ctfs,
        // As Ctf::half_plane_into on the working grid.
        freq_step: 1.0 / (grid.n as f64 * grid.psize_a()),
    }
}

impl Score<VolumeModel<'_>> for Cuda {
    type Scores = Scores;
    fn score(&self, m: &VolumeModel, b: &BlockRef) -> Result<Scores> {
        let (dev, _) = m.device.get(self, m.grid, &m.projs)?;
        let (k, ns, len) = (m.projs.len(), m.grid.n_shells(), b.idx.len());
        let (spectra, poses, ctfs) = block_inputs(m.grid, b.particles, b.idx);
        let pb = particle_block(m.grid, &spectra, &poses, ctfs.as_deref());
        let resid = dev.score_block(&pb, b.scale)?;
        if resid.len() != len * k * ns {
            return Err(Error::Internal("GPU scores: unexpected size".into()));
        }
        let ll = Array2::from_shape_fn((len, k), |(j, c)| {
            log_likelihood(&resid[(j * k + c) * ns..(j * k + c + 1) * ns], &m.sigma2)
        });
        Ok(Scores {
            ll,
            resid,
            counts: shell_counts(m.grid),
        })
    }
}

/// An upper bound of C² over shells `0..=k_max` of particle `i` (1 without CTF):
/// `(scale · max envelope)²`.
fn c2_bound(p: &Particles, i: usize, grid: &WorkGrid) -> f64 {
    match &p.ctf {
        None => 1.0,
        Some(c) => {
            let co = c[i].coefficients();
            let kmax = (grid.k_max + 1) as f64 / (grid.box_in as f64 * grid.psize_in_a);
            let env = if co[3] > 0.0 {
                (co[3] * kmax * kmax).exp()
            } else {
                1.0
            };
            (co[8].abs() * env).powi(2)
        }
    }
}

/// What the host prepares for a block's back-projection (see [`Backprojection`]).
struct BackprojectInputs {
    values: Vec<Complex32>,
    mats: Vec<[f64; 9]>,
    ctfs: Option<Vec<[f64; 9]>>,
    half: Vec<u8>,
    c2_max: Vec<f64>,
}

impl BackprojectInputs {
    /// The padded slices (`np` points) of the block's particles that have weight somewhere
    /// (zeros for the others, which the kernel skips), the pose × symmetry matrices
    /// `A·R_gᵀ` (as `model::backproject`), CTF coefficients, half sets and C² bounds.
    fn new(m: &VolumeModel, b: &BlockRef, probs: &[f64], np: usize) -> Result<Self> {
        // Padded slices of the particles with weight somewhere (zeros for the others,
        // which the kernel skips).
        let (grid, parts, k) = (m.grid, b.particles, m.projs.len());
        let h = grid.h();
        let slices: Vec<Vec<Complex32>> = b
            .idx
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                if probs[j * k..(j + 1) * k].iter().all(|p| *p < MIN_WEIGHT) {
                    return vec![Complex32::new(0.0, 0.0); np];
                }
                let mut c = vec![0.0f32; grid.len()];
                parts.ctf_into(i, grid, &mut c);
                let x = parts.spectrum(i);
                let y = Array2::from_shape_fn((grid.n, h), |(a, bb)| x[a * h + bb] * c[a * h + bb]);
                let s = PaddedSlice::new(y.view(), PAD, grid.k_max, |_, _| 0.0);
                s.points().iter().map(|p| p.2).collect()
            })
            .collect();
        if slices.iter().any(|s| s.len() != np) {
            return Err(Error::Internal("padded slices of different sizes".into()));
        }
        let values: Vec<Complex32> = slices.into_iter().flatten().collect();
        let flat = |a: [[f64; 3]; 3]| {
            let mut o = [0.0; 9];
            for r in 0..3 {
                o[3 * r..3 * r + 3].copy_from_slice(&a[r]);
            }
            o
        };
        let mats: Vec<[f64; 9]> = b
            .idx
            .iter()
            .flat_map(|&i| {
                m.syms
                    .iter()
                    .map(move |g| flat(matmul(parts.pose(i), &transpose(g))))
            })
            .collect();
        let ctfs: Option<Vec<[f64; 9]>> = parts
            .ctf
            .as_ref()
            .map(|c| b.idx.iter().map(|&i| c[i].coefficients()).collect());
        let half: Vec<u8> = b.idx.iter().map(|&i| parts.half[i]).collect();
        let c2_max: Vec<f64> = b.idx.iter().map(|&i| c2_bound(parts, i, grid)).collect();
        Ok(BackprojectInputs {
            values,
            mats,
            ctfs,
            half,
            c2_max,
        })
    }

    fn view<'s>(
        &'s self,
        m: &VolumeModel,
        b: &'s BlockRef,
        probs: &'s [f64],
    ) -> Backprojection<'s> {
        let grid = m.grid;
        Backprojection {
            values: &self.values,
            mats: &self.mats,
            n_syms: m.syms.len(),
            ctfs: self.ctfs.as_deref(),
            // As Particles::ctf2_at.
            freq_step_in: 1.0 / (grid.box_in as f64 * grid.psize_in_a),
            probs,
            alpha: b.scale,
            half: &self.half,
            c2_max: &self.c2_max,
        }
    }
}

impl Accumulate<VolumeModel<'_>> for Cuda {
    /// The CPU's `model::backproject` and noise sums, the spreading on the device; the
    /// block's class sums are brought down before returning ([`accumulate_deferred`] and
    /// [`flush`]), so `st` is complete.
    fn accumulate(
        &self,
        m: &VolumeModel,
        b: &BlockRef,
        sc: &Scores,
        resp: &Responsibilities,
        st: &mut Stats,
    ) -> Result<()> {
        accumulate_deferred(self, m, b, sc, resp, st)?;
        flush(m, st)
    }
}

/// Adds a block's class weights and noise sums to `st` and its back-projection to the
/// device's resident sums (brought into `st` by [`flush`]).
pub fn accumulate_deferred(
    gpu: &Cuda,
    m: &VolumeModel,
    b: &BlockRef,
    sc: &Scores,
    resp: &Responsibilities,
    st: &mut Stats,
) -> Result<()> {
    let (dev, np) = m.device.get(gpu, m.grid, &m.projs)?;
    let k = m.projs.len();
    let probs = resp
        .probs()
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset()
        .0;
    {
        let w = st.segment_mut(model::WEIGHT)?;
        for r in probs.chunks_exact(k) {
            for (a, p) in w.iter_mut().zip(r) {
                *a += p;
            }
        }
    }
    let inp = BackprojectInputs::new(m, b, &probs, np)?;
    dev.backproject_block(&inp.view(m, b, &probs))?;
    add_block_noise(st, sc, &probs, k)
}

/// Brings the device's resident back-projection sums of `m` down into `st`'s `acc`
/// segment (48·K·V bytes, the CPU's layout) and clears them; nothing when `m` has no
/// device copy or no block was added since the last flush. Classify3d's `finish_e_step`
/// calls it once per iteration on the CUDA backend.
pub fn flush(m: &VolumeModel, st: &mut Stats) -> Result<()> {
    match m.device.made() {
        Some(dev) => dev.take_sums(st.segment_mut(model::ACC)?).map(|_| ()),
        None => Ok(()),
    }
}

/// [`crate::backend::phases::e_step_block`] on the GPU with the back-projection left on
/// the device until [`flush`]: scores, responsibilities and (with `accumulate`) the
/// block's weights and noise sums in `st`, its class sums in the resident device sums.
pub fn e_step_block(
    gpu: &Cuda,
    m: &VolumeModel,
    b: &BlockRef,
    log_prior: &[f64],
    params: &EStepParams,
    accumulate: bool,
    st: &mut Stats,
) -> Result<(Scores, Responsibilities)> {
    let sc = gpu.score(m, b)?;
    let resp = responsibilities(sc.class_ll(), log_prior, params)?;
    if accumulate {
        accumulate_deferred(gpu, m, b, &sc, &resp, st)?;
    }
    Ok((sc, resp))
}

/// `estep::fit_scales` on the GPU: least-squares scales of particles `idx` of `block`
/// against the volume of `dev` (a [`DeviceCopy`] of one projector, `proj`).
pub fn fit_scales(
    gpu: &Cuda,
    dev: &DeviceCopy,
    block: &Particles,
    idx: &[usize],
    grid: &WorkGrid,
    proj: &Projector,
    sigma2: &[f64],
) -> Result<Vec<f64>> {
    let (d, _) = dev.get(gpu, grid, std::slice::from_ref(proj))?;
    let (spectra, poses, ctfs) = block_inputs(grid, block, idx);
    let sums = d.fit_block(&particle_block(grid, &spectra, &poses, ctfs.as_deref()))?;
    let ns = grid.n_shells();
    Ok((0..idx.len())
        .map(|j| {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for s in 1..ns {
                num += sums[2 * (j * ns + s)] / sigma2[s];
                den += sums[2 * (j * ns + s) + 1] / sigma2[s];
            }
            if den > 0.0 {
                (num / den).clamp(0.05, 20.0)
            } else {
                1.0
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::phases::{check_parity, e_step_block};
    use crate::backend::Cpu;
    use crate::em::responsibilities::EStepParams;
    use crate::numerics::ctf::{Ctf, CtfParams};
    use crate::numerics::rotation::pose_to_matrix;
    use crate::numerics::symmetry::point_group;
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};

    /// Grid, class volumes, particles, their scales, symmetry operators.
    type Fixture = (
        &'static WorkGrid,
        Vec<Array3<f32>>,
        Particles,
        Vec<f64>,
        Vec<[[f64; 3]; 3]>,
    );

    /// Two random class volumes and 30 particles at random poses (CTF with varied,
    /// astigmatic defocus and a B-factor; scales 0.8–1.1) on a box-24 grid.
    fn fixture(sym: &str) -> Fixture {
        let grid: &'static WorkGrid = Box::leak(Box::new(WorkGrid::new(24, 3.0, 9.0)));
        let n = grid.n;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let vols = (0..2)
            .map(|_| Array3::from_shape_fn((n, n, n), |_| rng.gen_range(-1.0f32..1.0)))
            .collect();
        let m = 30;
        let spectra = (0..m * grid.len())
            .map(|_| Complex32::new(rng.gen_range(-3.0..3.0), rng.gen_range(-3.0..3.0)))
            .collect();
        let poses = (0..m)
            .map(|_| {
                let a = [
                    rng.gen_range(0.0..std::f64::consts::TAU),
                    rng.gen_range(0.0..std::f64::consts::PI),
                    rng.gen_range(0.0..std::f64::consts::TAU),
                ];
                pose_to_matrix(a)
            })
            .collect();
        let ctfs = (0..m)
            .map(|_| {
                Ctf::new(&CtfParams {
                    df1_a: rng.gen_range(8000.0..20000.0),
                    df2_a: rng.gen_range(8000.0..20000.0),
                    df_angle_rad: rng.gen_range(0.0..3.0),
                    bfactor_a2: 50.0,
                    ..Default::default()
                })
            })
            .collect();
        let parts = Particles::with_poses(0, spectra, Some(ctfs), poses, grid);
        let scale = (0..m).map(|i| 0.8 + 0.01 * i as f64).collect();
        (grid, vols, parts, scale, point_group(sym).unwrap())
    }

    fn model<'a>(
        grid: &'a WorkGrid,
        vols: &[Array3<f32>],
        syms: &[[[f64; 3]; 3]],
    ) -> VolumeModel<'a> {
        VolumeModel {
            grid,
            projs: vols.iter().map(|v| Projector::new(v.view(), PAD)).collect(),
            sigma2: (0..grid.n_shells()).map(|s| 40.0 + s as f64).collect(),
            syms: syms.to_vec(),
            device: DeviceCopy::default(),
        }
    }

    /// The host side's assumption, checked here without a GPU: every particle's padded
    /// slice has its points at the positions of [`geometry`], and the shell lists hold the
    /// coefficients the CPU sums (the counts of `shell_counts`).
    #[test]
    fn geometry_matches_the_particles_padded_slices_and_shells() {
        let (grid, _, parts, _, _) = fixture("C1");
        let g = geometry(grid);
        let h = grid.h();
        for i in [0, 7] {
            let x = parts.spectrum(i);
            let y = Array2::from_shape_fn((grid.n, h), |(a, b)| x[a * h + b]);
            let s = PaddedSlice::new(y.view(), PAD, grid.k_max, |_, _| 0.0);
            let pts: Vec<(f32, f32)> = s.points().iter().map(|p| (p.0, p.1)).collect();
            assert_eq!(pts, g.points);
        }
        let counts = shell_counts(grid);
        for (s, list) in g.shells.iter().enumerate() {
            let w: f64 = list
                .iter()
                .map(|&c| if grid.kx[c as usize] == 0 { 0.5 } else { 1.0 })
                .sum();
            assert_eq!(w, counts[s], "shell {s}");
            assert!(list.windows(2).all(|p| p[0] < p[1]));
        }
        assert!(device_bytes(2, grid, 1) > VolumeDevice::resident_bytes(grid.n, PAD, 2));
    }

    /// The host transcription of the kernels (`backend::cuda::volume_host`) on the inputs
    /// this file prepares gives the CPU's residuals and accumulators (C1 and C2, with CTF
    /// and scales, some class weights below the cut-off; the back-projection in two blocks
    /// added into resident f64 sums, as the device does over an iteration): checks the host
    /// side here, where no GPU runs the kernels themselves.
    #[test]
    fn host_transcription_of_the_kernels_matches_the_cpu() {
        use crate::backend::cuda::volume_host;
        for sym in ["C1", "C2"] {
            let (grid, vols, parts, scale, syms) = fixture(sym);
            let m = model(grid, &vols, &syms);
            let idx: Vec<usize> = (0..parts.len()).step_by(2).collect();
            let scale: Vec<f64> = idx.iter().map(|&i| scale[i]).collect();
            let b = BlockRef {
                particles: &parts,
                idx: &idx,
                scale: &scale,
            };
            let geom = geometry(grid);
            let want = Cpu.score(&m, &b).unwrap();
            let (spectra, poses, ctfs) = block_inputs(grid, &parts, &idx);
            let pb = particle_block(grid, &spectra, &poses, ctfs.as_deref());
            let vs: Vec<&[Complex32]> = m.projs.iter().map(|p| p.spectrum()).collect();
            let got = volume_host::score(&geom, &vs, &pb, &scale);
            let big = want.resid.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (a, g) in want.resid.iter().zip(&got) {
                assert!(
                    (a - g).abs() <= 1e-5 * big,
                    "{sym}: residual {g} vs CPU {a}"
                );
            }
            let probs: Vec<f64> = (0..idx.len())
                .flat_map(|j| match j % 3 {
                    0 => [1.0, 0.0],
                    1 => [0.3, 0.7],
                    _ => [0.9995, 0.0005],
                })
                .collect();
            let layout = model::layout(2, grid).unwrap();
            let mut st = Stats::zeros(&layout);
            model::backproject(&mut st, grid, &parts, &idx, &scale, &probs, &syms).unwrap();
            // Two blocks, as the device runs them: each block's fixed-point sums (its own
            // scale) added into resident f64 sums, the fixed-point buffer cleared between.
            let mut acc = vec![0.0; st.segment(model::ACC).unwrap().len()];
            let mut fixed = vec![0u64; acc.len()];
            let cut = 8;
            for (lo, hi) in [(0, cut), (cut, idx.len())] {
                let sub = BlockRef {
                    particles: &parts,
                    idx: &idx[lo..hi],
                    scale: &scale[lo..hi],
                };
                let pr = &probs[2 * lo..2 * hi];
                let inp = BackprojectInputs::new(&m, &sub, pr, geom.points.len()).unwrap();
                let f =
                    volume_host::backproject_fixed(&geom, 2, &inp.view(&m, &sub, pr), &mut fixed)
                        .unwrap();
                volume_host::add_fixed(&mut acc, &mut fixed, f);
                assert!(fixed.iter().all(|&v| v == 0));
            }
            let want = st.segment(model::ACC).unwrap();
            let big = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let worst = want
                .iter()
                .zip(&acc)
                .fold(0.0f64, |e, (a, g)| e.max((a - g).abs()));
            assert!(
                big > 0.0 && worst <= 1e-6 * big,
                "{sym}: accumulators differ by {worst} (largest {big})"
            );
        }
    }

    /// CPU and CUDA phases on the same block, with CTF, scales and C1 / C2 symmetry:
    /// responsibilities within 1e-4, class log-likelihoods within 1e-4 of their range,
    /// statistics within 1e-4 of the largest (f32 rounding of the device's gathers and
    /// CTF against the CPU's; the fixed-point quantum is 2⁻⁶² of a bound). Skipped (with
    /// the reason printed) where no GPU is usable.
    #[test]
    fn cuda_volume_phases_match_the_cpu() {
        let Some(gpu) = crate::backend::cuda::gpu_for_test() else {
            return;
        };
        for sym in ["C1", "C2"] {
            let (grid, vols, parts, scale, syms) = fixture(sym);
            let (cpu_m, gpu_m) = (model(grid, &vols, &syms), model(grid, &vols, &syms));
            let idx: Vec<usize> = (0..parts.len()).collect();
            let block = BlockRef {
                particles: &parts,
                idx: &idx,
                scale: &scale,
            };
            let prior = vec![(0.4f64).ln(), (0.6f64).ln()];
            let params = EStepParams::new(1.0, 0.1, false).unwrap();
            let layout = model::layout(2, grid).unwrap();
            check_parity(
                (&Cpu, &cpu_m),
                (&gpu, &gpu_m),
                &block,
                &layout,
                &prior,
                &params,
                1e-4,
            )
            .unwrap_or_else(|e| panic!("{sym}: {e}"));
        }
    }

    /// The same block twice on the GPU gives the same statistics bit for bit (fixed-point
    /// sums do not depend on the order of the threads); two blocks kept on the device and
    /// flushed once give the bits of two flushed blocks; the scale fit matches the CPU.
    #[test]
    fn cuda_volume_statistics_are_reproducible_and_scales_match() {
        let Some(gpu) = crate::backend::cuda::gpu_for_test() else {
            return;
        };
        let (grid, vols, parts, scale, syms) = fixture("C2");
        let m = model(grid, &vols, &syms);
        let idx: Vec<usize> = (0..parts.len()).collect();
        let block = BlockRef {
            particles: &parts,
            idx: &idx,
            scale: &scale,
        };
        let prior = vec![(0.5f64).ln(); 2];
        let params = EStepParams::new(1.0, 0.3, false).unwrap();
        let layout = model::layout(2, grid).unwrap();
        let run = || {
            let mut st = Stats::zeros(&layout);
            e_step_block(&gpu, &m, &block, &prior, &params, true, &mut st).unwrap();
            st.as_slice()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<u64>>()
        };
        assert!(run() == run(), "GPU statistics differ between two runs");
        // The engine's path: two blocks with their class sums left on the device and one
        // flush give the bits of two Accumulate calls (each flushing) into one Stats.
        let bits = |st: &Stats| {
            st.as_slice()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let halves = [(0, 12), (12, idx.len())];
        let sub = |lo: usize, hi: usize| BlockRef {
            particles: &parts,
            idx: &idx[lo..hi],
            scale: &scale[lo..hi],
        };
        let mut each = Stats::zeros(&layout);
        for (lo, hi) in halves {
            e_step_block(&gpu, &m, &sub(lo, hi), &prior, &params, true, &mut each).unwrap();
        }
        let mut once = Stats::zeros(&layout);
        for (lo, hi) in halves {
            super::e_step_block(&gpu, &m, &sub(lo, hi), &prior, &params, true, &mut once).unwrap();
        }
        flush(&m, &mut once).unwrap();
        let before = bits(&once);
        flush(&m, &mut once).unwrap();
        assert!(
            bits(&once) == before,
            "a second flush changed the statistics"
        );
        assert!(
            bits(&each) == before,
            "deferred class sums differ from per-block ones"
        );
        let want = super::super::estep::fit_scales(&parts, &idx, grid, &m.projs[0], &m.sigma2);
        let dev = DeviceCopy::default();
        let got = fit_scales(&gpu, &dev, &parts, &idx, grid, &m.projs[0], &m.sigma2).unwrap();
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "scale {b} vs CPU {a}");
        }
    }
}
