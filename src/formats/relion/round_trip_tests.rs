//! Round trips STAR → table → STAR → table, through a file on disk.

use std::path::Path;

use super::test_data::{names_of, parse, P, V31};
use super::{star_to_table, star_to_table_with, table_to_star, CtfPolicy};
use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::formats::star::{read_star, write_star, StarBlock};
use crate::numerics::rotation::euler_deg_to_matrix;

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
fn random_table_round_trips_exactly() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = 300;
    let mut t = ParticleTable::new((1..=n as u64).collect());
    let mut f = |lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(lo..hi)).collect() };
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
    t.set_f32(
        "alignments3D/class_posterior",
        (0..n).map(|_| rng.gen_range(0.0f32..1.0)).collect(),
    );
    // Whole numbers: the STAR file holds the ESS rounded (see the next test).
    t.set_f32(
        "alignments3D/class_ess",
        (0..n).map(|_| rng.gen_range(1..11) as f32).collect(),
    );
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

/// RELION's classification statistics: `_rlnMaxValueProbDistribution` is the best-class
/// probability, `_rlnNrOfSignificantSamples` the ESS rounded to the nearest integer ≥ 1,
/// `_rlnClassNumber` the class + 1, `_rlnLogLikeliContribution` the log-likelihood;
/// reading the file back fills the same fields.
#[test]
fn classification_statistics_round_trip_through_star() {
    let mut t = ParticleTable::new(vec![1, 2, 3, 4]);
    t.set_str("blob/path", vec!["a.mrcs".into(); 4]);
    t.set_u32("blob/idx", vec![0, 1, 2, 3]);
    t.set_f32("blob/psize_A", vec![1.5; 4]);
    t.set_f32("alignments2D/pose", vec![0.0, 0.5, 1.0, -2.0]);
    t.set_u32("alignments2D/class", vec![0, 3, 3, 9]);
    t.set_f32(
        "alignments2D/class_posterior",
        vec![1.0, 0.61, 0.3333, 0.0999],
    );
    t.set_f32("alignments2D/class_ess", vec![1.0, 1.49, 1.5, 3.7]);
    t.set_f32(
        "alignments2D/log_likelihood",
        vec![-1.25e5, -98765.43, -0.5, -3.1e6],
    );
    let s = table_to_star(&t, &names_of(&t)).unwrap();
    let p = s.block("particles").unwrap();
    let num = |l: &str| p.column(l).unwrap().as_num().unwrap().to_vec();
    assert_eq!(num("rlnClassNumber"), [1.0, 4.0, 4.0, 10.0]);
    assert_eq!(
        num("rlnMaxValueProbDistribution"),
        [1.0, 0.61, 0.3333, 0.0999]
    );
    assert_eq!(num("rlnNrOfSignificantSamples"), [1.0, 1.0, 2.0, 4.0]);
    assert_eq!(
        num("rlnLogLikeliContribution"),
        [-1.25e5, -98765.43, -0.5, -3.1e6]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.star");
    write_star(&path, &s).unwrap();
    let back = star_to_table_with(&read_star(&path).unwrap(), &path, CtfPolicy::IfPresent).unwrap();
    assert_eq!(
        back.f32("alignments2D/class_posterior").unwrap(),
        t.f32("alignments2D/class_posterior").unwrap()
    );
    assert_eq!(
        back.f32("alignments2D/class_ess").unwrap(),
        &[1.0, 1.0, 2.0, 4.0]
    );
    assert_eq!(back.u32("alignments2D/class").unwrap(), &[0, 3, 3, 9]);
    assert_eq!(
        back.f32("alignments2D/log_likelihood").unwrap(),
        t.f32("alignments2D/log_likelihood").unwrap()
    );
    assert!(!back.has("relion/LogLikeliContribution"));
    assert!(!back.has("relion/MaxValueProbDistribution"));
    assert!(!back.has("relion/NrOfSignificantSamples"));
}
