//! The 2D E-step phases on the CUDA backend ([`crate::backend::cuda::plane`] does the device
//! work): scores, pose marginals and pose weights on the device, responsibilities on the
//! host (shared code), then the class sums on the device and the noise sums on the host.
//!
//! Device order: a block's particles go up with the half-set-0 particles first (so each half
//! set is a contiguous row range of the device matrices); what comes back is put back in
//! block order here.
//!
//! M-step sums: the device sums, per class k, half set h and rotation r, the spectra
//! `S_khr = Σ_i Σ_t p_ik w_ikrt C_i X_i ρ_t` (with the CPU's cut-offs: p ≥ MIN_WEIGHT,
//! p·w_r ≥ MIN_WEIGHT·10⁻², w_t > 10⁻⁴·w_r) and the CTF² denominators at the rotated
//! frequencies; [`flush`] brings them down and adds `rotate(irfft(S_khr), −ψ_r)` into the
//! numerator, which equals the CPU's per-particle sum because the inverse FFT and the
//! rotation (bilinear interpolation) are linear. The noise model's residual at the best
//! class and pose is computed on the host from the host's copy of the particles.

use std::path::Path;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::backend::cuda::plane::{BlockScores, PlaneBlock, PlaneDevice, PlaneSetup, PlaneSums};
use crate::backend::cuda::Cuda;
use crate::backend::phases::{Accumulate, BlockRef, ClassScores, Score};
use crate::em::responsibilities::{responsibilities, EStepParams, Responsibilities};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::{Error, Result};
use crate::numerics::fft::{irfft2, Complex32};
use crate::numerics::image2d::rotate_image;
use crate::particles::{Particles, WorkGrid};

use super::accumulate::{result_row, Local, PlaneModel};
use super::estep::Scorer;
use super::model;
use super::results::ResultRow;

/// Block sizes tried, largest first, against the free device memory.
const GPU_BLOCKS: [usize; 5] = [256, 128, 64, 32, 16];

/// Scores of a block on the GPU, in block order; the pose weights stay on the device.
pub struct GpuPlaneScores {
    log_marginal: Array2<f64>,
    /// Best pose `r·T + t` per row and class.
    pub best_pose: Array2<usize>,
    /// `order[d]`: the block row at device position d.
    order: Vec<usize>,
    dev: BlockScores,
}

impl ClassScores for GpuPlaneScores {
    fn class_ll(&self) -> ArrayView2<'_, f64> {
        self.log_marginal.view()
    }
}

/// The iteration's device data for `scorer` (whose templates the CUDA backend already holds)
/// and the block size that fits the free device memory; the budget error names `num_classes`
/// of `cfg`.
pub fn plane_device(
    gpu: &Cuda,
    scorer: &Scorer,
    grid: &WorkGrid,
    ramps: &[Complex32],
    cfg: &Path,
) -> Result<(PlaneDevice, usize)> {
    let (inv_sigma2, conj_ramps, band_freq, _, _) = scorer.device_inputs();
    let freq: Vec<(f64, f64)> = (0..grid.len()).map(|c| grid.freq_a(c)).collect();
    let inside: Vec<bool> = grid
        .shell
        .iter()
        .map(|&s| s as usize <= grid.k_max)
        .collect();
    let setup = PlaneSetup {
        n_classes: scorer.n_classes(),
        n_rot: scorer.poses.n_rot(),
        n_shift: scorer.poses.n_shift(),
        len: grid.len(),
        band_idx: &scorer.band.idx,
        band_freq,
        inv_sigma2,
        conj_ramps,
        ramps,
        freq: &freq,
        inside: &inside,
        psi_rad: &scorer.poses.psi_rad,
    };
    let (free, _) = gpu.memory()?;
    let fits = |nb: usize| PlaneDevice::bytes_for(&setup, nb) as f64 <= 0.8 * free as f64;
    let nb = match GPU_BLOCKS.iter().copied().find(|&nb| fits(nb)) {
        Some(nb) => nb,
        None => {
            let smallest = GPU_BLOCKS[GPU_BLOCKS.len() - 1];
            gpu.check_budget(PlaneDevice::bytes_for(&setup, smallest), cfg, "num_classes")?;
            smallest
        }
    };
    Ok((PlaneDevice::upload(gpu, &setup)?, nb))
}

fn device<'m>(m: &'m PlaneModel) -> Result<&'m PlaneDevice> {
    m.device
        .as_ref()
        .ok_or_else(|| Error::Internal("classify2d: CUDA phases without device data".into()))
}

impl Score<PlaneModel<'_>> for Cuda {
    type Scores = GpuPlaneScores;
    fn score(&self, m: &PlaneModel, b: &BlockRef) -> Result<GpuPlaneScores> {
        let dev = device(m)?;
        let k = m.num_classes;
        let n = b.idx.len();
        let half = |bi: usize| b.particles.half[b.idx[bi]];
        let order: Vec<usize> = (0..n)
            .filter(|&bi| half(bi) == 0)
            .chain((0..n).filter(|&bi| half(bi) != 0))
            .collect();
        let n_half0 = (0..n).filter(|&bi| half(bi) == 0).count();
        let spectra: Vec<Complex32> = order
            .iter()
            .flat_map(|&bi| b.particles.spectrum(b.idx[bi]).iter().copied())
            .collect();
        let ctf: Option<Vec<[f64; 9]>> = b.particles.ctf.as_ref().map(|v| {
            order
                .iter()
                .map(|&bi| v[b.idx[bi]].coefficients())
                .collect()
        });
        let (_, _, _, mat, pow) = m.scorer.device_inputs();
        let sc = dev.score_block(
            mat,
            pow,
            &PlaneBlock {
                spectra: &spectra,
                ctf: ctf.as_deref(),
                n_half0,
            },
        )?;
        let mut log_marginal = Array2::<f64>::zeros((n, k));
        let mut best_pose = Array2::<usize>::zeros((n, k));
        for (d, &bi) in order.iter().enumerate() {
            for kk in 0..k {
                log_marginal[[bi, kk]] = sc.log_marginal[d * k + kk];
                best_pose[[bi, kk]] = sc.best_pose[d * k + kk].max(0) as usize;
            }
        }
        Ok(GpuPlaneScores {
            log_marginal,
            best_pose,
            order,
            dev: sc,
        })
    }
}

impl Accumulate<PlaneModel<'_>> for Cuda {
    fn accumulate(
        &self,
        m: &PlaneModel,
        b: &BlockRef,
        sc: &GpuPlaneScores,
        resp: &Responsibilities,
        st: &mut Stats,
    ) -> Result<()> {
        accumulate_deferred(m, b, sc, resp, st)?;
        flush(m, st)
    }
}

/// Adds a block's class sums to the device sums (brought into `st` by [`flush`]) and its
/// weights and noise sums to `st`.
pub fn accumulate_deferred(
    m: &PlaneModel,
    b: &BlockRef,
    sc: &GpuPlaneScores,
    resp: &Responsibilities,
    st: &mut Stats,
) -> Result<()> {
    let dev = device(m)?;
    let k = m.num_classes;
    let probs: Vec<f64> = sc
        .order
        .iter()
        .flat_map(|&bi| resp.probs().row(bi).to_vec())
        .collect();
    let kept = dev.accumulate_block(&sc.dev, &probs, m.best_pose_only)?;
    {
        let w = st.segment_mut(model::WEIGHT)?;
        for (d, &bi) in sc.order.iter().enumerate() {
            let half = b.particles.half[b.idx[bi]] as usize;
            for kk in 0..k {
                w[kk * 2 + half] += kept[d * k + kk];
            }
        }
    }
    let local = Local {
        num_classes: k,
        grid: m.scorer.grid,
        particles: b.particles,
    };
    let poses = &m.scorer.poses;
    let resid: Vec<Vec<Complex32>> = (0..b.idx.len())
        .into_par_iter()
        .map(|bi| {
            let i = b.idx[bi];
            let best_k = resp.best_class()[bi];
            let pose = poses.split(sc.best_pose[[bi, best_k]]);
            local.residual(m, i, best_k, pose, local.full_ctf(i).as_deref())
        })
        .collect();
    for r in &resid {
        model::add_noise(st, m.scorer.grid, r);
    }
    Ok(())
}

/// Brings the device's class sums down into `st` (numerator: one inverse FFT and rotation
/// back per class, half set and rotation; denominators added as they are) and resets them.
pub fn flush(m: &PlaneModel, st: &mut Stats) -> Result<()> {
    match device(m)?.take_sums()? {
        Some(sums) => add_sums(m, &sums, st),
        None => Ok(()),
    }
}

/// Adds the device's class sums ([`PlaneSums`] layouts) to `st`.
fn add_sums(m: &PlaneModel, sums: &PlaneSums, st: &mut Stats) -> Result<()> {
    let grid = m.scorer.grid;
    let (k, r, l, n) = (m.num_classes, m.scorer.poses.n_rot(), grid.len(), grid.n);
    {
        let den = st.segment_mut(model::DEN)?;
        for h in 0..2 {
            for kk in 0..k {
                let src = &sums.den[(h * 2 * k + kk) * l..(h * 2 * k + kk + 1) * l];
                let slot = kk * 2 + h;
                den[slot * l..(slot + 1) * l]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, v)| *d += v);
            }
        }
    }
    {
        let den2 = st.segment_mut(model::DEN2)?;
        for h in 0..2 {
            for kk in 0..k {
                let j = h * 2 * k + k + kk;
                let src = &sums.den[j * l..(j + 1) * l];
                let slot = kk * 2 + h;
                den2[slot * l..(slot + 1) * l]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, v)| *d += v);
            }
        }
    }
    let psi = &m.scorer.poses.psi_rad;
    // Slot kk·2 + h: Σ_r rotate(irfft(S_khr), −ψ_r), in rotation order.
    let images: Vec<Vec<f64>> = (0..2 * k)
        .into_par_iter()
        .map(|slot| {
            let (kk, h) = (slot / 2, slot % 2);
            let mut acc = vec![0.0f64; n * n];
            for (rr, &p) in psi.iter().enumerate().take(r) {
                let at = (h * k * r + kk * r + rr) * 2 * l;
                let s = &sums.num[at..at + 2 * l];
                if s.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let spec: Vec<Complex32> = s
                    .chunks_exact(2)
                    .map(|c| Complex32::new(c[0] as f32, c[1] as f32))
                    .collect();
                let spec = Array2::from_shape_vec((n, grid.h()), spec).expect("working spectrum");
                let img = irfft2(spec.view(), n);
                let back = rotate_image(img.view(), -p);
                acc.iter_mut()
                    .zip(back.iter())
                    .for_each(|(a, v)| *a += *v as f64);
            }
            acc
        })
        .collect();
    let num = st.segment_mut(model::NUM)?;
    for (slot, img) in images.iter().enumerate() {
        num[slot * n * n..(slot + 1) * n * n]
            .iter_mut()
            .zip(img)
            .for_each(|(d, v)| *d += v);
    }
    Ok(())
}

/// The iteration's GPU set-up on the CUDA backend (none on the CPU): the device data,
/// particles per block, and the set-up error kept for the first E-step call (so that every
/// rank agrees on it; an error here on one rank would leave the others waiting).
pub fn prepare(
    backend: &dyn crate::backend::Backend,
    scorer: &Scorer,
    grid: &WorkGrid,
    ramps: &[Complex32],
    cfg: &Path,
) -> (Option<PlaneDevice>, usize, Option<Error>) {
    match backend.as_cuda() {
        Some(gpu) => match plane_device(gpu, scorer, grid, ramps, cfg) {
            Ok((d, nb)) => (Some(d), nb, None),
            Err(e) => (None, 0, Some(e)),
        },
        None => (None, 0, None),
    }
}

/// Ok when this iteration's GPU set-up (made in `prepare`, where an error on one rank
/// would leave the others waiting) succeeded; otherwise its error, returned by the first
/// E-step call, whose errors every rank agrees on.
pub fn setup_succeeded(error: &std::sync::Mutex<Option<Error>>, m: &PlaneModel) -> Result<()> {
    if let Some(e) = error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    if m.device.is_none() {
        return Err(Error::Backend(
            "classify2d: the GPU set-up of this iteration failed (see the first error)".into(),
        ));
    }
    Ok(())
}

/// The E-step of `idx` on the GPU in blocks of `batch`, one block at a time (one stream);
/// the class sums stay on the device until [`flush`] (the engine's `finish_e_step`, once per
/// iteration).
#[allow(clippy::too_many_arguments)]
pub fn e_step(
    gpu: &Cuda,
    m: &PlaneModel,
    params: &EStepParams,
    layout: &StatsLayout,
    particles: &Particles,
    idx: &[usize],
    batch: usize,
    stats: &mut Stats,
) -> Result<Vec<(usize, ResultRow)>> {
    let log_prior = vec![0.0; m.num_classes];
    let ones = vec![1.0; batch.max(1)];
    let mut st = Stats::zeros(layout);
    let mut rows = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(batch.max(1)) {
        let b = BlockRef {
            particles,
            idx: chunk,
            scale: &ones[..chunk.len()],
        };
        let sc = gpu.score(m, &b)?;
        let resp = responsibilities(sc.class_ll(), &log_prior, params)?;
        accumulate_deferred(m, &b, &sc, &resp, &mut st)?;
        rows.extend(chunk.iter().enumerate().map(|(bi, &i)| {
            let x = particles.spectrum(i);
            (i, result_row(m, &sc.best_pose, &resp, bi, x))
        }));
    }
    stats.add(&st)?;
    Ok(rows)
}

#[cfg(test)]
mod tests;
