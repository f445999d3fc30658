//! RELION particle STAR files ↔ [`ParticleTable`]: which `_rln` label is which table field,
//! in which unit, and how RELION 3.1's optics groups are split off and joined back.
//!
//! Reading ([`star_to_table`]) accepts RELION 3.1+ files (`data_optics` + `data_particles`,
//! joined by `_rlnOpticsGroup`; a label in both is taken from the particle) and older
//! single-table files (`data_`, `data_images`, ... with everything per particle). Mapping:
//!
//! | STAR | table | conversion |
//! |---|---|---|
//! | `_rlnImageName` `N@path` | `blob/idx`, `blob/path` | idx = N − 1 (N ≥ 1); no `@`: idx 0 |
//! | `_rlnDefocusU`, `_rlnDefocusV` | `ctf/df1_A`, `ctf/df2_A` | Å |
//! | `_rlnDefocusAngle`, `_rlnPhaseShift` | `ctf/df_angle_rad`, `ctf/phase_shift_rad` | deg → rad |
//! | `_rlnVoltage`, `_rlnSphericalAberration`, `_rlnAmplitudeContrast` | `ctf/accel_kv`, `ctf/cs_mm`, `ctf/amp_contrast` | |
//! | `_rlnCtfBfactor`, `_rlnCtfScalefactor` | `ctf/bfactor`, `ctf/scale` | |
//! | `_rlnOpticsGroup` | `ctf/exp_group_id` | |
//! | `_rlnImagePixelSize` (or `_rlnPixelSize`, or `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`) | `blob/psize_A` | |
//! | `_rlnImageSize` | `blob/shape` | (n, n) |
//! | `_rlnMicrographName`, `_rlnCoordinateX/Y` | `location/micrograph_path`, `location/center_x_px/center_y_px` | |
//! | `_rlnAngleRot`, `_rlnAngleTilt`, `_rlnAnglePsi` | `alignments3D/pose` | pose of RELION's matrix (see `numerics::rotation`) |
//! | `_rlnAnglePsi` alone | `alignments2D/pose` | deg → rad |
//! | `_rlnOriginXAngst/YAngst` (or `_rlnOriginX/Y` in px) | `<group>/shift` | Å ÷ pixel size → px |
//! | `_rlnClassNumber` | `<group>/class` | 1-based → 0-based |
//!
//! `<group>` is `alignments3D` when rot and tilt are present, else `alignments2D`; it also
//! gets `<group>/psize_A` (the pixel size its shifts are in). The six CTF labels DefocusU,
//! DefocusV, DefocusAngle, Voltage, SphericalAberration and AmplitudeContrast are required
//! (from the particles or their optics group) unless [`CtfPolicy::IfPresent`] is asked for.
//! Every other label is kept as an extra column, `relion/<label without rln>` (`_rlnX`) or
//! `star/<label>` (other programs' labels), F64 or Str, so it is written back on export;
//! optics-only labels are expanded to one value per particle. `uid` is the row number + 1
//! (the import job replaces it with uids derived from the image references).
//!
//! Writing ([`table_to_star`]) produces RELION 3.1: `data_optics` with one row per
//! `ctf/exp_group_id` (all particles in group 1 when the table has none; ids are shifted by
//! one when a group 0 exists, as RELION's groups start at 1) holding the group's name
//! (`relion/OpticsGroupName`, else `opticsGroupN`), voltage, Cs, amplitude contrast, pixel
//! size, image size, `_rlnImageDimensionality 2` and extra columns of optics labels; a value
//! that differs within a group is written per particle instead. `data_particles` holds the
//! image names given by the caller, micrograph and coordinates (px, or frac × micrograph
//! shape), angles (3D: Euler angles of the pose; 2D: psi only), origins in Å (shift × pixel
//! size; in px as `_rlnOriginX/Y` when no pixel size is known), CTF, class + 1, optics
//! group and the extra columns. When a table has both 2D and 3D alignments, the 3D ones are
//! written (RELION has one set of angles and one class number per particle).
//!
//! Numbers: f32 fields are written in their shortest decimal form and unit conversions are
//! written with the fewest digits that convert back to the same f32, so table → STAR →
//! table is exact for every field (poses to within f32 rounding of the angle conversion).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use rayon::prelude::*;

use super::star::{parse_num, StarBlock, StarColumn, StarFile};
use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};
use crate::numerics::rotation::{euler_deg_to_pose, pose_to_euler_deg};

/// Prefix of extra columns holding `_rlnX` labels (`relion/X`).
pub const RELION_PREFIX: &str = "relion/";
/// Prefix of extra columns holding other programs' labels (`star/label`).
pub const OTHER_PREFIX: &str = "star/";

/// Whether a particle file must have CTF parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtfPolicy {
    /// Error when any of the six CTF labels is missing (the default).
    Require,
    /// Import the CTF when all six labels are present; otherwise import none of it (the
    /// CTF labels that are present are kept as extra `relion/` columns).
    IfPresent,
}

/// Labels without which the CTF of a particle is unknown.
const CTF_REQUIRED: [&str; 6] = [
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
];

/// Labels that RELION 3.1+ keeps in `data_optics` (written there on export when uniform
/// within each group).
const OPTICS_LABELS: &[&str] = &[
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMtfFileName",
    "rlnMicrographMtfPixelSize",
    "rlnCtfDataArePhaseFlipped",
    "rlnCtfDataAreCtfPremultiplied",
];

/// Table name used in errors about a table built in memory (export has no input file).
const TABLE: &str = "(particle table)";

/// Maps a particle STAR file to a table, requiring CTF parameters. `star_path` is used in
/// error messages and nothing else.
pub fn star_to_table(star: &StarFile, star_path: &Path) -> Result<ParticleTable> {
    star_to_table_with(star, star_path, CtfPolicy::Require)
}

/// Splits `N@path` into (N − 1, path); a name without `@` is image 0 of a single-image file.
pub fn parse_image_name(name: &str) -> std::result::Result<(u32, String), String> {
    let Some((num, path)) = name.split_once('@') else {
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{name:?}: the stack path holds the control character {c:?}"
            ));
        }
        return Ok((0, name.to_string()));
    };
    let k: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{name:?}: image number {num:?} is not a positive integer"))?;
    if k < 1 {
        return Err(format!(
            "{name:?}: image number {k} is < 1 (RELION numbers images from 1)"
        ));
    }
    if k - 1 > u32::MAX as u64 {
        return Err(format!("{name:?}: image number {k} is too large"));
    }
    if path.is_empty() {
        return Err(format!("{name:?}: no stack path after '@'"));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name:?}: the stack path holds the control character {c:?}"
        ));
    }
    Ok(((k - 1) as u32, path.to_string()))
}

/// RELION's image name `NNNNNN@path` for 0-based index `idx` (zero-padded to 6 digits, as
/// RELION writes them).
pub fn format_image_name(idx: u64, path: &str) -> String {
    format!("{:06}@{path}", idx + 1)
}

/// Reads labels from the particle table, falling back to the particle's optics group.
struct Reader<'a> {
    path: &'a Path,
    parts: &'a StarBlock,
    optics: Option<&'a StarBlock>,
    /// Optics row of each particle (empty without optics).
    orow: Vec<usize>,
    /// Labels mapped to table fields (not kept as extras).
    used: HashSet<String>,
}

/// Numeric values of a column, or an error naming the first value that is not a number.
/// `_rlnAnglePsi` as RELION's AutoPick and Extract write it before any alignment.
const AUTOPICK_NO_PSI_DEG: f64 = -999.0;

fn num_values(path: &Path, block: &StarBlock, label: &str, c: &StarColumn) -> Result<Vec<f64>> {
    match c {
        StarColumn::Num(v) => Ok(v.clone()),
        StarColumn::Str(v) => v
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_num(s).ok_or_else(|| {
                    Error::field(
                        path,
                        format!("_{label}"),
                        format!(
                            "{} of data_{}: {s:?} is not a number",
                            block.row_place(i),
                            block.name
                        ),
                    )
                })
            })
            .collect(),
    }
}

/// `v` as an integer, if it is one.
fn as_int(v: f64) -> Option<i64> {
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64)
}

impl Reader<'_> {
    fn has(&self, label: &str) -> bool {
        self.parts.has(label) || self.optics.is_some_and(|o| o.has(label))
    }
    /// Marks `label` as mapped without reading it.
    fn consume(&mut self, label: &str) {
        self.used.insert(label.to_string());
    }
    /// Where the value of `label` for particle `row` was read from, for error messages.
    fn place(&self, label: &str, row: usize) -> String {
        match self.optics {
            Some(o) if !self.parts.has(label) && !self.orow.is_empty() => {
                format!("{} of data_optics", o.row_place(self.orow[row]))
            }
            _ => format!("{} of data_{}", self.parts.row_place(row), self.parts.name),
        }
    }
    /// Per-particle numbers of `label`, if present. Every value must be finite in f32 (the
    /// type of the fields they map to): a mapped label holds a CTF parameter, a pixel size,
    /// a coordinate, an angle, an origin or an index, and `nan`, `inf` or a number beyond
    /// the f32 range in one of them is an error naming the label and the line.
    fn num(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        self.consume(label);
        let v = if let Some(c) = self.parts.column(label) {
            num_values(self.path, self.parts, label, c)?
        } else if let Some(c) = self.optics.and_then(|o| o.column(label)) {
            let o = self.optics.expect("optics block");
            let v = num_values(self.path, o, label, c)?;
            self.orow.iter().map(|&r| v[r]).collect()
        } else {
            return Ok(None);
        };
        if let Some(i) = v.iter().position(|&x| !(x as f32).is_finite()) {
            return Err(Error::field(
                self.path,
                format!("_{label}"),
                format!(
                    "{}: {} is not a finite number in the f32 range",
                    self.place(label, i),
                    v[i]
                ),
            ));
        }
        Ok(Some(v))
    }
    /// Per-particle numbers of a label that must be present.
    fn need(&mut self, label: &str, why: &str) -> Result<Vec<f64>> {
        self.num(label)?.ok_or_else(|| {
            Error::field(
                self.path,
                format!("_{label}"),
                format!("missing column ({why})"),
            )
        })
    }
    /// Per-particle texts of `label`, if present (numbers as written by the STAR writer).
    fn strs(&mut self, label: &str) -> Result<Option<Vec<String>>> {
        self.consume(label);
        let texts = |c: &StarColumn| (0..c.len()).map(|i| c.text(i)).collect::<Vec<_>>();
        if let Some(c) = self.parts.column(label) {
            return Ok(Some(texts(c)));
        }
        if let Some(o) = self.optics {
            if let Some(c) = o.column(label) {
                let v = texts(c);
                return Ok(Some(self.orow.iter().map(|&r| v[r].clone()).collect()));
            }
        }
        Ok(None)
    }
    /// Integer values of `label` that are ≥ `min`.
    fn ints(&mut self, label: &str, min: i64, max: i64) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.num(label)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(v.len());
        for (i, &x) in v.iter().enumerate() {
            match as_int(x) {
                Some(k) if (min..=max).contains(&k) => out.push(k),
                _ => {
                    return Err(Error::field(
                        self.path,
                        format!("_{label}"),
                        format!(
                            "{}: {x} is not an integer in {min}..={max}",
                            self.place(label, i)
                        ),
                    ))
                }
            }
        }
        Ok(Some(out))
    }
}

/// The particle table of a STAR file: `data_particles`, else the first other table (not
/// `data_optics`) with `_rlnImageName`.
fn find_particles<'a>(star: &'a StarFile, path: &Path) -> Result<&'a StarBlock> {
    if let Some(b) = star.block("particles") {
        if !b.is_loop {
            return Err(Error::field(
                path,
                "data_particles",
                "is a list of key-value pairs, not a table (loop_)",
            ));
        }
        return Ok(b);
    }
    star.blocks
        .iter()
        .find(|b| b.is_loop && b.name != "optics" && b.has("rlnImageName"))
        .ok_or_else(|| {
            Error::field(
                path,
                "_rlnImageName",
                "no particle table (data_particles, or a loop_ with _rlnImageName)",
            )
        })
}

/// Joins particles to `data_optics` rows by `_rlnOpticsGroup`.
fn optics_rows(path: &Path, parts: &StarBlock, optics: &StarBlock) -> Result<Vec<usize>> {
    let label = "rlnOpticsGroup";
    let oc = optics
        .column(label)
        .ok_or_else(|| Error::field(path, "_rlnOpticsGroup", "missing in data_optics"))?;
    let mut by_id = HashMap::new();
    for (row, &v) in num_values(path, optics, label, oc)?.iter().enumerate() {
        let id = as_int(v).ok_or_else(|| {
            Error::field(
                path,
                "_rlnOpticsGroup",
                format!(
                    "{} of data_optics: {v} is not an integer",
                    optics.row_place(row)
                ),
            )
        })?;
        if by_id.insert(id, row).is_some() {
            return Err(Error::field(
                path,
                "_rlnOpticsGroup",
                format!(
                    "{} of data_optics: group {id} is defined twice",
                    optics.row_place(row)
                ),
            ));
        }
    }
    match parts.column(label) {
        Some(pc) => num_values(path, parts, label, pc)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                as_int(v)
                    .and_then(|id| by_id.get(&id).copied())
                    .ok_or_else(|| {
                        Error::field(
                            path,
                            "_rlnOpticsGroup",
                            format!(
                                "{} of data_{}: optics group {v} is not defined in data_optics",
                                parts.row_place(i),
                                parts.name
                            ),
                        )
                    })
            })
            .collect(),
        None if optics.nrows() == 1 => Ok(vec![0; parts.nrows()]),
        None => Err(Error::field(
            path,
            "_rlnOpticsGroup",
            format!(
                "missing in data_{} (needed to join data_optics, which has {} groups)",
                parts.name,
                optics.nrows()
            ),
        )),
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Degrees → f32 radians.
fn rad32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x.to_radians() as f32).collect()
}

/// Maps a particle STAR file to a table (see the module doc for the mapping).
pub fn star_to_table_with(
    star: &StarFile,
    star_path: &Path,
    ctf: CtfPolicy,
) -> Result<ParticleTable> {
    star_to_table_inner(star, star_path, ctf).map_err(super::printable_error)
}

fn star_to_table_inner(star: &StarFile, star_path: &Path, ctf: CtfPolicy) -> Result<ParticleTable> {
    let path = star_path;
    let parts = find_particles(star, path)?;
    let n = parts.nrows();
    let optics = star.block("optics").filter(|b| b.is_loop);
    let orow = match optics {
        Some(o) => optics_rows(path, parts, o)?,
        None => Vec::new(),
    };
    let mut r = Reader {
        path,
        parts,
        optics,
        orow,
        used: HashSet::new(),
    };
    let mut t = ParticleTable::new((1..=n as u64).collect());

    // Images.
    let names = r.strs("rlnImageName")?.ok_or_else(|| {
        Error::field(
            path,
            "_rlnImageName",
            format!("missing column in data_{}", parts.name),
        )
    })?;
    let mut bpath = Vec::with_capacity(n);
    let mut bidx = Vec::with_capacity(n);
    for (i, s) in names.iter().enumerate() {
        let (idx, p) = parse_image_name(s).map_err(|m| {
            Error::field(
                path,
                "_rlnImageName",
                format!("{} of data_{}: {m}", parts.row_place(i), parts.name),
            )
        })?;
        bidx.push(idx);
        bpath.push(p);
    }
    t.set_str("blob/path", bpath);
    t.set_u32("blob/idx", bidx);

    // CTF.
    if ctf == CtfPolicy::Require || CTF_REQUIRED.iter().all(|l| r.has(l)) {
        let why = "needed for CTF";
        let df1 = r.need("rlnDefocusU", why)?;
        let df2 = r.need("rlnDefocusV", why)?;
        let ang = r.need("rlnDefocusAngle", why)?;
        let kv = r.need("rlnVoltage", why)?;
        let cs = r.need("rlnSphericalAberration", why)?;
        let w = r.need("rlnAmplitudeContrast", why)?;
        t.set_f32("ctf/df1_A", f32s(&df1));
        t.set_f32("ctf/df2_A", f32s(&df2));
        t.set_f32("ctf/df_angle_rad", rad32(&ang));
        t.set_f32("ctf/accel_kv", f32s(&kv));
        t.set_f32("ctf/cs_mm", f32s(&cs));
        t.set_f32("ctf/amp_contrast", f32s(&w));
        if let Some(v) = r.num("rlnPhaseShift")? {
            t.set_f32("ctf/phase_shift_rad", rad32(&v));
        }
        if let Some(v) = r.num("rlnCtfBfactor")? {
            t.set_f32("ctf/bfactor", f32s(&v));
        }
        if let Some(v) = r.num("rlnCtfScalefactor")? {
            t.set_f32("ctf/scale", f32s(&v));
        }
    }
    if let Some(v) = r.ints("rlnOpticsGroup", 0, u32::MAX as i64)? {
        t.set_u32("ctf/exp_group_id", v.iter().map(|&x| x as u32).collect());
    }

    // Pixel size and box.
    let psize: Option<Vec<f64>> = if r.has("rlnImagePixelSize") {
        r.num("rlnImagePixelSize")?
    } else if r.has("rlnPixelSize") {
        r.num("rlnPixelSize")?
    } else if r.has("rlnDetectorPixelSize") && r.has("rlnMagnification") {
        let det = r.need("rlnDetectorPixelSize", "pixel size")?;
        let mag = r.need("rlnMagnification", "pixel size")?;
        Some(det.iter().zip(&mag).map(|(d, m)| d * 1e4 / m).collect())
    } else {
        None
    };
    for l in [
        "rlnImagePixelSize",
        "rlnPixelSize",
        "rlnDetectorPixelSize",
        "rlnMagnification",
    ] {
        r.consume(l);
    }
    if let Some(p) = &psize {
        if let Some(i) = p.iter().position(|&x| !(x > 0.0 && x.is_finite())) {
            let label = ["rlnImagePixelSize", "rlnPixelSize", "rlnDetectorPixelSize"]
                .into_iter()
                .find(|l| r.has(l))
                .unwrap_or("rlnImagePixelSize");
            return Err(Error::field(
                path,
                format!("_{label}"),
                format!(
                    "{}: pixel size {} Å is not a positive number",
                    r.place(label, i),
                    p[i]
                ),
            ));
        }
        t.set_f32("blob/psize_A", f32s(p));
    }
    if let Some(v) = r.ints("rlnImageSize", 1, u32::MAX as i64)? {
        let shape: Vec<u32> = v.iter().flat_map(|&s| [s as u32, s as u32]).collect();
        t.set("blob/shape", Column::new(ColumnData::U32(shape), 2));
    }
    if let Some(v) = r.ints("rlnImageDimensionality", 0, 3)? {
        if let Some(i) = v.iter().position(|&d| d != 2) {
            return Err(Error::field(
                path,
                "_rlnImageDimensionality",
                format!(
                    "{}: {}D images are not supported (particles must be 2D)",
                    r.place("rlnImageDimensionality", i),
                    v[i]
                ),
            ));
        }
    }

    // Location.
    if let Some(v) = r.strs("rlnMicrographName")? {
        t.set_str("location/micrograph_path", v);
    }
    if let Some(v) = r.num("rlnCoordinateX")? {
        t.set_f32("location/center_x_px", f32s(&v));
    }
    if let Some(v) = r.num("rlnCoordinateY")? {
        t.set_f32("location/center_y_px", f32s(&v));
    }

    // Alignments.
    let is3d = r.has("rlnAngleRot") && r.has("rlnAngleTilt");
    let group = if is3d { "alignments3D" } else { "alignments2D" };
    let mut aligned = false;
    if is3d {
        let rot = r.need("rlnAngleRot", "3D pose")?;
        let tilt = r.need("rlnAngleTilt", "3D pose")?;
        let psi = r.num("rlnAnglePsi")?.unwrap_or_else(|| vec![0.0; n]);
        let mut pose = Vec::with_capacity(3 * n);
        for i in 0..n {
            let p = euler_deg_to_pose(rot[i], tilt[i], psi[i]);
            pose.extend(p.iter().map(|&x| x as f32));
        }
        t.set("alignments3D/pose", Column::new(ColumnData::F32(pose), 3));
        aligned = true;
    } else if let Some(psi) = r.num("rlnAnglePsi")? {
        // RELION's AutoPick/Extract writes -999 for "no angle yet": all of them means unset.
        if psi.iter().all(|&x| x == AUTOPICK_NO_PSI_DEG) {
            log::info!("{}: every _rlnAnglePsi is -999 (AutoPick: no angle yet); no 2D pose imported", path.display());
        } else {
            if let Some(i) = psi.iter().position(|&x| x == AUTOPICK_NO_PSI_DEG) {
                return Err(Error::field(
                    path,
                    "_rlnAnglePsi",
                    format!("{}: -999 (AutoPick's \"no angle\") among real angles; set every row or none", r.place("rlnAnglePsi", i)),
                ));
            }
            t.set_f32("alignments2D/pose", rad32(&psi));
            aligned = true;
        }
    }
    let shift = if r.has("rlnOriginXAngst") || r.has("rlnOriginYAngst") {
        let x = r.need("rlnOriginXAngst", "_rlnOriginYAngst is present")?;
        let y = r.need("rlnOriginYAngst", "_rlnOriginXAngst is present")?;
        let p = psize.as_ref().ok_or_else(|| {
            Error::field(
                path,
                "_rlnOriginXAngst",
                "origins in Å need a pixel size (_rlnImagePixelSize) to convert to pixels",
            )
        })?;
        Some(
            (0..n)
                .flat_map(|i| [(x[i] / p[i]) as f32, (y[i] / p[i]) as f32])
                .collect::<Vec<f32>>(),
        )
    } else if r.has("rlnOriginX") || r.has("rlnOriginY") {
        let x = r.need("rlnOriginX", "_rlnOriginY is present")?;
        let y = r.need("rlnOriginY", "_rlnOriginX is present")?;
        Some((0..n).flat_map(|i| [x[i] as f32, y[i] as f32]).collect())
    } else {
        None
    };
    for l in [
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnOriginX",
        "rlnOriginY",
    ] {
        r.consume(l);
    }
    if let Some(s) = shift {
        t.set(
            &format!("{group}/shift"),
            Column::new(ColumnData::F32(s), 2),
        );
        aligned = true;
    }
    let autopick_classes = r.has("rlnClassNumber") && {
        let v = r.num("rlnClassNumber")?.unwrap_or_default();
        !v.is_empty() && v.iter().all(|&x| x == 0.0)
    };
    if autopick_classes {
        // AutoPick/Extract writes class 0 for "not classified yet".
        log::info!("{}: every _rlnClassNumber is 0 (AutoPick: not classified yet); no class imported", path.display());
        r.consume("rlnClassNumber");
    } else if r.has("rlnClassNumber") {
        let v = r.num("rlnClassNumber")?.unwrap_or_default();
        let mut class = Vec::with_capacity(n);
        for (i, &x) in v.iter().enumerate() {
            match as_int(x) {
                Some(k) if k >= 1 && k - 1 <= u32::MAX as i64 => class.push((k - 1) as u32),
                _ => {
                    return Err(Error::field(
                        path,
                        "_rlnClassNumber",
                        format!(
                        "{}: class number {x} is not an integer ≥ 1 (RELION classes are 1-based)",
                        r.place("rlnClassNumber", i)
                    ),
                    ))
                }
            }
        }
        t.set_u32(&format!("{group}/class"), class);
        aligned = true;
    }
    if aligned {
        if let Some(p) = &psize {
            t.set_f32(&format!("{group}/psize_A"), f32s(p));
        }
    }

    // Everything else, kept as is.
    let used = std::mem::take(&mut r.used);
    for (label, c) in parts.columns() {
        if !used.contains(label) {
            t.set(&extra_name(label), Column::scalar(extra_data(c, None)));
        }
    }
    if let Some(o) = optics {
        for (label, c) in o.columns() {
            if !used.contains(label) && !parts.has(label) {
                t.set(
                    &extra_name(label),
                    Column::scalar(extra_data(c, Some(&r.orow))),
                );
            }
        }
    }
    Ok(t)
}

/// Table name of an unmapped label.
fn extra_name(label: &str) -> String {
    match label.strip_prefix("rln") {
        Some(rest) if !rest.is_empty() => format!("{RELION_PREFIX}{rest}"),
        _ => format!("{OTHER_PREFIX}{label}"),
    }
}

/// STAR label of an extra column, if `name` is one.
fn extra_label(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(RELION_PREFIX) {
        return (!rest.is_empty()).then(|| format!("rln{rest}"));
    }
    name.strip_prefix(OTHER_PREFIX)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An extra column's values, expanded through `rows` when given.
fn extra_data(c: &StarColumn, rows: Option<&[usize]>) -> ColumnData {
    match (c, rows) {
        (StarColumn::Num(v), None) => ColumnData::F64(v.clone()),
        (StarColumn::Num(v), Some(r)) => ColumnData::F64(r.iter().map(|&i| v[i]).collect()),
        (StarColumn::Str(v), None) => ColumnData::Str(v.clone()),
        (StarColumn::Str(v), Some(r)) => ColumnData::Str(r.iter().map(|&i| v[i].clone()).collect()),
    }
}

// ---------------------------------------------------------------------------------------
// Export.

/// The f64 with the shortest decimal form that `ok` accepts (falls back to `x`).
fn short_decimal(x: f64, ok: impl Fn(f64) -> bool) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let mut s = String::new();
    let mut cand = |digits: usize| {
        s.clear();
        let _ = write!(s, "{:.*e}", digits - 1, x);
        s.parse::<f64>().unwrap_or(x)
    };
    if !ok(cand(17)) {
        return x;
    }
    // Binary search for the fewest significant digits that `ok` accepts (more digits are
    // closer to x, so acceptance is monotone in practice; the result is accepted either way).
    let (mut lo, mut hi) = (1, 17);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ok(cand(mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    cand(lo)
}

/// An f32 as the f64 of its shortest decimal form (writes as `1.06`, not `1.059999942779541`).
fn f32_decimal(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    let mut s = String::new();
    let _ = write!(s, "{x}");
    s.parse().unwrap_or(x as f64)
}

/// f32 radians as the shortest degrees that read back (deg → rad → f32) as the same value.
fn deg_decimal(rad: f32) -> f64 {
    short_decimal((rad as f64).to_degrees(), |d| d.to_radians() as f32 == rad)
}

/// RELION angles (degrees) of an f32 pose, with the fewest decimals (0 to 9) whose pose is
/// the same f32 pose to within one f32 ulp of its largest component (30, not
/// 29.99999912453807); full precision when no rounding is that close.
fn pose_euler_deg(p: [f32; 3]) -> [f64; 3] {
    let pd = p.map(|x| x as f64);
    let e = pose_to_euler_deg(pd);
    let big = pd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let tol = f32::EPSILON as f64 * big.max(f32::MIN_POSITIVE as f64);
    let mut s = String::new();
    for decimals in 0..=9 {
        let r = e.map(|a| {
            s.clear();
            let _ = write!(s, "{a:.decimals$}");
            s.parse::<f64>().unwrap_or(a)
        });
        let q = euler_deg_to_pose(r[0], r[1], r[2]);
        if (0..3).all(|k| ((q[k] as f32) as f64 - pd[k]).abs() <= tol) {
            return r;
        }
    }
    e
}

/// Numeric values of table column `name` (width `width`), f32 ones as shortest decimals.
fn table_num(t: &ParticleTable, name: &str, width: usize) -> Result<Option<Vec<f64>>> {
    Ok(numeric_column(t, name, width)?.map(|d| match d {
        ColumnData::F32(v) => v.par_iter().map(|&x| f32_decimal(x)).collect(),
        d => d.to_f64().unwrap_or_default(),
    }))
}

/// The raw f32 values of a column (any numeric type, converted), for exact conversions.
fn table_f32(t: &ParticleTable, name: &str, width: usize) -> Result<Option<Vec<f32>>> {
    Ok(numeric_column(t, name, width)?.map(|d| match d {
        ColumnData::F32(v) => v.clone(),
        d => d
            .to_f64()
            .unwrap_or_default()
            .iter()
            .map(|&x| x as f32)
            .collect(),
    }))
}

/// The data of numeric column `name` if present; an error if it is text or not `width` wide.
fn numeric_column<'a>(
    t: &'a ParticleTable,
    name: &str,
    width: usize,
) -> Result<Option<&'a ColumnData>> {
    let Some(c) = t.get(name) else {
        return Ok(None);
    };
    if c.width != width {
        return Err(Error::field(
            TABLE,
            name,
            format!("has {} values per particle, expected {width}", c.width),
        ));
    }
    if let ColumnData::Str(_) = c.data {
        return Err(Error::field(
            TABLE,
            name,
            "is a string column, expected numbers",
        ));
    }
    Ok(Some(&c.data))
}

/// Adds a particle column and records its label as written.
fn add(b: &mut StarBlock, written: &mut HashSet<String>, label: &str, c: StarColumn) -> Result<()> {
    written.insert(label.to_string());
    put(b, label, c)
}

fn put(b: &mut StarBlock, label: &str, col: StarColumn) -> Result<()> {
    b.set(label, col).map_err(|m| Error::file(TABLE, m))
}

/// One value per particle, numeric or text (for optics uniformity checks).
enum Values {
    Num(Vec<f64>),
    Str(Vec<String>),
}

impl Values {
    fn same(&self, i: usize, j: usize) -> bool {
        match self {
            Values::Num(v) => v[i] == v[j] || (v[i].is_nan() && v[j].is_nan()),
            Values::Str(v) => v[i] == v[j],
        }
    }
    fn pick(&self, rows: &[usize]) -> StarColumn {
        match self {
            Values::Num(v) => StarColumn::Num(rows.iter().map(|&i| v[i]).collect()),
            Values::Str(v) => StarColumn::Str(rows.iter().map(|&i| v[i].clone()).collect()),
        }
    }
    fn all(self) -> StarColumn {
        match self {
            Values::Num(v) => StarColumn::Num(v),
            Values::Str(v) => StarColumn::Str(v),
        }
    }
}

/// An extra column as per-particle values (None for columns that cannot be written).
fn extra_values(name: &str, c: &Column) -> Result<Values> {
    if c.width != 1 {
        return Err(Error::field(
            TABLE,
            name,
            format!("has {} values per particle; STAR columns hold one", c.width),
        ));
    }
    Ok(match &c.data {
        ColumnData::Str(v) => Values::Str(v.clone()),
        ColumnData::F32(v) => Values::Num(v.par_iter().map(|&x| f32_decimal(x)).collect()),
        d => Values::Num(d.to_f64().unwrap_or_default()),
    })
}

/// Maps a table to a RELION 3.1 particle STAR file. `image_names` are the `N@path` names
/// of the particles' images, one per row (the caller knows where the images are).
pub fn table_to_star(table: &ParticleTable, image_names: &[String]) -> Result<StarFile> {
    let n = table.len();
    if image_names.len() != n {
        return Err(Error::Usage(format!(
            "STAR export: {} image names for {n} particles",
            image_names.len()
        )));
    }

    // Optics groups.
    let mut gid: Vec<u32> = match table.get("ctf/exp_group_id").map(|c| c.data.to_f64()) {
        None => vec![1; n],
        Some(None) => {
            return Err(Error::field(
                TABLE,
                "ctf/exp_group_id",
                "is a string column, expected integers",
            ))
        }
        Some(Some(v)) => v
            .iter()
            .map(|&x| {
                as_int(x)
                    .filter(|&k| (0..u32::MAX as i64).contains(&k))
                    .map(|k| k as u32)
                    .ok_or_else(|| {
                        Error::field(
                            TABLE,
                            "ctf/exp_group_id",
                            format!("{x} is not a group number"),
                        )
                    })
            })
            .collect::<Result<_>>()?,
    };
    if gid.contains(&0) {
        gid.iter_mut().for_each(|g| *g += 1);
    }
    let groups: Vec<u32> = gid
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let gindex: HashMap<u32, usize> = groups.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let pgroup: Vec<usize> = gid.iter().map(|g| gindex[g]).collect();
    // First particle of each group.
    let mut first = vec![usize::MAX; groups.len()];
    for (i, &g) in pgroup.iter().enumerate().rev() {
        first[g] = i;
    }
    let uniform = |v: &Values| (0..n).all(|i| v.same(i, first[pgroup[i]]));

    let mut optics = StarBlock::new_loop("optics");
    let mut parts = StarBlock::new_loop("particles");
    let mut written: HashSet<String> = HashSet::new();
    // Per-particle fallbacks of optics values that differ within a group.
    let mut fallback: Vec<(String, StarColumn)> = Vec::new();

    let names = match table.str("relion/OpticsGroupName") {
        Some(v) if uniform(&Values::Str(v.to_vec())) => {
            first.iter().map(|&i| v[i].clone()).collect()
        }
        _ => groups.iter().map(|g| format!("opticsGroup{g}")).collect(),
    };
    put(&mut optics, "rlnOpticsGroupName", StarColumn::Str(names))?;
    put(
        &mut optics,
        "rlnOpticsGroup",
        StarColumn::Num(groups.iter().map(|&g| g as f64).collect()),
    )?;
    written.extend([
        "rlnOpticsGroupName".to_string(),
        "rlnOpticsGroup".to_string(),
    ]);

    let mut candidates: Vec<(String, Values)> = Vec::new();
    for (label, field) in [
        ("rlnVoltage", "ctf/accel_kv"),
        ("rlnSphericalAberration", "ctf/cs_mm"),
        ("rlnAmplitudeContrast", "ctf/amp_contrast"),
        ("rlnImagePixelSize", "blob/psize_A"),
    ] {
        if let Some(v) = table_num(table, field, 1)? {
            candidates.push((label.to_string(), Values::Num(v)));
        }
    }
    if let Some(shape) = table_num(table, "blob/shape", 2)? {
        if let Some(i) = (0..n).find(|&i| shape[2 * i] != shape[2 * i + 1]) {
            return Err(Error::field(
                TABLE,
                "blob/shape",
                format!(
                    "row {}: {}×{} images are not square; RELION needs square particle images",
                    i + 1,
                    shape[2 * i],
                    shape[2 * i + 1]
                ),
            ));
        }
        candidates.push((
            "rlnImageSize".into(),
            Values::Num((0..n).map(|i| shape[2 * i + 1]).collect()),
        ));
    }
    for (name, c) in table.columns() {
        if let Some(label) = extra_label(name) {
            if OPTICS_LABELS.contains(&label.as_str()) {
                candidates.push((label, extra_values(name, c)?));
            }
        }
    }
    for (label, v) in candidates {
        if uniform(&v) {
            put(&mut optics, &label, v.pick(&first))?;
        } else {
            fallback.push((label.clone(), v.all()));
        }
        written.insert(label);
    }
    put(
        &mut optics,
        "rlnImageDimensionality",
        StarColumn::Num(vec![2.0; groups.len()]),
    )?;
    written.insert("rlnImageDimensionality".into());

    // Particles.
    let col = add;
    col(
        &mut parts,
        &mut written,
        "rlnImageName",
        StarColumn::Str(image_names.to_vec()),
    )?;
    if let Some(v) = table.str("location/micrograph_path") {
        col(
            &mut parts,
            &mut written,
            "rlnMicrographName",
            StarColumn::Str(v.to_vec()),
        )?;
    }
    for (axis, px, frac, shape_col) in [
        ("X", "location/center_x_px", "location/center_x_frac", 1),
        ("Y", "location/center_y_px", "location/center_y_frac", 0),
    ] {
        let label = format!("rlnCoordinate{axis}");
        if let Some(v) = table_num(table, px, 1)? {
            col(&mut parts, &mut written, &label, StarColumn::Num(v))?;
        } else if let (Some(f), Some(shape)) = (
            table_f32(table, frac, 1)?,
            table_num(table, "location/micrograph_shape", 2)?,
        ) {
            let v = (0..n)
                .into_par_iter()
                .map(|i| {
                    let x = f[i] as f64 * shape[2 * i + shape_col];
                    short_decimal(x, |y| y as f32 == x as f32)
                })
                .collect();
            col(&mut parts, &mut written, &label, StarColumn::Num(v))?;
        }
    }

    let has3d = ["pose", "shift", "class"]
        .iter()
        .any(|f| table.has(&format!("alignments3D/{f}")));
    let group = if has3d {
        "alignments3D"
    } else {
        "alignments2D"
    };
    if has3d {
        if let Some(p) = table_f32(table, "alignments3D/pose", 3)? {
            let e: Vec<[f64; 3]> = (0..n)
                .into_par_iter()
                .map(|i| pose_euler_deg([p[3 * i], p[3 * i + 1], p[3 * i + 2]]))
                .collect();
            let rot = e.iter().map(|a| a[0]).collect();
            let tilt = e.iter().map(|a| a[1]).collect();
            let psi = e.iter().map(|a| a[2]).collect();
            col(
                &mut parts,
                &mut written,
                "rlnAngleRot",
                StarColumn::Num(rot),
            )?;
            col(
                &mut parts,
                &mut written,
                "rlnAngleTilt",
                StarColumn::Num(tilt),
            )?;
            col(
                &mut parts,
                &mut written,
                "rlnAnglePsi",
                StarColumn::Num(psi),
            )?;
        }
    } else if let Some(p) = table_f32(table, "alignments2D/pose", 1)? {
        col(
            &mut parts,
            &mut written,
            "rlnAnglePsi",
            StarColumn::Num(p.par_iter().map(|&x| deg_decimal(x)).collect()),
        )?;
    }
    if let Some(s) = table_f32(table, &format!("{group}/shift"), 2)? {
        let psize = match table_f32(table, &format!("{group}/psize_A"), 1)? {
            Some(p) => Some(p),
            None => table_f32(table, "blob/psize_A", 1)?,
        };
        match psize {
            Some(p) => {
                let ang = |k: usize| {
                    let (px, a) = (s[k], f32_decimal(p[k / 2]));
                    short_decimal(px as f64 * a, |y| (y / a) as f32 == px)
                };
                col(
                    &mut parts,
                    &mut written,
                    "rlnOriginXAngst",
                    StarColumn::Num((0..n).into_par_iter().map(|i| ang(2 * i)).collect()),
                )?;
                col(
                    &mut parts,
                    &mut written,
                    "rlnOriginYAngst",
                    StarColumn::Num((0..n).into_par_iter().map(|i| ang(2 * i + 1)).collect()),
                )?;
            }
            None => {
                let px = |k: usize| f32_decimal(s[k]);
                col(
                    &mut parts,
                    &mut written,
                    "rlnOriginX",
                    StarColumn::Num((0..n).map(|i| px(2 * i)).collect()),
                )?;
                col(
                    &mut parts,
                    &mut written,
                    "rlnOriginY",
                    StarColumn::Num((0..n).map(|i| px(2 * i + 1)).collect()),
                )?;
            }
        }
    }

    for (label, field) in [("rlnDefocusU", "ctf/df1_A"), ("rlnDefocusV", "ctf/df2_A")] {
        if let Some(v) = table_num(table, field, 1)? {
            col(&mut parts, &mut written, label, StarColumn::Num(v))?;
        }
    }
    for (label, field) in [
        ("rlnDefocusAngle", "ctf/df_angle_rad"),
        ("rlnPhaseShift", "ctf/phase_shift_rad"),
    ] {
        if let Some(v) = table_f32(table, field, 1)? {
            col(
                &mut parts,
                &mut written,
                label,
                StarColumn::Num(v.par_iter().map(|&x| deg_decimal(x)).collect()),
            )?;
        }
    }
    for (label, field) in [
        ("rlnCtfBfactor", "ctf/bfactor"),
        ("rlnCtfScalefactor", "ctf/scale"),
    ] {
        if let Some(v) = table_num(table, field, 1)? {
            col(&mut parts, &mut written, label, StarColumn::Num(v))?;
        }
    }
    for (label, c) in fallback {
        col(&mut parts, &mut written, &label, c)?;
    }
    if let Some(c) = table_num(table, &format!("{group}/class"), 1)? {
        col(
            &mut parts,
            &mut written,
            "rlnClassNumber",
            StarColumn::Num(c.iter().map(|&k| k + 1.0).collect()),
        )?;
    }
    col(
        &mut parts,
        &mut written,
        "rlnOpticsGroup",
        StarColumn::Num(gid.iter().map(|&g| g as f64).collect()),
    )?;

    // Extra columns that are not optics labels (those were placed above).
    for (name, c) in table.columns() {
        let Some(label) = extra_label(name) else {
            continue;
        };
        if written.contains(&label) || OPTICS_LABELS.contains(&label.as_str()) {
            continue;
        }
        let v = extra_values(name, c)?;
        col(&mut parts, &mut written, &label, v.all())?;
    }
    Ok(StarFile {
        blocks: vec![optics, parts],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::star::{parse_star, read_star, write_star};
    use crate::numerics::rotation::euler_deg_to_matrix;

    const P: &str = "in.star";

    fn parse(text: &str) -> StarFile {
        parse_star(text, Path::new(P)).unwrap()
    }

    fn names_of(t: &ParticleTable) -> Vec<String> {
        let p = t.str("blob/path").unwrap();
        let i = t.u32("blob/idx").unwrap();
        p.iter()
            .zip(i)
            .map(|(p, &i)| format_image_name(i as u64, p))
            .collect()
    }

    const V31: &str = "
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
_rlnBeamTiltX #10
opticsGroup1            1     0.530000   300.000000     2.700000     0.100000     1.060000          256            2     0.000000
opticsGroup2            2     0.530000   200.000000     2.000000     0.070000     1.060000          256            2     0.250000

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnPhaseShift #9
_rlnCtfBfactor #10
_rlnCtfScalefactor #11
_rlnAngleRot #12
_rlnAngleTilt #13
_rlnAnglePsi #14
_rlnOriginXAngst #15
_rlnOriginYAngst #16
_rlnClassNumber #17
_rlnRandomSubset #18
_rlnGroupName #19
  1234.5   987.25 000001@Extract/job012/mic1.mrcs MotionCorr/mic1.mrc 1 10000.5 9800.25 45.5 0 0 1 30.0 60.0 -90.0 2.12 -1.06 1 1 g1
   100.0   200.0  000002@Extract/job012/mic1.mrcs MotionCorr/mic1.mrc 2 20000 19000 -10 12.5 5 0.9 -170.0 120.0 10.0 0 0.53 3 2 g2
   300.0   400.0  000007@Extract/job012/mic2.mrcs MotionCorr/mic2.mrc 1 15000 15000 0 0 0 1 0 0 25 -3.18 0 2 1 g1
";

    #[test]
    fn relion31_maps_fields_and_units() {
        let t = star_to_table(&parse(V31), Path::new(P)).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.uid(), &[1, 2, 3]);
        assert_eq!(t.str("blob/path").unwrap()[2], "Extract/job012/mic2.mrcs");
        assert_eq!(t.u32("blob/idx").unwrap(), &[0, 1, 6]);
        assert_eq!(t.f32("ctf/df1_A").unwrap(), &[10000.5, 20000.0, 15000.0]);
        assert_eq!(t.f32("ctf/df2_A").unwrap(), &[9800.25, 19000.0, 15000.0]);
        assert_eq!(
            t.f32("ctf/df_angle_rad").unwrap()[0],
            45.5f64.to_radians() as f32
        );
        assert_eq!(
            t.f32("ctf/phase_shift_rad").unwrap()[1],
            12.5f64.to_radians() as f32
        );
        // Optics values joined per particle by group.
        assert_eq!(t.f32("ctf/accel_kv").unwrap(), &[300.0, 200.0, 300.0]);
        assert_eq!(t.f32("ctf/cs_mm").unwrap(), &[2.7, 2.0, 2.7]);
        assert_eq!(t.f32("ctf/amp_contrast").unwrap(), &[0.1, 0.07, 0.1]);
        assert_eq!(t.u32("ctf/exp_group_id").unwrap(), &[1, 2, 1]);
        assert_eq!(t.f32("blob/psize_A").unwrap(), &[1.06; 3]);
        assert_eq!(
            t.u32("blob/shape").unwrap(),
            &[256, 256, 256, 256, 256, 256]
        );
        assert_eq!(
            t.f32("location/center_x_px").unwrap(),
            &[1234.5, 100.0, 300.0]
        );
        assert_eq!(
            t.str("location/micrograph_path").unwrap()[1],
            "MotionCorr/mic1.mrc"
        );
        // Origins Å → px, class 1-based → 0-based, in the 3D group.
        assert_eq!(
            t.f32("alignments3D/shift").unwrap(),
            &[2.0, -1.0, 0.0, 0.5, -3.0, 0.0]
        );
        assert_eq!(t.u32("alignments3D/class").unwrap(), &[0, 2, 1]);
        assert_eq!(t.f32("alignments3D/psize_A").unwrap(), &[1.06; 3]);
        assert!(!t.has("alignments2D/pose"));
        let pose = t.f32("alignments3D/pose").unwrap();
        let want = euler_deg_to_pose(30.0, 60.0, -90.0);
        for k in 0..3 {
            assert_eq!(pose[k], want[k] as f32);
        }
        // Extras, including optics-only labels expanded per particle.
        assert_eq!(
            t.get("relion/RandomSubset").unwrap().data,
            ColumnData::F64(vec![1.0, 2.0, 1.0])
        );
        assert_eq!(t.str("relion/GroupName").unwrap(), &["g1", "g2", "g1"]);
        assert_eq!(
            t.str("relion/OpticsGroupName").unwrap(),
            &["opticsGroup1", "opticsGroup2", "opticsGroup1"]
        );
        assert_eq!(
            t.get("relion/BeamTiltX").unwrap().data,
            ColumnData::F64(vec![0.0, 0.25, 0.0])
        );
        assert_eq!(
            t.get("relion/MicrographOriginalPixelSize").unwrap().data,
            ColumnData::F64(vec![0.53; 3])
        );
        // Mapped labels are not duplicated as extras.
        for gone in [
            "relion/ImageName",
            "relion/OriginXAngst",
            "relion/ImageDimensionality",
            "relion/OpticsGroup",
        ] {
            assert!(!t.has(gone), "{gone}");
        }
    }

    #[test]
    fn relion31_round_trips_through_table_to_star() {
        let star = parse(V31);
        let t1 = star_to_table(&star, Path::new(P)).unwrap();
        let s2 = table_to_star(&t1, &names_of(&t1)).unwrap();
        // Optics: one row per group with the group-level values.
        let o = s2.block("optics").unwrap();
        assert_eq!(o.nrows(), 2);
        assert_eq!(
            o.column("rlnOpticsGroupName").unwrap().as_str().unwrap(),
            &["opticsGroup1", "opticsGroup2"]
        );
        assert_eq!(
            o.column("rlnVoltage").unwrap().as_num().unwrap(),
            &[300.0, 200.0]
        );
        assert_eq!(
            o.column("rlnAmplitudeContrast").unwrap().as_num().unwrap(),
            &[0.1, 0.07]
        );
        assert_eq!(
            o.column("rlnImagePixelSize").unwrap().as_num().unwrap(),
            &[1.06, 1.06]
        );
        assert_eq!(
            o.column("rlnImageSize").unwrap().as_num().unwrap(),
            &[256.0, 256.0]
        );
        assert_eq!(
            o.column("rlnImageDimensionality")
                .unwrap()
                .as_num()
                .unwrap(),
            &[2.0, 2.0]
        );
        assert_eq!(
            o.column("rlnBeamTiltX").unwrap().as_num().unwrap(),
            &[0.0, 0.25]
        );
        assert_eq!(
            o.column("rlnMicrographOriginalPixelSize")
                .unwrap()
                .as_num()
                .unwrap(),
            &[0.53, 0.53]
        );
        // Particles: the same numbers as the input file, not f32 noise.
        let p = s2.block("particles").unwrap();
        let orig = star.block("particles").unwrap();
        for l in [
            "rlnImageName",
            "rlnMicrographName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "rlnOpticsGroup",
            "rlnDefocusU",
            "rlnDefocusV",
            "rlnDefocusAngle",
            "rlnPhaseShift",
            "rlnCtfBfactor",
            "rlnCtfScalefactor",
            "rlnOriginXAngst",
            "rlnOriginYAngst",
            "rlnClassNumber",
            "rlnRandomSubset",
            "rlnGroupName",
        ] {
            assert_eq!(p.column(l), orig.column(l), "{l}");
        }
        assert!(!p.has("rlnVoltage") && !p.has("rlnOpticsGroupName"));
        // Angles: the same rotation (RELION's normalisation may pick equivalent angles).
        let get = |b: &StarBlock, l: &str| b.column(l).unwrap().as_num().unwrap().to_vec();
        let (r1, t1a, p1) = (
            get(orig, "rlnAngleRot"),
            get(orig, "rlnAngleTilt"),
            get(orig, "rlnAnglePsi"),
        );
        let (r2, t2a, p2) = (
            get(p, "rlnAngleRot"),
            get(p, "rlnAngleTilt"),
            get(p, "rlnAnglePsi"),
        );
        for i in 0..3 {
            let a = euler_deg_to_matrix(r1[i], t1a[i], p1[i]);
            let b = euler_deg_to_matrix(r2[i], t2a[i], p2[i]);
            for j in 0..3 {
                for k in 0..3 {
                    assert!((a[j][k] - b[j][k]).abs() < 1e-6, "row {i}");
                }
            }
        }
        // Angles that were round numbers are written as such.
        assert_eq!((r2[0], t2a[0], p2[0]), (30.0, 60.0, -90.0));
        assert_eq!((r2[1], t2a[1], p2[1]), (-170.0, 120.0, 10.0));
        assert_eq!((r2[2], t2a[2], p2[2]), (0.0, 0.0, 25.0));
        // And back to a table: identical, through a file on disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.star");
        write_star(&path, &s2).unwrap();
        let mut t2 = star_to_table(&read_star(&path).unwrap(), &path).unwrap();
        // Poses agree to f32 rounding of the Euler conversion (1e-16-sized components
        // come back as other 1e-16-sized values); every other field is identical.
        let (mut t1, p1, p2) = (
            t1.clone(),
            t1.f32("alignments3D/pose").unwrap().to_vec(),
            t2.f32("alignments3D/pose").unwrap().to_vec(),
        );
        for (a, b) in p1.iter().zip(&p2) {
            assert!((a - b).abs() <= 1e-6, "{p1:?} {p2:?}");
        }
        t1.remove("alignments3D/pose");
        t2.remove("alignments3D/pose");
        assert_eq!(t2, t1);
    }

    #[test]
    fn old_style_single_block() {
        let text = "data_images\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n\
                    _rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnMagnification\n_rlnDetectorPixelSize\n\
                    _rlnAnglePsi\n_rlnOriginX\n_rlnOriginY\n_rlnClassNumber\n\
                    1@stack.mrcs 12000 11000 30 300 2.7 0.1 100000 14 90 1.5 -2 4\n\
                    2@stack.mrcs 13000 12500 -30 300 2.7 0.1 100000 14 -45.25 0 0 1\n";
        let t = star_to_table(&parse(text), Path::new(P)).unwrap();
        assert_eq!(t.f32("blob/psize_A").unwrap(), &[1.4, 1.4]);
        assert_eq!(
            t.f32("alignments2D/pose").unwrap(),
            &[90f64.to_radians() as f32, (-45.25f64).to_radians() as f32]
        );
        assert_eq!(t.f32("alignments2D/shift").unwrap(), &[1.5, -2.0, 0.0, 0.0]);
        assert_eq!(t.u32("alignments2D/class").unwrap(), &[3, 0]);
        assert!(!t.has("alignments3D/pose") && !t.has("ctf/exp_group_id"));
        assert!(!t.has("relion/Magnification"));
        let s = table_to_star(&t, &names_of(&t)).unwrap();
        let o = s.block("optics").unwrap();
        assert_eq!(o.nrows(), 1);
        assert_eq!(
            o.column("rlnOpticsGroup").unwrap().as_num().unwrap(),
            &[1.0]
        );
        assert_eq!(
            o.column("rlnImagePixelSize").unwrap().as_num().unwrap(),
            &[1.4]
        );
        assert_eq!(o.column("rlnVoltage").unwrap().as_num().unwrap(), &[300.0]);
        let p = s.block("particles").unwrap();
        assert_eq!(
            p.column("rlnImageName").unwrap().as_str().unwrap(),
            &["000001@stack.mrcs", "000002@stack.mrcs"]
        );
        assert_eq!(
            p.column("rlnAnglePsi").unwrap().as_num().unwrap(),
            &[90.0, -45.25]
        );
        assert!(!p.has("rlnAngleRot"));
        assert_eq!(
            p.column("rlnOriginXAngst").unwrap().as_num().unwrap(),
            &[2.1, 0.0]
        );
        assert_eq!(
            p.column("rlnOriginYAngst").unwrap().as_num().unwrap(),
            &[-2.8, 0.0]
        );
        assert_eq!(
            p.column("rlnClassNumber").unwrap().as_num().unwrap(),
            &[4.0, 1.0]
        );
        assert_eq!(
            p.column("rlnOpticsGroup").unwrap().as_num().unwrap(),
            &[1.0, 1.0]
        );
        assert_eq!(
            p.column("rlnDefocusAngle").unwrap().as_num().unwrap(),
            &[30.0, -30.0]
        );
        let mut t2 = star_to_table(&s, Path::new(P)).unwrap();
        // The export added the optics group and its name; everything else is unchanged.
        t2.remove("ctf/exp_group_id");
        t2.remove("relion/OpticsGroupName");
        t2.remove("blob/shape");
        assert_eq!(t2, t);
    }

    #[test]
    fn missing_ctf_column_is_an_error_unless_optional() {
        let text =
            "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusAngle\n_rlnVoltage\n\
                    _rlnSphericalAberration\n_rlnAmplitudeContrast\n1@a.mrcs 1 2 300 2.7 0.1\n";
        let e = star_to_table(&parse(text), Path::new(P))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "in.star: _rlnDefocusV: missing column (needed for CTF)");
        let t = star_to_table_with(&parse(text), Path::new(P), CtfPolicy::IfPresent).unwrap();
        assert!(!t.has("ctf/df1_A"));
        assert_eq!(
            t.get("relion/DefocusU").unwrap().data,
            ColumnData::F64(vec![1.0])
        );
        // A non-numeric CTF value names the line.
        let bad = "data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n\
                   _rlnSphericalAberration\n_rlnAmplitudeContrast\n1@a.mrcs 1 2 3 300 2.7 0.1\n2@a.mrcs x 2 3 300 2.7 0.1\n";
        let e = star_to_table(&parse(bad), Path::new(P))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_rlnDefocusU") && e.contains("line 11") && e.contains("\"x\""),
            "{e}"
        );
    }

    fn with_names(names: &[&str]) -> String {
        let mut s = String::from("data_particles\nloop_\n_rlnImageName\n");
        for n in names {
            s.push_str(n);
            s.push('\n');
        }
        s
    }

    #[test]
    fn bad_image_index_is_an_error_naming_the_line() {
        for (name, what) in [
            ("0@a.mrcs", "< 1"),
            ("x@a.mrcs", "not a positive integer"),
            ("-3@a.mrcs", "not a positive"),
            ("5@", "no stack path"),
        ] {
            let s = parse(&with_names(&["1@a.mrcs", name]));
            let e = star_to_table_with(&s, Path::new(P), CtfPolicy::IfPresent)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("in.star: _rlnImageName: line 5 of data_particles"),
                "{e}"
            );
            assert!(e.contains(what), "{e}");
        }
        let s = parse(&with_names(&["single.mrc", "000010@b.mrcs"]));
        let t = star_to_table_with(&s, Path::new(P), CtfPolicy::IfPresent).unwrap();
        assert_eq!(t.u32("blob/idx").unwrap(), &[0, 9]);
        assert_eq!(t.str("blob/path").unwrap(), &["single.mrc", "b.mrcs"]);
    }

    #[test]
    fn class_numbers_are_one_based_in_star() {
        let text =
            "data_particles\nloop_\n_rlnImageName\n_rlnClassNumber\n1@a.mrcs 1\n2@a.mrcs 50\n";
        let t = star_to_table_with(&parse(text), Path::new(P), CtfPolicy::IfPresent).unwrap();
        assert_eq!(t.u32("alignments2D/class").unwrap(), &[0, 49]);
        let s = table_to_star(&t, &names_of(&t)).unwrap();
        assert_eq!(
            s.block("particles")
                .unwrap()
                .column("rlnClassNumber")
                .unwrap()
                .as_num()
                .unwrap(),
            &[1.0, 50.0]
        );
        for bad in ["0", "2.5", "-1"] {
            let text = format!("data_particles\nloop_\n_rlnImageName\n_rlnClassNumber\n1@a.mrcs 1\n2@a.mrcs {bad}\n");
            let e = star_to_table_with(&parse(&text), Path::new(P), CtfPolicy::IfPresent)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("_rlnClassNumber") && e.contains("line 6") && e.contains("1-based"),
                "{e}"
            );
        }
    }

    #[test]
    fn origins_convert_between_angstrom_and_pixels() {
        let mut t = ParticleTable::new(vec![7, 8]);
        t.set_f32("blob/psize_A", vec![1.3, 1.3]);
        t.set(
            "alignments2D/shift",
            Column::new(ColumnData::F32(vec![1.0, -2.5, 0.1, 3.0]), 2),
        );
        t.set_f32("alignments2D/pose", vec![0.5, -3.0]);
        let s = table_to_star(&t, &["1@a.mrcs".into(), "2@a.mrcs".into()]).unwrap();
        let p = s.block("particles").unwrap();
        let x = p.column("rlnOriginXAngst").unwrap().as_num().unwrap();
        let y = p.column("rlnOriginYAngst").unwrap().as_num().unwrap();
        assert_eq!(x, &[1.3, 0.13]);
        assert_eq!(y, &[-3.25, 3.9]);
        assert!(!p.has("rlnOriginX"));
        let back = star_to_table_with(&s, Path::new(P), CtfPolicy::IfPresent).unwrap();
        assert_eq!(
            back.f32("alignments2D/shift").unwrap(),
            t.f32("alignments2D/shift").unwrap()
        );
        assert_eq!(
            back.f32("alignments2D/pose").unwrap(),
            t.f32("alignments2D/pose").unwrap()
        );
        // Without a pixel size the origins are written in pixels.
        t.remove("blob/psize_A");
        let s = table_to_star(&t, &["1@a.mrcs".into(), "2@a.mrcs".into()]).unwrap();
        let p = s.block("particles").unwrap();
        assert_eq!(
            p.column("rlnOriginX").unwrap().as_num().unwrap(),
            &[1.0, 0.1]
        );
        assert!(!p.has("rlnOriginXAngst"));
        // Å origins without a pixel size cannot be read.
        let text = "data_particles\nloop_\n_rlnImageName\n_rlnOriginXAngst\n_rlnOriginYAngst\n1@a.mrcs 1 2\n";
        let e = star_to_table_with(&parse(text), Path::new(P), CtfPolicy::IfPresent)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_rlnOriginXAngst") && e.contains("pixel size"),
            "{e}"
        );
    }

    #[test]
    fn values_differing_within_a_group_are_written_per_particle() {
        let mut t = ParticleTable::new(vec![1, 2, 3]);
        t.set_u32("ctf/exp_group_id", vec![0, 0, 4]);
        t.set_f32("ctf/accel_kv", vec![300.0, 200.0, 300.0]);
        t.set_f32("ctf/cs_mm", vec![2.7, 2.7, 0.01]);
        t.set_f32("blob/psize_A", vec![0.83, 0.83, 0.83]);
        let s = table_to_star(&t, &["1@a".into(), "2@a".into(), "3@a".into()]).unwrap();
        let o = s.block("optics").unwrap();
        // Group 0 exists, so all ids shift by one (RELION groups start at 1).
        assert_eq!(
            o.column("rlnOpticsGroup").unwrap().as_num().unwrap(),
            &[1.0, 5.0]
        );
        assert!(!o.has("rlnVoltage"));
        assert_eq!(
            o.column("rlnSphericalAberration")
                .unwrap()
                .as_num()
                .unwrap(),
            &[2.7, 0.01]
        );
        let p = s.block("particles").unwrap();
        assert_eq!(
            p.column("rlnVoltage").unwrap().as_num().unwrap(),
            &[300.0, 200.0, 300.0]
        );
        assert_eq!(
            p.column("rlnOpticsGroup").unwrap().as_num().unwrap(),
            &[1.0, 1.0, 5.0]
        );
        assert!(!p.has("rlnSphericalAberration"));
    }

    #[test]
    fn optics_join_errors() {
        let text = "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n2 200\n\n\
                    data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 1\n2@a.mrcs 3\n";
        let e = star_to_table_with(&parse(text), Path::new(P), CtfPolicy::IfPresent)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_rlnOpticsGroup") && e.contains("line 13") && e.contains("optics group 3"),
            "{e}"
        );
        let text = "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n2 200\n\n\
                    data_particles\nloop_\n_rlnImageName\n1@a.mrcs\n";
        let e = star_to_table_with(&parse(text), Path::new(P), CtfPolicy::IfPresent)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing in data_particles"), "{e}");
        let e = star_to_table(
            &parse("data_optics\nloop_\n_rlnOpticsGroup\n1\n"),
            Path::new(P),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("_rlnImageName") && e.contains("no particle table"),
            "{e}"
        );
    }

    #[test]
    fn cryosparc_style_fields_export() {
        // A table as a .cs import gives it: fractional coordinates, 3D pose, F32 CTF.
        let mut t = ParticleTable::new(vec![11]);
        t.set_f32("location/center_x_frac", vec![0.25]);
        t.set_f32("location/center_y_frac", vec![0.75]);
        t.set(
            "location/micrograph_shape",
            Column::new(ColumnData::U32(vec![4096, 5760]), 2),
        );
        let pose = euler_deg_to_pose(10.0, 20.0, 30.0);
        t.set(
            "alignments3D/pose",
            Column::new(ColumnData::F32(pose.iter().map(|&x| x as f32).collect()), 3),
        );
        t.set_f32("ctf/df_angle_rad", vec![0.7]);
        let s = table_to_star(&t, &["1@x.mrcs".into()]).unwrap();
        let p = s.block("particles").unwrap();
        assert_eq!(
            p.column("rlnCoordinateX").unwrap().as_num().unwrap(),
            &[1440.0]
        );
        assert_eq!(
            p.column("rlnCoordinateY").unwrap().as_num().unwrap(),
            &[3072.0]
        );
        let rot = p.column("rlnAngleRot").unwrap().as_num().unwrap()[0];
        let tilt = p.column("rlnAngleTilt").unwrap().as_num().unwrap()[0];
        let psi = p.column("rlnAnglePsi").unwrap().as_num().unwrap()[0];
        assert!(
            (rot - 10.0).abs() < 1e-4 && (tilt - 20.0).abs() < 1e-4 && (psi - 30.0).abs() < 1e-4
        );
        let d = p.column("rlnDefocusAngle").unwrap().as_num().unwrap()[0];
        assert_eq!(d.to_radians() as f32, 0.7);
        assert!(format!("{d}").len() <= 10, "{d}");
    }

    #[test]
    fn random_table_round_trips_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 300;
        let mut t = ParticleTable::new((1..=n as u64).collect());
        let mut f =
            |lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(lo..hi)).collect() };
        let (df1, df2, ang, ph, bf, sc) = (
            f(5e3, 3e4),
            f(5e3, 3e4),
            f(-3.0, 3.0),
            f(0.0, 3.0),
            f(-50.0, 50.0),
            f(0.5, 1.5),
        );
        let (cx, cy, shift) = (
            f(0.0, 4096.0),
            f(0.0, 4096.0),
            (f(-10.0, 10.0), f(-10.0, 10.0)),
        );
        t.set_f32("ctf/df1_A", df1);
        t.set_f32("ctf/df2_A", df2);
        t.set_f32("ctf/df_angle_rad", ang);
        t.set_f32("ctf/phase_shift_rad", ph);
        t.set_f32("ctf/bfactor", bf);
        t.set_f32("ctf/scale", sc);
        t.set_f32("location/center_x_px", cx);
        t.set_f32("location/center_y_px", cy);
        let s: Vec<f32> = (0..n).flat_map(|i| [shift.0[i], shift.1[i]]).collect();
        t.set("alignments3D/shift", Column::new(ColumnData::F32(s), 2));
        let groups: Vec<u32> = (0..n).map(|i| 1 + (i % 3) as u32).collect();
        let kv = [300.0f32, 200.0, 300.0];
        t.set_f32(
            "ctf/accel_kv",
            groups.iter().map(|&g| kv[g as usize - 1]).collect(),
        );
        t.set_f32("ctf/cs_mm", vec![2.7; n]);
        t.set_f32("ctf/amp_contrast", vec![0.1; n]);
        t.set_f32("blob/psize_A", vec![1.06; n]);
        t.set_f32("alignments3D/psize_A", vec![1.06; n]);
        t.set(
            "blob/shape",
            Column::new(ColumnData::U32(vec![128; 2 * n]), 2),
        );
        t.set_str(
            "relion/OpticsGroupName",
            groups.iter().map(|g| format!("opticsGroup{g}")).collect(),
        );
        t.set_u32("ctf/exp_group_id", groups);
        t.set_str(
            "blob/path",
            (0..n).map(|i| format!("s{}.mrcs", i % 4)).collect(),
        );
        t.set_u32("blob/idx", (0..n as u32).collect());
        t.set_str(
            "location/micrograph_path",
            (0..n).map(|i| format!("mic {}.mrc", i % 7)).collect(),
        );
        t.set_u32(
            "alignments3D/class",
            (0..n).map(|i| (i % 11) as u32).collect(),
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let pose: Vec<f32> = (0..3 * n).map(|_| rng.gen_range(-1.8f32..1.8)).collect();
        t.set("alignments3D/pose", Column::new(ColumnData::F32(pose), 3));
        t.set(
            "relion/NormCorrection",
            Column::scalar(ColumnData::F64((0..n).map(|_| rng.gen()).collect())),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.star");
        write_star(&path, &table_to_star(&t, &names_of(&t)).unwrap()).unwrap();
        let mut back = star_to_table(&read_star(&path).unwrap(), &path).unwrap();
        let (p1, p2) = (
            t.f32("alignments3D/pose").unwrap().to_vec(),
            back.f32("alignments3D/pose").unwrap().to_vec(),
        );
        for i in 0..n {
            let a = crate::numerics::rotation::pose_to_matrix([
                p1[3 * i] as f64,
                p1[3 * i + 1] as f64,
                p1[3 * i + 2] as f64,
            ]);
            let b = crate::numerics::rotation::pose_to_matrix([
                p2[3 * i] as f64,
                p2[3 * i + 1] as f64,
                p2[3 * i + 2] as f64,
            ]);
            for j in 0..3 {
                for k in 0..3 {
                    assert!((a[j][k] - b[j][k]).abs() < 1e-6, "particle {i}");
                }
            }
        }
        t.remove("alignments3D/pose");
        back.remove("alignments3D/pose");
        assert_eq!(back, t);
    }
}
