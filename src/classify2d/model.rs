//! The M-step of 2D classification: sufficient statistics per class and half set, and the
//! class averages made from them.
//!
//! A particle i with weight w (its class probability, times its pose probability when
//! marginalising) at pose (ψ, s) contributes, in the class frame f' = R_ψ⁻¹ f:
//!
//! ```text
//!   num_k,h(x)  += w · rotate(IFFT[C_i · X_i · ρ_s], −ψ)(x)     (real space, n × n)
//!   den_k,h(f') += w · C_i(R_ψ f')²                              (working half plane)
//!   weight_k,h  += w
//! ```
//!
//! (h = the particle's half set, its global row parity; the numerator is accumulated in real
//! space because the rotation back is a real-space interpolation, and transformed after the
//! all-reduce). The noise model gets, for the best class and pose of every particle,
//! `noise(ℓ) += Σ_{f∈ℓ} |X_i ρ_s − C_i T|²` and `noise_n(ℓ) += #ℓ`.
//!
//! The class average is the Wiener filter of the summed halves, with the regulariser from
//! the half-set Fourier ring correlation pooled over classes (count-weighted mean FRC̄,
//! SSNR = 2·FRC̄/(1 − FRC̄), FRC̄ clamped to [0.001, 0.999]):
//!
//! ```text
//!   A_k(f) = Σ_h num_k,h(f) / ( Σ_h den_k,h(f) + mean_{f∈ℓ} Σ_h den_k,h / SSNR(ℓ) )
//! ```
//!
//! then, in real space: re-centring on the centre of mass of the pixels above
//! `recenter_threshold`·max, optional rotation of the long axis to vertical, the soft
//! circular mask, and optional non-negativity / solvent clamping.

use ndarray::{Array2, ArrayView2};

use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::ctf::Ctf;
use crate::numerics::fft::{half_len, irfft2, rfft2, Complex32};
use crate::numerics::frc::frc_spectra;
use crate::numerics::image2d::{rotate_image, shift_image};

use super::grid::WorkGrid;

/// Segment names of the 2D statistics.
pub const NUM: &str = "num";
pub const DEN: &str = "den";
pub const DEN2: &str = "den2";
pub const WEIGHT: &str = "weight";
pub const NOISE: &str = "noise";
pub const NOISE_N: &str = "noise_n";

/// The packed statistics layout for `k` classes on `grid`.
pub fn layout(k: usize, grid: &WorkGrid) -> Result<StatsLayout> {
    StatsLayout::new(&[
        (NUM, k * 2 * grid.n * grid.n),
        (DEN, k * 2 * grid.len()),
        (DEN2, k * 2 * grid.len()),
        (WEIGHT, k * 2),
        (NOISE, grid.n_shells()),
        (NOISE_N, grid.n_shells()),
    ])
}

/// Adds one particle's contribution at one rotation: `y` is `C·X·Σ_t w_t ρ_t` on the working
/// half plane with `Σ_t w_t = 1`, and `w_total` the weight it carries (its class probability
/// times the probability of this rotation).
#[allow(clippy::too_many_arguments)]
pub fn add_contribution(
    stats: &mut Stats,
    grid: &WorkGrid,
    class: usize,
    half: u8,
    y: &[Complex32],
    ctf: Option<&Ctf>,
    psi_rad: f64,
    w_total: f64,
) {
    let n = grid.n;
    let slot = class * 2 + half as usize;
    let spec = ArrayView2::from_shape((n, half_len(n)), y).expect("working spectrum");
    let img = irfft2(spec, n);
    let back = rotate_image(img.view(), -psi_rad);
    {
        let num = stats.segment_mut(NUM).expect("num segment");
        let dst = &mut num[slot * n * n..(slot + 1) * n * n];
        for (d, v) in dst.iter_mut().zip(back.iter()) {
            *d += w_total * *v as f64;
        }
    }
    {
        let (sn, cs) = psi_rad.sin_cos();
        let c2: Vec<f64> = (0..grid.len())
            .map(|c| {
                if grid.shell[c] as usize > grid.k_max {
                    return 0.0;
                }
                match ctf {
                    Some(ctf) => {
                        let (fx, fy) = grid.freq_a(c);
                        // C(R_ψ f'): the particle-frame frequency of class-frame f'.
                        let v = ctf.eval(cs * fx - sn * fy, sn * fx + cs * fy);
                        v * v
                    }
                    None => 1.0,
                }
            })
            .collect();
        let range = slot * grid.len()..(slot + 1) * grid.len();
        let den = &mut stats.segment_mut(DEN).expect("den segment")[range.clone()];
        den.iter_mut().zip(&c2).for_each(|(d, v)| *d += w_total * v);
        let den2 = &mut stats.segment_mut(DEN2).expect("den2 segment")[range];
        den2.iter_mut()
            .zip(&c2)
            .for_each(|(d, v)| *d += w_total * w_total * v);
    }
    stats.segment_mut(WEIGHT).expect("weight segment")[slot] += w_total;
}

/// Adds the residual power of one particle at its best class and pose to the noise model.
pub fn add_noise(stats: &mut Stats, grid: &WorkGrid, resid: &[Complex32]) {
    let ns = grid.n_shells();
    let mut pw = vec![0.0f64; ns];
    let mut cnt = vec![0.0f64; ns];
    for (c, v) in resid.iter().enumerate() {
        let s = grid.shell[c] as usize;
        if s < ns && !(grid.kx[c] == 0 && grid.ky[c] < 0) {
            pw[s] += v.norm_sqr() as f64;
            cnt[s] += 1.0;
        }
    }
    for (d, v) in stats.segment_mut(NOISE).expect("noise").iter_mut().zip(&pw) {
        *d += v;
    }
    for (d, v) in stats
        .segment_mut(NOISE_N)
        .expect("noise_n")
        .iter_mut()
        .zip(&cnt)
    {
        *d += v;
    }
}

/// Real-space post-processing of class averages.
#[derive(Clone, Debug)]
pub struct PostProcess {
    pub mask: Array2<f32>,
    pub recenter: bool,
    pub recenter_threshold: f64,
    pub vertical: bool,
    pub nonnegative: bool,
    pub clamp_solvent: bool,
}

/// Class averages and their diagnostics from reduced statistics.
#[derive(Clone, Debug)]
pub struct ClassUpdate {
    /// Real-space class averages, `n × n` each.
    pub images: Vec<Array2<f32>>,
    /// Half-set FRC per class, shells `0..=n/2`.
    pub frc: Vec<Vec<f64>>,
    /// Summed weight (particle count) per class.
    pub counts: Vec<f64>,
    /// Per class and working half-plane coefficient (`grid.len()`), the variance of the
    /// class average's noise per unit particle noise before the mask:
    /// `Σ_h Σ w²C² / (Σ_h Σ w C² + λ)²` (0 outside `k_max`). Multiply by σ²(ℓ) and convolve
    /// with the mask's power spectrum for the noise power of the template
    /// ([`ClassUpdate::noise_power`]).
    pub noise_gain: Vec<Vec<f64>>,
}

impl ClassUpdate {
    /// Per class, the expected power of the estimation noise in the masked class average at
    /// every coefficient of the full plane, zero frequency at `(n/2, n/2)` (so the map
    /// rotates with [`rotate_image`] exactly as the class image's spectrum does): the gain
    /// times σ²(ℓ) on the half plane, mirrored to the full plane, then convolved with
    /// `|M̂|²/n⁴` (M̂ the mask's spectrum), which is the spectrum variance of `m·e` for
    /// stationary noise `e`. Per coefficient, not per shell: a class of few particles has
    /// its noise where its CTFs are near zero, and a per-shell mean would be subtracted
    /// from the norm term of particles whose CTF is also near zero there, favouring it
    /// for every particle of similar defocus (a class of one particle attracted all 6,000
    /// in benches/RESULTS.md's K = 50 run).
    pub fn noise_power(
        &self,
        grid: &WorkGrid,
        sigma2: &[f64],
        mask: &Array2<f32>,
    ) -> Vec<Array2<f32>> {
        use rayon::prelude::*;
        let n = grid.n;
        let kernel = rfft2(mask_power_spectrum(mask).view());
        self.noise_gain
            .par_iter()
            .map(|g| {
                let map = Array2::from_shape_fn((n, n), |(i, j)| {
                    // (i, j) of the shifted full plane ↔ (ky, kx) = (i − n/2, j − n/2).
                    let (ky, kx) = (i as i64 - (n / 2) as i64, j as i64 - (n / 2) as i64);
                    let (ky, kx) = if kx < 0 { (-ky, -kx) } else { (ky, kx) };
                    let row = ky.rem_euclid(n as i64) as usize;
                    let col = kx as usize;
                    if col >= half_len(n) {
                        return 0.0;
                    }
                    let c = row * half_len(n) + col;
                    let s = grid.shell[c] as usize;
                    if s >= sigma2.len() {
                        return 0.0;
                    }
                    (g[c] * sigma2[s]) as f32
                });
                // Circular convolution by FFT (the kernel in natural order, so the result
                // stays shifted like the map).
                let prod = &rfft2(map.view()) * &kernel;
                irfft2(prod.view(), n).mapv(|v| v.max(0.0))
            })
            .collect()
    }

    /// No classes yet (before the start).
    pub fn empty() -> Self {
        ClassUpdate {
            images: Vec::new(),
            frc: Vec::new(),
            counts: Vec::new(),
            noise_gain: Vec::new(),
        }
    }
}

/// `|M̂(f)|² / n⁴` on the full plane in natural DFT order (zero frequency at `(0, 0)`) for
/// an `n × n` mask `m`: the kernel that spreads a stationary noise spectrum into the
/// spectrum of the masked noise (it sums to the mask's mean square).
fn mask_power_spectrum(mask: &Array2<f32>) -> Array2<f32> {
    let n = mask.dim().0;
    let spec = rfft2(mask.view());
    let h = half_len(n);
    let n4 = (n as f64).powi(4);
    Array2::from_shape_fn((n, n), |(i, j)| {
        let v = if j < h {
            spec[[i, j]]
        } else {
            spec[[(n - i) % n, n - j]]
        };
        (v.norm_sqr() as f64 / n4) as f32
    })
}

/// Noise power per shell from the statistics (`None` where a shell got no samples).
pub fn noise_per_shell(stats: &Stats) -> Vec<Option<f64>> {
    let p = stats.segment(NOISE).expect("noise");
    let c = stats.segment(NOISE_N).expect("noise_n");
    p.iter()
        .zip(c)
        .map(|(&p, &c)| if c > 0.0 { Some(p / c) } else { None })
        .collect()
}

/// Computes the class averages from reduced statistics.
pub fn update_classes(
    stats: &Stats,
    grid: &WorkGrid,
    k: usize,
    post: &PostProcess,
    previous: Option<&[Array2<f32>]>,
) -> ClassUpdate {
    use rayon::prelude::*;
    let n = grid.n;
    let seg = Segments {
        num: stats.segment(NUM).expect("num"),
        den: stats.segment(DEN).expect("den"),
        wts: stats.segment(WEIGHT).expect("weight"),
        den2: stats.segment(DEN2).expect("den2"),
    };
    // Pass 1, per class: half-set spectra, FRC, mean denominator per shell.
    let halves: Vec<ClassHalves> = (0..k)
        .into_par_iter()
        .map(|c| class_halves(grid, &seg, c))
        .collect();
    let pooled = pooled_frc(&halves, grid.n_shells());
    // Pass 2, per class: the Wiener-filtered average, post-processed (or the previous one
    // for a class without particles), and its noise gain.
    type ClassOut = (Array2<f32>, Vec<f64>, f64, Vec<f64>);
    let per_class: Vec<ClassOut> = halves
        .into_par_iter()
        .enumerate()
        .map(|(c, hc)| {
            let (spec, gain) = wiener_spectrum(grid, &seg, c, &hc, &pooled);
            let mut img = irfft2(spec.view(), n);
            if hc.count <= 0.0 {
                if let Some(prev) = previous {
                    img = prev[c].clone();
                }
            } else {
                img = postprocess(img, post);
            }
            (img, hc.frc, hc.count, gain)
        })
        .collect();
    let mut out = ClassUpdate {
        images: Vec::with_capacity(k),
        frc: Vec::with_capacity(k),
        counts: Vec::with_capacity(k),
        noise_gain: Vec::with_capacity(k),
    };
    for (img, frc, count, gain) in per_class {
        out.images.push(img);
        out.frc.push(frc);
        out.counts.push(count);
        out.noise_gain.push(gain);
    }
    out
}

/// The reduced statistics segments the class averages are made from.
struct Segments<'a> {
    num: &'a [f64],
    den: &'a [f64],
    wts: &'a [f64],
    den2: &'a [f64],
}

/// Pass 1 of [`update_classes`] for one class: its half-set numerator spectra, their FRC,
/// the mean summed denominator per shell and the summed weight.
struct ClassHalves {
    n0: Array2<Complex32>,
    n1: Array2<Complex32>,
    frc: Vec<f64>,
    dmean: Vec<f64>,
    count: f64,
}

/// The half-set spectra, FRC and mean denominator per shell of class `c`.
fn class_halves(grid: &WorkGrid, seg: &Segments, c: usize) -> ClassHalves {
    let n = grid.n;
    let len = grid.len();
    let ns = grid.n_shells();
    let h = half_len(n);
    let (num, den, wts) = (seg.num, seg.den, seg.wts);
    let count = wts[2 * c] + wts[2 * c + 1];
    let spec_of = |h: usize| -> Array2<Complex32> {
        let s = (2 * c + h) * n * n;
        let img = Array2::from_shape_fn((n, n), |(i, j)| num[s + i * n + j] as f32);
        rfft2(img.view())
    };
    let (n0, n1) = (spec_of(0), spec_of(1));
    let d0 = &den[(2 * c) * len..(2 * c + 1) * len];
    let d1 = &den[(2 * c + 1) * len..(2 * c + 2) * len];
    // Half averages for the FRC (a tiny regulariser keeps empty coefficients finite).
    let eps = 1e-6 * (d0.iter().chain(d1).sum::<f64>() / (2 * len) as f64).max(1e-30);
    let half = |s: &Array2<Complex32>, d: &[f64]| -> Array2<Complex32> {
        Array2::from_shape_fn(s.dim(), |(i, j)| s[[i, j]] / (d[i * h + j] + eps) as f32)
    };
    let frc = frc_spectra(half(&n0, d0).view(), half(&n1, d1).view(), n);
    let (mut dsum, mut dcnt) = (vec![0.0f64; ns], vec![0.0f64; ns]);
    for cc in 0..len {
        let s = grid.shell[cc] as usize;
        if s < ns {
            dsum[s] += d0[cc] + d1[cc];
            dcnt[s] += 1.0;
        }
    }
    let dmean: Vec<f64> = dsum
        .iter()
        .zip(&dcnt)
        .map(|(s, c)| s / c.max(1.0))
        .collect();
    ClassHalves {
        n0,
        n1,
        frc,
        dmean,
        count,
    }
}

/// The count-weighted mean FRC of the classes per shell (0 without particles).
///
/// The SSNR is pooled over classes, so every class is shrunk by the same factor per shell
/// relative to its own denominator: a class with few particles is noisier but not faded
/// out, which would hand all particles to the largest class.
fn pooled_frc(halves: &[ClassHalves], ns: usize) -> Vec<f64> {
    let total: f64 = halves.iter().map(|c| c.count.max(0.0)).sum();
    (0..ns)
        .map(|s| {
            if total <= 0.0 {
                return 0.0;
            }
            halves
                .iter()
                .map(|c| c.count.max(0.0) * c.frc[s])
                .sum::<f64>()
                / total
        })
        .collect()
}

/// The Wiener-filtered spectrum of class `c` (zero for a class without particles) with the
/// pooled FRC as regulariser, and its noise gain per half-plane coefficient
/// (`Σ w²C² / d²`, see [`ClassUpdate::noise_gain`]).
fn wiener_spectrum(
    grid: &WorkGrid,
    seg: &Segments,
    c: usize,
    hc: &ClassHalves,
    pooled: &[f64],
) -> (Array2<Complex32>, Vec<f64>) {
    let n = grid.n;
    let len = grid.len();
    let ns = grid.n_shells();
    let h = half_len(n);
    let den = seg.den;
    let d0 = &den[(2 * c) * len..(2 * c + 1) * len];
    let d1 = &den[(2 * c + 1) * len..(2 * c + 2) * len];
    let q = &seg.den2[(2 * c) * len..(2 * c + 2) * len];
    let mut gain = vec![0.0f64; len];
    let spec = Array2::from_shape_fn((n, h), |(i, j)| {
        let cc = i * h + j;
        let s = grid.shell[cc] as usize;
        if s >= ns || hc.count <= 0.0 {
            return Complex32::new(0.0, 0.0);
        }
        let f = pooled[s].clamp(1e-3, 0.999);
        let ssnr = 2.0 * f / (1.0 - f);
        let d = d0[cc] + d1[cc] + hc.dmean[s] / ssnr;
        if d > 0.0 {
            gain[cc] = (q[cc] + q[len + cc]) / (d * d);
            (hc.n0[[i, j]] + hc.n1[[i, j]]) / d as f32
        } else {
            Complex32::new(0.0, 0.0)
        }
    });
    (spec, gain)
}

/// Re-centring, vertical alignment, mask, non-negativity and solvent clamping.
pub fn postprocess(mut img: Array2<f32>, post: &PostProcess) -> Array2<f32> {
    if post.recenter {
        if let Some((cy, cx)) = centre_of_mass(img.view(), post.recenter_threshold, &post.mask) {
            let c = (img.dim().0 / 2) as f64;
            img = shift_image(img.view(), c - cy, c - cx);
        }
    }
    if post.vertical {
        if let Some(theta) = long_axis_angle(img.view(), post.recenter_threshold, &post.mask) {
            img = rotate_image(img.view(), std::f64::consts::FRAC_PI_2 - theta);
        }
    }
    if post.clamp_solvent {
        img = smooth(img);
        img.zip_mut_with(&post.mask, |v, &m| {
            *v *= if m >= 0.999 { 1.0 } else { m * m }
        });
    }
    img.zip_mut_with(&post.mask, |v, &m| *v *= m);
    if post.nonnegative {
        img.mapv_inplace(|v| v.max(0.0));
    }
    img
}

/// Pixels (inside the mask) above `threshold`·max, with their positive excess as weights.
fn bright_pixels(img: ArrayView2<f32>, threshold: f64, mask: &Array2<f32>) -> Vec<(f64, f64, f64)> {
    let max = img
        .iter()
        .zip(mask.iter())
        .map(|(&v, &m)| v * m)
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    if max.is_nan() || max <= 0.0 {
        return Vec::new();
    }
    let cut = threshold * max;
    img.indexed_iter()
        .filter_map(|((i, j), &v)| {
            let v = v as f64 * mask[[i, j]] as f64;
            (v > cut).then_some((i as f64, j as f64, v - cut))
        })
        .collect()
}

/// Centre of mass (row, column) of the bright pixels.
fn centre_of_mass(img: ArrayView2<f32>, threshold: f64, mask: &Array2<f32>) -> Option<(f64, f64)> {
    let px = bright_pixels(img, threshold, mask);
    let w: f64 = px.iter().map(|p| p.2).sum();
    if w.is_nan() || w <= 0.0 {
        return None;
    }
    let cy = px.iter().map(|p| p.0 * p.2).sum::<f64>() / w;
    let cx = px.iter().map(|p| p.1 * p.2).sum::<f64>() / w;
    Some((cy, cx))
}

/// Angle (from the x axis, in the rotation convention of `rotate_image`) of the principal
/// axis of the bright pixels.
fn long_axis_angle(img: ArrayView2<f32>, threshold: f64, mask: &Array2<f32>) -> Option<f64> {
    let (cy, cx) = centre_of_mass(img, threshold, mask)?;
    let px = bright_pixels(img, threshold, mask);
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for (y, x, w) in px {
        let (dx, dy) = (x - cx, y - cy);
        sxx += w * dx * dx;
        syy += w * dy * dy;
        sxy += w * dx * dy;
    }
    Some(0.5 * (2.0 * sxy).atan2(sxx - syy))
}

/// Gaussian low-pass with a 1/e² radius of half the working Nyquist (solvent clamping's
/// smoothness constraint).
fn smooth(img: Array2<f32>) -> Array2<f32> {
    let n = img.dim().0;
    let mut spec = rfft2(img.view());
    let kc = 0.5 * (n / 2) as f64;
    for ((i, j), v) in spec.indexed_iter_mut() {
        let ky = crate::numerics::fft::fftfreq(i, n) as f64;
        let k2 = ky * ky + (j * j) as f64;
        *v *= (-2.0 * k2 / (kc * kc)).exp() as f32;
    }
    irfft2(spec.view(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(n: usize) -> PostProcess {
        PostProcess {
            mask: Array2::from_elem((n, n), 1.0),
            recenter: true,
            recenter_threshold: 0.2,
            vertical: false,
            nonnegative: false,
            clamp_solvent: false,
        }
    }

    fn gaussian(n: usize, cy: f64, cx: f64, sy: f64, sx: f64) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(i, j)| {
            (-((i as f64 - cy).powi(2) / (2.0 * sy * sy)
                + (j as f64 - cx).powi(2) / (2.0 * sx * sx)))
                .exp() as f32
        })
    }

    #[test]
    fn recentres_and_makes_vertical() {
        let n = 32;
        let img = gaussian(n, 13.0, 19.0, 2.0, 2.0);
        let out = postprocess(img, &post(n));
        let (cy, cx) = centre_of_mass(out.view(), 0.2, &post(n).mask).unwrap();
        assert!(
            (cy - 16.0).abs() < 0.2 && (cx - 16.0).abs() < 0.2,
            "{cy} {cx}"
        );
        // A horizontal ellipse becomes vertical.
        let mut p = post(n);
        p.vertical = true;
        let out = postprocess(gaussian(n, 16.0, 16.0, 1.5, 5.0), &p);
        let col: f32 = (0..n).map(|i| out[[i, 16]]).sum();
        let row: f32 = (0..n).map(|j| out[[16, j]]).sum();
        assert!(col > 2.0 * row, "col {col} row {row}");
    }

    #[test]
    fn nonnegative_and_mask() {
        let n = 16;
        let mut p = post(n);
        p.recenter = false;
        p.nonnegative = true;
        p.mask = Array2::from_shape_fn((n, n), |(i, _)| if i < 8 { 1.0 } else { 0.0 });
        let img = Array2::from_shape_fn((n, n), |(i, j)| (i as f32 - j as f32) / 4.0);
        let out = postprocess(img, &p);
        assert!(out.iter().all(|&v| v >= 0.0));
        assert!((8..n).all(|i| out.row(i).iter().all(|&v| v == 0.0)));
    }

    /// Statistics of one noise-free particle at a known pose give back the class image
    /// (inside the band kept) after the Wiener filter with a high FRC.
    #[test]
    fn accumulate_then_average_inverts_the_pose() {
        let n = 32;
        let grid = WorkGrid::new(n, 2.0, 4.0);
        let k = 1;
        let class = gaussian(n, 14.0, 17.0, 2.0, 3.5);
        let psi = 0.7;
        let x = rfft2(rotate_image(class.view(), psi).view())
            .into_raw_vec_and_offset()
            .0;
        let mut st = Stats::zeros(&layout(k, &grid).unwrap());
        for half in 0..2u8 {
            add_contribution(&mut st, &grid, 0, half, &x, None, psi, 1.0);
        }
        let mut p = post(n);
        p.recenter = false;
        let up = update_classes(&st, &grid, k, &p, None);
        assert_eq!(up.counts, vec![2.0]);
        assert!(up.frc[0][1..8].iter().all(|&f| f > 0.99), "{:?}", up.frc[0]);
        let err: f32 = up.images[0]
            .iter()
            .zip(class.iter())
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            / class.iter().map(|b| b * b).sum::<f32>();
        assert!(err < 0.02, "relative error {err}");
    }
}

#[cfg(test)]
mod ctf_tests {
    use super::*;
    use crate::numerics::ctf::CtfParams;

    /// CTF-modulated, rotated copies of a class at known poses average back to the class.
    #[test]
    fn ctf_weighted_average_recovers_the_class() {
        let n = 48;
        let grid = WorkGrid::new(n, 3.0, 6.0);
        assert_eq!(grid.n, n);
        let class = Array2::from_shape_fn((n, n), |(i, j)| {
            let (y, x) = (i as f64 - 24.0, j as f64 - 26.0);
            ((-(y * y) / 18.0 - x * x / 40.0).exp()
                - 0.5 * (-((y - 6.0).powi(2) + x * x) / 8.0).exp()) as f32
        });
        let mut st = Stats::zeros(&layout(1, &grid).unwrap());
        for p in 0..40 {
            let psi = 0.37 * p as f64;
            let ctf = Ctf::new(&CtfParams {
                df1_a: 8000.0 + 500.0 * p as f64,
                df2_a: 7800.0 + 500.0 * p as f64,
                df_angle_rad: 0.3 * p as f64,
                ..CtfParams::default()
            });
            let mut c = vec![0.0f32; grid.len()];
            ctf.half_plane_into(n, n, grid.psize_a(), &mut c);
            let x = rfft2(rotate_image(class.view(), psi).view());
            // y = C·X (the particle is C·X; the M-step multiplies by C again).
            let y: Vec<Complex32> = x.iter().zip(&c).map(|(v, c)| v * (c * c)).collect();
            add_contribution(&mut st, &grid, 0, (p % 2) as u8, &y, Some(&ctf), psi, 1.0);
        }
        let mut p = PostProcess {
            mask: Array2::from_elem((n, n), 1.0),
            recenter: false,
            recenter_threshold: 0.2,
            vertical: false,
            nonnegative: false,
            clamp_solvent: false,
        };
        p.recenter = false;
        let up = update_classes(&st, &grid, 1, &p, None);
        let a = rfft2(up.images[0].view());
        let b = rfft2(class.view());
        // Compare shells 2..=12 (well inside the working band, away from rotation blur).
        let (mut err, mut pow) = (0.0f64, 0.0f64);
        for c in 0..grid.len() {
            let s = grid.shell[c];
            if (2..=12).contains(&s) {
                let (i, j) = (c / grid.h(), c % grid.h());
                err += (a[[i, j]] - b[[i, j]]).norm_sqr() as f64;
                pow += b[[i, j]].norm_sqr() as f64;
            }
        }
        assert!(err / pow < 0.05, "relative error {}", err / pow);
    }
}

#[cfg(test)]
mod noise_power_tests {
    use super::*;
    use crate::classify2d::estep::Templates;
    use crate::classify2d::grid::{Band, PoseGrid};
    use crate::numerics::ctf::CtfParams;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn circular_mask(n: usize, r: f64) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(i, j)| {
            let d = ((i as f64 - (n / 2) as f64).powi(2) + (j as f64 - (n / 2) as f64).powi(2))
                .sqrt();
            (0.5 + 0.5 * ((d - r) / 2.0).clamp(-1.0, 1.0) * -1.0) as f32
        })
    }

    /// Without a mask the noise power map is the gain × σ² mirrored onto the full plane.
    #[test]
    fn unmasked_map_is_the_gain_on_the_full_plane() {
        let n = 16;
        let grid = WorkGrid::new(n, 2.0, 4.0);
        // Any gain even in ky at fixed kx (a real map's columns kx = 0 and n/2 are even).
        let gain: Vec<f64> = (0..grid.len())
            .map(|c| 1.0 + 0.3 * grid.kx[c] as f64 + (grid.ky[c] as f64).powi(2))
            .collect();
        let sigma2: Vec<f64> = (0..grid.n_shells()).map(|s| 2.0 + s as f64).collect();
        let up = ClassUpdate {
            images: vec![Array2::zeros((n, n))],
            frc: vec![vec![0.0; grid.n_shells()]],
            counts: vec![1.0],
            noise_gain: vec![gain.clone()],
        };
        let map = &up.noise_power(&grid, &sigma2, &Array2::from_elem((n, n), 1.0))[0];
        for c in 0..grid.len() {
            let s = grid.shell[c] as usize;
            let want = if s < grid.n_shells() { gain[c] * sigma2[s] } else { 0.0 };
            let (kx, ky) = (grid.kx[c] as i64, grid.ky[c] as i64);
            for (y, x) in [(ky, kx), (-ky, -kx)] {
                let (i, j) = ((y + 8).rem_euclid(16) as usize, (x + 8).rem_euclid(16) as usize);
                if x + 8 >= 16 || x + 8 < 0 {
                    continue;
                }
                assert!(
                    (map[[i, j]] as f64 - want).abs() <= 1e-3 * want.max(1.0),
                    "f = ({ky}, {kx}): {} vs {want}",
                    map[[i, j]]
                );
            }
        }
    }

    /// A class of one pure-noise particle next to a well-determined class: the norm term
    /// of a particle with the same CTF, |T|² minus the expected noise power weighted by its
    /// C², averages to ≈ 0 over noise draws (T holds no signal). Subtracting the per-shell
    /// mean of the noise power instead (the old estimate) leaves it strongly negative: the
    /// CTF-shaped noise sits where this particle's C² is near zero, so the class looked
    /// better than an exact template to every particle of that defocus.
    #[test]
    fn noise_correction_is_unbiased_for_a_one_particle_class_of_the_same_defocus() {
        let n = 32;
        let grid = WorkGrid::new(n, 2.5, 5.0);
        let k = 2;
        let ctf = Ctf::new(&CtfParams {
            df1_a: 15000.0,
            df2_a: 15000.0,
            ..CtfParams::default()
        });
        let mut c = vec![0.0f32; grid.len()];
        ctf.half_plane_into(n, n, grid.psize_a(), &mut c);
        let signal = Array2::from_shape_fn((n, n), |(i, j)| {
            let (y, x) = (i as f64 - 16.0, j as f64 - 15.0);
            (-(y * y) / 12.0 - x * x / 30.0).exp() as f32
        });
        let sig_spec = rfft2(signal.view());
        let post = PostProcess {
            mask: circular_mask(n, 12.0),
            recenter: false,
            recenter_threshold: 0.2,
            vertical: false,
            nonnegative: false,
            clamp_solvent: false,
        };
        // Pixel noise of standard deviation s: each DFT coefficient has variance n²s².
        let s_px = 0.5f64;
        let sigma2 = vec![(n * n) as f64 * s_px * s_px; grid.n_shells()];
        let band = Band::new(&grid, 2, grid.k_max);
        let poses = PoseGrid::new(grid.k_max, 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut h_new, mut h_old, mut scale) = (0.0f64, 0.0f64, 0.0f64);
        let draws = 40;
        for _ in 0..draws {
            let mut st = Stats::zeros(&layout(k, &grid).unwrap());
            // Class 0: 20 noise-free copies of the signal (a high pooled FRC).
            let y: Vec<Complex32> = sig_spec.iter().zip(&c).map(|(v, c)| v * (c * c)).collect();
            for p in 0..20u8 {
                add_contribution(&mut st, &grid, 0, p % 2, &y, Some(&ctf), 0.0, 1.0);
            }
            // Class 1: one particle of pure noise.
            let noise = Array2::from_shape_fn((n, n), |_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                (s_px * z) as f32
            });
            let x = rfft2(noise.view());
            let y: Vec<Complex32> = x.iter().zip(&c).map(|(v, c)| v * c).collect();
            add_contribution(&mut st, &grid, 1, 0, &y, Some(&ctf), 0.0, 1.0);
            let up = update_classes(&st, &grid, k, &post, None);
            let np = up.noise_power(&grid, &sigma2, &post.mask);
            let t = Templates::build(&up.images, &poses, &band, Some(&np));
            let t0 = Templates::build(&up.images, &poses, &band, None);
            // The old estimate: the per-shell mean of the gain × the mask's mean square.
            let ms = post.mask.iter().map(|&m| (m as f64).powi(2)).sum::<f64>() / (n * n) as f64;
            let (mut sum, mut cnt) = (vec![0.0; grid.n_shells()], vec![0.0; grid.n_shells()]);
            for (cc, g) in up.noise_gain[1].iter().enumerate() {
                let s = grid.shell[cc] as usize;
                if s < grid.n_shells() && !(grid.kx[cc] == 0 && grid.ky[cc] < 0) {
                    sum[s] += g;
                    cnt[s] += 1.0;
                }
            }
            let col = poses.n_rot(); // class 1, rotation 0
            for (f, &cc) in band.idx.iter().enumerate() {
                let w = (c[cc as usize] as f64).powi(2) / sigma2[0];
                let s = band.shell[f] as usize;
                let old_bias = ms * sum[s] / cnt[s] * sigma2[s];
                h_new += w * t.pow[[f, col]] as f64;
                h_old += w * (t0.pow[[f, col]] as f64 - old_bias);
                scale += w * (t0.pow[[f, col]] as f64);
            }
        }
        let (h_new, h_old, scale) = (h_new / draws as f64, h_old / draws as f64, scale / draws as f64);
        assert!(
            h_new.abs() < 0.15 * scale,
            "per-coefficient correction: mean norm term {h_new} (scale {scale})"
        );
        assert!(
            h_old < -0.25 * scale && h_old < -3.0 * h_new.abs(),
            "the per-shell correction should be strongly biased here: {h_old} (scale {scale}, per coefficient {h_new})"
        );
    }
}
