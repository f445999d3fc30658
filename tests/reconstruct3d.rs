//! `emclass reconstruct3d` end to end after `classify3d` on simulated 3D heterogeneity: the
//! class maps at the full box against the simulator's true volumes, FSC curves and
//! resolutions, hard and soft weighting, a chosen subset of classes, symmetry, the same maps
//! on 1 and 2 MPI ranks, and bad input (one line naming the file and field, nothing written,
//! the input untouched).

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use emclass::dataset::store::write_referencing;
use emclass::dataset::{Column, ColumnData, Dataset, DatasetAttrs, ParticleTable};
use emclass::formats::mrc::{read_volume, write_volume};
use ndarray::Array3;

/// Box 48 at 3 Å (Nyquist 6 Å), two states differing by a domain of 20% of the mass, SNR
/// 0.15, 5% junk; then classify3d at 12 Å (a working box of about 26 px) into `c3d`.
fn simulate_and_classify(d: &Path, n: usize) {
    let sets = [
        "box_px=48",
        "psize_A=3.0",
        "snr=0.15",
        "domain_mass_fraction=0.2",
        "junk_fraction=0.05",
        "duplicate_fraction=0",
        "max_shift_px=2",
        "seed=5",
    ];
    simulate_with(d, "hetero3d", "sim", n, &sets);
    std::fs::write(
        d.join("c3d.yaml"),
        "input: sim/particles.h5\noutput: c3d\nfilter_res_A: 12\noem_batch_size: 300\nseed: 1\n",
    )
    .unwrap();
    emclass(d, &["-q", "classify3d", "c3d.yaml"]).ok();
}

/// A reconstruct3d config `name` for `input` into `output`, with `extra` lines.
fn config(d: &Path, name: &str, input: &str, output: &str, extra: &str) {
    std::fs::write(
        d.join(name),
        format!("input: {input}\noutput: {output}\n{extra}"),
    )
    .unwrap();
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn column(path: &Path, field: &str) -> Vec<f64> {
    Dataset::open(path)
        .unwrap()
        .table()
        .get(field)
        .unwrap_or_else(|| panic!("{} lacks {field}", path.display()))
        .data
        .to_f64()
        .unwrap()
}

fn vol(path: &Path) -> (Array3<f32>, f32) {
    read_volume(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Pearson correlation of two volumes (within `mask` when given).
fn corr(a: &Array3<f32>, b: &Array3<f32>, mask: Option<&Array3<f32>>) -> f64 {
    let w: Vec<f64> = match mask {
        Some(m) => m.iter().map(|v| *v as f64).collect(),
        None => vec![1.0; a.len()],
    };
    let (x, y): (Vec<f64>, Vec<f64>) = a
        .iter()
        .zip(b.iter())
        .zip(&w)
        .map(|((p, q), m)| (*p as f64 * m, *q as f64 * m))
        .unzip();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (mean(&x), mean(&y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (p, q) in x.iter().zip(&y) {
        sxy += (p - mx) * (q - my);
        sxx += (p - mx).powi(2);
        syy += (q - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// The true state most of each class's (non-junk) particles come from.
fn state_of_class(particles: &Path) -> HashMap<usize, usize> {
    let (gt, class) = (
        column(particles, "gt/state"),
        column(particles, "alignments3D/class"),
    );
    let mut votes: HashMap<(usize, usize), usize> = HashMap::new();
    for (g, c) in gt.iter().zip(&class) {
        if *g >= 0.0 {
            *votes.entry((*c as usize, *g as usize)).or_default() += 1;
        }
    }
    let mut best: HashMap<usize, (usize, usize)> = HashMap::new();
    for ((c, s), v) in votes {
        let e = best.entry(c).or_insert((s, 0));
        if v > e.1 {
            *e = (s, v);
        }
    }
    best.into_iter().map(|(c, (s, _))| (c, s)).collect()
}

/// Writes `d/<name>` referencing the images of `src` with its table changed by `edit`.
fn derived(d: &Path, src: &Path, name: &str, edit: impl FnOnce(&mut ParticleTable)) -> PathBuf {
    let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let src = Dataset::open(src).unwrap();
    let mut t = src.table().clone();
    edit(&mut t);
    let path = d.join(name);
    let attrs = DatasetAttrs {
        blob_root: None,
        source: "test".into(),
    };
    write_referencing(&path, &t, &attrs, &src).unwrap();
    path
}

const MAPS: [&str; 5] = ["half_A", "half_B", "map", "map_filtered", "mask"];

/// Hard weighting of every class: full-box maps that match their own true state better
/// than the other one, sensible FSC resolutions, the FSC table, plots and summary; then
/// soft weighting of class 1 only.
#[test]
fn reconstructs_every_class_at_the_full_box_matching_its_true_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate_and_classify(d, 1500);
    config(d, "r.yaml", "c3d/particles.h5", "hard", "");
    emclass(d, &["-q", "reconstruct3d", "r.yaml"]).ok();
    let out = d.join("hard");
    for f in [
        "fsc.csv",
        "summary.json",
        "config.used.yaml",
        "plots/fsc.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}: {:?}", ls(&out));
    }
    assert!(out.join("plots/class_maps.png").is_file());
    // classify3d's volumes are at its working box; these at the particles' box.
    let (small, _) = vol(&d.join("c3d/volumes/class_00.mrc"));
    assert!(small.dim().0 < 40, "{:?}", small.dim());
    for c in 0..2 {
        for m in MAPS {
            let (v, ps) = vol(&out.join(format!("class_{c:02}_{m}.mrc")));
            assert_eq!(v.dim(), (48, 48, 48), "class {c} {m}");
            assert_eq!(ps, 3.0);
            assert!(v.iter().all(|x| x.is_finite()), "class {c} {m}");
        }
        let (mask, _) = vol(&out.join(format!("class_{c:02}_mask.mrc")));
        assert!(mask.iter().all(|v| (0.0..=1.0).contains(v)));
        let frac = mask.sum() / mask.len() as f32;
        assert!(frac > 0.01 && frac < 0.5, "mask fraction {frac}");
    }
    // Each class map against the true states: its own state clearly better.
    let truth: Vec<Array3<f32>> = (0..2)
        .map(|s| vol(&d.join(format!("sim/volumes/state_{s:02}.mrc"))).0)
        .collect();
    let states = state_of_class(&d.join("c3d/particles.h5"));
    assert_eq!(states.len(), 2, "{states:?}");
    assert_ne!(states[&0], states[&1], "{states:?}");
    for c in 0..2 {
        let (map, _) = vol(&out.join(format!("class_{c:02}_map_filtered.mrc")));
        let (mask, _) = vol(&out.join(format!("class_{c:02}_mask.mrc")));
        let own = corr(&map, &truth[states[&c]], Some(&mask));
        let other = corr(&map, &truth[1 - states[&c]], Some(&mask));
        eprintln!("class {c}: correlation with its state {own:.4}, the other {other:.4}");
        assert!(own > 0.95, "class {c}: {own}");
        assert!(own > other + 0.05, "class {c}: own {own} other {other}");
        // The unfiltered map too, less clearly (noise at high frequency).
        let (raw, _) = vol(&out.join(format!("class_{c:02}_map.mrc")));
        let (o, t) = (
            corr(&raw, &truth[states[&c]], Some(&mask)),
            corr(&raw, &truth[1 - states[&c]], Some(&mask)),
        );
        assert!(o > t, "class {c} unfiltered: own {o} other {t}");
    }
    // Summary: counts of the hard classes, resolutions between Nyquist and 20 Å.
    let s = summary(&out);
    assert_eq!(s["job"], "reconstruct3d");
    assert_eq!(s["box_px"], 48);
    assert_eq!(s["psize_A"], 3.0);
    assert_eq!(s["num_input_classes"], 2);
    assert_eq!(s["classes"], serde_json::json!([0, 1]));
    let class = column(&d.join("c3d/particles.h5"), "alignments3D/class");
    let mut res = Vec::new();
    for c in 0..2 {
        let e = &s["per_class"][c];
        let n = class.iter().filter(|v| **v as usize == c).count() as f64;
        assert_eq!(e["particles"].as_f64().unwrap(), n, "{e}");
        assert_eq!(e["weight"].as_f64().unwrap(), n, "{e}");
        let (r1, r5) = (
            e["fsc0143_res_A"].as_f64().unwrap(),
            e["fsc05_res_A"].as_f64().unwrap(),
        );
        assert!((6.0..20.0).contains(&r1), "{e}");
        assert!(r5 >= r1 && r5 < 30.0, "{e}");
        assert_eq!(s["class_fsc0143_res_A"][c].as_f64().unwrap(), r1);
        res.push(r1);
    }
    // fsc.csv: shells 1..=24 with their resolutions, one column per class, crossing 0.143
    // where the summary says.
    let csv = std::fs::read_to_string(out.join("fsc.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "shell,resolution_A,class_00,class_01");
    assert_eq!(lines.len(), 25);
    let rows: Vec<Vec<f64>> = lines[1..]
        .iter()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows[0][..2], [1.0, 144.0]);
    assert_eq!(rows[23][..2], [24.0, 6.0]);
    for c in 0..2 {
        assert!(rows[0][2 + c] > 0.95, "{:?}", rows[0]);
        let first_below = rows.iter().find(|r| r[2 + c] < 0.143).unwrap();
        assert!(
            first_below[1] <= res[c] + 1e-9,
            "{first_below:?} vs {}",
            res[c]
        );
    }

    // Soft weighting of class 1 only: the class probabilities' sum as weight, a map close to
    // the hard one and still nearer its own state.
    config(
        d,
        "s.yaml",
        "c3d/particles.h5",
        "soft",
        "weighting: soft\nclasses: [1]\n",
    );
    emclass(d, &["-q", "reconstruct3d", "s.yaml"]).ok();
    let soft = d.join("soft");
    let names = ls(&soft);
    assert!(
        names.iter().all(|n| !n.starts_with("class_00")),
        "{names:?}"
    );
    let s = summary(&soft);
    assert_eq!(s["classes"], serde_json::json!([1]));
    let probs = column(&d.join("c3d/particles.h5"), "alignments3D/class_probs");
    let sum1: f64 = probs.chunks(2).map(|r| r[1]).sum();
    let w = s["per_class"][0]["weight"].as_f64().unwrap();
    assert!((w - sum1).abs() < 1e-3 * sum1, "weight {w} vs Σp {sum1}");
    let (hard_map, _) = vol(&out.join("class_01_map_filtered.mrc"));
    let (soft_map, _) = vol(&soft.join("class_01_map_filtered.mrc"));
    let (mask, _) = vol(&soft.join("class_01_mask.mrc"));
    assert!(corr(&hard_map, &soft_map, Some(&mask)) > 0.98);
    assert!(
        corr(&soft_map, &truth[states[&1]], Some(&mask))
            > corr(&soft_map, &truth[1 - states[&1]], Some(&mask)) + 0.05
    );
}

/// Maximum absolute difference of two volumes relative to the RMS of the first.
fn relative_difference(a: &Path, b: &Path) -> f64 {
    let (x, _) = vol(a);
    let (y, _) = vol(b);
    let rms = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    x.iter()
        .zip(y.iter())
        .map(|(p, q)| (*p as f64 - *q as f64).abs())
        .fold(0.0, f64::max)
        / rms.max(1e-30)
}

/// 1 and 2 ranks give the same maps (to float rounding) and the same summary; the ranks'
/// sums are all-reduced and nothing is gathered. Streaming the particles changes nothing.
/// With C2 symmetry the map is C2-symmetric.
#[test]
fn the_same_maps_on_one_and_two_ranks_and_symmetry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate_and_classify(d, 1200);
    config(d, "r.yaml", "c3d/particles.h5", "r1", "weighting: soft\n");
    mpirun(d, 1, &["-q", "reconstruct3d", "r.yaml"]).ok();
    let r = mpirun(
        d,
        2,
        &[
            "reconstruct3d",
            "r.yaml",
            "--set",
            "output=r2",
            "--set",
            "max_resident_gb=0",
        ],
    )
    .ok();
    assert!(r.stderr.contains("gathered 0 B"), "{}", r.stderr);
    for c in 0..2 {
        for m in MAPS {
            let f = format!("class_{c:02}_{m}.mrc");
            let e = relative_difference(&d.join("r1").join(&f), &d.join("r2").join(&f));
            assert!(e < 1e-4, "{f}: 1 vs 2 ranks differ by {e} of the RMS");
        }
    }
    let (s1, s2) = (summary(&d.join("r1")), summary(&d.join("r2")));
    for c in 0..2 {
        let (a, b) = (&s1["per_class"][c], &s2["per_class"][c]);
        assert_eq!(a["particles"], b["particles"]);
        for k in ["weight", "fsc0143_res_A", "fsc05_res_A"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-6 * x.abs(), "{k}: {x} vs {y}");
        }
    }
    // C2 about z: v(z, y, x) = v(z, n − y, n − x) around the centre n/2.
    config(
        d,
        "c2.yaml",
        "c3d/particles.h5",
        "c2",
        "symmetry: C2\nclasses: [0]\n",
    );
    emclass(d, &["-q", "reconstruct3d", "c2.yaml"]).ok();
    assert_eq!(summary(&d.join("c2"))["symmetry"], "C2");
    let asym = |p: &Path| {
        let (v, _) = vol(p);
        let n = v.dim().0;
        let (mut e, mut s) = (0.0f64, 0.0f64);
        for z in 0..n {
            for y in 1..n {
                for x in 1..n {
                    e += (v[[z, y, x]] as f64 - v[[z, n - y, n - x]] as f64).powi(2);
                    s += (v[[z, y, x]] as f64).powi(2);
                }
            }
        }
        e / s
    };
    let sym = asym(&d.join("c2/class_00_map_filtered.mrc"));
    let plain = asym(&d.join("r1/class_00_map_filtered.mrc"));
    assert!(sym < 0.01, "not C2-symmetric: {sym}");
    assert!(plain > 10.0 * sym, "C1 map {plain} vs C2 {sym}");
}

/// Unknown keys, classes out of range, and inputs lacking what the settings need: one
/// error line naming the file and field, exit 1, no output, the input folder untouched.
#[test]
fn bad_inputs_fail_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate_and_classify(d, 300);
    let src = d.join("c3d/particles.h5");
    derived(d, &src, "no_probs.h5", |t| {
        t.remove("alignments3D/class_probs");
    });
    derived(d, &src, "no_pose.h5", |t| {
        t.remove("alignments3D/pose");
    });
    derived(d, &src, "no_alpha.h5", |t| {
        t.remove("alignments3D/alpha");
    });
    derived(d, &src, "bad_class.h5", |t| {
        let mut c = t.u32("alignments3D/class").unwrap().to_vec();
        c[7] = 5;
        t.set_u32("alignments3D/class", c);
    });
    let sphere = |n: usize, value: f32| {
        let c = n as f32 / 2.0;
        Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let r2 = (z as f32 - c).powi(2) + (y as f32 - c).powi(2) + (x as f32 - c).powi(2);
            if r2 < (0.3 * n as f32).powi(2) {
                value
            } else {
                0.0
            }
        })
    };
    write_volume(d.join("small.mrc"), sphere(32, 1.0).view(), 3.0).unwrap();
    write_volume(d.join("loud.mrc"), sphere(48, 3.0).view(), 3.0).unwrap();
    write_volume(d.join("sphere.mrc"), sphere(48, 1.0).view(), 3.0).unwrap();
    let before = tree_snapshot(d);
    let cases: [(&str, &str, &[&str]); 11] = [
        (
            "c3d/particles.h5",
            "solvent_mask: small.mrc\n",
            &["b.yaml", "solvent_mask", "small.mrc", "48³"],
        ),
        (
            "c3d/particles.h5",
            "solvent_mask: loud.mrc\n",
            &["b.yaml", "solvent_mask", "loud.mrc", "not in [0, 1]"],
        ),
        (
            "c3d/particles.h5",
            "num_classes: 3\n",
            &["b.yaml", "num_classes", "unknown field"],
        ),
        (
            "c3d/particles.h5",
            "classes: [0, 2]\n",
            &["b.yaml", "classes", "class 2 is out of range", "2 classes"],
        ),
        (
            "c3d/particles.h5",
            "weighting: some\n",
            &["b.yaml", "weighting"],
        ),
        (
            "sim/particles.h5",
            "",
            &["sim/particles.h5", "alignments3D/class", "missing"],
        ),
        (
            "no_probs.h5",
            "weighting: soft\n",
            &["no_probs.h5", "alignments3D/class_probs", "missing"],
        ),
        (
            "no_pose.h5",
            "",
            &["no_pose.h5", "alignments3D/pose", "missing"],
        ),
        (
            "no_alpha.h5",
            "",
            &["no_alpha.h5", "alignments3D/alpha", "missing"],
        ),
        (
            "bad_class.h5",
            "",
            &[
                "bad_class.h5",
                "alignments3D/class",
                "particle 7 has class 5",
            ],
        ),
        ("missing.h5", "", &["missing.h5"]),
    ];
    for (i, (input, extra, needles)) in cases.iter().enumerate() {
        config(d, "b.yaml", input, &format!("out{i}"), extra);
        emclass(d, &["reconstruct3d", "b.yaml"]).fails_with(needles);
        assert!(
            !d.join(format!("out{i}")).exists(),
            "case {i}: output written"
        );
        std::fs::remove_file(d.join("b.yaml")).unwrap();
    }
    // The particles without alpha reconstruct with per_particle_scale: none.
    config(
        d,
        "ok.yaml",
        "no_alpha.h5",
        "ok",
        "per_particle_scale: none\n",
    );
    emclass(d, &["-q", "reconstruct3d", "ok.yaml"]).ok();
    std::fs::remove_dir_all(d.join("ok")).unwrap();
    std::fs::remove_file(d.join("ok.yaml")).unwrap();
    assert_same_tree(&before, &tree_snapshot(d));
    // A class no particle is in (the probabilities of 3 classes, none in class 2): empty
    // maps, a warning, no resolution; the other class as usual.
    derived(d, &src, "three.h5", |t| {
        let p = t.f32("alignments3D/class_probs").unwrap();
        let v: Vec<f32> = p.chunks(2).flat_map(|r| [r[0], r[1], 0.0]).collect();
        t.set(
            "alignments3D/class_probs",
            Column::new(ColumnData::F32(v), 3),
        );
    });
    config(d, "t.yaml", "three.h5", "three", "classes: [2, 0]\n");
    let r = emclass(d, &["reconstruct3d", "t.yaml"]).ok();
    assert!(r.stderr.contains("class 2: no particle"), "{}", r.stderr);
    let s = summary(&d.join("three"));
    assert_eq!(s["num_input_classes"], 3);
    assert_eq!(s["classes"], serde_json::json!([2, 0]));
    let (empty, full) = (&s["per_class"][0], &s["per_class"][1]);
    assert_eq!(empty["weight"], 0.0);
    assert!(empty["fsc0143_res_A"].is_null(), "{empty}");
    assert!(full["fsc0143_res_A"].as_f64().unwrap() < 30.0, "{full}");
    let (v, _) = vol(&d.join("three/class_02_map.mrc"));
    assert!(v.iter().all(|x| *x == 0.0));
    // A given solvent mask is used (and written) for every class.
    config(
        d,
        "m.yaml",
        "c3d/particles.h5",
        "masked",
        "solvent_mask: sphere.mrc\n",
    );
    emclass(d, &["-q", "reconstruct3d", "m.yaml"]).ok();
    let s = summary(&d.join("masked"));
    assert_eq!(s["per_class"][1]["mask"], "input");
    assert_eq!(vol(&d.join("masked/class_01_mask.mrc")).0, sphere(48, 1.0));
    // An existing output is refused without --overwrite.
    config(d, "e.yaml", "c3d/particles.h5", "c3d", "");
    emclass(d, &["reconstruct3d", "e.yaml"]).fails_with(&["c3d", "already exists"]);
}

#[test]
fn example_config_documents_every_key_with_its_default() {
    use emclass::reconstruct3d::config::Reconstruct3dConfig;
    assert_example_config("reconstruct3d.yaml", |c: &Reconstruct3dConfig| {
        Reconstruct3dConfig::with_paths(c.input.clone(), c.output.clone())
    });
}
