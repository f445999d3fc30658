//! The 3D classification model: sufficient statistics (CTF-weighted back-projections of every
//! class and half set, the noise power per shell, the class weights), reconstruction of each
//! class with its half-map FSC and FSC-based (Wiener) filtering, masks, and the effective
//! volumes the E-step projects.
//!
//! Formulas (docs/ALGORITHMS.md, "3D classification"):
//! ```text
//!   num_{k,h}(Aᵀk) += p_ik·α_i·C_i(k)·X_i(k)      den_{k,h}(Aᵀk) += p_ik·α_i²·C_i(k)²
//!     (p_ik < 10⁻³ is skipped)
//!     (h = the particle's half set, trilinear on the 2×-padded grid, once per symmetry
//!      operator R_g at pose A_i·R_gᵀ)
//!   half maps   V_{k,h} = F⁻¹[num_{k,h} / (den_{k,h} + 0.01·⟨den_{k,h}⟩_shell)] / gridding
//!   FSC_k(s)    between S·V_{k,0} and S·V_{k,1} (S = solvent mask)
//!   full map    V_k = F⁻¹[num_k / (den_k + λ_k(s))] / gridding, then × S
//!     use_fsc_filter:  λ_k(s) = ⟨den_k⟩_s / SSNR_k(s),  SSNR = F'/(1 − F'),
//!                      F' = 2·FSC/(1 + FSC) (the FSC of the full map), so each shell is
//!                      attenuated by ≈ SSNR/(1 + SSNR) = F'
//!     off:             λ_k(s) = 0.01·⟨den_k⟩_s (a plain low-pass at filter_res_A)
//!   σ²(s)       = Σ_i Σ_k p_ik·Σ_{c∈s} w_c·|X_ic − α_i C_ic P_kc|² / Σ_i Σ_{c∈s} w_c
//! ```

use ndarray::{Array2, Array3, Zip};
use rayon::prelude::*;

use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::fft::{fftfreq, half_len, irfft3, rfft3, Complex32};
use crate::numerics::frc::{frc_resolution_a, fsc_spectra};
use crate::numerics::project3d::{
    accumulator_len, reconstruct, scatter, shell_mean, Contribution, PaddedSlice,
};
use crate::numerics::rotation::{matmul, transpose, Mat3};
use crate::numerics::volume::{rms, rms_difference};
use crate::particles::{Particles, WorkGrid};

/// Oversampling of projection and back-projection.
pub const PAD: usize = 2;
/// Class probabilities below this are not back-projected.
pub const MIN_WEIGHT: f64 = 1e-3;
/// Particles whose padded slices are prepared together before spreading.
const CHUNK: usize = 16;

/// Interleaved `[re, im, den]` per voxel of every (class, half) accumulator.
pub const ACC: &str = "acc";
pub const NOISE: &str = "noise";
pub const NOISE_N: &str = "noise_n";
pub const WEIGHT: &str = "weight";

/// The statistics of `k` classes on `grid`.
pub fn layout(k: usize, grid: &WorkGrid) -> Result<StatsLayout> {
    let v = accumulator_len(grid.n, PAD);
    StatsLayout::new(&[
        (ACC, 3 * v * 2 * k),
        (NOISE, grid.n_shells()),
        (NOISE_N, grid.n_shells()),
        (WEIGHT, k),
    ])
}

/// Back-projects particles `idx` of `block` (scale `scale[j]` for `idx[j]`) with class
/// weights `probs` (`idx.len() × K`, row-major) into `st`, and adds their class weights. Parallel over (class, half) targets,
/// so each accumulator has one writer and the summation order does not depend on threads.
pub fn backproject(
    st: &mut Stats,
    grid: &WorkGrid,
    block: &Particles,
    idx: &[usize],
    scale: &[f64],
    probs: &[f64],
    syms: &[Mat3],
) -> Result<()> {
    let k = st.segment(WEIGHT)?.len();
    let v = accumulator_len(grid.n, PAD);
    {
        let w = st.segment_mut(WEIGHT)?;
        for r in probs.chunks_exact(k) {
            for (a, b) in w.iter_mut().zip(r) {
                *a += b;
            }
        }
    }
    let acc = st.segment_mut(ACC)?;
    let mut targets: Vec<(usize, &mut [f64])> = acc.chunks_mut(3 * v).enumerate().collect();
    let h = grid.h();
    let m = grid.n * PAD;
    let chunk_len = CHUNK.max(4 * rayon::current_num_threads());
    for (ci, chunk) in idx.chunks(chunk_len).enumerate() {
        // Trilinear contributions of each particle (and symmetry copy), computed once and
        // spread into every class it has weight in.
        let contribs: Vec<Vec<Contribution>> = chunk
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                let row = &probs[(ci * chunk_len + j) * k..(ci * chunk_len + j + 1) * k];
                if row.iter().all(|p| *p < MIN_WEIGHT) {
                    return Vec::new();
                }
                let mut c = vec![0.0f32; grid.len()];
                block.ctf_into(i, grid, &mut c);
                let y = Array2::from_shape_fn((grid.n, h), |(a, b)| {
                    let j = a * h + b;
                    block.spectrum(i)[j] * c[j]
                });
                let slice = PaddedSlice::new(y.view(), PAD, grid.k_max, |kx, ky| {
                    block.ctf2_at(i, grid, kx, ky)
                });
                let mut out = Vec::with_capacity(slice.len() * 9 * syms.len());
                for g in syms {
                    slice.contributions(&matmul(block.pose(i), &transpose(g)), m, &mut out);
                }
                out
            })
            .collect();
        targets.par_iter_mut().for_each(|(t, acc)| {
            let (class, half) = (*t / 2, (*t % 2) as u8);
            for (j, &i) in chunk.iter().enumerate() {
                let p = probs[(ci * chunk_len + j) * k + class];
                if block.half[i] != half || p < MIN_WEIGHT {
                    continue;
                }
                let alpha = scale[ci * chunk_len + j];
                scatter(&contribs[j], p * alpha, p * alpha * alpha, acc);
            }
        });
    }
    Ok(())
}

/// Adds per-shell residual power (already weighted by class probability) of one particle.
pub fn add_noise(st: &mut Stats, resid: &[f64], counts: &[f64]) -> Result<()> {
    for (a, b) in st.segment_mut(NOISE)?.iter_mut().zip(resid) {
        *a += b;
    }
    for (a, b) in st.segment_mut(NOISE_N)?.iter_mut().zip(counts) {
        *a += b;
    }
    Ok(())
}

/// σ² per shell from the statistics (shells with no data keep `prev`).
pub fn noise_per_shell(st: &Stats, prev: &[f64]) -> Result<Vec<f64>> {
    let (s, n) = (st.segment(NOISE)?, st.segment(NOISE_N)?);
    Ok(s.iter()
        .zip(n)
        .zip(prev)
        .map(|((s, n), p)| if *n > 0.0 { (s / n).max(1e-12) } else { *p })
        .collect())
}

/// One reconstructed class.
#[derive(Clone, Debug)]
pub struct ClassVolume {
    /// The filtered, solvent-masked volume `(n, n, n)`.
    pub vol: Array3<f32>,
    /// Half-map FSC per shell (`0..=n/2`), masked by the solvent mask.
    pub fsc: Vec<f64>,
    /// Half-map reconstructions (unfiltered, unmasked).
    pub halves: [Array3<f32>; 2],
    /// FSC = 0.143 resolution, Å.
    pub res_a: f64,
}

impl ClassVolume {
    /// A placeholder before the start (empty volumes, no FSC, NaN resolution).
    pub fn empty() -> ClassVolume {
        ClassVolume {
            vol: Array3::zeros((0, 0, 0)),
            fsc: Vec::new(),
            halves: [Array3::zeros((0, 0, 0)), Array3::zeros((0, 0, 0))],
            res_a: f64::NAN,
        }
    }
}

/// The reconstructions of every class from the statistics.
pub fn reconstruct_classes(
    st: &Stats,
    grid: &WorkGrid,
    mask: &Array3<f32>,
    use_fsc: bool,
) -> Result<Vec<ClassVolume>> {
    let k = st.segment(WEIGHT)?.len();
    let v = accumulator_len(grid.n, PAD);
    let acc = st.segment(ACC)?;
    (0..k)
        .into_par_iter()
        .map(|c| {
            let part = |h: usize| {
                let t = 2 * c + h;
                &acc[3 * v * t..3 * v * (t + 1)]
            };
            Ok(reconstruct_one([part(0), part(1)], grid, mask, use_fsc))
        })
        .collect()
}

/// Half maps, FSC and the filtered full map of one class from its two half accumulators.
pub fn reconstruct_one(
    halves: [&[f64]; 2],
    grid: &WorkGrid,
    mask: &Array3<f32>,
    use_fsc: bool,
) -> ClassVolume {
    let n = grid.n;
    let half_maps = halves.map(|a| half_map(a, n));
    let fsc = masked_fsc(&half_maps, mask);
    let both: Vec<f64> = halves[0]
        .iter()
        .zip(halves[1])
        .map(|(a, b)| a + b)
        .collect();
    let mean = shell_mean(&both, n, PAD);
    let lambda = |s: usize| -> f64 {
        let m = mean.get(s).copied().unwrap_or(0.0) + 1e-30;
        if use_fsc {
            let f = fsc.get(s).copied().unwrap_or(0.0).clamp(0.0, 0.999);
            let full = 2.0 * f / (1.0 + f);
            let ssnr = (full / (1.0 - full)).max(1e-3);
            m / ssnr
        } else {
            0.01 * m
        }
    };
    let mut vol = reconstruct(&both, n, lambda);
    vol *= mask;
    let res_a = frc_resolution_a(&fsc, 0.143, n, grid.psize_a());
    ClassVolume {
        vol,
        fsc,
        halves: half_maps,
        res_a,
    }
}

/// The reconstruction of one accumulator (a half set, or the sum of both) regularised only
/// lightly, `num / (den + 0.01·⟨den⟩_shell)`: the unfiltered map.
pub fn half_map(acc: &[f64], n: usize) -> Array3<f32> {
    let mean = shell_mean(acc, n, PAD);
    reconstruct(acc, n, |s| {
        0.01 * mean.get(s).copied().unwrap_or(0.0) + 1e-30
    })
}

/// The FSC per shell (`0..=n/2`) between two half maps, both multiplied by `mask`.
pub fn masked_fsc(halves: &[Array3<f32>; 2], mask: &Array3<f32>) -> Vec<f64> {
    let n = mask.dim().0;
    let masked: Vec<Array3<Complex32>> = halves.iter().map(|h| rfft3((h * mask).view())).collect();
    fsc_spectra(masked[0].view(), masked[1].view(), n)
}

/// The volume low-passed with a raised-cosine edge of 2 shells at `res_a` (grid units).
pub fn lowpass(vol: &Array3<f32>, grid: &WorkGrid, res_a: f64) -> Array3<f32> {
    let n = grid.n;
    let k_c = n as f64 * grid.psize_a() / res_a;
    let mut spec = rfft3(vol.view());
    for ((z, y, x), v) in spec.indexed_iter_mut() {
        let (kz, ky) = (fftfreq(z, n) as f64, fftfreq(y, n) as f64);
        let r = (kz * kz + ky * ky + (x * x) as f64).sqrt();
        let f = if r <= k_c - 1.0 {
            1.0
        } else if r >= k_c + 1.0 {
            0.0
        } else {
            0.5 * (1.0 + (std::f64::consts::FRAC_PI_2 * (r - k_c + 1.0)).cos())
        };
        *v *= f as f32;
    }
    debug_assert_eq!(spec.dim().2, half_len(n));
    irfft3(spec.view(), n)
}

/// The volumes the E-step projects: `S·(C + F·(V_k − C))` with solvent mask S, focus mask F
/// and consensus C (without a focus mask, `S·V_k`): classes then differ only inside F, so
/// only that region decides the classification.
pub fn effective_volumes(
    classes: &[ClassVolume],
    solvent: &Array3<f32>,
    focus: Option<(&Array3<f32>, &Array3<f32>)>,
) -> Vec<Array3<f32>> {
    classes
        .iter()
        .map(|c| match focus {
            None => &c.vol * solvent,
            Some((f, cons)) => {
                let mut out = c.vol.clone();
                Zip::from(&mut out)
                    .and(f)
                    .and(cons)
                    .and(solvent)
                    .for_each(|o, &f, &c, &s| *o = s * (c + f * (*o - c)));
                out
            }
        })
        .collect()
}

/// The size-weighted mean RMS change of the class volumes relative to the RMS of the
/// consensus: `Σ_k w_k·rms(V_k − V'_k) / (Σ_k w_k · rms(C))`.
pub fn rms_change(
    prev: &[ClassVolume],
    cur: &[ClassVolume],
    weights: &[f64],
    consensus: &Array3<f32>,
) -> f64 {
    let tot: f64 = weights.iter().sum::<f64>().max(1e-300);
    let scale = rms(consensus.view()).max(1e-300);
    prev.iter()
        .zip(cur)
        .zip(weights)
        .map(|((a, b), w)| w * rms_difference(b.vol.view(), a.vol.view()))
        .sum::<f64>()
        / (tot * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        let g = WorkGrid::new(64, 2.0, 10.0);
        let l = layout(3, &g).unwrap();
        let v = accumulator_len(g.n, PAD);
        assert_eq!(l.len(), 6 * v * 3 + 2 * g.n_shells() + 3);
    }
}
