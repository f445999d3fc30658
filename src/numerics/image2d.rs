//! 2D image numerics on the half-plane Fourier grid of [`crate::numerics::fft`]: radial
//! shells, resolution of a shell, Fourier cropping to a working resolution and padding back,
//! sub-pixel shifts by phase ramp, in-plane rotation, and the rotational average of power.
//!
//! Images are square, `(box_px, box_px)`; their spectra are `(box_px, box_px/2 + 1)` half
//! planes with `ky = fftfreq(i, box)` on rows and `kx = j` on columns (see `fft.rs`).
//!
//! - **Shell** of coefficient `[i, j]`: `k = round(|freq| · box) = round(√(ky² + kx²))`, so
//!   shell `k` holds frequencies near `k / (box · psize)` Å⁻¹. Shells `0..=box/2` are complete
//!   circles; the corners (`k > box/2`) are ignored by the per-shell statistics here.
//! - **Resolution** of shell `k ≥ 1`: `box · psize / k` Å (shell `box/2` is Nyquist, `2·psize`).
//! - **Shift** convention (RELION's `shiftImageInFourierTransform`):
//!   `F'[k] = F[k] · exp(−2πi (kx·dx/box + ky·dy/box))`, which is `f'(x) = f(x − d)`: the
//!   content moves by `+d` pixels, as `np.roll(f, (dy, dx), axis=(0, 1))` for integer `d`.
//! - **Rotation** convention: [`rotate_image`] by `angle_rad` moves the content at offset
//!   `(x, y)` = (column, row) from the centre `(box/2, box/2)` to `rotation2d(angle)·(x, y)`
//!   ([`crate::numerics::rotation::rotation2d`], counter-clockwise in (x, y); on a display with
//!   row 0 at the top this looks clockwise).

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::numerics::fft::{fftfreq, half_len, half_plane_weight, irfft2, rfft2, Complex32};
use crate::numerics::rotation::rotation2d;

/// Shell index `round(√(ky² + kx²))` of half-plane element `[i, j]` of a `box_px` image.
pub fn shell_of(i: usize, j: usize, box_px: usize) -> usize {
    let ky = fftfreq(i, box_px) as f64;
    let kx = j as f64;
    (ky * ky + kx * kx).sqrt().round() as usize
}

/// Shell index of every coefficient of the `(box_px, box_px/2 + 1)` half plane.
pub fn shell_map(box_px: usize) -> Array2<usize> {
    Array2::from_shape_fn((box_px, half_len(box_px)), |(i, j)| shell_of(i, j, box_px))
}

/// Number of complete shells, `box/2 + 1` (shells `0..=box/2`).
pub fn n_shells(box_px: usize) -> usize {
    box_px / 2 + 1
}

/// Resolution (Å) of shell `k`: `box · psize / k`; infinite for the DC shell `k = 0`.
pub fn shell_resolution_a(k: usize, box_px: usize, psize_a: f64) -> f64 {
    if k == 0 {
        f64::INFINITY
    } else {
        box_px as f64 * psize_a / k as f64
    }
}

/// The last shell at or below resolution `res_a` (Å): `floor(box · psize / res)`, clamped to
/// Nyquist (`box/2`). E.g. the `k_max` for working at `max_res_A`.
pub fn shell_at_resolution(res_a: f64, box_px: usize, psize_a: f64) -> usize {
    let k = (box_px as f64 * psize_a / res_a).floor();
    if k.is_finite() && k >= 0.0 {
        (k as usize).min(box_px / 2)
    } else {
        box_px / 2
    }
}

/// The box of a Fourier crop that keeps shells `0..=k_max`: `2·(k_max + 1)` (so the kept
/// circle never touches the cropped box's Nyquist row/column), or `box_px` if that is larger.
pub fn cropped_box_px(box_px: usize, k_max: usize) -> usize {
    (2 * (k_max + 1)).min(box_px)
}

/// Pixel size (Å) of an image Fourier-cropped from `box_px` to `small_px`.
pub fn cropped_psize_a(psize_a: f64, box_px: usize, small_px: usize) -> f64 {
    psize_a * box_px as f64 / small_px as f64
}

/// Fourier crop of the half-plane spectrum of a `box_px` image: keeps the coefficients with
/// `√(ky² + kx²) ≤ k_max` in the half plane of a `small = cropped_box_px(box, k_max)` box
/// and zeroes the rest. Values are scaled by `(small/box)²` so that, with the `1/N` inverse of
/// `fft.rs`, the cropped image keeps the grey levels of the original (it is the low-passed
/// image resampled at pixel size `cropped_psize_a`). Real-space centre `box/2` maps to
/// `small/2`.
pub fn fourier_crop(
    spectrum: ArrayView2<Complex32>,
    box_px: usize,
    k_max: usize,
) -> Array2<Complex32> {
    assert_eq!(
        spectrum.dim(),
        (box_px, half_len(box_px)),
        "fourier_crop: spectrum shape"
    );
    let small = cropped_box_px(box_px, k_max);
    let scale = (small as f32 / box_px as f32).powi(2);
    let k2_max = (k_max * k_max) as i64;
    Array2::from_shape_fn((small, half_len(small)), |(i, j)| {
        let ky = fftfreq(i, small);
        let kx = j as i64;
        if ky * ky + kx * kx > k2_max {
            return Complex32::new(0.0, 0.0);
        }
        let bi = ky.rem_euclid(box_px as i64) as usize;
        spectrum[[bi, j]] * scale
    })
}

/// Inverse of [`fourier_crop`]: places the spectrum of a `small` image into the half plane of
/// a `box_px` image (zeros at the frequencies the small box lacks), scaled by `(box/small)²`.
/// The small box's Nyquist row and column (if `small` is even and smaller than `box_px`) are
/// dropped, since they are ambiguous in sign.
pub fn fourier_pad(
    spectrum: ArrayView2<Complex32>,
    small: usize,
    box_px: usize,
) -> Array2<Complex32> {
    assert_eq!(
        spectrum.dim(),
        (small, half_len(small)),
        "fourier_pad: spectrum shape"
    );
    assert!(
        small <= box_px,
        "fourier_pad: small box {small} > target box {box_px}"
    );
    let scale = (box_px as f32 / small as f32).powi(2);
    let drop_nyquist = small < box_px && small.is_multiple_of(2);
    let mut out = Array2::<Complex32>::zeros((box_px, half_len(box_px)));
    for ((i, j), v) in spectrum.indexed_iter() {
        let ky = fftfreq(i, small);
        if drop_nyquist && (j == small / 2 || ky == -((small / 2) as i64)) {
            continue;
        }
        let bi = ky.rem_euclid(box_px as i64) as usize;
        out[[bi, j]] = *v * scale;
    }
    out
}

/// Multiplies a half-plane spectrum in place by the phase ramp that shifts the image content by
/// `(dy_px, dx_px)` (see the module comment: `f'(x) = f(x − d)`).
pub fn shift_spectrum(
    mut spectrum: ArrayViewMut2<Complex32>,
    box_px: usize,
    dy_px: f64,
    dx_px: f64,
) {
    assert_eq!(
        spectrum.dim(),
        (box_px, half_len(box_px)),
        "shift_spectrum: spectrum shape"
    );
    let n = box_px as f64;
    for ((i, j), v) in spectrum.indexed_iter_mut() {
        let ky = fftfreq(i, box_px) as f64;
        let kx = j as f64;
        let phase = -std::f64::consts::TAU * (kx * dx_px + ky * dy_px) / n;
        let (s, c) = phase.sin_cos();
        *v *= Complex32::new(c as f32, s as f32);
    }
}

/// The image shifted by `(dy_px, dx_px)` pixels (periodic, sub-pixel by phase ramp).
pub fn shift_image(image: ArrayView2<f32>, dy_px: f64, dx_px: f64) -> Array2<f32> {
    let (ny, nx) = image.dim();
    assert_eq!(ny, nx, "shift_image: image is not square");
    let mut spec = rfft2(image);
    shift_spectrum(spec.view_mut(), nx, dy_px, dx_px);
    irfft2(spec.view(), nx)
}

/// The image rotated by `angle_rad` about `(box/2, box/2)` (convention in the module
/// comment), by bilinear interpolation in real space; samples from outside the box are 0.
pub fn rotate_image(image: ArrayView2<f32>, angle_rad: f64) -> Array2<f32> {
    let (ny, nx) = image.dim();
    let (cy, cx) = ((ny / 2) as f64, (nx / 2) as f64);
    // out(p) = in(R⁻¹ p) with R = rotation2d(angle); R⁻¹ = rotation2d(−angle).
    let r = rotation2d(-angle_rad);
    let at = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= ny as isize || x >= nx as isize {
            0.0
        } else {
            image[[y as usize, x as usize]] as f64
        }
    };
    Array2::from_shape_fn((ny, nx), |(i, j)| {
        let (x, y) = (j as f64 - cx, i as f64 - cy);
        let sx = r[0][0] * x + r[0][1] * y + cx;
        let sy = r[1][0] * x + r[1][1] * y + cy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
        v as f32
    })
}

/// Mean over each complete shell `0..=box/2` of a real quantity on the half plane, counting
/// every coefficient with its [`half_plane_weight`] (so it is the mean over the full plane).
pub fn shell_mean(values: ArrayView2<f32>, box_px: usize) -> Vec<f64> {
    assert_eq!(
        values.dim(),
        (box_px, half_len(box_px)),
        "shell_mean: shape"
    );
    let ns = n_shells(box_px);
    let mut sum = vec![0.0f64; ns];
    let mut w = vec![0.0f64; ns];
    for ((i, j), v) in values.indexed_iter() {
        let k = shell_of(i, j, box_px);
        if k < ns {
            let wt = half_plane_weight(j, box_px) as f64;
            sum[k] += wt * *v as f64;
            w[k] += wt;
        }
    }
    sum.iter()
        .zip(&w)
        .map(|(s, w)| if *w > 0.0 { s / w } else { 0.0 })
        .collect()
}

/// Rotational average of the power spectrum: mean `|F|²` per shell `0..=box/2` of a half-plane
/// spectrum (unnormalised forward transform, so white noise of variance σ² gives `N·σ²`,
/// `N = box²`).
pub fn radial_power(spectrum: ArrayView2<Complex32>, box_px: usize) -> Vec<f64> {
    shell_mean(spectrum.mapv(|v| v.norm_sqr()).view(), box_px)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn noise(n: usize, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0f32..1.0))
    }

    fn gaussian(n: usize, sigma_px: f64, cy: f64, cx: f64) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(i, j)| {
            let r2 = (i as f64 - cy).powi(2) + (j as f64 - cx).powi(2);
            (-r2 / (2.0 * sigma_px * sigma_px)).exp() as f32
        })
    }

    fn roll(a: &Array2<f32>, dy: isize, dx: isize) -> Array2<f32> {
        let n = a.nrows() as isize;
        Array2::from_shape_fn(a.dim(), |(i, j)| {
            a[[
                (i as isize - dy).rem_euclid(n) as usize,
                (j as isize - dx).rem_euclid(n) as usize,
            ]]
        })
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn shells_and_resolutions() {
        assert_eq!(shell_of(0, 0, 64), 0);
        assert_eq!(shell_of(0, 5, 64), 5);
        assert_eq!(shell_of(64 - 3, 4, 64), 5, "ky = −3, kx = 4");
        assert_eq!(shell_of(1, 1, 64), 1, "√2 rounds to 1");
        let m = shell_map(16);
        assert_eq!(m.dim(), (16, 9));
        assert_eq!(m[[8, 0]], 8, "Nyquist row");
        assert_eq!(n_shells(64), 33);
        assert_eq!(shell_resolution_a(32, 64, 2.0), 4.0, "Nyquist is 2·psize");
        assert_eq!(shell_resolution_a(16, 128, 1.5), 12.0);
        assert!(shell_resolution_a(0, 64, 2.0).is_infinite());
        assert_eq!(shell_at_resolution(6.0, 128, 2.0), 42);
        assert_eq!(shell_at_resolution(1.0, 128, 2.0), 64, "clamped to Nyquist");
    }

    #[test]
    fn integer_shift_equals_roll_and_fractional_shifts_compose() {
        let a = noise(32, 1);
        for &(dy, dx) in &[(3isize, -5isize), (-7, 2), (0, 1)] {
            let s = shift_image(a.view(), dy as f64, dx as f64);
            let err = max_diff(&s, &roll(&a, dy, dx));
            assert!(err < 1e-4, "shift ({dy}, {dx}) vs roll: {err}");
        }
        // A Gaussian at (16, 16) shifted by (2.5, −1.25) lands at (18.5, 14.75).
        let g = gaussian(32, 2.0, 16.0, 16.0);
        let s = shift_image(g.view(), 2.5, -1.25);
        let expect = gaussian(32, 2.0, 18.5, 14.75);
        assert!(max_diff(&s, &expect) < 2e-3, "{}", max_diff(&s, &expect));
    }

    #[test]
    fn rotation_by_90_degrees_is_transpose_and_flip() {
        let n = 32usize;
        let a = noise(n, 2);
        let r = rotate_image(a.view(), std::f64::consts::FRAC_PI_2);
        // (x, y) → (−y, x) about c = n/2 gives out[i, j] = in[n − j, i] (for j ≥ 1).
        for i in 0..n {
            for j in 1..n {
                let expect = a[[n - j, i]];
                assert!(
                    (r[[i, j]] - expect).abs() < 1e-4,
                    "[{i},{j}] {} vs {expect}",
                    r[[i, j]]
                );
            }
        }
        // Rotating a centred Gaussian by any angle leaves it unchanged (away from the edges).
        let g = gaussian(n, 3.0, 16.0, 16.0);
        let rg = rotate_image(g.view(), 0.7);
        assert!(max_diff(&g, &rg) < 3e-2, "{}", max_diff(&g, &rg));
        // An off-centre blob at x = +6 goes to y = +6 after +90°.
        let b = gaussian(n, 1.5, 16.0, 22.0);
        let rb = rotate_image(b.view(), std::f64::consts::FRAC_PI_2);
        assert!(max_diff(&rb, &gaussian(n, 1.5, 22.0, 16.0)) < 1e-4);
    }

    #[test]
    fn crop_keeps_grey_levels_and_pad_restores_band_limited_images() {
        // A smooth Gaussian (σ = 6 px) cropped from 64 to 32 px is the same Gaussian at half
        // the sampling (σ = 3 px at the new centre 16).
        let g = gaussian(64, 6.0, 32.0, 32.0);
        let k_max = 15;
        let small = cropped_box_px(64, k_max);
        assert_eq!(small, 32);
        assert_eq!(cropped_psize_a(1.5, 64, 32), 3.0);
        let cs = fourier_crop(rfft2(g.view()).view(), 64, k_max);
        assert_eq!(cs.dim(), (32, 17));
        let c = irfft2(cs.view(), 32);
        let expect = gaussian(32, 3.0, 16.0, 16.0);
        assert!(
            max_diff(&c, &expect) < 1e-3,
            "crop: {}",
            max_diff(&c, &expect)
        );
        // Pad back: the band-limited Gaussian is recovered.
        let back = irfft2(fourier_pad(cs.view(), 32, 64).view(), 64);
        assert!(max_diff(&back, &g) < 1e-3, "pad: {}", max_diff(&back, &g));
        // Noise loses its high frequencies: all power beyond k_max is gone after crop + pad.
        let a = noise(64, 3);
        let cs = fourier_crop(rfft2(a.view()).view(), 64, 10);
        let p = radial_power(fourier_pad(cs.view(), 22, 64).view(), 64);
        assert!(p[..=10].iter().all(|v| *v > 0.0));
        assert!(p[11..].iter().all(|v| *v == 0.0), "{p:?}");
    }

    #[test]
    fn radial_power_of_white_noise_and_of_a_cosine() {
        // White noise, uniform on (−1, 1): variance 1/3, so E|F|² = N/3 on every shell.
        let n = 128usize;
        let a = noise(n, 4);
        let p = radial_power(rfft2(a.view()).view(), n);
        assert_eq!(p.len(), 65);
        let expect = (n * n) as f64 / 3.0;
        // Shell k ≥ 20 holds ≥ 60 independent |F|² (exponential): within 50% each, and the
        // mean over shells 10..=64 within 5%.
        for (k, v) in p.iter().enumerate().skip(20) {
            assert!((v / expect - 1.0).abs() < 0.5, "shell {k}: {v} vs {expect}");
        }
        let mean = p[10..].iter().sum::<f64>() / p[10..].len() as f64;
        assert!(
            (mean / expect - 1.0).abs() < 0.05,
            "mean {mean} vs {expect}"
        );
        // cos(2π·5x/n) has all its power on shell 5.
        let c = Array2::from_shape_fn((n, n), |(_, x)| {
            (std::f64::consts::TAU * 5.0 * x as f64 / n as f64).cos() as f32
        });
        let p = radial_power(rfft2(c.view()).view(), n);
        for (k, v) in p.iter().enumerate() {
            assert_eq!(*v > 1.0, k == 5, "shell {k}: {v}");
        }
    }
}
