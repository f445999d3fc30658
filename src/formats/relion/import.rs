//! STAR → [`ParticleTable`]: the particle table and its optics groups read field by field
//! (images, CTF, pixel size and box, location, alignments), every other label kept as an
//! extra column.

use std::path::Path;

use super::parse_image_name;
use super::reader::{find_particles, Reader};
use super::units::{f32s, rad32};
use super::{as_int, extra_name, CtfPolicy, CTF_REQUIRED};
use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};
use crate::formats::star::{StarColumn, StarFile};
use crate::numerics::rotation::euler_deg_to_pose;

/// `_rlnAnglePsi` as RELION's AutoPick and Extract write it before any alignment.
const AUTOPICK_NO_PSI_DEG: f64 = -999.0;

/// Maps a particle STAR file to a table, requiring CTF parameters. `star_path` is used in
/// error messages and nothing else.
pub fn star_to_table(star: &StarFile, star_path: &Path) -> Result<ParticleTable> {
    star_to_table_with(star, star_path, CtfPolicy::Require)
}

/// Maps a particle STAR file to a table (see the module doc for the mapping).
pub fn star_to_table_with(
    star: &StarFile,
    star_path: &Path,
    ctf: CtfPolicy,
) -> Result<ParticleTable> {
    star_to_table_inner(star, star_path, ctf).map_err(crate::formats::printable_error)
}

/// [`star_to_table_with`] before its errors are made printable: finds the particle table,
/// joins it to its optics groups and reads the fields in order (the first error wins).
fn star_to_table_inner(star: &StarFile, star_path: &Path, ctf: CtfPolicy) -> Result<ParticleTable> {
    let path = star_path;
    let parts = find_particles(star, path)?;
    let n = parts.nrows();
    let optics = star.block("optics").filter(|b| b.is_loop);
    let mut r = Reader::new(path, parts, optics)?;
    let mut t = ParticleTable::new((1..=n as u64).collect());
    read_images(&mut r, &mut t)?;
    read_ctf(&mut r, &mut t, ctf)?;
    let psize = read_pixel_size(&mut r, &mut t)?;
    read_image_box(&mut r, &mut t)?;
    read_location(&mut r, &mut t)?;
    read_alignments(&mut r, &mut t, psize.as_deref())?;
    keep_extras(r, &mut t);
    Ok(t)
}

/// Images: `_rlnImageName` (required) → `blob/path` and `blob/idx`.
fn read_images(r: &mut Reader<'_>, t: &mut ParticleTable) -> Result<()> {
    let (path, parts, n) = (r.path, r.parts, r.rows());
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
    Ok(())
}

/// CTF: the six required labels (unless `ctf` is [`CtfPolicy::IfPresent`] and one is
/// missing), phase shift, B-factor and scale when present; and the optics group id.
fn read_ctf(r: &mut Reader<'_>, t: &mut ParticleTable, ctf: CtfPolicy) -> Result<()> {
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
    Ok(())
}

/// Pixel size → `blob/psize_A`: `_rlnImagePixelSize`, else `_rlnPixelSize`, else
/// `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`; each value must be positive. Returns
/// it (in Å, per particle) for the origins and the alignments' `psize_A`.
fn read_pixel_size(r: &mut Reader<'_>, t: &mut ParticleTable) -> Result<Option<Vec<f64>>> {
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
                r.path,
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
    Ok(psize)
}

/// Box: `_rlnImageSize` → `blob/shape` (n, n); `_rlnImageDimensionality`, when present,
/// must be 2 for every particle.
fn read_image_box(r: &mut Reader<'_>, t: &mut ParticleTable) -> Result<()> {
    if let Some(v) = r.ints("rlnImageSize", 1, u32::MAX as i64)? {
        let shape: Vec<u32> = v.iter().flat_map(|&s| [s as u32, s as u32]).collect();
        t.set("blob/shape", Column::new(ColumnData::U32(shape), 2));
    }
    if let Some(v) = r.ints("rlnImageDimensionality", 0, 3)? {
        if let Some(i) = v.iter().position(|&d| d != 2) {
            return Err(Error::field(
                r.path,
                "_rlnImageDimensionality",
                format!(
                    "{}: {}D images are not supported (particles must be 2D)",
                    r.place("rlnImageDimensionality", i),
                    v[i]
                ),
            ));
        }
    }
    Ok(())
}

/// Location: micrograph name and particle coordinates (px) on it.
fn read_location(r: &mut Reader<'_>, t: &mut ParticleTable) -> Result<()> {
    if let Some(v) = r.strs("rlnMicrographName")? {
        t.set_str("location/micrograph_path", v);
    }
    if let Some(v) = r.num("rlnCoordinateX")? {
        t.set_f32("location/center_x_px", f32s(&v));
    }
    if let Some(v) = r.num("rlnCoordinateY")? {
        t.set_f32("location/center_y_px", f32s(&v));
    }
    Ok(())
}

/// Alignments: pose, shifts, class, best-class probability, number of significant
/// samples and log-likelihood contribution into `alignments3D` when rot and tilt are
/// present, else `alignments2D`; the group also gets the pixel size `psize` when any of
/// them was imported.
fn read_alignments(r: &mut Reader<'_>, t: &mut ParticleTable, psize: Option<&[f64]>) -> Result<()> {
    let is3d = r.has("rlnAngleRot") && r.has("rlnAngleTilt");
    let group = if is3d { "alignments3D" } else { "alignments2D" };
    let mut aligned = read_pose(r, t, is3d)?;
    if let Some(s) = read_shifts(r, psize)? {
        t.set(
            &format!("{group}/shift"),
            Column::new(ColumnData::F32(s), 2),
        );
        aligned = true;
    }
    if let Some(class) = read_classes(r)? {
        t.set_u32(&format!("{group}/class"), class);
        aligned = true;
    }
    for (label, field) in [
        ("rlnMaxValueProbDistribution", "class_posterior"),
        ("rlnNrOfSignificantSamples", "class_ess"),
        ("rlnLogLikeliContribution", "log_likelihood"),
    ] {
        if let Some(v) = r.num(label)? {
            t.set_f32(&format!("{group}/{field}"), f32s(&v));
            aligned = true;
        }
    }
    if aligned {
        if let Some(p) = psize {
            t.set_f32(&format!("{group}/psize_A"), f32s(p));
        }
    }
    Ok(())
}

/// Pose: rot, tilt and psi (0 when absent) → `alignments3D/pose` when `is3d`, else psi
/// alone → `alignments2D/pose` in radians (none when every psi is AutoPick's −999; some
/// −999 among real angles is an error). Returns whether a pose was imported.
fn read_pose(r: &mut Reader<'_>, t: &mut ParticleTable, is3d: bool) -> Result<bool> {
    let (path, n) = (r.path, r.rows());
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
        return Ok(true);
    }
    let Some(psi) = r.num("rlnAnglePsi")? else {
        return Ok(false);
    };
    // RELION's AutoPick/Extract writes -999 for "no angle yet": all of them means unset.
    if psi.iter().all(|&x| x == AUTOPICK_NO_PSI_DEG) {
        log::info!(
            "{}: every _rlnAnglePsi is -999 (AutoPick: no angle yet); no 2D pose imported",
            path.display()
        );
        return Ok(false);
    }
    if let Some(i) = psi.iter().position(|&x| x == AUTOPICK_NO_PSI_DEG) {
        return Err(Error::field(
            path,
            "_rlnAnglePsi",
            format!(
                "{}: -999 (AutoPick's \"no angle\") among real angles; set every row or none",
                r.place("rlnAnglePsi", i)
            ),
        ));
    }
    t.set_f32("alignments2D/pose", rad32(&psi));
    Ok(true)
}

/// Shifts (px, x and y per particle): `_rlnOriginXAngst/YAngst` ÷ pixel size, else
/// `_rlnOriginX/Y`; both axes are needed once one is present.
fn read_shifts(r: &mut Reader<'_>, psize: Option<&[f64]>) -> Result<Option<Vec<f32>>> {
    let (path, n) = (r.path, r.rows());
    let shift = if r.has("rlnOriginXAngst") || r.has("rlnOriginYAngst") {
        let x = r.need("rlnOriginXAngst", "_rlnOriginYAngst is present")?;
        let y = r.need("rlnOriginYAngst", "_rlnOriginXAngst is present")?;
        let p = psize.ok_or_else(|| {
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
    Ok(shift)
}

/// Classes: `_rlnClassNumber` (1-based) → 0-based; none when every one is AutoPick's 0
/// ("not classified yet").
fn read_classes(r: &mut Reader<'_>) -> Result<Option<Vec<u32>>> {
    let (path, n) = (r.path, r.rows());
    let autopick_classes = r.has("rlnClassNumber") && {
        let v = r.num("rlnClassNumber")?.unwrap_or_default();
        !v.is_empty() && v.iter().all(|&x| x == 0.0)
    };
    if autopick_classes {
        // AutoPick/Extract writes class 0 for "not classified yet".
        log::info!(
            "{}: every _rlnClassNumber is 0 (AutoPick: not classified yet); no class imported",
            path.display()
        );
        r.consume("rlnClassNumber");
        return Ok(None);
    }
    if !r.has("rlnClassNumber") {
        return Ok(None);
    }
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
    Ok(Some(class))
}

/// Everything else, kept as is: each label not mapped above becomes an extra column
/// (optics-only labels expanded to one value per particle).
fn keep_extras(r: Reader<'_>, t: &mut ParticleTable) {
    let Reader {
        parts,
        optics,
        orow,
        used,
        ..
    } = r;
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
                    Column::scalar(extra_data(c, Some(&orow))),
                );
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_data::{names_of, parse, P, V31};
    use super::*;
    use crate::formats::relion::table_to_star;

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
}
