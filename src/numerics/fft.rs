//! Real 2D and 3D FFTs over `rustfft`/`realfft`, with plans cached per size and batched
//! transforms of image stacks on rayon.
//!
//! Conventions (used by every caller in the crate):
//! - **Forward** is unnormalised: `F[k] = Σ_x f[x] · exp(−2πi k·x / N)` (per axis).
//! - **Inverse** carries the full `1/N` (`1/(ny·nx)` in 2D, `1/(nz·ny·nx)` in 3D), so
//!   `irfft2(rfft2(f)) == f` up to rounding, and Parseval reads
//!   `Σ_x |f[x]|² = (1/N) Σ_k |F[k]|²` over the full plane.
//! - **Half-plane layout** (FFTW's and RELION's): a real `(ny, nx)` image has a complex
//!   `(ny, nx/2 + 1)` spectrum; column `j` is frequency `kx = j` (0..=nx/2), row `i` is
//!   `ky = fftfreq(i, ny)` (0, 1, …, then negative). The origin (DC) is at `[0, 0]`, not
//!   centred; [`fftshift2`] / [`ifftshift2`] move between this and a centred full plane.
//!   In 3D the spectrum is `(nz, ny, nx/2 + 1)` with the same rule on z and y.
//! - A half-plane spectrum stands for the spectrum of a *real* image: in the inverse, the
//!   imaginary parts that Hermitian symmetry forces to zero (columns 0 and, for even nx,
//!   nx/2 after the column transforms) are dropped.
//! - Physical frequency of index `i` along an axis of `n` pixels of size `p` Å is
//!   `fftfreq(i, n) / (n·p)` Å⁻¹.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};
pub use num_complex::Complex32;
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

/// Signed frequency index of array index `i` on an axis of `n` samples, numpy's `fftfreq`
/// times `n`: `0, 1, …, ⌈n/2⌉−1, −⌊n/2⌋, …, −1`.
pub fn fftfreq(i: usize, n: usize) -> i64 {
    if i < n.div_ceil(2) {
        i as i64
    } else {
        i as i64 - n as i64
    }
}

/// Number of complex columns of the half-plane spectrum of a real signal of length `nx`.
pub fn half_len(nx: usize) -> usize {
    nx / 2 + 1
}

/// How many times half-plane column `j` counts in a full-plane sum (Parseval, power):
/// 1 for `kx = 0` and, when `nx` is even, `kx = nx/2`; 2 for every other column (it stands
/// for itself and its Hermitian mirror).
pub fn half_plane_weight(j: usize, nx: usize) -> f32 {
    if j == 0 || (nx.is_multiple_of(2) && j == nx / 2) {
        1.0
    } else {
        2.0
    }
}

/// Plans for the real 2D transforms of one image size. Obtain with [`Fft2::get`] (cached:
/// every size is planned once per process). Thread-safe; each call allocates its own small
/// scratch.
pub struct Fft2 {
    ny: usize,
    nx: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

type PlanCache<T> = OnceLock<Mutex<HashMap<Vec<usize>, Arc<T>>>>;
static PLANS2: PlanCache<Fft2> = OnceLock::new();
static PLANS3: PlanCache<Fft3> = OnceLock::new();

fn cached<T>(cache: &'static PlanCache<T>, key: Vec<usize>, make: impl FnOnce() -> T) -> Arc<T> {
    let map = cache.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned lock only means another thread panicked while inserting; the map itself
    // is still consistent (insertions are atomic), so keep using it.
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key).or_insert_with(|| Arc::new(make())).clone()
}

impl Fft2 {
    /// The (cached) plans for `(ny, nx)` images. Panics only if a side is 0.
    pub fn get(ny: usize, nx: usize) -> Arc<Fft2> {
        assert!(ny > 0 && nx > 0, "FFT of an empty image");
        cached(&PLANS2, vec![ny, nx], || {
            let mut rp = RealFftPlanner::<f32>::new();
            let mut cp = FftPlanner::<f32>::new();
            Fft2 {
                ny,
                nx,
                r2c: rp.plan_fft_forward(nx),
                c2r: rp.plan_fft_inverse(nx),
                col_fwd: cp.plan_fft_forward(ny),
                col_inv: cp.plan_fft_inverse(ny),
            }
        })
    }

    /// Image shape `(ny, nx)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.ny, self.nx)
    }

    /// Spectrum shape `(ny, nx/2 + 1)`.
    pub fn spectrum_shape(&self) -> (usize, usize) {
        (self.ny, half_len(self.nx))
    }

    /// Forward transform of a row-major `ny·nx` image into a row-major `ny·(nx/2+1)`
    /// half-plane spectrum. The slice form used by the hot loops.
    pub fn forward_slice(&self, image: &[f32], spectrum: &mut [Complex32]) {
        let (ny, nx, nh) = (self.ny, self.nx, half_len(self.nx));
        assert_eq!(image.len(), ny * nx, "forward: image size");
        assert_eq!(spectrum.len(), ny * nh, "forward: spectrum size");
        let mut row = self.r2c.make_input_vec();
        let mut rscratch = self.r2c.make_scratch_vec();
        // Rows: real → half complex, written transposed (column-major) so that the column
        // transforms below run on contiguous memory.
        let mut t = vec![Complex32::new(0.0, 0.0); nh * ny];
        let mut out = self.r2c.make_output_vec();
        for y in 0..ny {
            row.copy_from_slice(&image[y * nx..(y + 1) * nx]);
            self.r2c
                .process_with_scratch(&mut row, &mut out, &mut rscratch)
                .expect("buffer sizes come from the plan");
            for (j, v) in out.iter().enumerate() {
                t[j * ny + y] = *v;
            }
        }
        let mut cscratch = vec![Complex32::new(0.0, 0.0); self.col_fwd.get_inplace_scratch_len()];
        self.col_fwd.process_with_scratch(&mut t, &mut cscratch);
        transpose_into(&t, nh, ny, spectrum);
    }

    /// Inverse transform (with the 1/(ny·nx) factor) of a row-major half-plane spectrum into
    /// a row-major image. `spectrum` is left untouched.
    pub fn inverse_slice(&self, spectrum: &[Complex32], image: &mut [f32]) {
        let (ny, nx, nh) = (self.ny, self.nx, half_len(self.nx));
        assert_eq!(image.len(), ny * nx, "inverse: image size");
        assert_eq!(spectrum.len(), ny * nh, "inverse: spectrum size");
        let mut t = vec![Complex32::new(0.0, 0.0); nh * ny];
        transpose_into(spectrum, ny, nh, &mut t);
        let mut cscratch = vec![Complex32::new(0.0, 0.0); self.col_inv.get_inplace_scratch_len()];
        self.col_inv.process_with_scratch(&mut t, &mut cscratch);
        let mut row = self.c2r.make_input_vec();
        let mut out = self.c2r.make_output_vec();
        let mut rscratch = self.c2r.make_scratch_vec();
        let norm = 1.0 / (ny * nx) as f32;
        for y in 0..ny {
            for (j, v) in row.iter_mut().enumerate() {
                *v = t[j * ny + y];
            }
            // Hermitian symmetry makes these real for a real image; drop rounding residue.
            row[0].im = 0.0;
            if nx.is_multiple_of(2) {
                row[nh - 1].im = 0.0;
            }
            self.c2r
                .process_with_scratch(&mut row, &mut out, &mut rscratch)
                .expect("buffer sizes come from the plan and edge imaginary parts are zero");
            for (d, s) in image[y * nx..(y + 1) * nx].iter_mut().zip(&out) {
                *d = s * norm;
            }
        }
    }

    /// Forward transform of one image (any memory layout).
    pub fn forward(&self, image: ArrayView2<f32>) -> Array2<Complex32> {
        assert_eq!(image.dim(), (self.ny, self.nx), "forward: image shape");
        let img: Vec<f32> = image.iter().copied().collect();
        let mut spec = Array2::zeros(self.spectrum_shape());
        self.forward_slice(
            &img,
            spec.as_slice_mut().expect("fresh array is contiguous"),
        );
        spec
    }

    /// Inverse transform of one half-plane spectrum (any memory layout).
    pub fn inverse(&self, spectrum: ArrayView2<Complex32>) -> Array2<f32> {
        assert_eq!(
            spectrum.dim(),
            self.spectrum_shape(),
            "inverse: spectrum shape"
        );
        let spec: Vec<Complex32> = spectrum.iter().copied().collect();
        let mut img = Array2::zeros((self.ny, self.nx));
        self.inverse_slice(
            &spec,
            img.as_slice_mut().expect("fresh array is contiguous"),
        );
        img
    }
}

/// `dst (cols × rows) = srcᵀ` for a row-major `src (rows × cols)`.
fn transpose_into<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Forward real 2D FFT of one image: `(ny, nx)` → `(ny, nx/2+1)`.
pub fn rfft2(image: ArrayView2<f32>) -> Array2<Complex32> {
    let (ny, nx) = image.dim();
    Fft2::get(ny, nx).forward(image)
}

/// Inverse real 2D FFT: `(ny, nx/2+1)` → `(ny, nx)`; `nx` resolves the odd/even ambiguity.
pub fn irfft2(spectrum: ArrayView2<Complex32>, nx: usize) -> Array2<f32> {
    let (ny, nh) = spectrum.dim();
    assert_eq!(nh, half_len(nx), "irfft2: spectrum width does not match nx");
    Fft2::get(ny, nx).inverse(spectrum)
}

/// Forward 2D FFTs of a stack `(n, ny, nx)` → `(n, ny, nx/2+1)`, images in parallel.
pub fn rfft2_batch(images: ArrayView3<f32>) -> Array3<Complex32> {
    let (n, ny, nx) = images.dim();
    let plan = Fft2::get(ny.max(1), nx.max(1));
    let nh = half_len(nx);
    let mut out = Array3::<Complex32>::zeros((n, ny, nh));
    if n == 0 {
        return out;
    }
    let dst = out.as_slice_mut().expect("fresh array is contiguous");
    dst.par_chunks_mut(ny * nh)
        .enumerate()
        .for_each(|(i, spec)| {
            let img: Vec<f32> = images.index_axis(Axis(0), i).iter().copied().collect();
            plan.forward_slice(&img, spec);
        });
    out
}

/// Inverse 2D FFTs of a stack of half-plane spectra `(n, ny, nx/2+1)` → `(n, ny, nx)`.
pub fn irfft2_batch(spectra: ArrayView3<Complex32>, nx: usize) -> Array3<f32> {
    let (n, ny, nh) = spectra.dim();
    assert_eq!(
        nh,
        half_len(nx),
        "irfft2_batch: spectrum width does not match nx"
    );
    let plan = Fft2::get(ny.max(1), nx.max(1));
    let mut out = Array3::<f32>::zeros((n, ny, nx));
    if n == 0 {
        return out;
    }
    let dst = out.as_slice_mut().expect("fresh array is contiguous");
    dst.par_chunks_mut(ny * nx)
        .enumerate()
        .for_each(|(i, img)| {
            let spec: Vec<Complex32> = spectra.index_axis(Axis(0), i).iter().copied().collect();
            plan.inverse_slice(&spec, img);
        });
    out
}

/// Plans for the real 3D transforms of one volume size (cached like [`Fft2`]).
pub struct Fft3 {
    shape: (usize, usize, usize),
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    y_fwd: Arc<dyn Fft<f32>>,
    y_inv: Arc<dyn Fft<f32>>,
    z_fwd: Arc<dyn Fft<f32>>,
    z_inv: Arc<dyn Fft<f32>>,
}

impl Fft3 {
    /// The (cached) plans for `(nz, ny, nx)` volumes. Panics only if a side is 0.
    pub fn get(nz: usize, ny: usize, nx: usize) -> Arc<Fft3> {
        assert!(nz > 0 && ny > 0 && nx > 0, "FFT of an empty volume");
        cached(&PLANS3, vec![nz, ny, nx], || {
            let mut rp = RealFftPlanner::<f32>::new();
            let mut cp = FftPlanner::<f32>::new();
            Fft3 {
                shape: (nz, ny, nx),
                r2c: rp.plan_fft_forward(nx),
                c2r: rp.plan_fft_inverse(nx),
                y_fwd: cp.plan_fft_forward(ny),
                y_inv: cp.plan_fft_inverse(ny),
                z_fwd: cp.plan_fft_forward(nz),
                z_inv: cp.plan_fft_inverse(nz),
            }
        })
    }

    /// Forward transform `(nz, ny, nx)` → `(nz, ny, nx/2+1)`.
    pub fn forward(&self, vol: ArrayView3<f32>) -> Array3<Complex32> {
        let (nz, ny, nx) = self.shape;
        assert_eq!(vol.dim(), self.shape, "forward: volume shape");
        let nh = half_len(nx);
        let mut spec = Array3::<Complex32>::zeros((nz, ny, nh));
        // x: real → half complex, one z-slice per task.
        let v = vol.as_standard_layout();
        let src = v.as_slice().expect("standard layout is contiguous");
        let dst = spec.as_slice_mut().expect("fresh array is contiguous");
        dst.par_chunks_mut(ny * nh)
            .zip(src.par_chunks(ny * nx))
            .for_each(|(s, v)| {
                let mut row = self.r2c.make_input_vec();
                let mut out = self.r2c.make_output_vec();
                let mut scratch = self.r2c.make_scratch_vec();
                for y in 0..ny {
                    row.copy_from_slice(&v[y * nx..(y + 1) * nx]);
                    self.r2c
                        .process_with_scratch(&mut row, &mut out, &mut scratch)
                        .expect("buffer sizes come from the plan");
                    s[y * nh..(y + 1) * nh].copy_from_slice(&out);
                }
            });
        fft_axis(&mut spec, 1, &*self.y_fwd);
        fft_axis(&mut spec, 0, &*self.z_fwd);
        spec
    }

    /// Inverse transform (with the 1/(nz·ny·nx) factor) `(nz, ny, nx/2+1)` → `(nz, ny, nx)`.
    pub fn inverse(&self, spectrum: ArrayView3<Complex32>) -> Array3<f32> {
        let (nz, ny, nx) = self.shape;
        let nh = half_len(nx);
        assert_eq!(spectrum.dim(), (nz, ny, nh), "inverse: spectrum shape");
        let mut spec = spectrum.as_standard_layout().into_owned();
        fft_axis(&mut spec, 0, &*self.z_inv);
        fft_axis(&mut spec, 1, &*self.y_inv);
        let norm = 1.0 / (nz * ny * nx) as f32;
        let mut vol = Array3::<f32>::zeros((nz, ny, nx));
        let src = spec.as_slice().expect("owned copy is contiguous");
        let dst = vol.as_slice_mut().expect("fresh array is contiguous");
        dst.par_chunks_mut(ny * nx)
            .zip(src.par_chunks(ny * nh))
            .for_each(|(v, s)| {
                let mut row = self.c2r.make_input_vec();
                let mut out = self.c2r.make_output_vec();
                let mut scratch = self.c2r.make_scratch_vec();
                for y in 0..ny {
                    row.copy_from_slice(&s[y * nh..(y + 1) * nh]);
                    row[0].im = 0.0;
                    if nx.is_multiple_of(2) {
                        row[nh - 1].im = 0.0;
                    }
                    self.c2r
                        .process_with_scratch(&mut row, &mut out, &mut scratch)
                        .expect(
                            "buffer sizes come from the plan and edge imaginary parts are zero",
                        );
                    for (d, s) in v[y * nx..(y + 1) * nx].iter_mut().zip(&out) {
                        *d = s * norm;
                    }
                }
            });
        vol
    }
}

/// In-place complex FFT of every lane of `a` along `axis` (0 or 1 of a 3D array).
fn fft_axis(a: &mut Array3<Complex32>, axis: usize, fft: &dyn Fft<f32>) {
    let (n0, n1, n2) = a.dim();
    let len = a.len_of(Axis(axis));
    // Lanes along `axis` are strided; gather each slab of lanes into contiguous memory.
    // For axis 1 a slab is one z-slice (n1 × n2, transformed along n1); for axis 0 it is one
    // y-row of all slices (n0 × n2, transformed along n0).
    let outer = if axis == 1 { n0 } else { n1 };
    let slabs: Vec<Vec<Complex32>> = (0..outer)
        .into_par_iter()
        .map(|o| {
            let mut buf = vec![Complex32::new(0.0, 0.0); n2 * len];
            for x in 0..n2 {
                for l in 0..len {
                    buf[x * len + l] = if axis == 1 {
                        a[[o, l, x]]
                    } else {
                        a[[l, o, x]]
                    };
                }
            }
            let mut scratch = vec![Complex32::new(0.0, 0.0); fft.get_inplace_scratch_len()];
            fft.process_with_scratch(&mut buf, &mut scratch);
            buf
        })
        .collect();
    for (o, buf) in slabs.iter().enumerate() {
        for x in 0..n2 {
            for l in 0..len {
                let v = buf[x * len + l];
                if axis == 1 {
                    a[[o, l, x]] = v;
                } else {
                    a[[l, o, x]] = v;
                }
            }
        }
    }
}

/// Forward real 3D FFT: `(nz, ny, nx)` → `(nz, ny, nx/2+1)`.
pub fn rfft3(vol: ArrayView3<f32>) -> Array3<Complex32> {
    let (nz, ny, nx) = vol.dim();
    Fft3::get(nz, ny, nx).forward(vol)
}

/// Inverse real 3D FFT: `(nz, ny, nx/2+1)` → `(nz, ny, nx)`.
pub fn irfft3(spectrum: ArrayView3<Complex32>, nx: usize) -> Array3<f32> {
    let (nz, ny, nh) = spectrum.dim();
    assert_eq!(nh, half_len(nx), "irfft3: spectrum width does not match nx");
    Fft3::get(nz, ny, nx).inverse(spectrum)
}

/// Moves the origin of a full 2D array from `[0, 0]` to `[ny/2, nx/2]` (numpy's `fftshift`).
pub fn fftshift2<T: Clone>(a: ArrayView2<T>) -> Array2<T> {
    let (ny, nx) = a.dim();
    Array2::from_shape_fn((ny, nx), |(i, j)| {
        a[[(i + ny - ny / 2) % ny, (j + nx - nx / 2) % nx]].clone()
    })
}

/// Inverse of [`fftshift2`] (numpy's `ifftshift`): origin from `[ny/2, nx/2]` to `[0, 0]`.
pub fn ifftshift2<T: Clone>(a: ArrayView2<T>) -> Array2<T> {
    let (ny, nx) = a.dim();
    Array2::from_shape_fn((ny, nx), |(i, j)| {
        a[[(i + ny / 2) % ny, (j + nx / 2) % nx]].clone()
    })
}

/// The full-plane, centred power spectrum `|F|²` (origin at `[ny/2, nx/2]`) of a half-plane
/// spectrum of a real `(ny, nx)` image, filling the missing half by Hermitian symmetry.
/// For display and diagnostics.
pub fn centered_power(spectrum: ArrayView2<Complex32>, nx: usize) -> Array2<f32> {
    let (ny, nh) = spectrum.dim();
    assert_eq!(
        nh,
        half_len(nx),
        "centered_power: spectrum width does not match nx"
    );
    let mut full = Array2::<f32>::zeros((ny, nx));
    for i in 0..ny {
        for j in 0..nx {
            full[[i, j]] = if j < nh {
                spectrum[[i, j]].norm_sqr()
            } else {
                // F(ky, kx) = conj F(−ky, −kx); −kx ≡ nx − j, −ky ≡ (ny − i) mod ny.
                spectrum[[(ny - i) % ny, nx - j]].norm_sqr()
            };
        }
    }
    fftshift2(full.view())
}

/// Multiplies a half-plane spectrum in place by a real filter of the same shape.
pub fn apply_filter(mut spectrum: ArrayViewMut2<Complex32>, filter: ArrayView2<f32>) {
    assert_eq!(spectrum.dim(), filter.dim(), "apply_filter: shapes differ");
    spectrum.zip_mut_with(&filter, |s, f| *s *= *f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_image(ny: usize, nx: usize, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((ny, nx), |_| rng.gen_range(-1.0f32..1.0))
    }

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn round_trip_2d_even_and_odd_sizes() {
        for &(ny, nx) in &[(64, 64), (48, 30), (35, 27), (1, 8), (8, 1)] {
            let img = random_image(ny, nx, 7);
            let spec = rfft2(img.view());
            assert_eq!(spec.dim(), (ny, nx / 2 + 1));
            let back = irfft2(spec.view(), nx);
            let err = max_abs_diff(&img, &back);
            assert!(err < 1e-5, "{ny}x{nx}: round trip error {err}");
        }
    }

    #[test]
    fn parseval_2d_with_half_plane_weights() {
        for &(ny, nx) in &[(32, 32), (33, 31), (16, 10)] {
            let img = random_image(ny, nx, 3);
            let spec = rfft2(img.view());
            let e_real: f64 = img.iter().map(|v| (*v as f64).powi(2)).sum();
            let mut e_spec = 0.0f64;
            for ((_, j), v) in spec.indexed_iter() {
                e_spec += half_plane_weight(j, nx) as f64 * v.norm_sqr() as f64;
            }
            e_spec /= (ny * nx) as f64;
            assert!(
                (e_real - e_spec).abs() / e_real < 1e-5,
                "{ny}x{nx}: {e_real} vs {e_spec}"
            );
        }
    }

    #[test]
    fn sinusoid_lands_on_its_frequency() {
        // f = cos(2π (3x/32 + 5y/32)): F is N/2 at (ky, kx) = (5, 3) and its mirror
        // (−5, −3), which in the half plane appears only as (5, 3).
        let (ny, nx) = (32usize, 32usize);
        let img = Array::from_shape_fn((ny, nx), |(y, x)| {
            (2.0 * std::f64::consts::PI * (3.0 * x as f64 / 32.0 + 5.0 * y as f64 / 32.0)).cos()
                as f32
        });
        let spec = rfft2(img.view());
        let half_n = (ny * nx) as f32 / 2.0;
        for ((i, j), v) in spec.indexed_iter() {
            let expect = if (i, j) == (5, 3) { half_n } else { 0.0 };
            assert!(
                (v.re - expect).abs() < 1e-2 && v.im.abs() < 1e-2,
                "({i},{j}) = {v}"
            );
        }
        // A sine in x only: F(0, 4) = −i N/2.
        let img = Array::from_shape_fn((ny, nx), |(_, x)| {
            (2.0 * std::f64::consts::PI * 4.0 * x as f64 / 32.0).sin() as f32
        });
        let spec = rfft2(img.view());
        assert!((spec[[0, 4]].im + half_n).abs() < 1e-2 && spec[[0, 4]].re.abs() < 1e-2);
    }

    #[test]
    fn batch_matches_single() {
        let imgs = Array3::from_shape_fn((5, 24, 20), |(n, y, x)| {
            ((n * 31 + y * 7 + x * 3) % 17) as f32 - 8.0
        });
        let specs = rfft2_batch(imgs.view());
        for n in 0..5 {
            let one = rfft2(imgs.index_axis(Axis(0), n));
            assert_eq!(specs.index_axis(Axis(0), n), one);
        }
        let back = irfft2_batch(specs.view(), 20);
        let err = back
            .iter()
            .zip(&imgs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-4, "batch round trip {err}");
    }

    #[test]
    fn round_trip_and_sinusoid_3d() {
        let (nz, ny, nx) = (12usize, 10usize, 14usize);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let vol = Array3::from_shape_fn((nz, ny, nx), |_| rng.gen_range(-1.0f32..1.0));
        let spec = rfft3(vol.view());
        let back = irfft3(spec.view(), nx);
        let err = back
            .iter()
            .zip(&vol)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "3D round trip {err}");
        // cos(2π (2z/12 + 3y/10 + 4x/14)) → N/2 at (2, 3, 4) only.
        let vol = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            let ph = 2.0
                * std::f64::consts::PI
                * (2.0 * z as f64 / 12.0 + 3.0 * y as f64 / 10.0 + 4.0 * x as f64 / 14.0);
            ph.cos() as f32
        });
        let spec = rfft3(vol.view());
        let half_n = (nz * ny * nx) as f32 / 2.0;
        for ((k, i, j), v) in spec.indexed_iter() {
            let expect = if (k, i, j) == (2, 3, 4) { half_n } else { 0.0 };
            assert!(
                (v.re - expect).abs() < 2e-2 && v.im.abs() < 2e-2,
                "({k},{i},{j}) = {v}"
            );
        }
    }

    #[test]
    fn shifts_and_frequencies() {
        assert_eq!(
            (0..6).map(|i| fftfreq(i, 6)).collect::<Vec<_>>(),
            vec![0, 1, 2, -3, -2, -1]
        );
        assert_eq!(
            (0..5).map(|i| fftfreq(i, 5)).collect::<Vec<_>>(),
            vec![0, 1, 2, -2, -1]
        );
        let a = Array2::from_shape_fn((5, 6), |(i, j)| (i * 10 + j) as i32);
        let s = fftshift2(a.view());
        assert_eq!(s[[2, 3]], 0, "origin moves to the centre");
        assert_eq!(ifftshift2(s.view()), a);
        // The centred power of a cosine has two symmetric peaks around the centre.
        let img = Array::from_shape_fn((16, 16), |(_, x)| {
            (2.0 * std::f64::consts::PI * 2.0 * x as f64 / 16.0).cos() as f32
        });
        let p = centered_power(rfft2(img.view()).view(), 16);
        assert!(p[[8, 10]] > 1000.0 && (p[[8, 6]] - p[[8, 10]]).abs() < 1e-2);
        assert!(p[[8, 8]] < 1e-6);
    }
}
