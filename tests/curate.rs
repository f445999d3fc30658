//! The curation jobs end to end on constructed inputs: `subset` (the seed's 2D and 3D worked
//! examples, several thresholds, GMM clustering, edge cases, errors naming what is missing),
//! `select2d` (keep/drop, minimum size, FRC resolution, kept averages) — with the outputs
//! referencing the input images, carrying every input field and exporting like any dataset.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use emclass::dataset::store::write_referencing;
use emclass::dataset::{Column, ColumnData, Dataset, DatasetAttrs, ParticleTable};

/// Simulates `n` particles into `dir/<name>` (views2d, no junk, no duplicates, then `set`).
pub fn simulated(dir: &Path, name: &str, n: usize, set: &[&str]) -> PathBuf {
    if !dir.join(name).exists() {
        let mut sets = vec!["junk_fraction=0", "duplicate_fraction=0"];
        sets.extend(set);
        simulate_with(dir, "views2d", name, n, &sets);
    }
    dir.join(name).join("particles.h5")
}

/// Writes `dir/<name>` referencing the images of `src` with its table changed by `edit`.
pub fn derived(
    dir: &Path,
    src: &Path,
    name: &str,
    edit: impl FnOnce(&mut ParticleTable),
) -> PathBuf {
    // No child process may start while this process holds an HDF5 file open for writing.
    let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let src = Dataset::open(src).unwrap();
    let mut t = src.table().clone();
    edit(&mut t);
    let path = dir.join(name);
    let attrs = DatasetAttrs {
        blob_root: None,
        source: "test".into(),
    };
    write_referencing(&path, &t, &attrs, &src).unwrap();
    path
}

/// `n` small particles (box 32, 2 views) with the table changed by `edit`, as `dir/<name>`.
pub fn dataset(dir: &Path, name: &str, n: usize, edit: impl FnOnce(&mut ParticleTable)) -> PathBuf {
    let sim = simulated(
        dir,
        &format!("sim_{n}"),
        n,
        &["box_px=32", "psize_A=4.0", "num_views=2", "snr=1"],
    );
    derived(dir, &sim, name, edit)
}

fn f32_col(t: &mut ParticleTable, name: &str, values: Vec<f32>, width: usize) {
    t.set(name, Column::new(ColumnData::F32(values), width));
}

fn uids(path: &Path) -> Vec<u64> {
    Dataset::open(path).unwrap().table().uid().to_vec()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Writes `name` with the `key: value` lines and runs `emclass <job> name`.
fn run_job(dir: &Path, job: &str, name: &str, lines: &str) -> Run {
    std::fs::write(dir.join(name), lines).unwrap();
    emclass(dir, &["-q", job, name])
}

#[test]
fn subset_2d_keeps_the_seeds_example_and_ties_and_outputs_reference_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The seed's example at threshold 0.9: 0.95/0.01/0.01/0.00 kept, 0.4/0.3/0.2/0.0 dropped;
    // a tie (0.9 stored as f32) is kept ("this value or greater").
    let input = dataset(d, "in.h5", 3, |t| {
        f32_col(
            t,
            "alignments2D/class_probs",
            vec![
                0.95, 0.01, 0.01, 0.0, 0.4, 0.3, 0.2, 0.0, 0.9, 0.1, 0.0, 0.0,
            ],
            4,
        );
        t.set_u32("alignments2D/class", vec![0, 0, 0]);
    });
    let all = uids(&input);
    run_job(
        d,
        "subset",
        "s.yaml",
        "input: in.h5\noutput: out\nthresholds: [0.9]\n",
    )
    .ok();
    let out = d.join("out");
    assert_eq!(uids(&out.join("selected.h5")), vec![all[0], all[2]]);
    assert_eq!(uids(&out.join("excluded.h5")), vec![all[1]]);
    for f in [
        "selected.h5",
        "excluded.h5",
        "summary.json",
        "config.used.yaml",
        "plots",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(
        std::fs::metadata(out.join("plots/statistic.png"))
            .unwrap()
            .len()
            > 1000
    );
    // Every input field is carried, and the images are the input's (referenced, not copied).
    let src = Dataset::open(&input).unwrap();
    let sel = Dataset::open(&out.join("selected.h5")).unwrap();
    let mut a: Vec<&str> = src.table().names().collect();
    let mut b: Vec<&str> = sel.table().names().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    let img_in = src.read_images(0..3).unwrap();
    let img_sel = sel.read_images(0..2).unwrap();
    assert_eq!(
        img_sel.index_axis(ndarray::Axis(0), 1),
        img_in.index_axis(ndarray::Axis(0), 2)
    );
    // Referenced: the subset's images live in the input's file, not in a copy.
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(canon(sel.images_file()), canon(src.images_file()));
    let s = summary(&out);
    assert_eq!(s["subsets"][0]["num_particles"], 2);
    assert_eq!(s["subsets"][1]["num_particles"], 1);
    // The subsets export like any dataset.
    emclass(
        d,
        &[
            "-q",
            "export",
            "--in",
            "out/selected.h5",
            "--star",
            "sel.star",
            "--mrcs",
            "sel.mrcs",
        ],
    )
    .ok();
    let star = std::fs::read_to_string(d.join("sel.star")).unwrap();
    assert_eq!(
        star.lines().filter(|l| l.contains("@")).count(),
        2,
        "{star}"
    );
    emclass(
        d,
        &[
            "-q",
            "export",
            "--in",
            "out/excluded.h5",
            "--cs",
            "exc.cs",
            "--mrcs",
            "exc.mrcs",
        ],
    )
    .ok();
}

#[test]
fn subset_3d_sums_the_chosen_classes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The seed's example: classes 1 and 2 good, threshold 0.6; no single probability reaches
    // 0.6 but particles 2 and 3 do in total (particle 3 exactly: kept).
    let input = dataset(d, "in.h5", 3, |t| {
        f32_col(
            t,
            "alignments3D/class_probs",
            vec![0.5, 0.3, 0.1, 0.1, 0.1, 0.35, 0.3, 0.25, 0.2, 0.3, 0.3, 0.2],
            4,
        );
    });
    let all = uids(&input);
    run_job(
        d,
        "subset",
        "s.yaml",
        "input: in.h5\noutput: out\nmode: class_probability_3d\nclasses: [1, 2]\nthresholds: [0.6]\n",
    )
    .ok();
    assert_eq!(uids(&d.join("out/selected.h5")), vec![all[1], all[2]]);
    assert_eq!(uids(&d.join("out/excluded.h5")), vec![all[0]]);
}

/// Issue 19: thresholds on one-hot probabilities (a hard classification before the fix)
/// keep or drop everything; `subset` says so in one warning line naming the field, once
/// over all ranks, and not for soft probabilities.
#[test]
fn subset_warns_once_when_the_thresholded_probabilities_are_one_hot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, "hard.h5", 4, |t| {
        f32_col(
            t,
            "alignments3D/class_probs",
            vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0],
            2,
        )
    });
    dataset(d, "soft.h5", 4, |t| {
        f32_col(
            t,
            "alignments3D/class_probs",
            vec![1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 0.0, 1.0],
            2,
        )
    });
    let cfg = "output: out\nmode: class_probability_3d\nclasses: [0]\nthresholds: [0.9]\n";
    let warnings = |r: &Run| -> Vec<String> {
        r.stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("0 or 1"))
            .map(String::from)
            .collect()
    };
    let r = run_job(d, "subset", "h.yaml", &format!("input: hard.h5\n{cfg}")).ok();
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{}", r.stderr);
    assert!(w[0].contains("alignments3D/class_probs"), "{}", w[0]);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // Under mpirun: one line, from rank 0, although both ranks hold one-hot rows.
    let r = mpirun(d, 2, &["-q", "subset", "h.yaml", "--set", "output=mpi"]).ok();
    assert_eq!(warnings(&r).len(), 1, "{}", r.stderr);
    // Soft rows on rank 1 only: rank 0's rows are one-hot, but the check is over all ranks.
    std::fs::write(d.join("s.yaml"), format!("input: soft.h5\n{cfg}")).unwrap();
    let r = mpirun(d, 2, &["-q", "subset", "s.yaml", "--set", "output=soft"]).ok();
    assert!(warnings(&r).is_empty(), "{}", r.stderr);
    // By field: a class_posterior of all 1 warns too; another field does not.
    let by_field = "mode: statistic\nthresholds: [0.5]\n";
    let post = dataset(d, "post.h5", 4, |t| {
        f32_col(t, "alignments2D/class_posterior", vec![1.0; 4], 1);
        f32_col(t, "alignments2D/other", vec![1.0; 4], 1);
    });
    assert!(post.exists());
    let r = run_job(
        d,
        "subset",
        "p.yaml",
        &format!("input: post.h5\noutput: o1\nfield: alignments2D/class_posterior\n{by_field}"),
    )
    .ok();
    assert!(warnings(&r)[0].contains("alignments2D/class_posterior"));
    let r = run_job(
        d,
        "subset",
        "q.yaml",
        &format!("input: post.h5\noutput: o2\nfield: alignments2D/other\n{by_field}"),
    )
    .ok();
    assert!(warnings(&r).is_empty(), "{}", r.stderr);
}

#[test]
fn subset_by_field_with_several_thresholds_keep_below_and_gmm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two well separated groups of a statistic: 30 around 1.0 and 50 around 5.0.
    let stat: Vec<f32> = (0..80)
        .map(|i| {
            if i % 8 < 3 {
                1.0 + 0.01 * (i % 5) as f32
            } else {
                5.0 + 0.02 * (i % 7) as f32
            }
        })
        .collect();
    let low: Vec<usize> = (0..80).filter(|i| i % 8 < 3).collect();
    let st = stat.clone();
    let input = dataset(d, "in.h5", 80, move |t| f32_col(t, "my/stat", st, 1));
    let all = uids(&input);
    let pick = |rows: &[usize]| rows.iter().map(|&i| all[i]).collect::<Vec<u64>>();
    let high: Vec<usize> = (0..80).filter(|i| !low.contains(i)).collect();
    // GMM with 2 components: subset_00 = the low group, subset_01 = the high group.
    run_job(
        d,
        "subset",
        "g.yaml",
        "input: in.h5\noutput: gmm\nmode: statistic\nfield: my/stat\nmethod: gmm\n",
    )
    .ok();
    assert_eq!(uids(&d.join("gmm/subset_00.h5")), pick(&low));
    assert_eq!(uids(&d.join("gmm/subset_01.h5")), pick(&high));
    let s = summary(&d.join("gmm"));
    let means = s["split"]["gmm"]["means"].as_array().unwrap();
    assert!(
        (means[0].as_f64().unwrap() - 1.02).abs() < 0.05,
        "{means:?}"
    );
    assert!((means[1].as_f64().unwrap() - 5.06).abs() < 0.1, "{means:?}");
    // Three thresholds → four intervals (the middle ones empty here).
    run_job(
        d,
        "subset",
        "t.yaml",
        "input: in.h5\noutput: thr\nmode: statistic\nfield: my/stat\nthresholds: [2, 3, 5.05]\n",
    )
    .ok();
    let n = |f: &str| Dataset::count(&d.join("thr").join(f)).unwrap();
    let mid = stat.iter().filter(|&&v| (5.0..5.05).contains(&v)).count();
    assert!(mid > 0 && mid < 50);
    assert_eq!(
        [
            n("subset_00.h5"),
            n("subset_01.h5"),
            n("subset_02.h5"),
            n("subset_03.h5")
        ],
        [30, 0, mid, 50 - mid]
    );
    // keep: below — the low group is selected.
    run_job(
        d,
        "subset",
        "b.yaml",
        "input: in.h5\noutput: below\nmode: statistic\nfield: my/stat\nthresholds: [3]\nkeep: below\n",
    )
    .ok();
    assert_eq!(uids(&d.join("below/selected.h5")), pick(&low));
}

#[test]
fn subset_edge_cases_empty_all_and_one_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // K = 1: every probability is 1, every particle is kept even at threshold 1.
    dataset(d, "k1.h5", 4, |t| {
        f32_col(t, "alignments2D/class_probs", vec![1.0; 4], 1)
    });
    run_job(
        d,
        "subset",
        "a.yaml",
        "input: k1.h5\noutput: all\nthresholds: [1.0]\n",
    )
    .ok();
    assert_eq!(Dataset::count(&d.join("all/selected.h5")).unwrap(), 4);
    // Nothing passes: selected.h5 exists with no particles, and can be opened and exported.
    dataset(d, "flat.h5", 4, |t| {
        f32_col(t, "alignments2D/class_probs", vec![0.5; 8], 2)
    });
    run_job(
        d,
        "subset",
        "e.yaml",
        "input: flat.h5\noutput: none\nthresholds: [0.9]\n",
    )
    .ok();
    assert_eq!(Dataset::count(&d.join("none/selected.h5")).unwrap(), 0);
    assert_eq!(Dataset::count(&d.join("none/excluded.h5")).unwrap(), 4);
    emclass(d, &["-q", "info", "none/selected.h5"]).ok();
    // Ties in a GMM: all values identical → everything in one component, nothing lost.
    dataset(d, "same.h5", 4, |t| f32_col(t, "my/x", vec![2.0; 4], 1));
    run_job(
        d,
        "subset",
        "g.yaml",
        "input: same.h5\noutput: same\nmode: statistic\nfield: my/x\nmethod: gmm\n",
    )
    .ok();
    let total = Dataset::count(&d.join("same/subset_00.h5")).unwrap()
        + Dataset::count(&d.join("same/subset_01.h5")).unwrap();
    assert_eq!(total, 4);
}

#[test]
fn subset_errors_name_what_is_missing_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, "in.h5", 3, |t| {
        f32_col(t, "alignments2D/class_probs", vec![0.5; 6], 2);
        f32_col(t, "my/bad", vec![1.0, f32::NAN, 2.0], 1);
    });
    let before = tree_snapshot(d);
    let cases: &[(&str, &[&str])] = &[
        // 3D mode on 2D-only particles.
        (
            "mode: class_probability_3d\nclasses: [0]\n",
            &[
                "in.h5",
                "alignments3D/class_probs",
                "only alignments2D",
                "classify3d",
            ],
        ),
        (
            "mode: statistic\nfield: ctf/nope\nthresholds: [1]\n",
            &["ctf/nope", "no such field"],
        ),
        (
            "mode: statistic\nfield: my/bad\nthresholds: [1]\n",
            &["my/bad", "NaN"],
        ),
        (
            "mode: statistic\nfield: alignments2D/class_probs\nthresholds: [1]\n",
            &["component"],
        ),
        (
            "mode: statistic\nfield: my/bad\n",
            &["thresholds", "needs thresholds"],
        ),
        (
            "mode: class_probability_3d\n",
            &["classes", "good 3D classes"],
        ),
        (
            "thresholds: [0.9, 0.5]\n",
            &["thresholds", "increase strictly"],
        ),
        ("thresholds: [1.5]\n", &["thresholds", "outside"]),
        ("classes: [1]\n", &["classes", "only used with"]),
        (
            "method: gmm\nthresholds: [0.5]\n",
            &["thresholds", "only used with"],
        ),
        (
            "method: gmm\ngmm_components: 5\n",
            &["gmm_components", "cannot be clustered"],
        ),
        ("bogus: 1\n", &["bogus"]),
    ];
    for (extra, needles) in cases {
        let r = run_job(
            d,
            "subset",
            "s.yaml",
            &format!("input: in.h5\noutput: out\n{extra}"),
        );
        r.fails_with(needles);
        assert!(!d.join("out").exists());
    }
    std::fs::remove_file(d.join("s.yaml")).unwrap();
    assert_same_tree(&before, &tree_snapshot(d));
}

/// A classify2d-like folder: `particles.h5` with `alignments2D/class`, `classes.mrcs` (one
/// recognisable image per class: constant value = the class index) and `summary.json`.
fn classified(d: &Path, classes: &[u32], k: usize, frc: &[f64]) -> PathBuf {
    let c2d = d.join("c2d");
    std::fs::create_dir_all(&c2d).unwrap();
    let cls = classes.to_vec();
    let p = dataset(d, "c2d/particles.h5", classes.len(), move |t| {
        t.set_u32("alignments2D/class", cls)
    });
    let imgs: Vec<Vec<f32>> = (0..k).map(|c| vec![c as f32; 16 * 16]).collect();
    write_mrc_stack(&c2d.join("classes.mrcs"), 16, 16, 8.0, &imgs);
    std::fs::write(
        c2d.join("summary.json"),
        serde_json::json!({"class_frc05_res_A": frc}).to_string(),
    )
    .unwrap();
    p
}

#[test]
fn select2d_keep_drop_size_and_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4 classes with 4, 3, 2, 1 particles; FRC resolutions 8, 20, 9, 10 Å.
    let classes = [0, 1, 0, 2, 1, 0, 3, 2, 1, 0];
    let input = classified(d, &classes, 4, &[8.0, 20.0, 9.0, 10.0]);
    let all = uids(&input);
    let of = |set: &[u32]| -> Vec<u64> {
        (0..classes.len())
            .filter(|&i| set.contains(&classes[i]))
            .map(|i| all[i])
            .collect()
    };
    let go = |out: &str, extra: &str| {
        run_job(
            d,
            "select2d",
            "s.yaml",
            &format!("input: c2d/particles.h5\noutput: {out}\n{extra}"),
        )
        .ok();
        d.join(out)
    };
    let o = go("keep", "keep: [2, 0]\n");
    assert_eq!(uids(&o.join("selected.h5")), of(&[0, 2]));
    assert_eq!(uids(&o.join("excluded.h5")), of(&[1, 3]));
    // The kept averages, in increasing class order, and their montage.
    let (avg, _) = read_mrc(&o.join("classes_selected.mrcs"));
    assert_eq!(avg.len(), 2);
    assert_eq!((avg[0][0], avg[1][0]), (0.0, 2.0));
    assert!(o.join("plots/classes_selected.png").exists());
    assert_eq!(summary(&o)["kept_classes"], serde_json::json!([0, 2]));
    let o = go("drop", "drop: [1]\n");
    assert_eq!(uids(&o.join("selected.h5")), of(&[0, 2, 3]));
    let o = go("size", "min_class_size: 2\n");
    assert_eq!(uids(&o.join("selected.h5")), of(&[0, 1, 2]));
    let o = go("res", "max_frc_res_A: 9.5\ndrop: [0]\n");
    assert_eq!(uids(&o.join("selected.h5")), of(&[2]));
    // Everything dropped: an empty selected.h5 and no averages file.
    let o = go("none", "min_class_size: 100\n");
    assert_eq!(Dataset::count(&o.join("selected.h5")).unwrap(), 0);
    assert!(!o.join("classes_selected.mrcs").exists());
    // Errors.
    let bad: &[(&str, &[&str])] = &[
        ("keep: [0]\ndrop: [1]\n", &["drop", "not both"]),
        ("keep: [4]\n", &["keep", "class 4 does not exist"]),
        ("classes_file: nope.mrcs\n", &["nope.mrcs"]),
    ];
    for (extra, needles) in bad {
        run_job(
            d,
            "select2d",
            "s.yaml",
            &format!("input: c2d/particles.h5\noutput: bad\n{extra}"),
        )
        .fails_with(needles);
        assert!(!d.join("bad").exists());
    }
    // Particles without classes; averages that do not match the classes.
    dataset(d, "plain.h5", 3, |_| {});
    run_job(d, "select2d", "s.yaml", "input: plain.h5\noutput: bad\n").fails_with(&[
        "plain.h5",
        "alignments2D/class",
        "classify2d",
    ]);
    write_mrc_stack(
        &d.join("two.mrcs"),
        16,
        16,
        8.0,
        &[vec![0.0; 256], vec![1.0; 256]],
    );
    run_job(
        d,
        "select2d",
        "s.yaml",
        "input: c2d/particles.h5\noutput: bad\nclasses_file: two.mrcs\n",
    )
    .fails_with(&["alignments2D/class", "only 2 class averages"]);
}

#[test]
fn curation_jobs_under_mpirun_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    dataset(d, "in.h5", 6, |t| {
        f32_col(
            t,
            "alignments2D/class_probs",
            vec![
                0.95, 0.05, 0.5, 0.5, 0.2, 0.8, 1.0, 0.0, 0.6, 0.4, 0.91, 0.09,
            ],
            2,
        )
    });
    std::fs::write(d.join("s.yaml"), "input: in.h5\noutput: one\n").unwrap();
    emclass(d, &["-q", "subset", "s.yaml"]).ok();
    for n in [2, 3] {
        let out = format!("output=mpi{n}");
        mpirun(d, n, &["-q", "subset", "s.yaml", "--set", &out]).ok();
        for f in ["selected.h5", "excluded.h5"] {
            assert_eq!(
                uids(&d.join("one").join(f)),
                uids(&d.join(format!("mpi{n}")).join(f))
            );
        }
    }
    assert_eq!(Dataset::count(&d.join("one/selected.h5")).unwrap(), 3);
    // A failure under mpirun is one error line and a non-zero exit on every rank.
    mpirun(d, 2, &["-q", "subset", "s.yaml", "--set", "output=one"])
        .fails_with(&["already exists"]);
}

#[test]
fn example_configs_document_every_key_with_its_default() {
    use emclass::curate::config::{Rebalance2dConfig, Select2dConfig, SubsetConfig};
    /// The defaults: the file's input and output, everything else from serde's defaults.
    fn defaults<T: serde::Serialize + serde::de::DeserializeOwned>(c: &T) -> T {
        let v = serde_norway::to_value(c).unwrap();
        let (i, o) = (v["input"].as_str().unwrap(), v["output"].as_str().unwrap());
        serde_norway::from_str(&format!("input: {i}\noutput: {o}\n")).unwrap()
    }
    assert_example_config("subset.yaml", defaults::<SubsetConfig>);
    assert_example_config("select2d.yaml", defaults::<Select2dConfig>);
    assert_example_config("rebalance2d.yaml", defaults::<Rebalance2dConfig>);
}

/// Images of an MRC stack written by the tests' or the program's writer (float32 only).
fn read_mrc(path: &Path) -> (Vec<Vec<f32>>, usize) {
    let s = emclass::formats::mrc::MrcStack::open(path).unwrap();
    let a = s.read_all().unwrap();
    let n = a.dim().1;
    (
        a.outer_iter()
            .map(|im| im.iter().copied().collect())
            .collect(),
        n,
    )
}

/// A 6-view set at populations 50/20/10/10/5/5 % of 400 particles, classified into 18
/// classes: 3 class averages per view (clean simulated images of that view at different
/// in-plane rotations and shifts), the class indexes shuffled. Returns the input and the
/// view of each class.
fn six_views(d: &Path) -> (PathBuf, Vec<usize>) {
    let sim = simulated(
        d,
        "views",
        400,
        &[
            "box_px=64",
            "psize_A=3.0",
            "num_views=6",
            "snr=20",
            "ctf=false",
            "max_shift_px=3",
        ],
    );
    let src = Dataset::open(&sim).unwrap();
    let gt: Vec<usize> = src
        .table()
        .get("gt/view")
        .unwrap()
        .data
        .to_f64()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let images = src.read_images(0..400).unwrap();
    // Class 7·(3v + j) mod 18 is the j-th image of view v.
    let class_of = |v: usize, j: usize| (7 * (3 * v + j)) % 18;
    let mut view_of_class = vec![0; 18];
    let mut rows = vec![0; 18];
    for v in 0..6 {
        let of_v: Vec<usize> = (0..400).filter(|&i| gt[i] == v).take(3).collect();
        for (j, &r) in of_v.iter().enumerate() {
            rows[class_of(v, j)] = r;
            view_of_class[class_of(v, j)] = v;
        }
    }
    let c2d = d.join("c2d");
    std::fs::create_dir_all(&c2d).unwrap();
    let avg = images.select(ndarray::Axis(0), &rows);
    emclass::formats::mrc::write_stack(c2d.join("classes.mrcs"), avg.view(), 3.0).unwrap();
    // Particle i belongs to view v (populations 200/80/40/40/20/20) and class (v, i mod 3).
    let pops = [200, 80, 40, 40, 20, 20];
    let view: Vec<usize> = (0..6)
        .flat_map(|v| std::iter::repeat_n(v, pops[v]))
        .collect();
    let input = derived(d, &sim, "c2d/particles.h5", |t| {
        t.set_u32(
            "alignments2D/class",
            (0..400).map(|i| class_of(view[i], i % 3) as u32).collect(),
        );
        t.set(
            "gt/view",
            Column::scalar(ColumnData::I32(view.iter().map(|&v| v as i32).collect())),
        );
    });
    (input, view_of_class)
}

fn sorted(v: &serde_json::Value) -> Vec<u64> {
    let mut s: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    s.sort_unstable();
    s
}

#[test]
fn rebalance2d_groups_views_and_drops_to_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, view_of_class) = six_views(d);
    let go = |out: &str, extra: &str| {
        let m = if extra.contains("num_superclasses") {
            ""
        } else {
            "num_superclasses: 6\n"
        };
        run_job(
            d,
            "rebalance2d",
            "r.yaml",
            &format!("input: c2d/particles.h5\noutput: {out}\n{m}{extra}"),
        )
        .ok();
        summary(&d.join(out))
    };
    // Superclasses: the classes of each view together.
    let s = go("plain", "");
    let labels: Vec<usize> = s["superclass_of_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    for a in 0..18 {
        for b in 0..18 {
            assert_eq!(
                labels[a] == labels[b],
                view_of_class[a] == view_of_class[b],
                "classes {a} {b}: {labels:?} vs views {view_of_class:?}"
            );
        }
    }
    assert!(
        s["superclasses_vs_ground_truth_views"]["purity"]
            .as_f64()
            .unwrap()
            >= 0.9
    );
    assert_eq!(
        sorted(&s["superclass_sizes_before"]),
        vec![20, 20, 40, 40, 80, 200]
    );
    assert_eq!(s["superclass_sizes_after"], s["superclass_sizes_before"]);
    assert_eq!(Dataset::count(&d.join("plain/excluded.h5")).unwrap(), 0);
    let out = d.join("plain");
    for f in [
        "affinity.csv",
        "superclasses.csv",
        "plots/affinity.png",
        "plots/affinity_sorted.png",
        "plots/superclass_sizes.png",
        "plots/superclasses.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("affinity.csv")).unwrap();
    assert_eq!(csv.lines().count(), 19);
    for (i, line) in csv.lines().skip(1).enumerate() {
        let v: Vec<f64> = line
            .split(',')
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(
            (v[i] - 1.0).abs() < 1e-9 && v.iter().all(|x| (0.0..=1.0).contains(x)),
            "{line}"
        );
    }
    let sel = Dataset::open(&out.join("selected.h5")).unwrap();
    assert!(sel.table().has("alignments2D/superclass"));
    // The templates passed on: every class (each superclass keeps particles), in class
    // order, each image the input class average, bit for bit.
    assert_eq!(
        sorted(&s["classes_selected"]),
        (0..18).collect::<Vec<u64>>()
    );
    let (passed, n) = read_mrc(&out.join("classes_selected.mrcs"));
    let (input, n_in) = read_mrc(&d.join("c2d/classes.mrcs"));
    assert_eq!((passed.len(), n), (18, n_in));
    assert_eq!(passed, input);
    assert!(out.join("plots/classes_selected.png").exists());
    // Factor 1: every superclass as small as the smallest.
    assert_eq!(
        sorted(&go("f1", "rebalance_factor: 1.0\n")["superclass_sizes_after"]),
        vec![20; 6]
    );
    assert_eq!(Dataset::count(&d.join("f1/selected.h5")).unwrap(), 120);
    // Factor 0.5: the smallest (20) at least half the largest → cap 40.
    assert_eq!(
        sorted(&go("f05", "rebalance_factor: 0.5\n")["superclass_sizes_after"]),
        vec![20, 20, 40, 40, 40, 40]
    );
    assert_eq!(
        Dataset::count(&d.join("f05/excluded.h5")).unwrap(),
        400 - 200
    );
    // The override: at most 60 per superclass.
    let s = go("max", "rebalance_factor: 0.5\nmax_superclass_size: 60\n");
    assert_eq!(
        sorted(&s["superclass_sizes_after"]),
        vec![20, 20, 40, 40, 60, 60]
    );
    // Seeded: the same seed drops the same particles, another seed others.
    go("f05b", "rebalance_factor: 0.5\n");
    go("f05c", "rebalance_factor: 0.5\nseed: 1\n");
    assert_eq!(
        uids(&d.join("f05/selected.h5")),
        uids(&d.join("f05b/selected.h5"))
    );
    assert_ne!(
        uids(&d.join("f05/selected.h5")),
        uids(&d.join("f05c/selected.h5"))
    );
    // Without superclassification each class is its own superclass.
    let s = go(
        "own",
        "num_superclasses: 18\ndo_superclassification: false\nrebalance_factor: 1.0\n",
    );
    assert_eq!(
        sorted(&s["superclass_of_class"]),
        (0..18).collect::<Vec<u64>>()
    );
    assert!(
        s["superclass_sizes_after"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_u64() == Some(6)),
        "{}",
        s["superclass_sizes_after"]
    );
}

#[test]
fn rebalance2d_one_class_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    six_views(d);
    let bad: &[(&str, &[&str])] = &[
        (
            "do_superclassification: false\n",
            &["num_superclasses", "is 6", "18 classes"],
        ),
        (
            "num_superclasses: 19\n",
            &["num_superclasses", "more than the 18 classes"],
        ),
        ("rebalance_factor: 1.5\n", &["rebalance_factor", "outside"]),
        ("max_superclass_size: 0\n", &["max_superclass_size"]),
        ("classes_file: none.mrcs\n", &["none.mrcs"]),
    ];
    for (extra, needles) in bad {
        let n = if extra.starts_with("num_") {
            ""
        } else {
            "num_superclasses: 6\n"
        };
        run_job(
            d,
            "rebalance2d",
            "r.yaml",
            &format!("input: c2d/particles.h5\noutput: bad\n{n}{extra}"),
        )
        .fails_with(needles);
        assert!(!d.join("bad").exists());
    }
    // K = 1: one class, one superclass, nothing to rebalance.
    std::fs::create_dir_all(d.join("one")).unwrap();
    let one = dataset(d, "one/particles.h5", 5, |t| {
        t.set_u32("alignments2D/class", vec![0; 5])
    });
    write_mrc_stack(
        &one.parent().unwrap().join("classes.mrcs"),
        16,
        16,
        8.0,
        &[(0..256).map(|i| (i % 7) as f32).collect()],
    );
    run_job(
        d,
        "rebalance2d",
        "r.yaml",
        "input: one/particles.h5\noutput: k1\nnum_superclasses: 1\nrebalance_factor: 1.0\n",
    )
    .ok();
    assert_eq!(Dataset::count(&d.join("k1/selected.h5")).unwrap(), 5);
}
