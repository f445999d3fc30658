//! Affinity between 2D class averages: how alike two averages look, in `[0, 1]`, after the
//! best in-plane rotation and shift of one onto the other. Rebalance 2D Classes clusters the
//! classes on this number ([`crate::curate::cluster`]).
//!
//! Method, for K square `(n, n)` class averages:
//! 1. **Working box.** An average larger than `working_box_px` is Fourier-cropped
//!    ([`fourier_crop`]) to `w = 2·⌊working_box_px/2⌋` pixels (else `w = n`), so the shift
//!    limit becomes `s = max_shift_px · w / n` working pixels, capped at `w/4`.
//! 2. **Mask and normalise.** A soft circular mask centred at `(w/2, w/2)` with outer radius
//!    `w/2 − 1 − s` px and a raised-cosine edge of `max(2, w/16)` px is applied (so that no
//!    content wraps around the box for shifts up to `s`); the masked mean
//!    `μ = Σ m·x / Σ m` is subtracted inside the mask, `x' = m·(x − μ)`, and `x'` is scaled
//!    to unit Euclidean norm. An average whose `‖x'‖` is below [`FLAT_RELATIVE_NORM`] times
//!    `‖m·x‖` (an empty class, a constant image) is *flat*.
//! 3. **Search.** For each pair `i < j` and each of `R = round(360 / angle_step_deg)`
//!    rotations `θ_r = r · 360°/R` of image `i` (bilinear, [`rotate_image`], renormalised to
//!    unit norm), the circular cross-correlation `c(t) = Σ_x a_r(x) · b_j(x + t)` is computed
//!    as the inverse FFT of `conj(A_r) · B_j` (the inverse carries `1/N`, so `c` is the plain
//!    sum), and its maximum over shifts `|t| ≤ s` (a disc) is taken.
//! 4. **Affinity** `a_ij = a_ji = clamp(max_r max_t c, 0, 1)` (the normalised
//!    cross-correlation; ≤ 1 by Cauchy–Schwarz, negative best correlations count as 0).
//!    The diagonal is exactly 1; a flat average has affinity 0 with every other average.
//!
//! Cost: `K(K−1)/2 · R` inverse real FFTs of `w²` pixels plus as many spectrum products,
//! about `K²/2 · R · (2.5 · w² · log₂(w²) + 3 · w²)` flops (K = 100, R = 72, w = 64: about
//! 48 GFLOP); the `K · R` forward FFTs of the rotated images are negligible. Memory beyond the
//! K spectra: the `R` rotated spectra of one image per busy thread (`R · w · (w/2+1)` complex
//! values, 1.2 MB for R = 72, w = 64).

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::numerics::fft::{half_len, Complex32, Fft2};
use crate::numerics::image2d::{fourier_crop, rotate_image};
use crate::numerics::mask::{apply_mask, soft_circular_mask};

/// An average is flat when its masked, mean-subtracted norm is below this fraction of its
/// masked norm (structure under 1e-4 of the grey level: nothing to align).
pub const FLAT_RELATIVE_NORM: f64 = 1e-4;

/// Smallest image side (input and working box) the affinity accepts, in pixels.
pub const MIN_BOX_PX: usize = 16;

/// Parameters of [`affinity_matrix`].
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityParams {
    /// In-plane rotation step in degrees; `R = round(360 / step)` rotations are tried.
    /// Must be in `(0, 360]`.
    pub angle_step_deg: f64,
    /// Largest shift tried between two averages, in pixels of the *input* box (a disc of this
    /// radius). Scaled to the working box; capped at a quarter of the box. Must be `≥ 0`.
    pub max_shift_px: f64,
    /// Averages larger than this are Fourier-cropped to it (pixels) before the search.
    /// Must be at least [`MIN_BOX_PX`].
    pub working_box_px: usize,
}

impl Default for AffinityParams {
    /// 5° rotation steps (72 rotations), shifts up to 10 input pixels, 64 px working box.
    /// Callers that know the box should prefer [`AffinityParams::for_box_px`].
    fn default() -> Self {
        AffinityParams {
            angle_step_deg: 5.0,
            max_shift_px: 10.0,
            working_box_px: 64,
        }
    }
}

impl AffinityParams {
    /// The defaults with the shift limit set to 10% of an `box_px` input box.
    pub fn for_box_px(box_px: usize) -> Self {
        AffinityParams {
            max_shift_px: 0.1 * box_px as f64,
            ..Self::default()
        }
    }

    /// Number of rotations `R = round(360 / angle_step_deg)` (at least 1).
    pub fn n_rotations(&self) -> usize {
        ((360.0 / self.angle_step_deg).round() as usize).max(1)
    }

    /// Checks the ranges documented on the fields.
    fn check(&self) -> Result<()> {
        let step = self.angle_step_deg;
        if !(step.is_finite() && step > 0.0 && step <= 360.0) {
            return Err(Error::Plan(format!(
                "class affinity: angle step {step}° must be in (0, 360]; e.g. 5"
            )));
        }
        if !(self.max_shift_px.is_finite() && self.max_shift_px >= 0.0) {
            return Err(Error::Plan(format!(
                "class affinity: maximum shift {} px must be a finite number ≥ 0",
                self.max_shift_px
            )));
        }
        if self.working_box_px < MIN_BOX_PX {
            return Err(Error::Plan(format!(
                "class affinity: working box {} px is too small; use at least {MIN_BOX_PX}",
                self.working_box_px
            )));
        }
        Ok(())
    }
}

/// The K×K affinity matrix of K square class averages `images (K, n, n)` (method in the
/// module comment): symmetric, in `[0, 1]`, diagonal exactly 1, invariant to in-plane
/// rotation (to within the angle step) and shift (up to `max_shift_px`) of any average.
///
/// Errors ([`Error::Input`]) when there are no images, they are not square or smaller than
/// [`MIN_BOX_PX`], or a pixel is not finite; ([`Error::Plan`]) when a parameter is out of
/// range.
pub fn affinity_matrix(images: ArrayView3<f32>, params: &AffinityParams) -> Result<Array2<f64>> {
    params.check()?;
    check_images(images)?;
    let (k, n, _) = images.dim();
    let geom = Geometry::new(n, params);
    let prepared: Vec<Option<Prepared>> = (0..k)
        .into_par_iter()
        .map(|c| prepare(images.index_axis(Axis(0), c), &geom))
        .collect();
    let angles_rad: Vec<f64> = (0..params.n_rotations())
        .map(|r| std::f64::consts::TAU * r as f64 / params.n_rotations() as f64)
        .collect();
    let rows: Vec<Vec<f64>> = (0..k)
        .into_par_iter()
        .map(|i| affinity_row(i, &prepared, &geom, &angles_rad))
        .collect();
    let mut out = Array2::<f64>::eye(k);
    for (i, row) in rows.iter().enumerate() {
        for (off, &a) in row.iter().enumerate() {
            let j = i + 1 + off;
            out[[i, j]] = a;
            out[[j, i]] = a;
        }
    }
    Ok(out)
}

/// Rejects empty, non-square, too small or non-finite stacks.
fn check_images(images: ArrayView3<f32>) -> Result<()> {
    let (k, ny, nx) = images.dim();
    if k == 0 {
        return Err(Error::Input(
            "class affinity: there are no class averages".to_string(),
        ));
    }
    if ny != nx || ny < MIN_BOX_PX {
        return Err(Error::Input(format!(
            "class affinity: class averages must be square and at least {MIN_BOX_PX} px, \
             but they are {ny}×{nx} px"
        )));
    }
    for (c, img) in images.axis_iter(Axis(0)).enumerate() {
        if let Some(((y, x), v)) = img.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Input(format!(
                "class affinity: class average {c} has a non-finite pixel ({v}) at row {y}, \
                 column {x}"
            )));
        }
    }
    Ok(())
}

/// The working box, shift disc and mask shared by all averages.
struct Geometry {
    /// Input side `n`, px.
    box_px: usize,
    /// Working side `w`, px.
    small_px: usize,
    /// Soft circular mask `(w, w)`.
    mask: Array2<f32>,
    /// Flat indices `y·w + x` of the correlation map for the shifts `|t| ≤ s` (wrapped).
    shift_disc: Vec<usize>,
}

impl Geometry {
    fn new(box_px: usize, params: &AffinityParams) -> Self {
        let small_px = if box_px > params.working_box_px {
            // fourier_crop keeps shells 0..=k_max in a 2·(k_max+1) box.
            2 * (params.working_box_px / 2)
        } else {
            box_px
        };
        let shift_px =
            (params.max_shift_px * small_px as f64 / box_px as f64).min(small_px as f64 / 4.0);
        let r_out_px = small_px as f64 / 2.0 - 1.0 - shift_px;
        let r_in_px = (r_out_px - (small_px as f64 / 16.0).max(2.0)).max(1.0);
        // Diameters are positive since w ≥ 16 gives r_out ≥ w/4 − 1 ≥ 3 px.
        let mask = soft_circular_mask(small_px, 1.0, 2.0 * r_in_px, 2.0 * r_out_px)
            .unwrap_or_else(|_| Array2::ones((small_px, small_px)));
        Geometry {
            box_px,
            small_px,
            mask,
            shift_disc: shift_disc(small_px, shift_px),
        }
    }
}

/// Flat indices of the shifts `(dy, dx)` with `dy² + dx² ≤ radius²` in a periodic `(w, w)`
/// correlation map (negative shifts wrap to the end).
fn shift_disc(w: usize, radius_px: f64) -> Vec<usize> {
    let r = radius_px.floor() as i64;
    let mut out = Vec::new();
    for dy in -r..=r {
        for dx in -r..=r {
            if ((dy * dy + dx * dx) as f64) <= radius_px * radius_px {
                let y = dy.rem_euclid(w as i64) as usize;
                let x = dx.rem_euclid(w as i64) as usize;
                out.push(y * w + x);
            }
        }
    }
    out
}

/// One average ready for the search: the unit-norm masked image and its spectrum.
struct Prepared {
    image: Array2<f32>,
    spectrum: Vec<Complex32>,
}

/// Crops, masks, centres and normalises one average; `None` when it is flat.
fn prepare(image: ArrayView2<f32>, geom: &Geometry) -> Option<Prepared> {
    let mut small = to_working_box(image, geom);
    apply_mask(small.view_mut(), geom.mask.view());
    let masked_norm = norm(small.view());
    let (sum_mx, sum_m) = small
        .iter()
        .zip(geom.mask.iter())
        .fold((0.0f64, 0.0f64), |(a, b), (&mx, &m)| {
            (a + mx as f64, b + m as f64)
        });
    let mean = if sum_m > 0.0 { sum_mx / sum_m } else { 0.0 };
    small.zip_mut_with(&geom.mask, |v, &m| {
        *v = (*v as f64 - m as f64 * mean) as f32;
    });
    let centred_norm = norm(small.view());
    if centred_norm <= FLAT_RELATIVE_NORM * masked_norm {
        return None;
    }
    small.mapv_inplace(|v| (v as f64 / centred_norm) as f32);
    let spectrum = spectrum_of(small.view());
    Some(Prepared {
        image: small,
        spectrum,
    })
}

/// The average at the working box (Fourier crop when the input is larger).
fn to_working_box(image: ArrayView2<f32>, geom: &Geometry) -> Array2<f32> {
    if geom.small_px == geom.box_px {
        return image.to_owned();
    }
    let n = geom.box_px;
    let spec = Fft2::get(n, n).forward(image);
    let cropped = fourier_crop(spec.view(), n, geom.small_px / 2 - 1);
    Fft2::get(geom.small_px, geom.small_px).inverse(cropped.view())
}

/// Euclidean norm (f64 accumulation).
fn norm(image: ArrayView2<f32>) -> f64 {
    image
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

/// Row-major half-plane spectrum of a square image.
fn spectrum_of(image: ArrayView2<f32>) -> Vec<Complex32> {
    let w = image.nrows();
    let plan = Fft2::get(w, w);
    let pixels: Vec<f32> = image.iter().copied().collect();
    let mut spec = vec![Complex32::new(0.0, 0.0); w * half_len(w)];
    plan.forward_slice(&pixels, &mut spec);
    spec
}

/// Conjugated spectra of the unit-norm rotations of image `p` by each angle.
fn rotated_conj_spectra(p: &Prepared, angles_rad: &[f64]) -> Vec<Vec<Complex32>> {
    angles_rad
        .iter()
        .map(|&a| {
            let mut rot = rotate_image(p.image.view(), a);
            let nrm = norm(rot.view());
            if nrm > 0.0 {
                rot.mapv_inplace(|v| (v as f64 / nrm) as f32);
            }
            let mut spec = spectrum_of(rot.view());
            spec.iter_mut().for_each(|c| *c = c.conj());
            spec
        })
        .collect()
}

/// Affinities `a_ij` of image `i` with every `j > i` (in order of `j`).
fn affinity_row(
    i: usize,
    prepared: &[Option<Prepared>],
    geom: &Geometry,
    angles_rad: &[f64],
) -> Vec<f64> {
    let later = &prepared[i + 1..];
    let Some(pi) = &prepared[i] else {
        return vec![0.0; later.len()];
    };
    let rotated = rotated_conj_spectra(pi, angles_rad);
    later
        .par_iter()
        .map(|pj| match pj {
            Some(pj) => best_correlation(&rotated, &pj.spectrum, geom).clamp(0.0, 1.0),
            None => 0.0,
        })
        .collect()
}

/// `max_r max_{t in disc} IFFT(conj(A_r) · B)(t)`: the best normalised cross-correlation.
fn best_correlation(
    rotated_conj: &[Vec<Complex32>],
    spectrum_b: &[Complex32],
    geom: &Geometry,
) -> f64 {
    let w = geom.small_px;
    let plan = Fft2::get(w, w);
    let mut product = vec![Complex32::new(0.0, 0.0); spectrum_b.len()];
    let mut ccf = vec![0.0f32; w * w];
    let mut best = f64::NEG_INFINITY;
    for a in rotated_conj {
        for ((p, x), y) in product.iter_mut().zip(a).zip(spectrum_b) {
            *p = x * y;
        }
        plan.inverse_slice(&product, &mut ccf);
        let peak = geom
            .shift_disc
            .iter()
            .map(|&t| ccf[t])
            .fold(f32::NEG_INFINITY, f32::max);
        best = best.max(peak as f64);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::image2d::shift_image;
    use ndarray::{stack, Array3};

    /// Sum of isotropic Gaussians `(row, col, sigma, amplitude)` on an `n` box.
    fn blobs(n: usize, spec: &[(f64, f64, f64, f64)]) -> Array2<f32> {
        Array2::from_shape_fn((n, n), |(y, x)| {
            spec.iter()
                .map(|&(cy, cx, s, a)| {
                    let r2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                    a * (-r2 / (2.0 * s * s)).exp()
                })
                .sum::<f64>() as f32
        })
    }

    /// An asymmetric "L" of three blobs around the centre of an `n` box.
    fn l_shape(n: usize) -> Array2<f32> {
        let c = n as f64 / 2.0;
        let u = n as f64 / 64.0;
        blobs(
            n,
            &[
                (c - 10.0 * u, c - 6.0 * u, 4.0 * u, 1.0),
                (c + 6.0 * u, c - 6.0 * u, 4.0 * u, 1.0),
                (c + 6.0 * u, c + 10.0 * u, 3.0 * u, 0.7),
            ],
        )
    }

    /// A thin ring of radius `n/5` at the centre.
    fn ring(n: usize) -> Array2<f32> {
        let c = n as f64 / 2.0;
        let r0 = n as f64 / 5.0;
        Array2::from_shape_fn((n, n), |(y, x)| {
            let r = ((y as f64 - c).powi(2) + (x as f64 - c).powi(2)).sqrt();
            (-(r - r0).powi(2) / 4.0).exp() as f32
        })
    }

    fn stack_of(images: &[Array2<f32>]) -> Array3<f32> {
        let views: Vec<_> = images.iter().map(|a| a.view()).collect();
        stack(Axis(0), &views).unwrap()
    }

    fn fast_params() -> AffinityParams {
        AffinityParams {
            angle_step_deg: 5.0,
            max_shift_px: 6.0,
            working_box_px: 32,
        }
    }

    #[test]
    fn rotated_and_shifted_copy_has_high_affinity() {
        let a = l_shape(64);
        let b = shift_image(rotate_image(a.view(), 37f64.to_radians()).view(), 3.0, -2.0);
        let m = affinity_matrix(stack_of(&[a, b]).view(), &fast_params()).unwrap();
        assert!(m[[0, 1]] > 0.9, "affinity {}", m[[0, 1]]);
    }

    #[test]
    fn different_images_have_much_lower_affinity() {
        let a = l_shape(64);
        let b = rotate_image(a.view(), 120f64.to_radians());
        let m = affinity_matrix(stack_of(&[a, b, ring(64)]).view(), &fast_params()).unwrap();
        assert!(m[[0, 1]] > 0.9, "same shape {}", m[[0, 1]]);
        assert!(m[[0, 2]] < 0.6, "L vs ring {}", m[[0, 2]]);
        assert!(m[[0, 1]] - m[[0, 2]] > 0.3);
    }

    #[test]
    fn matrix_is_symmetric_with_unit_diagonal_and_in_range() {
        let a = l_shape(48);
        let imgs = [
            a.clone(),
            ring(48),
            rotate_image(a.view(), 1.0),
            blobs(48, &[(20.0, 30.0, 3.0, 1.0)]),
            -a,
        ];
        let m = affinity_matrix(stack_of(&imgs).view(), &fast_params()).unwrap();
        for i in 0..5 {
            assert_eq!(m[[i, i]], 1.0);
            for j in 0..5 {
                assert_eq!(m[[i, j]], m[[j, i]]);
                assert!((0.0..=1.0).contains(&m[[i, j]]), "{i},{j}: {}", m[[i, j]]);
            }
        }
    }

    #[test]
    fn flat_images_have_zero_affinity() {
        let a = l_shape(32);
        let zero = Array2::<f32>::zeros((32, 32));
        let constant = Array2::<f32>::from_elem((32, 32), 3.5);
        let m = affinity_matrix(
            stack_of(&[a, zero.clone(), constant, zero]).view(),
            &fast_params(),
        )
        .unwrap();
        for i in 0..4 {
            assert_eq!(m[[i, i]], 1.0);
            for j in (0..4).filter(|&j| j != i) {
                assert_eq!(m[[i, j]], 0.0, "{i},{j}");
            }
        }
    }

    #[test]
    fn single_class_is_one() {
        let m = affinity_matrix(stack_of(&[ring(32)]).view(), &fast_params()).unwrap();
        assert_eq!(m, Array2::<f64>::ones((1, 1)));
    }

    #[test]
    fn cropping_keeps_rotation_and_shift_invariance() {
        // 96 px input cropped to a 32 px working box; the shift is in input pixels.
        let a = l_shape(96);
        let b = shift_image(
            rotate_image(a.view(), 200f64.to_radians()).view(),
            -5.0,
            4.0,
        );
        let params = AffinityParams {
            max_shift_px: 9.0,
            ..fast_params()
        };
        let m = affinity_matrix(stack_of(&[a, b, ring(96)]).view(), &params).unwrap();
        assert!(m[[0, 1]] > 0.9, "affinity {}", m[[0, 1]]);
        assert!(m[[0, 2]] < 0.6, "L vs ring {}", m[[0, 2]]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = fast_params();
        assert!(affinity_matrix(Array3::<f32>::zeros((0, 32, 32)).view(), &p).is_err());
        assert!(affinity_matrix(Array3::<f32>::zeros((2, 32, 30)).view(), &p).is_err());
        assert!(affinity_matrix(Array3::<f32>::zeros((2, 8, 8)).view(), &p).is_err());
        let mut nan = Array3::<f32>::zeros((2, 32, 32));
        nan[[1, 3, 4]] = f32::NAN;
        let e = affinity_matrix(nan.view(), &p).unwrap_err().to_string();
        assert!(e.contains("class average 1"), "{e}");
        let ok = Array3::<f32>::zeros((2, 32, 32));
        for bad in [
            AffinityParams {
                angle_step_deg: 0.0,
                ..p.clone()
            },
            AffinityParams {
                angle_step_deg: f64::NAN,
                ..p.clone()
            },
            AffinityParams {
                max_shift_px: -1.0,
                ..p.clone()
            },
            AffinityParams {
                working_box_px: 4,
                ..p.clone()
            },
        ] {
            assert!(affinity_matrix(ok.view(), &bad).is_err(), "{bad:?}");
        }
    }

    /// Timing of the brief's reference size: K = 100 averages of 128 px, default parameters
    /// (72 rotations, 64 px working box). Run with
    /// `cargo test --release --lib curate::affinity::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_k100_box128() {
        let n = 128;
        let imgs: Vec<Array2<f32>> = (0..100)
            .map(|c| {
                let a = if c % 2 == 0 { l_shape(n) } else { ring(n) };
                rotate_image(a.view(), c as f64 * 0.37)
            })
            .collect();
        let stack = stack_of(&imgs);
        let params = AffinityParams::for_box_px(n);
        let t = std::time::Instant::now();
        let m = affinity_matrix(stack.view(), &params).unwrap();
        eprintln!(
            "affinity_matrix K=100, box 128 px, R={}, working box {} px, {} threads: {:.2} s",
            params.n_rotations(),
            params.working_box_px,
            rayon::current_num_threads(),
            t.elapsed().as_secs_f64()
        );
        assert!(m[[0, 2]] > 0.9);
    }
}
