//! Interoperability with the Python libraries cryo-EM users read and write their data with:
//! `starfile`, `mrcfile` and `cryosparc-tools`, in the venv `.venv` that
//! `scripts/setup_venv.sh` makes, through `scripts/interop/*.py` and short snippets. Inputs
//! are written by those libraries (`make_relion.py`, `make_cs.py`), passed through
//! `emclass import` / `export`, and the outputs read back and compared by them.
//!
//! Without `.venv/bin/python` the tests that need it print a skip message and pass, unless
//! `EMCLASS_REQUIRE_INTEROP=1` (as `scripts/test.sh` sets), where they fail. The MPI test
//! needs no Python: it writes its inputs itself and compares the outputs byte for byte.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, or `None` (after saying so on stderr) when the venv is missing.
/// Panics when it is missing and `EMCLASS_REQUIRE_INTEROP=1`.
fn python() -> Option<Py> {
    let exe = repo().join(".venv/bin/python");
    if exe.exists() {
        return Some(Py { exe });
    }
    if std::env::var("EMCLASS_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!(
            "{} is missing and EMCLASS_REQUIRE_INTEROP=1: run `bash scripts/setup_venv.sh` to create the \
             Python venv for the interop tests",
            exe.display()
        );
    }
    eprintln!(
        "skipping interop test: {} is missing (run `bash scripts/setup_venv.sh` to enable it)",
        exe.display()
    );
    None
}

struct Py {
    exe: PathBuf,
}

impl Py {
    fn run(&self, dir: &Path, args: &[&str]) -> Run {
        let out = Command::new(&self.exe)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("start the venv's python");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// Runs `scripts/interop/<script> args...` in `dir`; it must succeed.
    fn script(&self, dir: &Path, script: &str, args: &[&str]) -> Run {
        let path = repo().join("scripts/interop").join(script);
        let mut all = vec![path.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(dir, &all).ok()
    }
    /// Runs a check script; it must print `OK: ...`.
    fn check(&self, dir: &Path, script: &str, args: &[&str]) -> String {
        let r = self.script(dir, script, args);
        assert!(
            r.stdout.starts_with("OK:"),
            "{script} {args:?}:\n{}{}",
            r.stdout,
            r.stderr
        );
        r.stdout
    }
    /// Runs `python -c code args...` in `dir`; it must succeed (a failed assert fails it).
    fn snippet(&self, dir: &Path, code: &str, args: &[&str]) -> String {
        let mut all = vec!["-c", code];
        all.extend_from_slice(args);
        self.run(dir, &all).ok().stdout
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The names in `dir` that a job must never leave behind (staging and temporary files).
fn leftovers(dir: &Path) -> Vec<String> {
    tree_snapshot(dir)
        .into_keys()
        .filter(|k| {
            k.ends_with(".tmp") || k.contains(".emclass-part") || k.contains(".emclass-tmp")
        })
        .collect()
}

/// Python: every row of STAR argv[1] (`N@stack`, relative to the STAR's folder) has the
/// pixels of slice `row` of argv[2], exactly (argv[3] absent or 0) or within relative
/// tolerance argv[3]; argv[2] is a float32 stack with voxel size argv[4] (when given).
const SAME_PIXELS_AS_STAR: &str = r#"
import os, sys
import mrcfile, numpy as np, starfile
src_star, out_mrcs = sys.argv[1], sys.argv[2]
rtol = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
voxel = float(sys.argv[4]) if len(sys.argv) > 4 else None
root = os.path.dirname(os.path.abspath(src_star))
data = starfile.read(src_star, always_dict=True)
parts = data["particles"] if "particles" in data else next(iter(data.values()))
with mrcfile.open(out_mrcs, permissive=False) as m:
    out = np.array(m.data)
    vs = float(m.voxel_size.x), float(m.voxel_size.y)
assert out.dtype == np.float32, out.dtype
assert out.shape[0] == len(parts), (out.shape, len(parts))
if voxel is not None:
    assert np.allclose(vs, voxel, rtol=1e-6, atol=0), vs
stacks = {}
exact_rows = 0
for row, name in enumerate(parts["rlnImageName"]):
    i, p = name.split("@", 1)
    if p not in stacks:
        with mrcfile.open(os.path.join(root, p), permissive=False) as m:
            stacks[p] = np.array(m.data, dtype=np.float32)
    src = stacks[p][int(i) - 1]
    if rtol == 0:
        ok = np.array_equal(src, out[row])
    else:
        ok = np.allclose(out[row], src, rtol=rtol, atol=1e-6)
    if not ok:
        sys.exit(f"MISMATCH: row {row} ({name}): max |diff| {np.abs(src - out[row]).max()}")
    exact_rows += int(np.array_equal(src, out[row]))
print(f"OK: {len(parts)} images match their source ({exact_rows} bit-identical)")
"#;

/// Python: the STAR argv[2] and the .cs argv[1] (one exported from the other) hold the same
/// particles in each program's units: 1-based classes
/// (class + 1), origins in Å (shift px × psize), CTF in Å/degrees, image names
/// `idx+1@path`, coordinates = fraction × micrograph size; angles of group argv[3]
/// (`alignments2D`: psi = pose in degrees, no rot/tilt; `alignments3D`: RELION's matrix of
/// (rot, tilt, psi) equals the transposed Rodrigues matrix of the pose, pyem's convention).
const STAR_MATCHES_CS: &str = r#"
import sys
import numpy as np, starfile
from cryosparc.dataset import Dataset
cs = Dataset.load(sys.argv[1])
st = starfile.read(sys.argv[2], always_dict=True)
group = sys.argv[3]
p, o = st["particles"], st["optics"]
n = len(cs)
assert len(p) == n, (len(p), n)
def close(name, a, b, rtol=1e-5, atol=1e-4):
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not np.allclose(a, b, rtol=rtol, atol=atol):
        k = int(np.argmax(~np.isclose(a, b, rtol=rtol, atol=atol)))
        sys.exit(f"MISMATCH: {name}: row {k}: STAR {a[k]!r} vs .cs {b[k]!r}")
def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)
# Classes: 1-based in RELION, 0-based in CryoSPARC.
cls = np.asarray(cs[f"{group}/class"]).astype(np.int64)
assert np.array_equal(p["rlnClassNumber"].to_numpy().astype(np.int64), cls + 1), "rlnClassNumber != class + 1"
# Origins: Å in RELION 3.1, pixels in CryoSPARC.
shift = np.asarray(cs[f"{group}/shift"], float)
gpsize = np.asarray(cs[f"{group}/psize_A"], float)
close("rlnOriginXAngst", p["rlnOriginXAngst"], shift[:, 0] * gpsize)
close("rlnOriginYAngst", p["rlnOriginYAngst"], shift[:, 1] * gpsize)
# Angles.
if group == "alignments2D":
    assert "rlnAngleRot" not in p.columns and "rlnAngleTilt" not in p.columns, list(p.columns)
    pose = np.degrees(np.asarray(cs["alignments2D/pose"], float))
    d = (p["rlnAnglePsi"].to_numpy(float) - pose + 180.0) % 360.0 - 180.0
    close("rlnAnglePsi (mod 360)", d, np.zeros(n), atol=1e-3)
else:
    a, b, g = (np.radians(p[c].to_numpy(float)) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    A = np.empty((n, 3, 3))
    A[:, 0, 0] = cg * cb * ca - sg * sa; A[:, 0, 1] = cg * cb * sa + sg * ca; A[:, 0, 2] = -cg * sb
    A[:, 1, 0] = -sg * cb * ca - cg * sa; A[:, 1, 1] = -sg * cb * sa + cg * ca; A[:, 1, 2] = sg * sb
    A[:, 2, 0] = sb * ca; A[:, 2, 1] = sb * sa; A[:, 2, 2] = cb
    v = np.asarray(cs["alignments3D/pose"], float)
    th = np.linalg.norm(v, axis=1)
    k = v / np.where(th > 0, th, 1)[:, None]
    K = np.zeros((n, 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 0] = -k[:, 2], k[:, 1], k[:, 2]
    K[:, 1, 2], K[:, 2, 0], K[:, 2, 1] = -k[:, 0], -k[:, 1], k[:, 0]
    R = np.eye(3)[None] + np.sin(th)[:, None, None] * K + (1 - np.cos(th))[:, None, None] * (K @ K)
    err = np.abs(A - np.transpose(R, (0, 2, 1))).reshape(n, 9).max(axis=1)
    if (err > 1e-4).any():
        k = int(np.argmax(err > 1e-4))
        sys.exit(f"MISMATCH: row {k}: Euler matrix of {tuple(float(p[c][k]) for c in ('rlnAngleRot', 'rlnAngleTilt', 'rlnAnglePsi'))} != R(pose {v[k]})^T (err {err[k]})")
# CTF.
close("rlnDefocusU", p["rlnDefocusU"], cs["ctf/df1_A"], rtol=1e-6, atol=1e-3)
close("rlnDefocusV", p["rlnDefocusV"], cs["ctf/df2_A"], rtol=1e-6, atol=1e-3)
da = (p["rlnDefocusAngle"].to_numpy(float) - np.degrees(np.asarray(cs["ctf/df_angle_rad"], float)) + 180) % 360 - 180
close("rlnDefocusAngle (mod 360)", da, np.zeros(n), atol=1e-3)
close("rlnPhaseShift", p["rlnPhaseShift"], np.degrees(np.asarray(cs["ctf/phase_shift_rad"], float)), atol=1e-3)
assert np.array_equal(p["rlnOpticsGroup"].to_numpy(), np.asarray(cs["ctf/exp_group_id"]).astype(np.int64)), "rlnOpticsGroup"
og = o.set_index("rlnOpticsGroup")
for lab, field in (("rlnVoltage", "ctf/accel_kv"), ("rlnSphericalAberration", "ctf/cs_mm"),
                   ("rlnAmplitudeContrast", "ctf/amp_contrast"), ("rlnImagePixelSize", "blob/psize_A")):
    col = p[lab] if lab in p.columns else og.loc[p["rlnOpticsGroup"], lab].to_numpy()
    close(lab, col, cs[field], rtol=1e-6, atol=0)
assert (og["rlnImageSize"] == np.asarray(cs["blob/shape"])[0, 1]).all(), og
# Image names and micrograph locations.
idx = np.asarray(cs["blob/idx"]).astype(np.int64)
paths = [text(x) for x in cs["blob/path"]]
want = [f"{i + 1}@{q}" for i, q in zip(idx, paths)]
got = [f"{int(x.split('@', 1)[0])}@{x.split('@', 1)[1]}" for x in p["rlnImageName"]]
assert got == want, (got[:3], want[:3])
assert list(p["rlnMicrographName"]) == [text(x) for x in cs["location/micrograph_path"]], "rlnMicrographName"
if "location/center_x_frac" in cs.fields():
    shape = np.asarray(cs["location/micrograph_shape"], float)  # (ny, nx)
    x, y = (np.asarray(cs[f"location/center_{c}_frac"], float) * shape[:, k] for c, k in (("x", 1), ("y", 0)))
else:  # from a STAR file: pixel coordinates, micrograph size unknown
    x, y = (np.asarray(cs[f"location/center_{c}_px"], float) for c in "xy")
close("rlnCoordinateX", p["rlnCoordinateX"], x, atol=0.01)
close("rlnCoordinateY", p["rlnCoordinateY"], y, atol=0.01)
print(f"OK: {n} particles, {group} in RELION units")
"#;

/// RELION writes image names as `NNNNNN@path` (6 digits); a file exported next to the
/// original must name its images with the very same strings (as starfile reads them).
fn assert_same_image_names(py: &Py, dir: &Path, a: &str, b: &str) {
    let out = py.snippet(
        dir,
        r#"
import json, sys, starfile
def names(f):
    d = starfile.read(f, always_dict=True)
    return list((d["particles"] if "particles" in d else next(iter(d.values())))["rlnImageName"])
print(json.dumps([names(sys.argv[1]), names(sys.argv[2])]))
"#,
        &[a, b],
    );
    let [na, nb]: [Vec<String>; 2] = serde_json::from_str(out.trim()).expect("names as JSON");
    assert_eq!(na.len(), nb.len(), "{a} vs {b}");
    for (x, y) in na.iter().zip(&nb) {
        assert_eq!(
            x, y,
            "_rlnImageName of {a} vs {b}: the same image must be named the same way"
        );
    }
}

/// Makes `dir/rel` with make_relion.py (50 particles, 32 px, 1.5 Å, 2 stacks) and imports it
/// into `dir/d.h5`.
fn relion_imported(py: &Py, dir: &Path) -> PathBuf {
    let rel = dir.join("rel");
    py.script(
        dir,
        "make_relion.py",
        &[s(&rel), "--n", "50", "--box", "32"],
    );
    emclass(
        dir,
        &["import", "--star", "rel/particles.star", "--out", "d.h5"],
    )
    .ok();
    rel
}

/// RELION round trip, and the issue's wording: "emclass import --star of a STAR file written
/// by Python starfile, then export --star, gives a file that starfile reads with the same
/// rows and values" — every column of every row, both blocks, image names included.
#[test]
fn star_written_by_python_starfile_reads_back_in_starfile_with_the_same_rows_and_values() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rel = relion_imported(&py, d);

    // Written next to the original: the image names must be the very same strings.
    emclass(d, &["export", "--in", "d.h5", "--star", "rel/out.star"]).ok();
    let ok = py.check(d, "check_star.py", &["rel/particles.star", "rel/out.star"]);
    assert!(ok.contains("50 particles"), "{ok}");
    // Written in a sub-folder: the names change but resolve to the same files.
    std::fs::create_dir(rel.join("sub")).unwrap();
    emclass(d, &["export", "--in", "d.h5", "--star", "rel/sub/out.star"]).ok();
    let text = std::fs::read_to_string(rel.join("sub/out.star")).unwrap();
    assert!(text.contains("@../Particles/stack_00.mrcs"), "{text}");
    py.check(
        d,
        "check_star.py",
        &[
            "rel/particles.star",
            "rel/sub/out.star",
            "--image-names-relative-to",
            "@star",
        ],
    );
    // And from a folder outside the data entirely (cwd elsewhere, relative --in).
    std::fs::create_dir(d.join("elsewhere")).unwrap();
    emclass(
        &d.join("elsewhere"),
        &["export", "--in", "../d.h5", "--star", "x.star"],
    )
    .ok();
    py.check(
        d,
        "check_star.py",
        &[
            "rel/particles.star",
            "elsewhere/x.star",
            "--image-names-relative-to",
            "@star",
        ],
    );
    // STAR → .cs: cryosparc-tools reads the .cs, in CryoSPARC's units (0-based classes,
    // pixel shifts, axis-angle poses, radians), with blob/path relative to its folder.
    emclass(d, &["export", "--in", "d.h5", "--cs", "rel/out.cs"]).ok();
    let ok = py.snippet(
        d,
        STAR_MATCHES_CS,
        &["rel/out.cs", "rel/particles.star", "alignments3D"],
    );
    assert!(ok.contains("OK: 50"), "{ok}");
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
    assert_same_image_names(&py, d, "rel/particles.star", "rel/out.star");
}

/// `--mrcs` writes the images in table order, bit-identical to the source stacks; a second
/// import → export of that output reproduces it exactly.
#[test]
fn exported_stack_holds_the_source_pixels_in_star_order() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    relion_imported(&py, d);
    std::fs::create_dir(d.join("a")).unwrap();
    emclass(
        d,
        &[
            "export",
            "--in",
            "d.h5",
            "--star",
            "a/out.star",
            "--mrcs",
            "a/out.mrcs",
        ],
    )
    .ok();
    // The STAR points at the new stack, 1..N in order.
    let names = py.snippet(
        d,
        "import sys, starfile; print('\\n'.join(starfile.read(sys.argv[1], always_dict=True)['particles']['rlnImageName']))",
        &["a/out.star"],
    );
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 50);
    for (i, n) in names.iter().enumerate() {
        let (k, p) = n.split_once('@').unwrap();
        assert_eq!(k.parse::<usize>().unwrap(), i + 1, "{n}");
        assert_eq!(p, "out.mrcs", "{n}");
    }
    let ok = py.snippet(
        d,
        SAME_PIXELS_AS_STAR,
        &["rel/particles.star", "a/out.mrcs", "0", "1.5"],
    );
    assert!(
        ok.contains("OK: 50 images") && ok.contains("(50 bit-identical)"),
        "{ok}"
    );
    // The exported STAR + stack is itself importable, and exports the same pixels again.
    emclass(d, &["import", "--star", "a/out.star", "--out", "d2.h5"]).ok();
    emclass(d, &["export", "--in", "d2.h5", "--mrcs", "b.mrcs"]).ok();
    py.check(d, "check_mrcs.py", &["a/out.mrcs", "b.mrcs"]);
    py.check(
        d,
        "check_star.py",
        &[
            "rel/particles.star",
            "a/out.star",
            "--ignore",
            "rlnImageName",
        ],
    );
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

/// CryoSPARC: .cs (cryosparc-tools) → import → export --cs keeps the uids and every field;
/// export --star has RELION's units (classes, origins, angles, CTF, coordinates).
#[test]
fn cs_round_trip_keeps_uids_and_fields_and_converts_units_for_star() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cs = d.join("proj");
    py.script(
        d,
        "make_cs.py",
        &[s(&cs.join("p.cs")), "--n", "40", "--stacks", "2"],
    );
    emclass(d, &["import", "--cs", "proj/p.cs", "--out", "c.h5"]).ok();
    emclass(d, &["export", "--in", "c.h5", "--cs", "proj/out.cs"]).ok();
    let ok = py.check(d, "check_cs.py", &["proj/p.cs", "proj/out.cs"]);
    assert!(ok.contains("40 particles"), "{ok}");

    // .cs → STAR with both 2D and 3D alignments: the 3D ones are written.
    emclass(d, &["export", "--in", "c.h5", "--star", "proj/c3d.star"]).ok();
    let ok = py.snippet(
        d,
        STAR_MATCHES_CS,
        &["proj/p.cs", "proj/c3d.star", "alignments3D"],
    );
    assert!(ok.contains("OK: 40"), "{ok}");

    // A 2D-only .cs (alignments3D dropped with cryosparc-tools): psi = pose in degrees.
    py.snippet(
        d,
        r#"
import sys
from cryosparc.dataset import Dataset
a = Dataset.load(sys.argv[1])
a.drop_fields([f for f in a.fields() if f.startswith("alignments3D/")]).save(sys.argv[2])
"#,
        &["proj/p.cs", "proj/p2d.cs"],
    );
    emclass(d, &["import", "--cs", "proj/p2d.cs", "--out", "c2.h5"]).ok();
    emclass(
        d,
        &[
            "export",
            "--in",
            "c2.h5",
            "--star",
            "proj/c2d.star",
            "--cs",
            "proj/c2d.cs",
        ],
    )
    .ok();
    py.snippet(
        d,
        STAR_MATCHES_CS,
        &["proj/p2d.cs", "proj/c2d.star", "alignments2D"],
    );
    py.check(d, "check_cs.py", &["proj/p2d.cs", "proj/c2d.cs"]);

    // STAR → .cs → STAR: the RELION file made from the .cs imports back to the same values.
    emclass(d, &["import", "--star", "proj/c3d.star", "--out", "s.h5"]).ok();
    emclass(d, &["export", "--in", "s.h5", "--star", "proj/again.star"]).ok();
    py.check(d, "check_star.py", &["proj/c3d.star", "proj/again.star"]);
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

/// Python: the uids of .cs argv[1] whose summed `alignments_class_N/class_posterior` over
/// the classes argv[2] (comma-separated) is >= argv[3] (summed in f64 of the f4 values,
/// capped at 1, as the class probability filter does), then the others, as JSON.
const EXPECTED_3D_SELECTION: &str = r#"
import json, sys
import numpy as np
from cryosparc.dataset import Dataset
cs = Dataset.load(sys.argv[1])
classes = [int(c) for c in sys.argv[2].split(",")]
total = sum(np.asarray(cs[f"alignments_class_{c}/class_posterior"], np.float64) for c in classes)
keep = np.minimum(total, 1.0) >= float(sys.argv[3])
uid = np.asarray(cs["uid"])
print(json.dumps([[int(u) for u in uid[keep]], [int(u) for u in uid[~keep]]]))
"#;

/// Python: STAR argv[2], exported from the dataset imported from .cs argv[1], carries the
/// 3D classification in RELION's labels: `_rlnClassNumber` = class + 1,
/// `_rlnMaxValueProbDistribution` = `alignments3D/class_posterior`,
/// `_rlnNrOfSignificantSamples` = `alignments3D/class_ess` rounded; no log-likelihood (the
/// .cs has none; emclass's own classifications write `log_likelihood`).
const STAR_HAS_THE_3D_CLASSIFICATION: &str = r#"
import sys
import numpy as np, starfile
from cryosparc.dataset import Dataset
cs = Dataset.load(sys.argv[1])
p = starfile.read(sys.argv[2], always_dict=True)["particles"]
assert np.array_equal(p["rlnClassNumber"].to_numpy(np.int64), np.asarray(cs["alignments3D/class"], np.int64) + 1)
post = p["rlnMaxValueProbDistribution"].to_numpy(np.float64)
assert np.array_equal(post.astype(np.float32), np.asarray(cs["alignments3D/class_posterior"])), post[:4]
ess = np.asarray(cs["alignments3D/class_ess"], np.float64)
nss = p["rlnNrOfSignificantSamples"].to_numpy()
assert np.issubdtype(nss.dtype, np.integer), nss.dtype
assert np.array_equal(nss, np.maximum(np.round(ess), 1).astype(np.int64)), (nss[:4], ess[:4])
assert 1 < len(set(nss.tolist())), "the test needs more than one rounded ESS"
assert "rlnLogLikeliContribution" not in p.columns
print(f"OK: {len(p)} particles carry their 3D classification")
"#;

/// CryoSPARC 3D classification results (issue 19): a .cs in Heterogeneous Refinement's
/// layout (`alignments_class_N/class_posterior` for N = 0..3, written by cryosparc-tools)
/// imports into `alignments3D/class_probs`; `subset` with `mode: class_probability_3d`
/// keeps exactly the particles whose posteriors of the chosen classes sum past the
/// threshold; `export --cs` writes the same per-class layout back (every field, type and
/// value); `export --star` carries class, best-class probability and rounded ESS, and
/// importing that STAR reads them back into the same fields.
#[test]
fn cryosparc_class_posteriors_drive_the_3d_filter_and_export_back() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py.script(
        d,
        "make_cs.py",
        &[
            "proj/h.cs",
            "--n",
            "60",
            "--stacks",
            "1",
            "--classes3d",
            "4",
        ],
    );
    emclass(d, &["import", "--cs", "proj/h.cs", "--out", "h.h5"]).ok();
    let (_, probs) = read_column(&d.join("h.h5"), "alignments3D/class_probs");
    assert_eq!(probs.len(), 60);
    assert!(probs
        .iter()
        .all(|p| p.len() == 4 && (p.iter().sum::<f64>() - 1.0).abs() < 1e-5));

    std::fs::write(
        d.join("sub.yaml"),
        "input: h.h5\noutput: sub\nmode: class_probability_3d\nclasses: [0, 2]\nthresholds: [0.6]\n",
    )
    .unwrap();
    emclass(d, &["subset", "sub.yaml"]).ok();
    let out = py.snippet(d, EXPECTED_3D_SELECTION, &["proj/h.cs", "0,2", "0.6"]);
    let [keep, drop]: [Vec<u64>; 2] = serde_json::from_str(out.trim()).expect("uids as JSON");
    assert!(keep.len() >= 5 && drop.len() >= 5, "{keep:?} {drop:?}");
    assert_eq!(dataset_uids(&d.join("sub/selected.h5")), keep);
    assert_eq!(dataset_uids(&d.join("sub/excluded.h5")), drop);

    emclass(d, &["export", "--in", "h.h5", "--cs", "proj/back.cs"]).ok();
    let ok = py.check(
        d,
        "check_cs.py",
        &[
            "proj/h.cs",
            "proj/back.cs",
            "--exact",
            "alignments_class_0/class_posterior",
            "alignments_class_3/class_posterior",
        ],
    );
    assert!(ok.contains("60 particles"), "{ok}");
    py.snippet(
        d,
        r#"
import sys
from cryosparc.dataset import Dataset
f = Dataset.load(sys.argv[1]).fields()
assert "alignments3D/class_probs" not in f, f
assert [x for x in f if x.endswith("/class_posterior") and not x.startswith("alignments2D")] == ["alignments3D/class_posterior"] + [f"alignments_class_{c}/class_posterior" for c in range(4)], f
"#,
        &["proj/back.cs"],
    );

    emclass(d, &["export", "--in", "h.h5", "--star", "proj/h.star"]).ok();
    let ok = py.snippet(
        d,
        STAR_HAS_THE_3D_CLASSIFICATION,
        &["proj/h.cs", "proj/h.star"],
    );
    assert!(ok.contains("OK: 60"), "{ok}");
    let ok = py.snippet(
        d,
        STAR_MATCHES_CS,
        &["proj/h.cs", "proj/h.star", "alignments3D"],
    );
    assert!(ok.contains("OK: 60"), "{ok}");
    emclass(d, &["import", "--star", "proj/h.star", "--out", "s.h5"]).ok();
    let col = |f: &str, field: &str| read_column(&d.join(f), field).1;
    assert_eq!(
        col("s.h5", "alignments3D/class"),
        col("h.h5", "alignments3D/class")
    );
    assert_eq!(
        col("s.h5", "alignments3D/class_posterior"),
        col("h.h5", "alignments3D/class_posterior")
    );
    let rounded: Vec<Vec<f64>> = col("h.h5", "alignments3D/class_ess")
        .iter()
        .map(|e| vec![e[0].round().max(1.0)])
        .collect();
    assert_eq!(col("s.h5", "alignments3D/class_ess"), rounded);
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

/// A RELION 3.0 file: one `data_` block, origins in pixels, pixel size from
/// DetectorPixelSize (µm) and Magnification.
#[test]
fn old_single_block_star_with_pixel_origins_and_magnification() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Headers say 1.0 Å; the STAR says 14 µm / 100000 = 1.4 Å, which must win.
    write_mrc_stack(
        &d.join("Extract/job007/stack_a.mrcs"),
        16,
        16,
        1.0,
        &test_images(0, 3, 16),
    );
    write_mrc_stack(
        &d.join("Extract/job007/stack_b.mrcs"),
        16,
        16,
        1.0,
        &test_images(3, 2, 16),
    );
    let mut star = String::from(
        "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n_rlnCoordinateX #3\n\
         _rlnCoordinateY #4\n_rlnDefocusU #5\n_rlnDefocusV #6\n_rlnDefocusAngle #7\n_rlnVoltage #8\n\
         _rlnSphericalAberration #9\n_rlnAmplitudeContrast #10\n_rlnDetectorPixelSize #11\n\
         _rlnMagnification #12\n_rlnOriginX #13\n_rlnOriginY #14\n_rlnAnglePsi #15\n_rlnClassNumber #16\n",
    );
    let refs = ["1@a", "2@a", "3@a", "1@b", "2@b"];
    for (i, r) in refs.iter().enumerate() {
        let (k, which) = r.split_once('@').unwrap();
        let f = i as f64;
        star += &format!(
            "{:06}@Extract/job007/stack_{which}.mrcs Movies/mic{}.mrc {:.6} {:.6} {:.6} {:.6} {:.6} 300.000000 \
             2.000000 0.070000 14.000000 100000.000000 {:.6} {:.6} {:.6} {}\n",
            k.parse::<usize>().unwrap(),
            i / 2,
            512.0 + 33.0 * f,
            1024.0 - 17.5 * f,
            15000.0 + 250.0 * f,
            14500.0 + 240.0 * f,
            12.5 * f - 30.0,
            2.0 * f - 3.5,
            1.25 - 0.75 * f,
            -170.0 + 80.0 * f,
            i % 2 + 1,
        );
    }
    std::fs::write(d.join("run_it025_data.star"), star).unwrap();
    emclass(
        d,
        &["import", "--star", "run_it025_data.star", "--out", "old.h5"],
    )
    .ok();
    emclass(
        d,
        &[
            "export", "--in", "old.h5", "--star", "out.star", "--cs", "out.cs",
        ],
    )
    .ok();
    let ok = py.snippet(
        d,
        r#"
import sys
import numpy as np, starfile
from cryosparc.dataset import Dataset
a = starfile.read(sys.argv[1])            # the single-block 3.0 file: one DataFrame
b = starfile.read(sys.argv[2], always_dict=True)
p, o = b["particles"], b["optics"]
assert len(p) == len(a) == 5, (len(p), len(a))
assert np.allclose(o["rlnImagePixelSize"], 1.4, rtol=1e-6, atol=0), o["rlnImagePixelSize"]
assert (o["rlnImageSize"] == 16).all(), o
norm = lambda names: [f"{int(x.split('@', 1)[0])}@{x.split('@', 1)[1]}" for x in names]
assert norm(p["rlnImageName"]) == norm(a["rlnImageName"]), (list(p["rlnImageName"]), list(a["rlnImageName"]))
assert list(p["rlnMicrographName"]) == list(a["rlnMicrographName"])
for c in ("rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV"):
    assert np.allclose(p[c], a[c], rtol=1e-6, atol=1e-4), (c, p[c], a[c])
for c in ("rlnDefocusAngle", "rlnAnglePsi"):
    d = (p[c] - a[c] + 180) % 360 - 180
    assert np.allclose(d, 0, atol=1e-3), (c, p[c], a[c])
for x in "XY":
    assert np.allclose(p[f"rlnOrigin{x}Angst"], a[f"rlnOrigin{x}"] * 1.4, rtol=1e-5, atol=1e-5), (p[f"rlnOrigin{x}Angst"], a[f"rlnOrigin{x}"])
assert (p["rlnClassNumber"].to_numpy() == a["rlnClassNumber"].to_numpy()).all()
og = o.set_index("rlnOpticsGroup")
for c, v in (("rlnVoltage", 300.0), ("rlnSphericalAberration", 2.0), ("rlnAmplitudeContrast", 0.07)):
    col = p[c] if c in p.columns else og.loc[p["rlnOpticsGroup"], c].to_numpy()
    assert np.allclose(col, v, rtol=1e-6), (c, col)
cs = Dataset.load(sys.argv[3])
sh = np.asarray(cs["alignments2D/shift"], float)
assert np.allclose(sh[:, 0], a["rlnOriginX"], rtol=1e-5, atol=1e-5), (sh[:, 0], a["rlnOriginX"])
assert np.allclose(sh[:, 1], a["rlnOriginY"], rtol=1e-5, atol=1e-5), (sh[:, 1], a["rlnOriginY"])
assert np.allclose(cs["blob/psize_A"], 1.4, rtol=1e-6)
assert (np.asarray(cs["alignments2D/class"]) == a["rlnClassNumber"].to_numpy() - 1).all()
assert "alignments3D/pose" not in cs.fields()
print("OK")
"#,
        &["run_it025_data.star", "out.star", "out.cs"],
    );
    assert!(ok.contains("OK"), "{ok}");
    // The images came along too (from the headers' stacks, at the STAR's pixel size).
    emclass(d, &["export", "--in", "old.h5", "--mrcs", "old.mrcs"]).ok();
    let ok = py.snippet(
        d,
        SAME_PIXELS_AS_STAR,
        &["run_it025_data.star", "old.mrcs", "0", "1.4"],
    );
    assert!(ok.contains("(5 bit-identical)"), "{ok}");
    assert_same_image_names(&py, d, "run_it025_data.star", "out.star");
}

/// A bare stack written by mrcfile: `--pixel-size` is what the dataset and the exported
/// stack carry, and the pixels come back identical.
#[test]
fn bare_stack_round_trip_is_identical_and_takes_the_given_pixel_size() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    py.snippet(
        d,
        r#"
import sys
import mrcfile, numpy as np
rng = np.random.default_rng(3)
for name, voxel in ((sys.argv[1], 1.5), (sys.argv[2], 1.0)):
    with mrcfile.new(name, overwrite=True) as m:
        m.set_data(rng.normal(0, 1, size=(7, 24, 24)).astype(np.float32))
        m.set_image_stack()
        m.voxel_size = voxel
"#,
        &["s.mrcs", "s1.mrcs"],
    );
    emclass(
        d,
        &[
            "import",
            "--mrcs",
            "s.mrcs",
            "--pixel-size",
            "1.5",
            "--out",
            "m.h5",
        ],
    )
    .ok();
    let info = emclass(d, &["info", "m.h5"]).ok().stdout;
    assert!(
        info.contains("particles 7") && info.contains("24 × 24 px at 1.5 Å/px"),
        "{info}"
    );
    emclass(d, &["export", "--in", "m.h5", "--mrcs", "out.mrcs"]).ok();
    let ok = py.check(d, "check_mrcs.py", &["s.mrcs", "out.mrcs"]);
    assert!(
        ok.contains("(7, 24, 24) float32 pixels identical, voxel size (1.5, 1.5, 1.5)"),
        "{ok}"
    );

    // The header says 1.0 Å; --pixel-size 1.5 overrides it.
    emclass(
        d,
        &[
            "import",
            "--mrcs",
            "s1.mrcs",
            "--pixel-size",
            "1.5",
            "--out",
            "m1.h5",
        ],
    )
    .ok();
    emclass(d, &["export", "--in", "m1.h5", "--mrcs", "out1.mrcs"]).ok();
    let ok = py.snippet(
        d,
        r#"
import sys
import mrcfile, numpy as np
with mrcfile.open(sys.argv[1], permissive=False) as a, mrcfile.open(sys.argv[2], permissive=False) as b:
    assert np.array_equal(a.data, b.data)
    assert float(b.voxel_size.x) == 1.5 and float(b.voxel_size.y) == 1.5, b.voxel_size
print("OK")
"#,
        &["s1.mrcs", "out1.mrcs"],
    );
    assert!(ok.contains("OK"), "{ok}");
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

/// `emclass info` without the lines that name the file itself.
fn info_without_names(dir: &Path, file: &str) -> String {
    let info = emclass(dir, &["info", file]).ok().stdout;
    info.lines()
        .filter(|l| !l.starts_with("dataset ") && !l.starts_with("images "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Under `mpirun -n 2` and `-n 3` the import runs on rank 0 while the others wait: the same
/// dataset as a single process (same info, same exports byte for byte), nothing extra.
#[test]
fn import_under_mpirun_two_and_three_ranks_equals_a_single_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_relion_set(d, &[7, 5, 9], 16);
    // Each run exports into its own folder x1, x2, x3 under the same names, so that the
    // files can be compared byte for byte.
    let export = |ranks: usize, h5: &str| {
        let x = format!("x{ranks}");
        std::fs::create_dir(d.join(&x)).unwrap();
        let (st, cs, mrcs, plain) = (
            format!("{x}/out.star"),
            format!("{x}/out.cs"),
            format!("{x}/out.mrcs"),
            format!("{x}/plain.star"),
        );
        let args = [
            "export", "--in", h5, "--star", &st, "--cs", &cs, "--mrcs", &mrcs,
        ];
        let plain_args = [
            "export",
            "--in",
            h5,
            "--star",
            &plain,
            "--cs",
            &format!("{x}/plain.cs"),
        ];
        if ranks == 1 {
            emclass(d, &args).ok();
            emclass(d, &plain_args).ok();
        } else {
            mpirun(d, ranks, &args).ok();
            mpirun(d, ranks, &plain_args).ok();
        }
    };
    emclass(d, &["import", "--star", "particles.star", "--out", "n1.h5"]).ok();
    export(1, "n1.h5");
    let want_info = info_without_names(d, "n1.h5");
    assert!(want_info.contains("particles 21"), "{want_info}");
    for n in [2usize, 3] {
        let h5 = format!("n{n}.h5");
        let r = mpirun(d, n, &["import", "--star", "particles.star", "--out", &h5]).ok();
        assert!(
            !r.stderr.contains("error") && !r.stderr.contains("WARN"),
            "{}",
            r.stderr
        );
        // Rank 0 alone reports the import.
        assert_eq!(
            r.stderr.matches("wrote n").count() + r.stdout.matches("wrote n").count(),
            1,
            "{}",
            r.stderr
        );
        assert_eq!(info_without_names(d, &h5), want_info, "info of {h5}");
        export(n, &h5);
        for f in ["out.star", "out.cs", "out.mrcs", "plain.star", "plain.cs"] {
            let a = std::fs::read(d.join("x1").join(f)).unwrap();
            let b = std::fs::read(d.join(format!("x{n}")).join(f)).unwrap();
            assert!(a == b, "x1/{f} and x{n}/{f} differ");
        }
    }
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
    // Exactly the files asked for.
    assert_eq!(
        ls(d),
        [
            "Particles",
            "n1.h5",
            "n2.h5",
            "n3.h5",
            "particles.star",
            "x1",
            "x2",
            "x3"
        ]
    );
    for n in 1..=3 {
        assert_eq!(
            ls(&d.join(format!("x{n}"))),
            ["out.cs", "out.mrcs", "out.star", "plain.cs", "plain.star"]
        );
    }
}

/// `--dtype f16`: the exported float32 stack is within float16 rounding (1e-3 relative) of the
/// source, and really was stored at half precision.
#[test]
fn float16_storage_keeps_values_within_1e_3_relative() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rel = d.join("rel");
    py.script(d, "make_relion.py", &[s(&rel), "--n", "20", "--box", "32"]);
    emclass(
        d,
        &[
            "import",
            "--star",
            "rel/particles.star",
            "--out",
            "h.h5",
            "--dtype",
            "f16",
        ],
    )
    .ok();
    let info = emclass(d, &["info", "h.h5"]).ok().stdout;
    assert!(info.contains("F16"), "{info}");
    emclass(d, &["export", "--in", "h.h5", "--mrcs", "h.mrcs"]).ok();
    let ok = py.snippet(
        d,
        SAME_PIXELS_AS_STAR,
        &["rel/particles.star", "h.mrcs", "1e-3", "1.5"],
    );
    assert!(
        ok.contains("OK: 20 images") && !ok.contains("(20 bit-identical)"),
        "{ok}"
    );
    // gzip + f16 gives the same values as f16 alone.
    emclass(
        d,
        &[
            "import",
            "--star",
            "rel/particles.star",
            "--out",
            "hz.h5",
            "--dtype",
            "f16",
            "--gzip",
            "4",
        ],
    )
    .ok();
    emclass(d, &["export", "--in", "hz.h5", "--mrcs", "hz.mrcs"]).ok();
    py.check(d, "check_mrcs.py", &["h.mrcs", "hz.mrcs"]);
}

/// Issue 19 item 6b: classify3d's `volumes/all_volumes.mrcs` layout (MRC2014 volume stack,
/// `mrc::write_volume_stack`) is what mrcfile reads as K volumes: strict mode accepts it,
/// it is a volume stack of shape (K, n, n, n), volume k equals the k-th single volume file,
/// and the voxel size is the volumes'.
#[test]
fn volume_stack_reads_in_mrcfile_as_the_class_volumes() {
    let Some(py) = python() else { return };
    use emclass::formats::mrc::{write_volume, write_volume_stack};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 6;
    let vols: Vec<ndarray::Array3<f32>> = (0..3)
        .map(|k| {
            ndarray::Array3::from_shape_fn((n, n, n), |(z, y, x)| {
                (k * 1000 + z * 100 + y * 10 + x) as f32 * 0.25 - 7.0
            })
        })
        .collect();
    for (k, v) in vols.iter().enumerate() {
        write_volume(d.join(format!("class_{k:02}.mrc")), v.view(), 2.5).unwrap();
    }
    let views: Vec<_> = vols.iter().map(|v| v.view()).collect();
    write_volume_stack(d.join("all.mrcs"), &views, 2.5, "3 classes").unwrap();
    let out = py.snippet(
        d,
        r#"
import mrcfile, numpy as np
with mrcfile.open("all.mrcs", permissive=False) as m:
    assert m.is_volume_stack(), m.header.ispg
    assert m.data.shape == (3, 6, 6, 6), m.data.shape
    assert abs(float(m.voxel_size.x) - 2.5) < 1e-6 and abs(float(m.voxel_size.z) - 2.5) < 1e-6
    for k in range(3):
        with mrcfile.open("class_%02d.mrc" % k, permissive=False) as v:
            assert np.array_equal(m.data[k], v.data), k
print("OK volume stack")
"#,
        &[],
    );
    assert!(out.contains("OK volume stack"), "{out}");
}
