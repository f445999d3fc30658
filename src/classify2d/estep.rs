//! The E-step of 2D classification as dense matrix products over batches of particles.
//!
//! For particle i with spectrum X_i, CTF C_i and noise σ²(f) (per complex coefficient, from
//! the ICUF-annealed noise model), class k rotated by ψ_r (template T_kr, see
//! [`Templates`]), and shift s_t (phase ramp ρ_t(f) = exp(−2πi f·s_t/box), which moves the
//! particle's content by +s_t, i.e. centres it), the log-likelihood over the alignment band
//! B (each complex coefficient of the full plane once) is, up to a constant per particle:
//!
//! ```text
//!   LL[i,k,r,t] = −Σ_{f∈B} |X_i ρ_t − C_i T_kr|² / σ²(f) + Σ_f |X_i|²/σ²(f)
//!               = 2·Σ_f Re( conj(X_i ρ_t) C_i / σ² · T_kr )  −  Σ_f C_i² / σ² · |T_kr|²
//!               = 2·G[(i,t),(k,r)] − H[i,(k,r)]
//!   G = P · M,   P[(i,t), :] = [Re u, −Im u],  u(f) = conj(X_i(f) ρ_t(f)) C_i(f) / σ²(f)
//!                M[:, (k,r)] = [Re T_kr ; Im T_kr]                       (2|B| × K·R)
//!   H = Q · W,   Q[i, f] = C_i(f)² / σ²(f),   W[f, (k,r)] = |T_kr(f)|²      (|B| × K·R)
//! ```
//!
//! so the work is two GEMMs per batch of particles: (B·T × 2|B|)·(2|B| × K·R) and
//! (B × |B|)·(|B| × K·R), in f32 (the products are sums of O(10³) terms of similar size;
//! the log-likelihoods are then handled in f64). This is the part the GPU backend replaces.

use ndarray::Array2;
use rayon::prelude::*;

use crate::backend::{Backend, RightOperand};
use crate::error::Result;
use crate::numerics::ctf::Ctf;
use crate::numerics::fft::{rfft2, Complex32};
use crate::numerics::image2d::rotate_image;

use super::grid::{Band, PoseGrid, WorkGrid};
use crate::particles::Particles;

/// Class templates at every in-plane angle, restricted to the alignment band.
pub struct Templates {
    pub n_classes: usize,
    pub n_rot: usize,
    /// `2|B| × K·R`: rows `0..|B|` real parts, `|B|..2|B|` imaginary parts; column `k·R + r`.
    pub mat: Array2<f32>,
    /// `|B| × K·R`: `|T_kr(f)|²`.
    pub pow: Array2<f32>,
}

/// The spectrum (working half plane) of class image `img` rotated by `psi_rad`.
pub fn rotated_spectrum(img: &Array2<f32>, psi_rad: f64) -> Vec<Complex32> {
    let rot = rotate_image(img.view(), psi_rad);
    rfft2(rot.view()).into_raw_vec_and_offset().0
}

impl Templates {
    /// Rotates every class image (`n × n`, real space) by every angle of `poses` and keeps
    /// the band coefficients of its spectrum. `noise_power[k]` (if given) is the expected
    /// power of the estimation noise in class k's average per coefficient of the full plane,
    /// zero frequency at `(n/2, n/2)` ([`super::model::ClassUpdate::noise_power`]): rotated
    /// with the class, it is subtracted from `|T|²` so the norm term is an unbiased estimate
    /// of the noise-free template's power (otherwise a class built from few particles is
    /// penalised for its noise and every particle drifts to the largest class).
    pub fn build(
        classes: &[Array2<f32>],
        poses: &PoseGrid,
        band: &Band,
        noise_power: Option<&[Array2<f32>]>,
    ) -> Templates {
        let (k, r, d) = (classes.len(), poses.n_rot(), band.len());
        type Column = (Vec<Complex32>, Vec<f32>);
        let cols: Vec<Column> = (0..k * r)
            .into_par_iter()
            .map(|c| {
                let psi = poses.psi_rad[c % r];
                let spec = rotated_spectrum(&classes[c / r], psi);
                let t = band.idx.iter().map(|&i| spec[i as usize]).collect();
                let bias = match noise_power {
                    Some(np) => band_noise(&np[c / r], psi, band),
                    None => vec![0.0; band.len()],
                };
                (t, bias)
            })
            .collect();
        let mut mat = Array2::<f32>::zeros((2 * d, k * r));
        let mut pow = Array2::<f32>::zeros((d, k * r));
        for (c, (col, bias)) in cols.iter().enumerate() {
            for (f, (v, b)) in col.iter().zip(bias).enumerate() {
                mat[[f, c]] = v.re;
                mat[[d + f, c]] = v.im;
                pow[[f, c]] = v.norm_sqr() - b;
            }
        }
        Templates {
            n_classes: k,
            n_rot: r,
            mat,
            pow,
        }
    }
}

/// The noise power map `np` (full plane, zero frequency at `(n/2, n/2)`) of a class rotated
/// by `psi_rad` as its image is, at the band's coefficients.
fn band_noise(np: &Array2<f32>, psi_rad: f64, band: &Band) -> Vec<f32> {
    let n = np.dim().0;
    let h = crate::numerics::fft::half_len(n);
    let rot = rotate_image(np.view(), psi_rad);
    band.idx
        .iter()
        .map(|&c| {
            let (i, j) = (c as usize / h, c as usize % h);
            let ky = crate::numerics::fft::fftfreq(i, n);
            // kx or ky = n/2 (Nyquist) wraps to −n/2, the same coefficient.
            let row = (ky + (n / 2) as i64).rem_euclid(n as i64) as usize;
            rot[[row, (j + n / 2) % n]]
        })
        .collect()
}

/// [`Scorer::device_inputs`]: 1/σ², conjugated band ramps, band frequencies, M, W.
pub(crate) type DeviceInputs<'s> = (
    &'s [f32],
    &'s [Complex32],
    &'s [(f64, f64)],
    &'s dyn RightOperand,
    &'s dyn RightOperand,
);

/// Everything the E-step needs for one iteration.
pub struct Scorer<'a> {
    pub grid: &'a WorkGrid,
    pub band: Band,
    pub poses: PoseGrid,
    /// Classes K and rotations R of the template matrices (columns `k·R + r`).
    n_classes: usize,
    n_rot: usize,
    /// 1/σ²(f) for each band coefficient.
    inv_sigma2: Vec<f32>,
    /// Phase ramps `ρ_t(f)` conjugated, `T × |B|`.
    conj_ramps: Vec<Complex32>,
    /// Band frequencies in Å⁻¹ (for the CTF).
    freq_a: Vec<(f64, f64)>,
    /// `templates.mat` and `templates.pow` held by the backend (on the GPU for CUDA).
    mat_op: Box<dyn RightOperand>,
    pow_op: Box<dyn RightOperand>,
}

impl<'a> Scorer<'a> {
    /// `sigma2` per shell `0..=k_max`.
    pub fn new(
        grid: &'a WorkGrid,
        band: Band,
        poses: PoseGrid,
        templates: Templates,
        sigma2: &[f64],
        backend: &dyn Backend,
    ) -> Result<Scorer<'a>> {
        let inv_sigma2 = band
            .shell
            .iter()
            .map(|&s| (1.0 / sigma2[s as usize].max(1e-30)) as f32)
            .collect();
        let nb = grid.box_in as f64;
        let mut conj_ramps = Vec::with_capacity(poses.n_shift() * band.len());
        for s in &poses.shifts_px {
            for &c in &band.idx {
                let c = c as usize;
                let ph = -std::f64::consts::TAU
                    * (grid.kx[c] as f64 * s[0] + grid.ky[c] as f64 * s[1])
                    / nb;
                // conj(exp(i·ph))
                conj_ramps.push(Complex32::new(ph.cos() as f32, -ph.sin() as f32));
            }
        }
        let freq_a = band.idx.iter().map(|&c| grid.freq_a(c as usize)).collect();
        Ok(Scorer {
            grid,
            band,
            poses,
            n_classes: templates.n_classes,
            n_rot: templates.n_rot,
            inv_sigma2,
            conj_ramps,
            freq_a,
            // The matrices move into the backend (no copy on the CPU).
            mat_op: backend.right_operand(templates.mat)?,
            pow_op: backend.right_operand(templates.pow)?,
        })
    }

    /// What the GPU phases upload: 1/σ² per band coefficient, the conjugated band ramps
    /// (`T × |B|`), the band frequencies (Å⁻¹), and the template operands M and W.
    pub(crate) fn device_inputs(&self) -> DeviceInputs<'_> {
        (
            &self.inv_sigma2,
            &self.conj_ramps,
            &self.freq_a,
            self.mat_op.as_ref(),
            self.pow_op.as_ref(),
        )
    }

    /// `Σ_{f∈B} |X(f)|² / σ²(f)` of a particle's spectrum `x` (working half plane): the
    /// per-particle constant that [`Scorer::score`]'s log-likelihoods leave out, so that
    /// `LL − band_power` is the full residual log-likelihood `−Σ_f |X ρ − C T|² / σ²`.
    pub fn band_power(&self, x: &[Complex32]) -> f64 {
        self.band
            .idx
            .iter()
            .zip(&self.inv_sigma2)
            .map(|(&c, &w)| x[c as usize].norm_sqr() as f64 * w as f64)
            .sum()
    }

    /// Classes K of the template matrices.
    pub(crate) fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// CTF of a particle on the band (1 without CTF).
    fn band_ctf(&self, ctf: Option<&Ctf>) -> Vec<f32> {
        match ctf {
            Some(c) => self
                .freq_a
                .iter()
                .map(|&(fx, fy)| c.eval_f32(fx, fy))
                .collect(),
            None => vec![1.0; self.band.len()],
        }
    }

    /// Log-likelihoods of local particles `locals`, laid out `[(i·K + k)·P + j]` with pose
    /// `j = r·T + t` (the layout of `em::responsibilities::marginalize_poses`).
    pub fn score(&self, particles: &Particles, locals: &[usize]) -> Result<Vec<f64>> {
        let b = locals.len();
        let d = self.band.len();
        let nt = self.poses.n_shift();
        let (k, r) = (self.n_classes, self.n_rot);
        let np = r * nt;
        let mut p = Array2::<f32>::zeros((b * nt, 2 * d));
        let mut q = Array2::<f32>::zeros((b, d));
        for (bi, &i) in locals.iter().enumerate() {
            let x = particles.spectrum(i);
            let ctf = self.band_ctf(particles.ctf.as_ref().map(|v| &v[i]));
            let mut w = vec![Complex32::new(0.0, 0.0); d];
            for f in 0..d {
                let c = ctf[f] * self.inv_sigma2[f];
                w[f] = x[self.band.idx[f] as usize].conj() * c;
                q[[bi, f]] = ctf[f] * c;
            }
            for t in 0..nt {
                let ramps = &self.conj_ramps[t * d..(t + 1) * d];
                let mut row = p.row_mut(bi * nt + t);
                let row = row.as_slice_mut().expect("standard layout");
                let (re, im) = row.split_at_mut(d);
                for f in 0..d {
                    let u = w[f] * ramps[f];
                    re[f] = u.re;
                    im[f] = -u.im;
                }
            }
        }
        let g = self.mat_op.left_mul(p.view())?;
        let h = self.pow_op.left_mul(q.view())?;
        let mut ll = vec![0.0f64; b * k * np];
        for bi in 0..b {
            for kk in 0..k {
                let base = (bi * k + kk) * np;
                for rr in 0..r {
                    let col = kk * r + rr;
                    let hv = h[[bi, col]] as f64;
                    for t in 0..nt {
                        ll[base + rr * nt + t] = 2.0 * g[[bi * nt + t, col]] as f64 - hv;
                    }
                }
            }
        }
        Ok(ll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::image2d::shift_image;

    fn blob_image(n: usize, seed: u64) -> Array2<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let c = (n / 2) as f64;
        let blobs: Vec<(f64, f64, f64)> = (0..6)
            .map(|_| {
                (
                    rng.gen_range(-0.2..0.2) * n as f64,
                    rng.gen_range(-0.2..0.2) * n as f64,
                    rng.gen_range(1.5..3.0),
                )
            })
            .collect();
        Array2::from_shape_fn((n, n), |(i, j)| {
            blobs
                .iter()
                .map(|(y, x, s)| {
                    let d2 = (i as f64 - c - y).powi(2) + (j as f64 - c - x).powi(2);
                    (-d2 / (2.0 * s * s)).exp()
                })
                .sum::<f64>() as f32
        })
    }

    /// A noise-free particle made from class 1, rotated and shifted by a grid pose, scores
    /// best at that class and pose, and the GEMM form equals the direct sum.
    #[test]
    fn recovers_class_rotation_and_shift() {
        let n = 48;
        let grid = WorkGrid::new(n, 2.0, 4.0);
        assert_eq!(grid.n, n);
        let classes: Vec<Array2<f32>> = (0..3).map(|s| blob_image(n, s)).collect();
        let poses = PoseGrid::new(12, 3.0);
        let band = Band::new(&grid, 1, 12);
        let templates = Templates::build(&classes, &poses, &band, None);
        let (r_true, s_true) = (5usize, [2.0, -1.0]);
        let rotated = rotate_image(classes[1].view(), poses.psi_rad[r_true]);
        // The particle's content sits at centre − s (the shift that centres it is s).
        let img = shift_image(rotated.view(), -s_true[1], -s_true[0]);
        let particles = Particles::from_images(&[img], None, 0, &grid, false);
        let sigma2 = vec![1.0; grid.n_shells()];
        let scorer = Scorer::new(
            &grid,
            band.clone(),
            poses.clone(),
            templates,
            &sigma2,
            &crate::backend::Cpu,
        )
        .unwrap();
        let ll = scorer.score(&particles, &[0]).unwrap();
        let np = poses.len();
        let best = (0..ll.len())
            .max_by(|&a, &b| ll[a].partial_cmp(&ll[b]).unwrap())
            .unwrap();
        let (kk, j) = (best / np, best % np);
        let (rr, tt) = poses.split(j);
        assert_eq!(kk, 1);
        assert_eq!(rr, r_true);
        assert_eq!(poses.shifts_px[tt], s_true);
        // Direct evaluation of one entry: −|Xρ − T|² + |X|² over the band.
        let x = particles.spectrum(0);
        let spec = rotated_spectrum(&classes[2], poses.psi_rad[3]);
        let s = poses.shifts_px[4];
        let mut direct = 0.0f64;
        for &c in &band.idx {
            let c = c as usize;
            let ph = -std::f64::consts::TAU * (grid.kx[c] as f64 * s[0] + grid.ky[c] as f64 * s[1])
                / n as f64;
            let rho = Complex32::new(ph.cos() as f32, ph.sin() as f32);
            let xr = x[c] * rho;
            direct += -((xr - spec[c]).norm_sqr() as f64) + xr.norm_sqr() as f64;
        }
        let got = ll[(2 * poses.n_rot() + 3) * poses.n_shift() + 4];
        assert!(
            (got - direct).abs() < 1e-3 * direct.abs().max(1.0),
            "{got} vs {direct}"
        );
    }
}
