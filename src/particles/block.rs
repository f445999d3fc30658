//! A rank's particles, pre-processed once: normalised, Fourier transformed and cropped to the
//! working grid, with their CTF parameters.
//!
//! Normalisation (RELION's): each image has the mean of its background (pixels outside a
//! centred circle of diameter 0.8·box) subtracted and is divided by that background's standard
//! deviation, so the noise level is comparable between micrographs; the per-shell noise model
//! takes care of the rest.

use std::ops::Range;

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

/// Pre-processed particles: a rank's share when held, or one block when streamed.
pub struct Particles {
    /// Working-grid spectra, `len × grid.len()`.
    pub spectra: Vec<Complex32>,
    /// CTF of each particle (None: `ctf_correct` off, CTF = 1).
    pub ctf: Option<Vec<Ctf>>,
    /// Half set of each particle (global row parity), for the FRC of class averages.
    pub half: Vec<u8>,
    per: usize,
}

impl Particles {
    /// Number of particles.
    pub fn len(&self) -> usize {
        self.half.len()
    }
    pub fn is_empty(&self) -> bool {
        self.half.is_empty()
    }
    /// Spectrum of local particle `i`.
    pub fn spectrum(&self, i: usize) -> &[Complex32] {
        &self.spectra[i * self.per..(i + 1) * self.per]
    }
    /// A block of already pre-processed particles (`spectra` is `half.len() × grid.len()`).
    pub fn from_spectra(
        spectra: Vec<Complex32>,
        ctf: Option<Vec<Ctf>>,
        half: Vec<u8>,
        grid: &WorkGrid,
    ) -> Particles {
        debug_assert_eq!(spectra.len(), half.len() * grid.len());
        Particles {
            spectra,
            ctf,
            half,
            per: grid.len(),
        }
    }
    /// Pre-processed particles from in-memory images (tests, benchmarks); `normalize` off
    /// keeps the grey levels (noise-free test images have no background to normalise by).
    pub fn from_images(
        images: &[ndarray::Array2<f32>],
        ctf: Option<Vec<Ctf>>,
        first_row: usize,
        grid: &WorkGrid,
        normalize: bool,
    ) -> Particles {
        let mut spectra = Vec::with_capacity(images.len() * grid.len());
        for img in images {
            if normalize {
                spectra.extend(preprocess(img.view(), grid));
            } else {
                spectra.extend(crop(img.view(), grid));
            }
        }
        Particles {
            spectra,
            ctf,
            half: (0..images.len())
                .map(|i| ((first_row + i) % 2) as u8)
                .collect(),
            per: grid.len(),
        }
    }
}

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

/// Loads and pre-processes the particles of `ds` (a rank's row range `rows` of the file,
/// already opened with `Dataset::open_range`).
pub fn load(
    ds: &Dataset,
    rows: Range<usize>,
    grid: &WorkGrid,
    ctf_correct: bool,
) -> Result<Particles> {
    let ctf = if ctf_correct {
        Some(read_ctfs(ds)?)
    } else {
        None
    };
    let n = ds.len();
    let mut spectra = Vec::with_capacity(n * grid.len());
    let chunk = 512;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        spectra.extend(preprocess_stack(&ds.read_images(start..end)?, grid));
        start = end;
    }
    Ok(Particles {
        spectra,
        ctf,
        half: rows.map(|g| (g % 2) as u8).collect(),
        per: grid.len(),
    })
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
fn crop(img: ArrayView2<f32>, grid: &WorkGrid) -> Vec<Complex32> {
    let spec = rfft2(img);
    let small = fourier_crop(spec.view(), grid.box_in, grid.k_max);
    small.into_raw_vec_and_offset().0
}
