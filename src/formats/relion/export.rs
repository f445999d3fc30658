//! [`ParticleTable`] → STAR (RELION 3.1): the optics groups and their `data_optics` rows,
//! then the particle columns in order (images, location, angles, origins, CTF, optics
//! values that differ within a group, class and its statistics, optics group, extra
//! columns).

use std::collections::{BTreeSet, HashMap, HashSet};

use rayon::prelude::*;

use super::units::{deg_decimal, f32_decimal, pose_euler_deg, short_decimal};
use super::{as_int, extra_label, OPTICS_LABELS};
use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};
use crate::formats::star::{StarBlock, StarColumn, StarFile};

/// Table name used in errors about a table built in memory (export has no input file).
const TABLE: &str = "(particle table)";

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

/// Adds column `label` to block `b`.
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

/// The STAR file being written: its two blocks and the labels placed so far.
struct Out {
    optics: StarBlock,
    parts: StarBlock,
    /// Labels written to either block (extra columns with these labels are not written
    /// again).
    written: HashSet<String>,
    /// Per-particle fallbacks of optics values that differ within a group.
    fallback: Vec<(String, StarColumn)>,
}

impl Out {
    /// Adds a particle column and records its label as written.
    fn col(&mut self, label: &str, c: StarColumn) -> Result<()> {
        self.written.insert(label.to_string());
        put(&mut self.parts, label, c)
    }
}

/// The optics groups of a table's particles.
struct Groups {
    /// Number of particles.
    n: usize,
    /// RELION optics group of each particle: `ctf/exp_group_id` (+ 1 when a group 0
    /// exists, as RELION's groups start at 1), or 1 when the table has none.
    gid: Vec<u32>,
    /// The groups, ascending: one `data_optics` row each.
    ids: Vec<u32>,
    /// Index into `ids` of each particle's group.
    of: Vec<usize>,
    /// First particle of each group.
    first: Vec<usize>,
}

impl Groups {
    /// The groups of `table`'s particles; an error when `ctf/exp_group_id` holds text or
    /// values that are not group numbers.
    fn of_table(table: &ParticleTable) -> Result<Groups> {
        let n = table.len();
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
        Ok(Groups {
            n,
            gid,
            ids: groups,
            of: pgroup,
            first,
        })
    }

    /// Whether `v` is the same for all particles of each group.
    fn uniform(&self, v: &Values) -> bool {
        (0..self.n).all(|i| v.same(i, self.first[self.of[i]]))
    }
}

/// Maps a table to a RELION 3.1 particle STAR file. `image_names` are the `N@path` names
/// of the particles' images, one per row (the caller knows where the images are).
pub fn table_to_star(table: &ParticleTable, image_names: &[String]) -> Result<StarFile> {
    let n = table.len();
    if image_names.len() != n {
        return Err(Error::Internal(format!(
            "STAR export: {} image names for {n} particles",
            image_names.len()
        )));
    }
    let groups = Groups::of_table(table)?;
    let mut out = Out {
        optics: StarBlock::new_loop("optics"),
        parts: StarBlock::new_loop("particles"),
        written: HashSet::new(),
        fallback: Vec::new(),
    };
    write_optics(table, &groups, &mut out)?;
    write_images_and_location(table, image_names, &mut out)?;
    let group = write_alignments(table, &mut out)?;
    write_ctf(table, &mut out)?;
    for (label, c) in std::mem::take(&mut out.fallback) {
        out.col(&label, c)?;
    }
    write_class_and_group(table, group, &groups, &mut out)?;
    write_extras(table, &mut out)?;
    Ok(StarFile {
        blocks: vec![out.optics, out.parts],
    })
}

/// `data_optics`: per group its name (`relion/OpticsGroupName` when uniform within each
/// group, else `opticsGroupN`) and id, the optics values of [`optics_candidates`] that are
/// uniform within each group (the others go to `out.fallback`, written per particle) and
/// `_rlnImageDimensionality 2`.
fn write_optics(table: &ParticleTable, groups: &Groups, out: &mut Out) -> Result<()> {
    let names = match table.str("relion/OpticsGroupName") {
        Some(v) if groups.uniform(&Values::Str(v.to_vec())) => {
            groups.first.iter().map(|&i| v[i].clone()).collect()
        }
        _ => groups
            .ids
            .iter()
            .map(|g| format!("opticsGroup{g}"))
            .collect(),
    };
    put(
        &mut out.optics,
        "rlnOpticsGroupName",
        StarColumn::Str(names),
    )?;
    put(
        &mut out.optics,
        "rlnOpticsGroup",
        StarColumn::Num(groups.ids.iter().map(|&g| g as f64).collect()),
    )?;
    out.written.extend([
        "rlnOpticsGroupName".to_string(),
        "rlnOpticsGroup".to_string(),
    ]);
    for (label, v) in optics_candidates(table)? {
        if groups.uniform(&v) {
            put(&mut out.optics, &label, v.pick(&groups.first))?;
        } else {
            out.fallback.push((label.clone(), v.all()));
        }
        out.written.insert(label);
    }
    put(
        &mut out.optics,
        "rlnImageDimensionality",
        StarColumn::Num(vec![2.0; groups.ids.len()]),
    )?;
    out.written.insert("rlnImageDimensionality".into());
    Ok(())
}

/// The per-particle values that belong in `data_optics`, by label: voltage, Cs, amplitude
/// contrast, pixel size, image size (an error unless the images are square) and the extra
/// columns of [`OPTICS_LABELS`].
fn optics_candidates(table: &ParticleTable) -> Result<Vec<(String, Values)>> {
    let n = table.len();
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
    Ok(candidates)
}

/// Image names, micrograph name and coordinates: px, or fraction × micrograph shape.
fn write_images_and_location(
    table: &ParticleTable,
    image_names: &[String],
    out: &mut Out,
) -> Result<()> {
    let n = table.len();
    out.col("rlnImageName", StarColumn::Str(image_names.to_vec()))?;
    if let Some(v) = table.str("location/micrograph_path") {
        out.col("rlnMicrographName", StarColumn::Str(v.to_vec()))?;
    }
    for (axis, px, frac, shape_col) in [
        ("X", "location/center_x_px", "location/center_x_frac", 1),
        ("Y", "location/center_y_px", "location/center_y_frac", 0),
    ] {
        let label = format!("rlnCoordinate{axis}");
        if let Some(v) = table_num(table, px, 1)? {
            out.col(&label, StarColumn::Num(v))?;
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
            out.col(&label, StarColumn::Num(v))?;
        }
    }
    Ok(())
}

/// Angles and origins of `alignments3D` when the table has any 3D alignment, else of
/// `alignments2D`; returns that group.
fn write_alignments(table: &ParticleTable, out: &mut Out) -> Result<&'static str> {
    let has3d = ["pose", "shift", "class"]
        .iter()
        .any(|f| table.has(&format!("alignments3D/{f}")));
    let group = if has3d {
        "alignments3D"
    } else {
        "alignments2D"
    };
    write_angles(table, has3d, out)?;
    write_origins(table, group, out)?;
    Ok(group)
}

/// Angles: the Euler angles of `alignments3D/pose` when `has3d`, else psi alone from
/// `alignments2D/pose` (degrees, with the fewest digits that read back as the same pose).
fn write_angles(table: &ParticleTable, has3d: bool, out: &mut Out) -> Result<()> {
    let n = table.len();
    if has3d {
        if let Some(p) = table_f32(table, "alignments3D/pose", 3)? {
            let e: Vec<[f64; 3]> = (0..n)
                .into_par_iter()
                .map(|i| pose_euler_deg([p[3 * i], p[3 * i + 1], p[3 * i + 2]]))
                .collect();
            let rot = e.iter().map(|a| a[0]).collect();
            let tilt = e.iter().map(|a| a[1]).collect();
            let psi = e.iter().map(|a| a[2]).collect();
            out.col("rlnAngleRot", StarColumn::Num(rot))?;
            out.col("rlnAngleTilt", StarColumn::Num(tilt))?;
            out.col("rlnAnglePsi", StarColumn::Num(psi))?;
        }
    } else if let Some(p) = table_f32(table, "alignments2D/pose", 1)? {
        out.col(
            "rlnAnglePsi",
            StarColumn::Num(p.par_iter().map(|&x| deg_decimal(x)).collect()),
        )?;
    }
    Ok(())
}

/// Origins of `group`'s shifts: in Å (shift × the group's pixel size, else the image pixel
/// size), or in px as `_rlnOriginX/Y` when no pixel size is known.
fn write_origins(table: &ParticleTable, group: &str, out: &mut Out) -> Result<()> {
    let n = table.len();
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
                out.col(
                    "rlnOriginXAngst",
                    StarColumn::Num((0..n).into_par_iter().map(|i| ang(2 * i)).collect()),
                )?;
                out.col(
                    "rlnOriginYAngst",
                    StarColumn::Num((0..n).into_par_iter().map(|i| ang(2 * i + 1)).collect()),
                )?;
            }
            None => {
                let px = |k: usize| f32_decimal(s[k]);
                out.col(
                    "rlnOriginX",
                    StarColumn::Num((0..n).map(|i| px(2 * i)).collect()),
                )?;
                out.col(
                    "rlnOriginY",
                    StarColumn::Num((0..n).map(|i| px(2 * i + 1)).collect()),
                )?;
            }
        }
    }
    Ok(())
}

/// CTF: defoci, defocus angle and phase shift (degrees), B-factor and scale.
fn write_ctf(table: &ParticleTable, out: &mut Out) -> Result<()> {
    for (label, field) in [("rlnDefocusU", "ctf/df1_A"), ("rlnDefocusV", "ctf/df2_A")] {
        if let Some(v) = table_num(table, field, 1)? {
            out.col(label, StarColumn::Num(v))?;
        }
    }
    for (label, field) in [
        ("rlnDefocusAngle", "ctf/df_angle_rad"),
        ("rlnPhaseShift", "ctf/phase_shift_rad"),
    ] {
        if let Some(v) = table_f32(table, field, 1)? {
            out.col(
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
            out.col(label, StarColumn::Num(v))?;
        }
    }
    Ok(())
}

/// `group`'s class (+ 1: RELION's classes are 1-based), its classification statistics
/// ([`write_class_statistics`]) and each particle's optics group.
fn write_class_and_group(
    table: &ParticleTable,
    group: &str,
    groups: &Groups,
    out: &mut Out,
) -> Result<()> {
    if let Some(c) = table_num(table, &format!("{group}/class"), 1)? {
        out.col(
            "rlnClassNumber",
            StarColumn::Num(c.iter().map(|&k| k + 1.0).collect()),
        )?;
    }
    write_class_statistics(table, group, out)?;
    out.col(
        "rlnOpticsGroup",
        StarColumn::Num(groups.gid.iter().map(|&g| g as f64).collect()),
    )?;
    Ok(())
}

/// `_rlnMaxValueProbDistribution` = `group`'s `class_posterior` (the best class's
/// probability) and `_rlnNrOfSignificantSamples` = its `class_ess` rounded to the nearest
/// integer (at least 1), the two per-particle statistics of a classification that RELION
/// displays and selects on, and `_rlnLogLikeliContribution` = its `log_likelihood`.
fn write_class_statistics(table: &ParticleTable, group: &str, out: &mut Out) -> Result<()> {
    if let Some(p) = table_num(table, &format!("{group}/class_posterior"), 1)? {
        out.col("rlnMaxValueProbDistribution", StarColumn::Num(p))?;
    }
    if let Some(e) = table_num(table, &format!("{group}/class_ess"), 1)? {
        let count = e
            .iter()
            .map(|&x| if x.is_finite() { x.round().max(1.0) } else { x })
            .collect();
        out.col("rlnNrOfSignificantSamples", StarColumn::Num(count))?;
    }
    if let Some(l) = table_num(table, &format!("{group}/log_likelihood"), 1)? {
        out.col("rlnLogLikeliContribution", StarColumn::Num(l))?;
    }
    Ok(())
}

/// Extra columns that are not optics labels (those were placed by [`write_optics`]) and
/// whose label was not written already.
fn write_extras(table: &ParticleTable, out: &mut Out) -> Result<()> {
    for (name, c) in table.columns() {
        let Some(label) = extra_label(name) else {
            continue;
        };
        if out.written.contains(&label) || OPTICS_LABELS.contains(&label.as_str()) {
            continue;
        }
        let v = extra_values(name, c)?;
        out.col(&label, v.all())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_data::{parse, P};
    use super::*;
    use crate::formats::relion::{star_to_table_with, CtfPolicy};
    use crate::numerics::rotation::euler_deg_to_pose;

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
}
