//! Pre-processing of particle images, the same for every job: normalisation, Fourier
//! transform and crop to the working grid, re-centring by a known shift, and the CTF
//! parameters of each row.
//!
//! Normalisation (RELION's): each image has the mean of its background (pixels outside a
//! centred circle of diameter 0.8·box) subtracted and is divided by that background's standard
//! deviation, so the noise level is comparable between micrographs; the per-shell noise model
//! takes care of the rest.
//!
//! Re-centring: a particle whose centre sits at `box/2 − s` (RELION origin `s`, input
//! pixels) has spectrum `X(k) = P(k)·exp(+2πi k·s/box)` where `P` is the projection centred
//! at `box/2`; [`recenter`] turns it into `X(k)·exp(−2πi k·s/box)`.

use ndarray::ArrayView2;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::numerics::ctf::{Ctf, CtfParams};
use crate::numerics::fft::{rfft2, Complex32};
use crate::numerics::image2d::fourier_crop;

use super::grid::WorkGrid;

/// CTF fields read when `ctf_correct` is on.
pub const CTF_FIELDS: [&str; 6] = [
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
];

/// Reads the CTF parameters of every row of `ds` (all of [`CTF_FIELDS`] must exist).
pub fn read_ctfs(ds: &Dataset) -> Result<Vec<Ctf>> {
    let t = ds.table();
    let col = |name: &str| -> Result<Vec<f64>> {
        t.get(name)
            .and_then(|c| c.data.to_f64())
            .ok_or_else(|| {
                Error::field(
                    ds.path(),
                    name,
                    "missing: CTF correction needs it (set ctf_correct: false for data that needs none)",
                )
            })
    };
    let opt = |name: &str, default: f64| -> Vec<f64> {
        t.get(name)
            .and_then(|c| c.data.to_f64())
            .unwrap_or_else(|| vec![default; t.len()])
    };
    let [kv, cs, amp, df1, df2, ang] = CTF_FIELDS.map(col);
    let (kv, cs, amp, df1, df2, ang) = (kv?, cs?, amp?, df1?, df2?, ang?);
    let phase = opt("ctf/phase_shift_rad", 0.0);
    let bfac = opt("ctf/bfactor", 0.0);
    let scale = opt("ctf/scale", 1.0);
    (0..t.len())
        .map(|i| {
            let p = CtfParams {
                accel_kv: kv[i],
                cs_mm: cs[i],
                amp_contrast: amp[i],
                df1_a: df1[i],
                df2_a: df2[i],
                df_angle_rad: ang[i],
                phase_shift_rad: phase[i],
                bfactor_a2: bfac[i],
                scale: scale[i],
            };
            let finite = [
                p.accel_kv,
                p.cs_mm,
                p.amp_contrast,
                p.df1_a,
                p.df2_a,
                p.df_angle_rad,
            ];
            if finite.iter().any(|v| !v.is_finite()) || p.accel_kv <= 0.0 {
                return Err(Error::field(
                    ds.path(),
                    "ctf/*",
                    format!(
                        "particle {} (uid {}) has an invalid CTF: {p:?}",
                        i,
                        t.uid()[i]
                    ),
                ));
            }
            Ok(Ctf::new(&p))
        })
        .collect()
}

/// Pre-processes a stack of images `(n, box, box)` in parallel, spectra concatenated.
pub fn preprocess_stack(imgs: &ndarray::Array3<f32>, grid: &WorkGrid) -> Vec<Complex32> {
    use rayon::prelude::*;
    let out: Vec<Vec<Complex32>> = (0..imgs.dim().0)
        .into_par_iter()
        .map(|i| preprocess(imgs.index_axis(ndarray::Axis(0), i), grid))
        .collect();
    out.concat()
}

/// Normalises one image (background mean 0, standard deviation 1), transforms it and crops
/// it to the working grid (values as `fourier_crop` scales them).
pub fn preprocess(img: ArrayView2<f32>, grid: &WorkGrid) -> Vec<Complex32> {
    let ny = img.dim().0;
    let c = (ny / 2) as f64;
    let r2 = (0.4 * ny as f64).powi(2);
    let (mut s, mut s2, mut m) = (0.0f64, 0.0f64, 0.0f64);
    for ((i, j), &v) in img.indexed_iter() {
        if (i as f64 - c).powi(2) + (j as f64 - c).powi(2) > r2 {
            s += v as f64;
            s2 += (v as f64).powi(2);
            m += 1.0;
        }
    }
    let mean = s / m;
    let sd = (s2 / m - mean * mean).max(1e-20).sqrt();
    let norm = img.mapv(|v| ((v as f64 - mean) / sd) as f32);
    crop(norm.view(), grid)
}

/// Transform and crop to the working grid.
pub(crate) fn crop(img: ArrayView2<f32>, grid: &WorkGrid) -> Vec<Complex32> {
    let spec = rfft2(img);
    let small = fourier_crop(spec.view(), grid.box_in, grid.k_max);
    small.into_raw_vec_and_offset().0
}

/// Multiplies a working-grid spectrum by `exp(−2πi k·s/box)`: the particle shifted by `−s`
/// input pixels (`s = [x, y]`, see the module comment).
pub fn recenter(spectrum: &mut [Complex32], shift_px: [f64; 2], grid: &WorkGrid) {
    let nb = grid.box_in as f64;
    for (c, v) in spectrum.iter_mut().enumerate() {
        let ph = -std::f64::consts::TAU
            * (grid.kx[c] as f64 * shift_px[0] + grid.ky[c] as f64 * shift_px[1])
            / nb;
        *v *= Complex32::new(ph.cos() as f32, ph.sin() as f32);
    }
}
