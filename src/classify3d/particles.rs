//! A rank's particles for 3D classification, pre-processed once: normalised (as in 2D),
//! transformed, Fourier-cropped to `filter_res_A` and re-centred by their known shifts, with
//! their known poses, CTFs and half-set labels.
//!
//! Re-centring: a particle whose centre sits at `box/2 − s` (RELION origin `s`, input
//! pixels, `alignments3D/shift`) has spectrum `X(k) = P(k)·exp(+2πi k·s/box)` where `P` is
//! the projection centred at `box/2`; it is stored as `X(k)·exp(−2πi k·s/box)`, so the E-step
//! compares it with the centred projections directly and the M-step back-projects it as is.

use std::ops::Range;

use ndarray::Axis;
use rayon::prelude::*;

use crate::classify2d::grid::WorkGrid;
use crate::classify2d::particles::{preprocess, read_ctfs};
use crate::dataset::Dataset;
use crate::em::batches::local_part;
use crate::error::{Error, Result};
use crate::numerics::ctf::Ctf;
use crate::numerics::fft::Complex32;
use crate::numerics::rotation::{pose_to_matrix, Mat3};

/// Pose and shift fields the job needs.
pub const POSE_FIELD: &str = "alignments3D/pose";
pub const SHIFT_FIELD: &str = "alignments3D/shift";
/// Per-particle scale (CryoSPARC's name).
pub const SCALE_FIELD: &str = "alignments3D/alpha";

/// The pre-processed particles of one rank.
pub struct Particles3d {
    /// Global row of the first particle.
    pub first_row: usize,
    /// Re-centred working-grid spectra, `len × grid.len()` (the `(n, n/2+1)` half plane).
    pub spectra: Vec<Complex32>,
    /// CTF of each particle (None: the input has no `ctf/*` fields, CTF = 1).
    pub ctf: Option<Vec<Ctf>>,
    /// Pose matrix of each particle.
    pub pose: Vec<Mat3>,
    /// Per-particle scale (set by the job: optimal, input or 1).
    pub scale: Vec<f64>,
    /// Half set (global row parity).
    pub half: Vec<u8>,
    per: usize,
}

impl Particles3d {
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
    /// Local indices of the global rows in `global` that this rank owns.
    pub fn local(&self, global: &[usize]) -> Vec<usize> {
        let mine = self.first_row..self.first_row + self.len();
        local_part(global, &mine)
            .into_iter()
            .map(|g| g - self.first_row)
            .collect()
    }
    /// The CTF of particle `i` on the working half plane (1 without CTF).
    pub fn ctf_into(&self, i: usize, grid: &WorkGrid, out: &mut [f32]) {
        match &self.ctf {
            Some(c) => c[i].half_plane_into(grid.n, grid.n, grid.psize_a(), out),
            None => out.iter_mut().for_each(|v| *v = 1.0),
        }
    }
    /// `C²` of particle `i` at a fractional frequency in index units of the input box.
    pub fn ctf2_at(&self, i: usize, grid: &WorkGrid, kx: f64, ky: f64) -> f64 {
        match &self.ctf {
            Some(c) => {
                let s = 1.0 / (grid.box_in as f64 * grid.psize_in_a);
                c[i].eval(kx * s, ky * s).powi(2)
            }
            None => 1.0,
        }
    }

    /// Particles from in-memory parts (tests).
    pub fn from_parts(
        first_row: usize,
        spectra: Vec<Complex32>,
        ctf: Option<Vec<Ctf>>,
        pose: Vec<Mat3>,
        grid: &WorkGrid,
    ) -> Particles3d {
        let n = pose.len();
        assert_eq!(spectra.len(), n * grid.len(), "spectra size");
        Particles3d {
            first_row,
            spectra,
            ctf,
            pose,
            scale: vec![1.0; n],
            half: (0..n).map(|i| ((first_row + i) % 2) as u8).collect(),
            per: grid.len(),
        }
    }
}

/// Reads a numeric per-particle field with `width` values per row, checking it is finite.
fn field(ds: &Dataset, name: &str, width: usize, why: &str) -> Result<Vec<f64>> {
    let t = ds.table();
    let col = t
        .get(name)
        .ok_or_else(|| Error::field(ds.path(), name, format!("missing: {why}")))?;
    if col.width != width {
        return Err(Error::field(
            ds.path(),
            name,
            format!("has {} values per particle, expected {width}", col.width),
        ));
    }
    let v = col
        .data
        .to_f64()
        .ok_or_else(|| Error::field(ds.path(), name, "is not numeric"))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::field(
            ds.path(),
            name,
            format!("particle {} has a non-finite value", i / width),
        ));
    }
    Ok(v)
}

/// The input's per-particle scales (`alignments3D/alpha`), for `per_particle_scale: input`.
pub fn input_scales(ds: &Dataset) -> Result<Vec<f64>> {
    let v = field(ds, SCALE_FIELD, 1, "per_particle_scale: input needs it")?;
    if let Some(i) = v.iter().position(|x| *x <= 0.0) {
        return Err(Error::field(
            ds.path(),
            SCALE_FIELD,
            format!("particle {i} has a non-positive scale {}", v[i]),
        ));
    }
    Ok(v)
}

/// Loads and pre-processes a rank's particles (`ds` opened on `rows`).
pub fn load(ds: &Dataset, rows: Range<usize>, grid: &WorkGrid) -> Result<Particles3d> {
    let why = "3D classification without alignment needs known poses (run a refinement first, or import them)";
    let pose = field(ds, POSE_FIELD, 3, why)?;
    let shift = match ds.table().get(SHIFT_FIELD) {
        Some(_) => field(ds, SHIFT_FIELD, 2, why)?,
        None => vec![0.0; 2 * ds.len()],
    };
    let ctf = if ds.table().get("ctf/df1_A").is_some() {
        Some(read_ctfs(ds)?)
    } else {
        log::info!(
            "{}: no ctf/* fields, classifying without CTF correction",
            ds.path().display()
        );
        None
    };
    let n = ds.len();
    let per = grid.len();
    let mut spectra = Vec::with_capacity(n * per);
    let chunk = 512;
    let mut start = 0;
    let nb = grid.box_in as f64;
    while start < n {
        let end = (start + chunk).min(n);
        let imgs = ds.read_images(start..end)?;
        let out: Vec<Vec<Complex32>> = (0..end - start)
            .into_par_iter()
            .map(|i| {
                let mut s = preprocess(imgs.index_axis(Axis(0), i), grid);
                let (sx, sy) = (shift[2 * (start + i)], shift[2 * (start + i) + 1]);
                for (c, v) in s.iter_mut().enumerate() {
                    let ph = -std::f64::consts::TAU
                        * (grid.kx[c] as f64 * sx + grid.ky[c] as f64 * sy)
                        / nb;
                    *v *= Complex32::new(ph.cos() as f32, ph.sin() as f32);
                }
                s
            })
            .collect();
        for s in out {
            spectra.extend(s);
        }
        start = end;
    }
    Ok(Particles3d {
        first_row: rows.start,
        spectra,
        ctf,
        pose: pose
            .chunks_exact(3)
            .map(|p| pose_to_matrix([p[0], p[1], p[2]]))
            .collect(),
        scale: vec![1.0; n],
        half: rows.map(|g| (g % 2) as u8).collect(),
        per,
    })
}
