//! Pre-processed particles: a rank's share when held in memory, or one block of it when
//! streamed. Both jobs use the same block: working-grid spectra, CTFs, half-set labels and,
//! for 3D classification, the known poses (spectra then re-centred by the known shifts).

use ndarray::Array2;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::numerics::ctf::Ctf;
use crate::numerics::fft::Complex32;
use crate::numerics::rotation::{pose_to_matrix, Mat3};

use super::grid::WorkGrid;
use super::preprocess::{crop, preprocess, preprocess_stack, read_ctfs, recenter};

/// Known pose and shift fields (3D classification without alignment).
pub const POSE_FIELD: &str = "alignments3D/pose";
pub const SHIFT_FIELD: &str = "alignments3D/shift";

/// Images read and pre-processed per read.
const READ_CHUNK: usize = 512;

/// What a job needs of each particle beside its spectrum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Read `ctf/*` (all of [`super::preprocess::CTF_FIELDS`] must exist).
    pub ctf: bool,
    /// Read the known pose ([`POSE_FIELD`]) and re-centre by the known shift
    /// ([`SHIFT_FIELD`], zero when absent).
    pub poses: bool,
}

/// Pre-processed particles: a rank's share when held, or one block when streamed.
pub struct Particles {
    /// Working-grid spectra, `len × grid.len()`.
    pub spectra: Vec<Complex32>,
    /// CTF of each particle (None: no CTF correction, CTF = 1).
    pub ctf: Option<Vec<Ctf>>,
    /// Half set of each particle (global row parity), for half-set FRC/FSC.
    pub half: Vec<u8>,
    /// Known pose of each particle (with [`Needs::poses`]).
    pub pose: Option<Vec<Mat3>>,
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
    /// Spectrum of particle `i`.
    pub fn spectrum(&self, i: usize) -> &[Complex32] {
        &self.spectra[i * self.per..(i + 1) * self.per]
    }
    /// Known pose of particle `i` (panics without [`Needs::poses`]: a bug of the caller).
    pub fn pose(&self, i: usize) -> &Mat3 {
        &self.pose.as_ref().expect("particles loaded with poses")[i]
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
            pose: None,
            per: grid.len(),
        }
    }
    /// Particles at known poses from in-memory parts (tests); global rows from `first_row`.
    pub fn with_poses(
        first_row: usize,
        spectra: Vec<Complex32>,
        ctf: Option<Vec<Ctf>>,
        pose: Vec<Mat3>,
        grid: &WorkGrid,
    ) -> Particles {
        let n = pose.len();
        assert_eq!(spectra.len(), n * grid.len(), "spectra size");
        Particles {
            spectra,
            ctf,
            half: (0..n).map(|i| ((first_row + i) % 2) as u8).collect(),
            pose: Some(pose),
            per: grid.len(),
        }
    }
    /// Pre-processed particles from in-memory images (tests, benchmarks); `normalize` off
    /// keeps the grey levels (noise-free test images have no background to normalise by).
    pub fn from_images(
        images: &[Array2<f32>],
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
            pose: None,
            per: grid.len(),
        }
    }
}

/// A numeric per-particle field with `width` values per row, checked finite.
pub fn numeric_field(ds: &Dataset, name: &str, width: usize, why: &str) -> Result<Vec<f64>> {
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

/// Known poses and shifts of every row of `ds` (`3 × len` and `2 × len`).
fn poses_and_shifts(ds: &Dataset) -> Result<(Vec<f64>, Vec<f64>)> {
    let why = "3D classification without alignment needs known poses (run a refinement first, or import them)";
    let pose = numeric_field(ds, POSE_FIELD, 3, why)?;
    let shift = match ds.table().get(SHIFT_FIELD) {
        Some(_) => numeric_field(ds, SHIFT_FIELD, 2, why)?,
        None => vec![0.0; 2 * ds.len()],
    };
    Ok((pose, shift))
}

/// Checks the fields `needs` asks for on every row of `ds` (holding nothing afterwards).
pub fn check(ds: &Dataset, needs: Needs) -> Result<()> {
    if needs.ctf {
        read_ctfs(ds)?;
    }
    if needs.poses {
        poses_and_shifts(ds)?;
    }
    Ok(())
}

/// Loads and pre-processes rows `rows` (sorted indices into `ds`) of a dataset opened on a
/// range whose first row is global row `first_global`. Images are read in contiguous runs.
pub fn load(
    ds: &Dataset,
    first_global: usize,
    rows: &[usize],
    grid: &WorkGrid,
    needs: Needs,
) -> Result<Particles> {
    let ctf = if needs.ctf {
        let all = read_ctfs(ds)?;
        Some(rows.iter().map(|&i| all[i]).collect())
    } else {
        None
    };
    let ps = if needs.poses {
        Some(poses_and_shifts(ds)?)
    } else {
        None
    };
    let mut spectra = Vec::with_capacity(rows.len() * grid.len());
    let mut a = 0;
    while a < rows.len() {
        let mut b = a + 1;
        while b < rows.len() && rows[b] == rows[b - 1] + 1 && b - a < READ_CHUNK {
            b += 1;
        }
        let imgs = ds.read_images(rows[a]..rows[b - 1] + 1)?;
        let mut s = preprocess_stack(&imgs, grid);
        if let Some((_, shift)) = &ps {
            for (j, spec) in s.chunks_exact_mut(grid.len()).enumerate() {
                let r = rows[a + j];
                recenter(spec, [shift[2 * r], shift[2 * r + 1]], grid);
            }
        }
        spectra.extend(s);
        a = b;
    }
    Ok(Particles {
        spectra,
        ctf,
        half: rows
            .iter()
            .map(|&i| ((first_global + i) % 2) as u8)
            .collect(),
        pose: ps.map(|(pose, _)| {
            rows.iter()
                .map(|&i| pose_to_matrix([pose[3 * i], pose[3 * i + 1], pose[3 * i + 2]]))
                .collect()
        }),
        per: grid.len(),
    })
}
