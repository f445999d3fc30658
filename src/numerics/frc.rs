//! Fourier ring correlation (FRC, the 2D FSC) between two square images (and the 3D FSC
//! between two cubic volumes, [`fsc_spectra`]), per shell of
//! [`crate::numerics::image2d`], and the resolution at which it falls below a threshold
//! (0.5 for class averages from even/odd halves, as the 2D classification seed plots; 0.143
//! for the gold-standard criterion).
//!
//! ```text
//! FRC(k) = Re Σ_{s(q)=k} F₁(q) F₂*(q) / √( Σ_{s(q)=k} |F₁(q)|² · Σ_{s(q)=k} |F₂(q)|² )
//! ```
//! summed over the full plane (half-plane coefficients counted with
//! [`crate::numerics::fft::half_plane_weight`]); `FRC(k) = 0` where either power is 0.
//! Shells are `0..=box/2`.

use ndarray::{ArrayView2, ArrayView3};

use crate::numerics::fft::{fftfreq, half_len, half_plane_weight, rfft2, Complex32};
use crate::numerics::image2d::{n_shells, shell_of};

/// FRC per shell `0..=box/2` between two half-plane spectra of `box_px` images.
pub fn frc_spectra(a: ArrayView2<Complex32>, b: ArrayView2<Complex32>, box_px: usize) -> Vec<f64> {
    assert_eq!(a.dim(), (box_px, half_len(box_px)), "frc: spectrum shape");
    assert_eq!(a.dim(), b.dim(), "frc: spectra differ in shape");
    let items = a.indexed_iter().map(|((i, j), va)| {
        let w = half_plane_weight(j, box_px) as f64;
        (shell_of(i, j, box_px), w, *va, b[[i, j]])
    });
    shell_correlation(n_shells(box_px), items)
}

/// `Re Σ w·a·b* / √(Σ w|a|² · Σ w|b|²)` per shell `0..ns` over `(shell, weight, a, b)`
/// items (shells ≥ `ns` ignored; 0 where either power is 0).
fn shell_correlation(
    ns: usize,
    items: impl Iterator<Item = (usize, f64, Complex32, Complex32)>,
) -> Vec<f64> {
    let (mut cross, mut pa, mut pb) = (vec![0.0f64; ns], vec![0.0f64; ns], vec![0.0f64; ns]);
    for (k, w, va, vb) in items {
        if k >= ns {
            continue;
        }
        cross[k] += w * (va.re as f64 * vb.re as f64 + va.im as f64 * vb.im as f64);
        pa[k] += w * norm_sqr_f64(&va);
        pb[k] += w * norm_sqr_f64(&vb);
    }
    (0..ns)
        .map(|k| {
            let d = (pa[k] * pb[k]).sqrt();
            if d > 0.0 {
                cross[k] / d
            } else {
                0.0
            }
        })
        .collect()
}

/// `|v|²` accumulated in f64 (as the cross term), so identical inputs give FRC = 1 exactly.
fn norm_sqr_f64(v: &Complex32) -> f64 {
    (v.re as f64).powi(2) + (v.im as f64).powi(2)
}

/// FRC per shell `0..=box/2` between two real `(box, box)` images.
pub fn frc(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Vec<f64> {
    let (ny, nx) = a.dim();
    assert_eq!(ny, nx, "frc: images must be square");
    assert_eq!(a.dim(), b.dim(), "frc: images differ in shape");
    frc_spectra(rfft2(a).view(), rfft2(b).view(), nx)
}

/// Resolution (Å) where the FRC curve (shells `0..=box/2`) first drops below `threshold`,
/// searching from shell 1. The crossing is interpolated linearly in spatial frequency between
/// the last shell at or above the threshold and the first below it, and converted with
/// `box · psize / k`. If shell 1 is already below, the result is `box · psize` (the coarsest
/// shell); if the curve never drops below, it is Nyquist, `2 · psize`.
pub fn frc_resolution_a(frc: &[f64], threshold: f64, box_px: usize, psize_a: f64) -> f64 {
    let box_a = box_px as f64 * psize_a;
    if frc.len() < 2 {
        return box_a;
    }
    if frc[1] < threshold {
        return box_a;
    }
    for k in 2..frc.len() {
        if frc[k] < threshold {
            let (hi, lo) = (frc[k - 1], frc[k]);
            let t = if hi > lo {
                (hi - threshold) / (hi - lo)
            } else {
                0.0
            };
            let k_cross = (k - 1) as f64 + t.clamp(0.0, 1.0);
            return box_a / k_cross;
        }
    }
    box_a / (frc.len() - 1) as f64
}

/// Fourier shell correlation (FSC) per shell `0..=n/2` between two half-space spectra
/// `(n, n, n/2+1)` of `n³` volumes (as [`crate::numerics::fft::rfft3`] gives), with the shell
/// of a coefficient `round(|k|)` and the same formula and weights as [`frc_spectra`]; the
/// resolution of a curve is [`frc_resolution_a`]'s.
pub fn fsc_spectra(a: ArrayView3<Complex32>, b: ArrayView3<Complex32>, n: usize) -> Vec<f64> {
    assert_eq!(a.dim(), (n, n, half_len(n)), "fsc: spectrum shape");
    assert_eq!(a.dim(), b.dim(), "fsc: spectra differ in shape");
    let items = a.indexed_iter().map(|((z, y, x), va)| {
        let (kz, ky) = (fftfreq(z, n) as f64, fftfreq(y, n) as f64);
        let k = (kz * kz + ky * ky + (x * x) as f64).sqrt().round() as usize;
        (k, half_plane_weight(x, n) as f64, *va, b[[z, y, x]])
    });
    shell_correlation(n / 2 + 1, items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::fft::irfft2;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn noise(n: usize, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0f32..1.0))
    }

    /// Keeps shells `≤ k_c` (low) or `> k_c` (high) of a real image.
    fn band(a: &Array2<f32>, k_c: usize, low: bool) -> Array2<f32> {
        let n = a.nrows();
        let mut s = rfft2(a.view());
        for ((i, j), v) in s.indexed_iter_mut() {
            if (shell_of(i, j, n) <= k_c) != low {
                *v = Complex32::new(0.0, 0.0);
            }
        }
        irfft2(s.view(), n)
    }

    #[test]
    fn identical_images_correlate_fully() {
        let a = noise(64, 1);
        let f = frc(a.view(), a.view());
        assert_eq!(f.len(), 33);
        for (k, v) in f.iter().enumerate() {
            assert!((v - 1.0).abs() < 1e-9, "shell {k}: {v}");
        }
        // Scale does not matter; sign does.
        let f = frc(a.view(), a.mapv(|v| -3.0 * v).view());
        assert!(f[1..].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert_eq!(
            frc_resolution_a(&frc(a.view(), a.view()), 0.143, 64, 1.5),
            3.0,
            "Nyquist"
        );
    }

    #[test]
    fn independent_noise_is_uncorrelated() {
        let n = 128;
        let f = frc(noise(n, 2).view(), noise(n, 3).view());
        // Shell k holds ~πk independent coefficients: |FRC| ~ 1/√(πk); allow 4 sigma.
        for (k, v) in f.iter().enumerate().skip(5) {
            let tol = 4.0 / (std::f64::consts::PI * k as f64).sqrt();
            assert!(v.abs() < tol, "shell {k}: {v}");
        }
        let mean = f[5..].iter().sum::<f64>() / f[5..].len() as f64;
        assert!(mean.abs() < 0.03, "mean FRC of independent noise {mean}");
        // Two unrelated images: the 0.5 crossing is at the coarsest shells.
        assert!(frc_resolution_a(&f, 0.5, n, 2.0) >= 128.0);
    }

    #[test]
    fn low_passed_pair_crosses_at_its_cutoff() {
        // b shares a's shells ≤ 20 and has independent noise above: FRC = 1 up to shell 20
        // and ≈ 0 beyond.
        let (n, k_c, psize_a) = (128usize, 20usize, 2.0);
        let a = noise(n, 4);
        let b = band(&a, k_c, true) + band(&noise(n, 5), k_c, false);
        let f = frc(a.view(), b.view());
        assert!(f[1..=k_c].iter().all(|v| (v - 1.0).abs() < 1e-5));
        let mean = f[k_c + 1..].iter().sum::<f64>() / f[k_c + 1..].len() as f64;
        assert!(mean.abs() < 0.05, "mean FRC above the cut-off {mean}");
        // c is a's low band minus its high band: FRC = +1 up to shell 20 and −1 beyond, so
        // the crossing of threshold t is at shell 20 + (1 − t)/2 exactly.
        let c = band(&a, k_c, true) - band(&a, k_c, false);
        let f = frc(a.view(), c.view());
        assert!(f[k_c + 1..].iter().all(|v| (v + 1.0).abs() < 1e-5));
        for thr in [0.5, 0.143] {
            let res = frc_resolution_a(&f, thr, n, psize_a);
            let expect = n as f64 * psize_a / (k_c as f64 + (1.0 - thr) / 2.0);
            assert!((res - expect).abs() < 1e-4, "thr {thr}: {res} vs {expect}");
            assert!(res > n as f64 * psize_a / 21.0 && res < n as f64 * psize_a / 20.0);
        }
    }

    #[test]
    fn resolution_interpolates_and_handles_edges() {
        // Box 100 at 1 Å: shell k is 100/k Å. Crossing 0.5 halfway between shells 4 and 5.
        let f = [1.0, 0.9, 0.8, 0.7, 0.6, 0.4, 0.1];
        let r = frc_resolution_a(&f, 0.5, 100, 1.0);
        assert!((r - 100.0 / 4.5).abs() < 1e-9, "{r}");
        assert_eq!(frc_resolution_a(&[1.0, 0.1, 0.9], 0.5, 100, 1.0), 100.0);
        assert_eq!(
            frc_resolution_a(&[1.0, 0.9, 0.9, 0.9], 0.5, 100, 1.0),
            100.0 / 3.0
        );
    }

    #[test]
    fn fsc_of_signal_plus_independent_noise() {
        use crate::numerics::fft::rfft3;
        let n = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut vol = || ndarray::Array3::from_shape_fn((n, n, n), |_| rng.gen_range(-1.0f32..1.0));
        let (sig, e1, e2) = (vol(), vol(), vol());
        let fs = rfft3(sig.view());
        // Identical (and scaled) volumes: 1 in every shell with power.
        let same = fsc_spectra(fs.view(), fs.mapv(|v| v * 3.0).view(), n);
        assert!(
            same[1..].iter().all(|&f| (f - 1.0).abs() < 1e-9),
            "{same:?}"
        );
        // Independent volumes: near 0; signal + equal-power noise: near 1/2.
        let f0 = fsc_spectra(rfft3(e1.view()).view(), rfft3(e2.view()).view(), n);
        let mean0 = f0[2..].iter().sum::<f64>() / (f0.len() - 2) as f64;
        assert!(mean0.abs() < 0.05, "{f0:?}");
        let h1 = rfft3((&sig + &e1).view());
        let h2 = rfft3((&sig + &e2).view());
        let f = fsc_spectra(h1.view(), h2.view(), n);
        let mean = f[2..].iter().sum::<f64>() / (f.len() - 2) as f64;
        assert!((mean - 0.5).abs() < 0.06, "{f:?}");
    }
}
