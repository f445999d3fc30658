//! Real-space helpers for 3D volumes (3D classification): Fourier resampling to another box,
//! the auto-generated solvent mask of a consensus map, a soft spherical mask, mask checks,
//! RMS differences and central slices.
//!
//! Conventions:
//! - A volume is an `ndarray::Array3<f32>` indexed `(z, y, x)`, cubic `n × n × n` with `n`
//!   even. Its real-space origin (the particle centre) is voxel `(n/2, n/2, n/2)`, as in
//!   [`crate::numerics::project3d`] and RELION.
//! - Spectra are the half-space spectra of [`crate::numerics::fft`]: `(n, n, n/2 + 1)`,
//!   origin (DC) at index `[0, 0, 0]`, `kz = fftfreq(i, n)`, `ky = fftfreq(j, n)`,
//!   `kx = l` (unnormalised forward transform, `1/N` on the inverse).
//! - **Resampling** ([`fourier_crop3`], [`fourier_pad3`], [`resample3`]) keeps the physical
//!   extent of the box: an `n_in` box at pixel size `p` becomes an `n_out` box at pixel size
//!   `p · n_in / n_out` Å. Only the frequencies with `|kz|, |ky|, |kx| < m/2`
//!   (`m = min(n_in, n_out)`) are carried over; the Nyquist planes of the smaller box are
//!   dropped (zero), since their sign is ambiguous — the 3D analogue of
//!   [`crate::numerics::image2d::fourier_crop`] / `fourier_pad`, with a cube instead of a
//!   sphere of kept frequencies. Coefficients are scaled by `(n_out/n_in)³`, so grey values
//!   are kept (a smooth blob keeps its peak value) and the voxel sum scales by
//!   `(n_out/n_in)³` (the physical integral `Σ v · p³` is kept). Voxel `n_in/2` maps to
//!   voxel `n_out/2`; a feature at offset `d` voxels from the centre moves to
//!   `d · n_out/n_in`.
//! - **Distances** for masks are in voxels from voxel centres; parameters in Å are divided by
//!   the pixel size (`_a` names are Å, `_px` names are voxels).
//! - **Soft edges** use the raised cosine of [`crate::numerics::mask`]: at distance `d`
//!   beyond the hard region and edge width `w`, `½ (1 + cos(π d / w))` for `0 < d < w`,
//!   1 inside, 0 at `d ≥ w` (`w = 0` is a hard edge).

use ndarray::{Array2, Array3, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::numerics::fft::{fftfreq, half_len, irfft3, rfft3, Complex32};

/// Standard deviation (voxels) of the Gaussian low-pass applied to the consensus before it
/// is thresholded in [`solvent_mask`]: light enough to keep the shape, enough to drop
/// single-voxel noise specks.
pub const SOLVENT_MASK_BLUR_PX: f64 = 1.0;

fn assert_cubic(vol: &ArrayView3<f32>, what: &str) -> usize {
    let (nz, ny, nx) = vol.dim();
    assert!(
        nz == ny && ny == nx && nx > 0,
        "{what}: volume is not a non-empty cube: {nz}×{ny}×{nx}"
    );
    nx
}

/// Copies the frequencies `|k| < min(n_in, n_out)/2` (per axis) of the half-space spectrum of
/// an `n_in` cube into that of an `n_out` cube, scaled by `(n_out/n_in)³`, and transforms
/// back (see the module comment).
fn transfer3(vol: ArrayView3<f32>, n_out: usize) -> Array3<f32> {
    let n_in = vol.dim().2;
    let spec = rfft3(vol);
    let m = n_in.min(n_out) as i64;
    let keep = |k: i64| 2 * k.abs() < m;
    let scale = (n_out as f64 / n_in as f64).powi(3) as f32;
    let mut out = Array3::<Complex32>::zeros((n_out, n_out, half_len(n_out)));
    for i in 0..n_out {
        let kz = fftfreq(i, n_out);
        if !keep(kz) {
            continue;
        }
        let si = kz.rem_euclid(n_in as i64) as usize;
        for j in 0..n_out {
            let ky = fftfreq(j, n_out);
            if !keep(ky) {
                continue;
            }
            let sj = ky.rem_euclid(n_in as i64) as usize;
            for l in 0..half_len(n_out) {
                if !keep(l as i64) {
                    break;
                }
                out[[i, j, l]] = spec[[si, sj, l]] * scale;
            }
        }
    }
    irfft3(out.view(), n_out)
}

/// Resamples `vol` (`n_in³`) to a smaller `n_out³` box by cropping its 3D spectrum (a
/// low-pass to below the new Nyquist, then resampling at pixel size `p · n_in / n_out`).
/// Grey values are kept (see the module comment). Panics if `vol` is not a cube or
/// `n_out` is 0 or larger than `n_in`.
pub fn fourier_crop3(vol: ArrayView3<f32>, n_out: usize) -> Array3<f32> {
    let n_in = assert_cubic(&vol, "fourier_crop3");
    assert!(
        n_out > 0 && n_out <= n_in,
        "fourier_crop3: target box {n_out} must be in 1..={n_in}"
    );
    if n_out == n_in {
        return vol.to_owned();
    }
    transfer3(vol, n_out)
}

/// Resamples `vol` (`n_in³`) to a larger `n_out³` box by zero-padding its 3D spectrum
/// (trigonometric interpolation at pixel size `p · n_in / n_out`; the small box's Nyquist
/// planes are dropped). Grey values are kept. Panics if `vol` is not a cube or `n_out`
/// is smaller than `n_in`.
pub fn fourier_pad3(vol: ArrayView3<f32>, n_out: usize) -> Array3<f32> {
    let n_in = assert_cubic(&vol, "fourier_pad3");
    assert!(
        n_out >= n_in,
        "fourier_pad3: target box {n_out} is smaller than the volume's {n_in}"
    );
    if n_out == n_in {
        return vol.to_owned();
    }
    transfer3(vol, n_out)
}

/// [`fourier_crop3`] or [`fourier_pad3`] to an `n_out³` box; a copy when the box is unchanged.
pub fn resample3(vol: ArrayView3<f32>, n_out: usize) -> Array3<f32> {
    let n_in = assert_cubic(&vol, "resample3");
    match n_out.cmp(&n_in) {
        std::cmp::Ordering::Less => fourier_crop3(vol, n_out),
        std::cmp::Ordering::Equal => vol.to_owned(),
        std::cmp::Ordering::Greater => fourier_pad3(vol, n_out),
    }
}

/// The raised-cosine edge of the module comment at distance `d_px` beyond the hard region,
/// edge width `w_px` (`w_px = 0`: hard edge).
fn raised_cosine(d_px: f64, w_px: f64) -> f64 {
    if d_px <= 0.0 {
        1.0
    } else if d_px >= w_px {
        0.0
    } else {
        0.5 * (1.0 + (std::f64::consts::PI * d_px / w_px).cos())
    }
}

/// The soft sphere `(n, n, n)` centred at voxel `(n/2, n/2, n/2)`: 1 within `radius_px`,
/// raised-cosine edge of width `soft_px` beyond it, 0 from `radius_px + soft_px` on. The
/// fallback when no solvent mask can be made. Panics if a radius is negative or NaN.
pub fn spherical_mask(n: usize, radius_px: f64, soft_px: f64) -> Array3<f32> {
    assert!(
        radius_px >= 0.0 && soft_px >= 0.0,
        "spherical_mask: radius {radius_px} px and edge {soft_px} px must be ≥ 0"
    );
    let c = (n / 2) as f64;
    Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        let r = ((z as f64 - c).powi(2) + (y as f64 - c).powi(2) + (x as f64 - c).powi(2)).sqrt();
        raised_cosine(r - radius_px, soft_px) as f32
    })
}

/// The Gaussian low-pass (σ = `sigma_px` voxels in real space) of a cube.
fn gaussian_blur(vol: ArrayView3<f32>, sigma_px: f64) -> Array3<f32> {
    let n = vol.dim().2;
    let mut spec = rfft3(vol);
    // FT of a unit-sum Gaussian: exp(−2π² σ² (k/n)²) per axis.
    let f = |k: i64| {
        (-2.0 * std::f64::consts::PI.powi(2) * (sigma_px * k as f64 / n as f64).powi(2)).exp()
    };
    let fx: Vec<f64> = (0..n).map(|i| f(fftfreq(i, n))).collect();
    for ((i, j, l), v) in spec.indexed_iter_mut() {
        *v *= (fx[i] * fx[j] * f(l as i64)) as f32;
    }
    irfft3(spec.view(), n)
}

/// The binary region of [`solvent_mask`] before dilation: the consensus low-passed by a
/// Gaussian of σ = [`SOLVENT_MASK_BLUR_PX`], thresholded at `threshold_frac ×` its maximum
/// (`≥`), reduced to its largest 6-connected component.
fn solvent_binary_region(consensus: ArrayView3<f32>, threshold_frac: f64) -> Result<Array3<bool>> {
    if let Some(v) = consensus.iter().find(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "solvent mask: the consensus volume holds a non-finite value ({v}); check the \
             consensus map"
        )));
    }
    let max_in = consensus.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max_in <= 0.0 {
        return Err(Error::Input(format!(
            "solvent mask: the consensus volume has no positive density (maximum {max_in}); \
             check the consensus map or use a spherical mask"
        )));
    }
    let blurred = gaussian_blur(consensus, SOLVENT_MASK_BLUR_PX);
    let max = blurred.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let thr = threshold_frac * max;
    let above = blurred.mapv(|v| max > 0.0 && v as f64 >= thr);
    let region = largest_component(&above);
    if max <= 0.0 || !region.iter().any(|b| *b) {
        return Err(Error::Plan(format!(
            "solvent mask: no voxel of the low-passed consensus (maximum {max}) reaches \
             threshold {threshold_frac} × maximum; lower the threshold or use a spherical mask"
        )));
    }
    Ok(region)
}

/// The largest 6-connected component of `a` (ties: the first in memory order).
fn largest_component(a: &Array3<bool>) -> Array3<bool> {
    let (nz, ny, nx) = a.dim();
    let src = a.as_standard_layout();
    let src = src.as_slice().expect("standard layout is contiguous");
    let mut label = vec![0u32; src.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..src.len() {
        if !src[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0usize;
        while let Some(p) = stack.pop() {
            size += 1;
            let (z, y, x) = (p / (ny * nx), (p / nx) % ny, p % nx);
            let mut visit = |q: usize| {
                if src[q] && label[q] == 0 {
                    label[q] = next;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < nx {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - nx);
            }
            if y + 1 < ny {
                visit(p + nx);
            }
            if z > 0 {
                visit(p - ny * nx);
            }
            if z + 1 < nz {
                visit(p + ny * nx);
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    let keep: Vec<bool> = label.iter().map(|l| best != 0 && *l == best).collect();
    Array3::from_shape_vec((nz, ny, nx), keep).expect("shape matches the input")
}

/// Squared-distance transform of one line (Felzenszwalb & Huttenlocher 2012): `d[q] =
/// min_p (q − p)² + f[p]`. `v`, `z` are scratch of length `n` and `n + 1`.
fn edt_line(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in 1..n {
        let qf = q as f64;
        let s = loop {
            let p = v[k] as f64;
            let s = ((f[q] + qf * qf) - (f[v[k]] + p * p)) / (2.0 * (qf - p));
            if s <= z[k] && k > 0 {
                k -= 1;
            } else {
                break s;
            }
        };
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, dq) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k] as f64;
        *dq = (q as f64 - p).powi(2) + f[v[k]];
    }
}

/// Runs [`edt_line`] on every line of the contiguous `(n0, n1, n2)` buffer `g` along its
/// last axis, in place.
fn edt_last_axis(g: &mut [f64], n2: usize) {
    g.par_chunks_mut(n2).for_each(|line| {
        let f = line.to_vec();
        let mut v = vec![0usize; n2];
        let mut z = vec![0f64; n2 + 1];
        edt_line(&f, line, &mut v, &mut z);
    });
}

/// Exact Euclidean distance (voxels) from every voxel to the nearest `true` voxel of
/// `region` (0 inside), by three separable 1D passes. An empty region gives distances of
/// about 1e10.
fn distance_to(region: &Array3<bool>) -> Array3<f64> {
    const FAR: f64 = 1e20;
    let (nz, ny, nx) = region.dim();
    let mut g: Vec<f64> = region
        .as_standard_layout()
        .iter()
        .map(|b| if *b { 0.0 } else { FAR })
        .collect();
    // x: contiguous lines.
    edt_last_axis(&mut g, nx);
    // y and z: transpose so the axis is last, transform, transpose back.
    let a = Array3::from_shape_vec((nz, ny, nx), g).expect("shape");
    let mut t: Vec<f64> = a.view().permuted_axes([0, 2, 1]).iter().copied().collect(); // (z, x, y)
    edt_last_axis(&mut t, ny);
    let a = Array3::from_shape_vec((nz, nx, ny), t).expect("shape");
    let mut t: Vec<f64> = a.view().permuted_axes([2, 1, 0]).iter().copied().collect(); // (y, x, z)
    edt_last_axis(&mut t, nz);
    let a = Array3::from_shape_vec((ny, nx, nz), t).expect("shape");
    // (y, x, z) → (z, y, x).
    a.permuted_axes([2, 0, 1])
        .as_standard_layout()
        .mapv(f64::sqrt)
}

/// The auto-generated solvent mask of 3D classification (CryoSPARC's) from the consensus
/// map at pixel size `psize_a` (Å): the consensus is low-passed (Gaussian, σ =
/// [`SOLVENT_MASK_BLUR_PX`] voxel) and binarised at `threshold_frac ×` its maximum; the
/// largest 6-connected component is kept and dilated by `dilate_a` Å (every voxel within
/// that Euclidean distance of it); a raised-cosine edge of width `soft_pad_a` Å follows
/// (module comment). With `D` the distance (voxels) to the binary region,
/// `r = dilate_a/psize_a` and `w = soft_pad_a/psize_a`: `m = 1` for `D ≤ r`,
/// `½ (1 + cos(π (D − r)/w))` for `r < D < r + w`, 0 beyond. `dilate_a = 0` means no
/// dilation and `soft_pad_a = 0` a hard edge.
///
/// Errors (one line) for a non-cubic or empty volume, a pixel size that is not positive and
/// finite, a dilation or edge that is negative or not finite, `threshold_frac` outside
/// (0, 1), a consensus with a non-finite value or no positive density, or no voxel at the
/// threshold.
pub fn solvent_mask(
    consensus: ArrayView3<f32>,
    psize_a: f64,
    threshold_frac: f64,
    dilate_a: f64,
    soft_pad_a: f64,
) -> Result<Array3<f32>> {
    let (nz, ny, nx) = consensus.dim();
    if nz != ny || ny != nx || nx == 0 {
        return Err(Error::Internal(format!(
            "solvent mask: the consensus volume is {nz}×{ny}×{nx}; it must be a non-empty cube"
        )));
    }
    if !(psize_a.is_finite() && psize_a > 0.0) {
        return Err(Error::Input(format!(
            "solvent mask: pixel size {psize_a} Å must be positive"
        )));
    }
    if !(threshold_frac > 0.0 && threshold_frac < 1.0) {
        return Err(Error::Plan(format!(
            "solvent mask: threshold {threshold_frac} must be a fraction of the maximum in (0, 1)"
        )));
    }
    if !(dilate_a.is_finite() && dilate_a >= 0.0 && soft_pad_a.is_finite() && soft_pad_a >= 0.0) {
        return Err(Error::Plan(format!(
            "solvent mask: dilation {dilate_a} Å and soft edge {soft_pad_a} Å must be ≥ 0 and \
             finite"
        )));
    }
    let region = solvent_binary_region(consensus, threshold_frac)?;
    let dist_px = distance_to(&region);
    let r_px = dilate_a / psize_a;
    let w_px = soft_pad_a / psize_a;
    Ok(dist_px.mapv(|d| raised_cosine(d - r_px, w_px) as f32))
}

/// Checks that `mask` can multiply a volume: every value finite and in [0, 1] (within 1e-3)
/// and not all zero. The one-line error names `what` (e.g. the file it came from).
pub fn check_mask(mask: ArrayView3<f32>, what: &str) -> Result<()> {
    const TOL: f32 = 1e-3;
    if mask.is_empty() {
        return Err(Error::Input(format!("{what}: the mask is empty")));
    }
    if let Some(((z, y, x), v)) = mask
        .indexed_iter()
        .find(|(_, v)| !v.is_finite() || **v < -TOL || **v > 1.0 + TOL)
    {
        return Err(Error::Input(format!(
            "{what}: mask value {v} at voxel (z, y, x) = ({z}, {y}, {x}) is not in [0, 1]; \
             a mask must hold weights between 0 and 1"
        )));
    }
    if !mask.iter().any(|v| *v > 0.0) {
        return Err(Error::Input(format!(
            "{what}: the mask is zero everywhere; it would mask out the whole volume"
        )));
    }
    Ok(())
}

/// Root mean square of `a − b` over all voxels (0 for empty volumes). Panics if the shapes
/// differ.
pub fn rms_difference(a: ArrayView3<f32>, b: ArrayView3<f32>) -> f64 {
    assert_eq!(a.dim(), b.dim(), "rms_difference: shapes differ");
    if a.is_empty() {
        return 0.0;
    }
    let ss: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    (ss / a.len() as f64).sqrt()
}

/// Root mean square of `a` over all voxels (0 for an empty volume).
pub fn rms(a: ArrayView3<f32>) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let ss: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (ss / a.len() as f64).sqrt()
}

/// The three central planes through voxel `(n/2, n/2, n/2)`: `[xy, xz, yz]` = the slices at
/// `z = nz/2` (indexed `(y, x)`), `y = ny/2` (indexed `(z, x)`) and `x = nx/2` (indexed
/// `(z, y)`). Panics on an empty volume.
pub fn central_slices(vol: ArrayView3<f32>) -> [Array2<f32>; 3] {
    let (nz, ny, nx) = vol.dim();
    assert!(nz > 0 && ny > 0 && nx > 0, "central_slices: empty volume");
    [
        vol.index_axis(Axis(0), nz / 2).to_owned(),
        vol.index_axis(Axis(1), ny / 2).to_owned(),
        vol.index_axis(Axis(2), nx / 2).to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Gaussian blob `amp · exp(−r²/2σ²)` centred at `c = (z, y, x)` in an `n³` box.
    fn blob(n: usize, sigma_px: f64, c: [f64; 3], amp: f64) -> Array3<f32> {
        Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let r2 =
                (z as f64 - c[0]).powi(2) + (y as f64 - c[1]).powi(2) + (x as f64 - c[2]).powi(2);
            (amp * (-r2 / (2.0 * sigma_px * sigma_px)).exp()) as f32
        })
    }

    fn max_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn argmax(a: &Array3<f32>) -> (usize, usize, usize) {
        a.indexed_iter()
            .fold(((0, 0, 0), f32::NEG_INFINITY), |best, (i, v)| {
                if *v > best.1 {
                    (i, *v)
                } else {
                    best
                }
            })
            .0
    }

    #[test]
    fn crop_keeps_grey_values_centre_and_scaled_integral() {
        // A σ = 4 px blob at the centre of a 64 box is, after cropping to 32, the σ = 2 px
        // blob at voxel 16 (same physical size, pixel size doubled) with the same peak value.
        let g = blob(64, 4.0, [32.0; 3], 1.0);
        let c = fourier_crop3(g.view(), 32);
        assert_eq!(c.dim(), (32, 32, 32));
        let expect = blob(32, 2.0, [16.0; 3], 1.0);
        assert!(
            max_diff(&c, &expect) < 1e-4,
            "crop: {}",
            max_diff(&c, &expect)
        );
        assert_eq!(argmax(&c), (16, 16, 16));
        assert!(
            (c[[16, 16, 16]] - 1.0).abs() < 1e-4,
            "peak {}",
            c[[16, 16, 16]]
        );
        // The voxel sum scales by (n_out/n_in)³ = 1/8 (the integral Σ v·psize³ is kept).
        let s_in: f64 = g.iter().map(|v| *v as f64).sum();
        let s_out: f64 = c.iter().map(|v| *v as f64).sum();
        assert!(
            (s_out / (s_in / 8.0) - 1.0).abs() < 1e-4,
            "sum {s_out} vs {}",
            s_in / 8.0
        );
        // An off-centre blob at offset (+8, −6, +4) from the centre lands at offset
        // (+4, −3, +2) from the new centre.
        let g = blob(64, 4.0, [40.0, 26.0, 36.0], 2.5);
        let c = fourier_crop3(g.view(), 32);
        assert_eq!(argmax(&c), (20, 13, 18));
        let expect = blob(32, 2.0, [20.0, 13.0, 18.0], 2.5);
        assert!(max_diff(&c, &expect) < 1e-3, "{}", max_diff(&c, &expect));
        // A non-power-of-two target: 64 → 48, σ 4 → 3 px.
        let c = fourier_crop3(blob(64, 4.0, [32.0; 3], 1.0).view(), 48);
        let expect = blob(48, 3.0, [24.0; 3], 1.0);
        assert!(max_diff(&c, &expect) < 1e-4, "{}", max_diff(&c, &expect));
    }

    #[test]
    fn crop_then_pad_restores_a_smooth_blob_and_pad_interpolates() {
        let g = blob(64, 4.0, [30.0, 33.0, 35.0], 1.0);
        let back = fourier_pad3(fourier_crop3(g.view(), 32).view(), 64);
        assert!(
            max_diff(&back, &g) < 1e-4,
            "crop+pad: {}",
            max_diff(&back, &g)
        );
        // Padding a σ = 2 px blob from 32 to 64 gives the σ = 4 px blob at 32.
        let p = fourier_pad3(blob(32, 2.0, [16.0; 3], 1.0).view(), 64);
        let expect = blob(64, 4.0, [32.0; 3], 1.0);
        assert!(
            max_diff(&p, &expect) < 1e-4,
            "pad: {}",
            max_diff(&p, &expect)
        );
        // resample3 dispatches and is the identity for an unchanged box.
        assert_eq!(resample3(g.view(), 64), g);
        assert_eq!(resample3(g.view(), 32), fourier_crop3(g.view(), 32));
        let small = fourier_crop3(g.view(), 32);
        assert_eq!(resample3(small.view(), 64), back);
        // Noise loses everything at and beyond the small box's Nyquist: crop + pad of noise is
        // not the noise, but cropping again gives the same small volume (a projection).
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = Array3::from_shape_fn((32, 32, 32), |_| rng.gen_range(-1.0f32..1.0));
        let c = fourier_crop3(a.view(), 16);
        let cc = fourier_crop3(fourier_pad3(c.view(), 32).view(), 16);
        assert!(max_diff(&c, &cc) < 1e-4, "{}", max_diff(&c, &cc));
        assert!(rms_difference(fourier_pad3(c.view(), 32).view(), a.view()) > 0.1);
        // The cropped box's Nyquist planes (kz, ky or kx = ±8) are empty; the rest is not.
        let sc = rfft3(c.view());
        for ((i, j, l), v) in sc.indexed_iter() {
            if i == 8 || j == 8 || l == 8 {
                assert!(v.norm() < 1e-3, "Nyquist [{i},{j},{l}] = {v}");
            }
        }
        assert!(sc[[7, 1, 7]].norm() > 1e-2);
    }

    #[test]
    fn distance_transform_matches_brute_force() {
        let n = 11usize;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let region = Array3::from_shape_fn((n, n, n + 2), |_| rng.gen_bool(0.03));
        let pts: Vec<(usize, usize, usize)> = region
            .indexed_iter()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
            .collect();
        assert!(pts.len() > 3);
        let d = distance_to(&region);
        for ((z, y, x), v) in d.indexed_iter() {
            let bf = pts
                .iter()
                .map(|&(a, b, c)| {
                    ((z as f64 - a as f64).powi(2)
                        + (y as f64 - b as f64).powi(2)
                        + (x as f64 - c as f64).powi(2))
                    .sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((v - bf).abs() < 1e-9, "({z},{y},{x}): {v} vs {bf}");
        }
    }

    #[test]
    fn largest_component_uses_six_connectivity() {
        let mut a = Array3::from_elem((5, 5, 5), false);
        // Three voxels in a row (component of 3) and two pairs touching it only diagonally.
        for x in 0..3 {
            a[[2, 2, x]] = true;
        }
        a[[3, 3, 3]] = true;
        a[[4, 4, 4]] = true;
        a[[1, 1, 3]] = true;
        a[[0, 1, 3]] = true;
        let l = largest_component(&a);
        assert_eq!(l.iter().filter(|b| **b).count(), 3);
        assert!(l[[2, 2, 0]] && l[[2, 2, 2]] && !l[[3, 3, 3]] && !l[[1, 1, 3]]);
    }

    /// Two touching σ = 3 px domains 12 px apart (one molecule), a separate small σ = 1 px
    /// blob (its own component above the threshold), single-voxel specks and uniform noise.
    fn two_blob_volume(n: usize) -> Array3<f32> {
        let mut v = blob(n, 3.0, [32.0, 32.0, 26.0], 1.0);
        v += &blob(n, 3.0, [32.0, 32.0, 38.0], 1.0);
        v += &blob(n, 1.0, [10.0, 10.0, 10.0], 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        v.mapv_inplace(|x| x + rng.gen_range(-0.05f32..0.05));
        for &(z, y, x) in &[(50usize, 10usize, 50usize), (5, 55, 30), (58, 58, 5)] {
            v[[z, y, x]] = 1.0;
        }
        v
    }

    #[test]
    fn solvent_mask_of_two_blobs_keeps_the_molecule_only() {
        let n = 64usize;
        let (psize, frac, dil, soft) = (2.0, 0.2, 6.0, 6.0); // 3 px dilation, 3 px edge
        let v = two_blob_volume(n);
        let m = solvent_mask(v.view(), psize, frac, dil, soft).unwrap();
        assert_eq!(m.dim(), (n, n, n));
        check_mask(m.view(), "solvent mask").unwrap();
        // Both domains are in, with full weight at their centres and between them.
        assert_eq!(m[[32, 32, 26]], 1.0);
        assert_eq!(m[[32, 32, 38]], 1.0);
        assert_eq!(m[[32, 32, 32]], 1.0);
        // Far away and at the corners it is 0; so at the separate blob and the specks.
        assert_eq!(m[[32, 32, 2]], 0.0);
        assert_eq!(m[[0, 0, 0]], 0.0);
        assert_eq!(m[[10, 10, 10]], 0.0, "the smaller component is left out");
        for &(z, y, x) in &[(50usize, 10usize, 50usize), (5, 55, 30), (58, 58, 5)] {
            assert_eq!(m[[z, y, x]], 0.0, "speck ({z},{y},{x})");
        }
        // The small blob does survive the threshold on its own: only the component step
        // removes it.
        let blurred = gaussian_blur(v.view(), SOLVENT_MASK_BLUR_PX);
        let max = blurred.iter().copied().fold(f32::MIN, f32::max);
        assert!(blurred[[10, 10, 10]] as f64 > frac * max as f64);
        // The mask is 1 on the whole binary region.
        let region = solvent_binary_region(v.view(), frac).unwrap();
        assert!(region[[32, 32, 26]] && !region[[10, 10, 10]]);
        for (i, b) in region.indexed_iter() {
            if *b {
                assert_eq!(m[i], 1.0, "binary voxel {i:?}");
            }
        }
        // A soft edge: values strictly between 0 and 1 exist, and along −x from the domain
        // centre the mask falls monotonically from 1 to 0 through them.
        let edge = m.iter().filter(|v| **v > 0.0 && **v < 1.0).count();
        assert!(edge > 100, "{edge} soft voxels");
        let line: Vec<f32> = (0..=26).rev().map(|x| m[[32, 32, x]]).collect();
        assert!(line.windows(2).all(|w| w[1] <= w[0]), "{line:?}");
        assert!(line.iter().any(|v| *v > 0.0 && *v < 1.0), "{line:?}");
    }

    #[test]
    fn dilation_and_edge_widths_match_along_an_axis() {
        // A uniform ball of radius 10 px; 1.5 Å/px, dilation 9 Å = 6 px, edge 6 Å = 4 px.
        let n = 64usize;
        let c = 32usize;
        let ball = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let r2 =
                (z as f64 - 32.0).powi(2) + (y as f64 - 32.0).powi(2) + (x as f64 - 32.0).powi(2);
            if r2 <= 100.0 {
                1.0f32
            } else {
                0.0
            }
        });
        let (psize, dil, soft) = (1.5, 9.0, 6.0);
        let m = solvent_mask(ball.view(), psize, 0.5, dil, soft).unwrap();
        let region = solvent_binary_region(ball.view(), 0.5).unwrap();
        let last = |f: &dyn Fn(usize) -> bool| (c..n).take_while(|&x| f(x)).last().unwrap();
        let b_x = last(&|x| region[[c, c, x]]);
        assert!(
            (9..=11).contains(&b_x.abs_diff(c)),
            "binary radius {}",
            b_x - c
        );
        let m_x = last(&|x| m[[c, c, x]] == 1.0);
        let z_x = (c..n).find(|&x| m[[c, c, x]] == 0.0).unwrap();
        let dil_px = dil / psize;
        assert!(
            ((m_x - b_x) as f64 - dil_px).abs() <= 1.0,
            "dilation {} px vs {dil_px}",
            m_x - b_x
        );
        assert!(
            ((z_x - b_x) as f64 - (dil + soft) / psize).abs() <= 1.0,
            "mask ends {} px beyond the region",
            z_x - b_x
        );
        // Halfway through the edge (2 px beyond the dilated region) the mask is ½.
        assert!(
            (m[[c, c, b_x + 8]] - 0.5).abs() < 1e-6,
            "{}",
            m[[c, c, b_x + 8]]
        );
        // Along y and z as along x (isotropy).
        for k in 0..n {
            assert_eq!(m[[c, c, k]], m[[c, k, c]]);
            assert_eq!(m[[c, c, k]], m[[k, c, c]]);
        }
        // No dilation and a hard edge give exactly the binary region.
        let hard = solvent_mask(ball.view(), psize, 0.5, 0.0, 0.0).unwrap();
        assert_eq!(hard, region.mapv(|b| b as u8 as f32));
    }

    #[test]
    fn solvent_mask_rejects_bad_parameters_and_volumes() {
        let v = blob(16, 2.0, [8.0; 3], 1.0);
        let ok = |p: f64, t: f64, d: f64, s: f64| solvent_mask(v.view(), p, t, d, s).is_ok();
        assert!(ok(2.0, 0.3, 4.0, 4.0));
        assert!(!ok(0.0, 0.3, 4.0, 4.0));
        assert!(!ok(-1.0, 0.3, 4.0, 4.0));
        assert!(!ok(f64::NAN, 0.3, 4.0, 4.0));
        assert!(!ok(2.0, 0.0, 4.0, 4.0));
        assert!(!ok(2.0, 1.0, 4.0, 4.0));
        assert!(!ok(2.0, f64::NAN, 4.0, 4.0));
        assert!(!ok(2.0, 0.3, -1.0, 4.0));
        assert!(!ok(2.0, 0.3, f64::NAN, 4.0));
        assert!(!ok(2.0, 0.3, 4.0, -0.5));
        assert!(!ok(2.0, 0.3, 4.0, f64::INFINITY));
        let zero = Array3::<f32>::zeros((16, 16, 16));
        let e = solvent_mask(zero.view(), 2.0, 0.3, 4.0, 4.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no positive density") && !e.contains('\n'),
            "{e}"
        );
        let mut nan = v.clone();
        nan[[3, 4, 5]] = f32::NAN;
        assert!(solvent_mask(nan.view(), 2.0, 0.3, 4.0, 4.0).is_err());
        let neg = v.mapv(|x| -x);
        assert!(solvent_mask(neg.view(), 2.0, 0.3, 4.0, 4.0).is_err());
        let flat = Array3::<f32>::zeros((16, 16, 8));
        assert!(solvent_mask(flat.view(), 2.0, 0.3, 4.0, 4.0).is_err());
    }

    #[test]
    fn check_mask_accepts_weights_and_rejects_the_rest() {
        let mut m = spherical_mask(16, 4.0, 2.0);
        check_mask(m.view(), "m.mrc").unwrap();
        m[[0, 0, 0]] = 1.0005; // within tolerance
        check_mask(m.view(), "m.mrc").unwrap();
        m[[0, 0, 0]] = 1.5;
        let e = check_mask(m.view(), "m.mrc").unwrap_err().to_string();
        assert!(
            e.contains("m.mrc") && e.contains("1.5") && !e.contains('\n'),
            "{e}"
        );
        m[[0, 0, 0]] = f32::NAN;
        assert!(check_mask(m.view(), "m.mrc").is_err());
        m[[0, 0, 0]] = -0.5;
        assert!(check_mask(m.view(), "m.mrc").is_err());
        let e = check_mask(Array3::<f32>::zeros((4, 4, 4)).view(), "zeros")
            .unwrap_err()
            .to_string();
        assert!(e.contains("zeros") && e.contains("zero everywhere"), "{e}");
    }

    #[test]
    fn rms_and_rms_difference() {
        let a = Array3::from_shape_vec((1, 1, 2), vec![3.0f32, 4.0]).unwrap();
        assert!((rms(a.view()) - 12.5f64.sqrt()).abs() < 1e-12);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let b = Array3::from_shape_fn((8, 8, 8), |_| rng.gen_range(-1.0f32..1.0));
        assert_eq!(rms_difference(b.view(), b.view()), 0.0);
        let c = b.mapv(|x| x + 2.0);
        assert!((rms_difference(c.view(), b.view()) - 2.0).abs() < 1e-6);
        assert!((rms_difference(b.view(), c.view()) - 2.0).abs() < 1e-6);
        // Half the voxels differ by 2: √(4/2).
        let d = Array3::from_shape_fn((2, 2, 2), |(z, _, _)| if z == 0 { 2.0f32 } else { 0.0 });
        let zero = Array3::<f32>::zeros((2, 2, 2));
        assert!((rms_difference(d.view(), zero.view()) - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(rms(zero.view()), 0.0);
        // Uniform noise on (−1, 1) has rms √(1/3).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let u = Array3::from_shape_fn((32, 32, 32), |_| rng.gen_range(-1.0f32..1.0));
        assert!((rms(u.view()) - (1.0f64 / 3.0).sqrt()).abs() < 0.01);
    }

    #[test]
    fn central_slices_pick_the_centre_planes() {
        let v = Array3::from_shape_fn((8, 8, 8), |(z, y, x)| (100 * z + 10 * y + x) as f32);
        let [xy, xz, yz] = central_slices(v.view());
        assert_eq!(xy.dim(), (8, 8));
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(xy[[i, j]], (400 + 10 * i + j) as f32, "xy (y, x)");
                assert_eq!(xz[[i, j]], (100 * i + 40 + j) as f32, "xz (z, x)");
                assert_eq!(yz[[i, j]], (100 * i + 10 * j + 4) as f32, "yz (z, y)");
            }
        }
    }

    #[test]
    fn spherical_mask_profile() {
        let m = spherical_mask(32, 6.0, 4.0);
        assert_eq!(m[[16, 16, 16]], 1.0);
        assert_eq!(m[[16, 16, 22]], 1.0, "r = 6 is inside");
        assert_eq!(m[[16, 16, 26]], 0.0, "r = 10 is outside");
        assert!((m[[16, 24, 16]] - 0.5).abs() < 1e-6, "r = 8 is halfway");
        assert!((m[[18, 16, 16]] - 1.0).abs() < 1e-6);
        assert_eq!(m[[0, 0, 0]], 0.0);
        let expect = 0.5 * (1.0 + (0.75 * std::f64::consts::PI).cos());
        assert!(
            (m[[16, 16, 7]] as f64 - expect).abs() < 1e-6,
            "r = 9 from below: {}",
            m[[16, 16, 7]]
        );
        let hard = spherical_mask(16, 3.0, 0.0);
        assert_eq!(hard[[8, 8, 11]], 1.0);
        assert_eq!(hard[[8, 8, 12]], 0.0);
    }

    /// Run times of `solvent_mask` (`cargo test --release -- --ignored --nocapture timing`).
    #[test]
    #[ignore]
    fn solvent_mask_timing() {
        for n in [64usize, 128] {
            let s = n as f64 / 64.0;
            let mut v = blob(n, 3.0 * s, [n as f64 / 2.0; 3], 1.0);
            v += &blob(
                n,
                3.0 * s,
                [0.5 * n as f64, 0.5 * n as f64, 0.6 * n as f64],
                1.0,
            );
            let t = std::time::Instant::now();
            let m = solvent_mask(v.view(), 2.0, 0.2, 6.0, 6.0).unwrap();
            let dt = t.elapsed();
            eprintln!(
                "solvent_mask n = {n}: {:.3} s ({} voxels ≥ ½)",
                dt.as_secs_f64(),
                m.iter().filter(|v| **v >= 0.5).count()
            );
        }
    }
}
