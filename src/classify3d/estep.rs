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

use ndarray::Array2;
use rayon::prelude::*;

use crate::particles::{Particles, WorkGrid};
use crate::numerics::fft::Complex32;
use crate::numerics::project3d::Projector;


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
fn coeff(grid: &WorkGrid, c: usize) -> Option<(usize, f64)> {
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
    let mut counts = vec![0.0; ns];
    for c in 0..grid.len() {
        if let Some((s, w)) = coeff(grid, c) {
            counts[s] += w;
        }
    }
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
                    .map(|kk| {
                        -resid[kk * ns..(kk + 1) * ns]
                            .iter()
                            .zip(sigma2)
                            .skip(1)
                            .map(|(r, s)| r / s)
                            .sum::<f64>()
                    })
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
