//! `emclass classify3d` end to end on simulated 3D heterogeneity: recovered states, the
//! outputs the seed lists, class similarity / hard classification / hard_after_anneal,
//! focus mask, symmetry, rank independence under `mpirun`, and bad input.

mod common;
use common::*;

use std::path::Path;

use emclass::dataset::Dataset;
use emclass::em::metrics::{adjusted_rand_index, matched_agreement};
use emclass::formats::mrc::{read_volume, write_volume, MrcStack};
use emclass::numerics::volume::solvent_mask;

/// A small, quick hetero3d set: box 48 at 3 Å, two states differing by a domain of 20% of
/// the mass, SNR 0.15, 5% junk.
fn simulate(dir: &Path, name: &str, n: usize, extra: &[&str]) {
    let base = [
        "box_px=48",
        "psize_A=3.0",
        "snr=0.15",
        "domain_mass_fraction=0.2",
        "junk_fraction=0.05",
        "duplicate_fraction=0",
        "max_shift_px=2",
        "seed=5",
    ];
    let sets: Vec<&str> = base.iter().chain(extra).copied().collect();
    simulate_with(dir, "hetero3d", name, n, &sets);
}

/// A config for the small set; `extra` lines (`key: value`) are appended.
fn config(dir: &Path, name: &str, input: &str, output: &str, extra: &str) {
    let text = format!(
        "input: {input}\noutput: {output}\nfilter_res_A: 12\noem_batch_size: 300\nseed: 1\n{extra}"
    );
    std::fs::write(dir.join(name), text).unwrap();
}

fn column(path: &Path, field: &str) -> Vec<f64> {
    let ds = Dataset::open(path).unwrap();
    ds.table()
        .get(field)
        .unwrap_or_else(|| panic!("{} lacks {field}", path.display()))
        .data
        .to_f64()
        .unwrap()
}

/// ARI of `alignments3D/class` against `gt/state` over non-junk particles.
fn ari(path: &Path) -> f64 {
    let (gt, class) = (column(path, "gt/state"), column(path, "alignments3D/class"));
    let (a, b): (Vec<i64>, Vec<i64>) = gt
        .iter()
        .zip(&class)
        .filter(|(g, _)| **g >= 0.0)
        .map(|(g, c)| (*g as i64, *c as i64))
        .unzip();
    adjusted_rand_index(&a, &b)
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn recovers_two_states_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1500, &[]);
    config(d, "c.yaml", "sim/particles.h5", "out", "");
    emclass(d, &["classify3d", "c.yaml"]).ok();
    let out = d.join("out");
    let a = ari(&out.join("particles.h5"));
    assert!(a >= 0.9, "ARI {a}");
    let s = summary(&out);
    assert!((s["ari_vs_ground_truth_states"].as_f64().unwrap() - a).abs() < 1e-9);
    for f in [
        "particles.h5",
        "particles_class_00.h5",
        "particles_class_01.h5",
        "consensus.mrc",
        "solvent_mask.mrc",
        "summary.json",
        "config.used.yaml",
        "volumes/class_00.mrc",
        "volumes/all_volumes.mrcs",
        "volumes/class_01_half_A.mrc",
        "volumes/class_01_half_B.mrc",
        "plots/class_ess.png",
        "plots/class_sizes.png",
        "plots/class_flow_matrix.png",
        "plots/class_flow_diagram.png",
        "plots/difference_from_consensus.png",
        "plots/class_volumes.png",
        "plots/fsc.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}: {:?}", ls(&out));
    }
    // Per-class sets partition the particles; probabilities sum to 1; ESS in [1, K].
    let n = column(&out.join("particles.h5"), "alignments3D/class").len();
    let n0 = column(&out.join("particles_class_00.h5"), "alignments3D/class").len();
    let n1 = column(&out.join("particles_class_01.h5"), "alignments3D/class").len();
    assert_eq!(n0 + n1, n);
    let probs = column(&out.join("particles.h5"), "alignments3D/class_probs");
    for row in probs.chunks(2) {
        assert!((row[0] + row[1] - 1.0).abs() < 1e-4, "{row:?}");
    }
    let ess = column(&out.join("particles.h5"), "alignments3D/class_ess");
    assert!(ess.iter().all(|e| (0.999..=2.001).contains(e)));
    let alpha = column(&out.join("particles.h5"), "alignments3D/alpha");
    assert!(alpha.iter().all(|a| a.is_finite() && *a > 0.0));
    // ln Σ_k π_k exp(−residual/σ²) ≤ 0 and differs between particles; the STAR export
    // carries it as RELION's _rlnLogLikeliContribution (f32 written in shortest decimal).
    let ll = column(&out.join("particles.h5"), "alignments3D/log_likelihood");
    assert!(
        ll.iter().all(|l| l.is_finite() && *l < 0.0),
        "{:?}",
        &ll[..4]
    );
    assert!(ll.iter().any(|l| (l - ll[0]).abs() > 1.0), "{:?}", &ll[..4]);
    emclass(
        d,
        &[
            "export",
            "--in",
            "out/particles.h5",
            "--star",
            "out.star",
            "--mrcs",
            "out.mrcs",
        ],
    )
    .ok();
    let star = emclass::formats::star::read_star(d.join("out.star")).unwrap();
    let rows = star.block("particles").unwrap();
    let got = rows
        .column("rlnLogLikeliContribution")
        .unwrap()
        .as_num()
        .unwrap();
    assert_eq!(got.len(), ll.len());
    for (a, b) in got.iter().zip(&ll) {
        assert_eq!(*a as f32, *b as f32);
    }
    // Volumes at the working box: filter 12 Å of a 144 Å box (shell 12) → about 6 Å/px.
    let (v, ps) = read_volume(out.join("volumes/class_00.mrc")).unwrap();
    let n = s["working_box_px"].as_u64().unwrap() as usize;
    assert_eq!(v.dim(), (n, n, n));
    assert!((24..=28).contains(&n), "{n}");
    assert!((ps as f64 * n as f64 - 144.0).abs() < 1e-2, "{ps}");
    // The class-size and ESS plots after every F-EM iteration.
    let fem: Vec<u64> = s["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|it| it["phase"] == "full")
        .map(|it| it["iteration"].as_u64().unwrap())
        .collect();
    assert!(!fem.is_empty());
    for t in fem {
        for stem in ["class_sizes", "class_ess"] {
            let f = out.join(format!("plots/{stem}_iter{t:03}.png"));
            let img = image::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(img.width() > 100, "{}", f.display());
        }
    }
    // Issue 19 item 6b: all class volumes in one MRC2014 volume stack, in class order.
    let all = MrcStack::open(out.join("volumes/all_volumes.mrcs")).unwrap();
    let h = all.header();
    assert_eq!((h.nx, h.ny, h.nz, h.ispg), (n, n, 2 * n, 401));
    assert_eq!(h.sampling, [n as i32, n as i32, n as i32]);
    assert_eq!(all.psize_a(), ps);
    for k in 0..2 {
        let (vk, _) = read_volume(out.join(format!("volumes/class_{k:02}.mrc"))).unwrap();
        assert_eq!(all.read(k * n..(k + 1) * n).unwrap(), vk, "class {k}");
    }
    // F-EM ran and recorded class flows; the stop reason is stated.
    assert!(!s["class_flow"].as_array().unwrap().is_empty());
    assert!(s["stop_reason"].as_str().unwrap().len() > 5);
}

/// `init_mode: pca` (the seed's third start): the subset reconstructions' principal
/// components give the two states apart; the key is refused with another mode.
#[test]
fn pca_start_recovers_two_states() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1500, &[]);
    config(
        d,
        "p.yaml",
        "sim/particles.h5",
        "out",
        "init_mode: pca\ninit_particles_per_class: 150\ninit_pca_reconstructions: 10\n",
    );
    let run = emclass(d, &["classify3d", "p.yaml"]).ok();
    assert!(
        run.stderr
            .contains("initial classes (pca): 10 reconstructions of 150"),
        "{}",
        run.stderr
    );
    let a = ari(&d.join("out/particles.h5"));
    assert!(a >= 0.9, "ARI {a}");
    config(
        d,
        "q.yaml",
        "sim/particles.h5",
        "o2",
        "init_pca_reconstructions: 10\n",
    );
    emclass(d, &["classify3d", "q.yaml"])
        .fails_with(&["init_pca_reconstructions", "init_mode is not pca"]);
    config(
        d,
        "r.yaml",
        "sim/particles.h5",
        "o3",
        "init_mode: pca\nnum_classes: 4\ninit_pca_reconstructions: 3\n",
    );
    emclass(d, &["classify3d", "r.yaml"]).fails_with(&["init_pca_reconstructions", "outside"]);
    assert!(!d.join("o2").exists() && !d.join("o3").exists());
}

#[test]
fn similarity_one_is_uniform_and_force_hard_writes_the_soft_posterior() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 600, &[]);
    let frozen = "num_classes: 3\nclass_similarity: 1.0\nclass_similarity_anneal_start: 1000\nclass_similarity_anneal_end: 1000\nfem_max_iterations: 2\n";
    config(d, "u.yaml", "sim/particles.h5", "uniform", frozen);
    emclass(d, &["-q", "classify3d", "u.yaml"]).ok();
    let p = column(&d.join("uniform/particles.h5"), "alignments3D/class_probs");
    assert!(
        p.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6),
        "not uniform: {:?}",
        &p[..6]
    );
    let hard = "num_classes: 3\nforce_hard_classification: true\nclass_similarity: 0.8\nfem_max_iterations: 2\n";
    config(d, "h.yaml", "sim/particles.h5", "hard", hard);
    emclass(d, &["-q", "classify3d", "h.yaml"]).ok();
    // Issue 19: one-hot M-step weights, but the written posterior is the soft one of the
    // last pass and `class` its hard assignment.
    let ds = Dataset::open(&d.join("hard/particles.h5")).unwrap();
    assert_soft_posterior_with_hard_class(ds.table(), "alignments3D", 3);
    let s = summary(&d.join("hard"));
    assert!(s["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["hard_classification"] == true));
}

#[test]
fn hard_after_anneal_switches_when_similarity_reaches_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 600, &[]);
    // 600 particles, batches of 2 × 300: one batch per epoch, 3 epochs of O-EM.
    let extra = "oem_epochs: 3\nclass_similarity: 0.6\nclass_similarity_anneal_start: 1\nclass_similarity_anneal_end: 3\nhard_after_anneal: true\nfem_max_iterations: 3\nconvergence_switch_pct: 0\nrms_density_change_threshold: null\n";
    config(d, "c.yaml", "sim/particles.h5", "out", extra);
    emclass(d, &["-q", "classify3d", "c.yaml"]).ok();
    let s = summary(&d.join("out"));
    let it = s["iterations"].as_array().unwrap();
    assert_eq!(it.len(), 6);
    let sim: Vec<f64> = it
        .iter()
        .map(|r| r["class_similarity"].as_f64().unwrap())
        .collect();
    let hard: Vec<bool> = it
        .iter()
        .map(|r| r["hard_classification"].as_bool().unwrap())
        .collect();
    assert_eq!(sim, vec![0.6, 0.6, 0.3, 0.0, 0.0, 0.0]);
    assert_eq!(hard, vec![false, false, false, true, true, true]);
    // Soft probabilities before the switch show up as ESS > 1 in the first iteration.
    assert!(it[0]["ess_quartiles"][4].as_f64().unwrap() > 1.01);
    // The hard passes still write the soft posterior (issue 19).
    let ds = Dataset::open(&d.join("out/particles.h5")).unwrap();
    assert_soft_posterior_with_hard_class(ds.table(), "alignments3D", 2);
}

/// Issue 19 item 6: `hard_first_iterations` (the forum's "hard first to let the volumes
/// diverge, then weighted"): the records say which passes were hard, no convergence stop
/// during them, the two states are recovered, and it refuses the other hard schedules.
#[test]
fn hard_first_then_weighted_recovers_two_states() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1500, &[]);
    // 1500 particles, batches of 2 × 300: 2 per epoch, 2 epochs = 4 O-EM iterations.
    config(
        d,
        "c.yaml",
        "sim/particles.h5",
        "out",
        "hard_first_iterations: 3\n",
    );
    emclass(d, &["-q", "classify3d", "c.yaml"]).ok();
    let out = d.join("out");
    let s = summary(&out);
    let hard: Vec<bool> = s["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hard_classification"].as_bool().unwrap())
        .collect();
    assert!(hard.len() > 4, "{hard:?}");
    assert_eq!(&hard[..4], &[true, true, true, false], "{hard:?}");
    assert!(hard[3..].iter().all(|h| !h), "{hard:?}");
    let a = ari(&out.join("particles.h5"));
    assert!(a >= 0.9, "ARI {a}");
    // The last pass was weighted: soft probabilities with their ESS.
    let ess = column(&out.join("particles.h5"), "alignments3D/class_ess");
    assert!(ess.iter().any(|e| *e > 1.001));

    // Reaching into F-EM: a stop criterion that fires at once (100%) waits for the first
    // weighted iteration (t = 6, after F-EM t = 4, 5 hard).
    let extra = "hard_first_iterations: 6\nconvergence_switch_pct: 100\nfem_max_iterations: 10\n";
    config(d, "f.yaml", "sim/particles.h5", "fem", extra);
    emclass(d, &["-q", "classify3d", "f.yaml"]).ok();
    let s = summary(&d.join("fem"));
    let it = s["iterations"].as_array().unwrap();
    let hard: Vec<bool> = it
        .iter()
        .map(|r| r["hard_classification"].as_bool().unwrap())
        .collect();
    assert_eq!(hard, vec![true, true, true, true, true, true, false], "{s}");
    assert!(
        s["stop_reason"].as_str().unwrap().contains("converged"),
        "{s}"
    );

    // Conflicts and a schedule with no weighted iteration are one-line config errors.
    for (extra, needles) in [
        (
            "hard_first_iterations: 2\nforce_hard_classification: true\n",
            &[
                "c.yaml",
                "hard_first_iterations",
                "force_hard_classification",
            ][..],
        ),
        (
            "hard_first_iterations: 2\nhard_after_anneal: true\n",
            &["c.yaml", "hard_first_iterations", "hard_after_anneal"][..],
        ),
        (
            "hard_first_iterations: 24\n",
            &["c.yaml", "hard_first_iterations", "all 24 iterations"][..],
        ),
    ] {
        config(d, "c.yaml", "sim/particles.h5", "bad", extra);
        emclass(d, &["classify3d", "c.yaml"]).fails_with(needles);
        assert!(!d.join("bad").exists());
    }
}

#[test]
fn focus_mask_on_the_variable_domain_classifies_at_least_as_well() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1500, &["snr=0.08"]);
    // The focus mask: the region where the true states differ, dilated and soft-edged.
    let (a, ps) = read_volume(d.join("sim/volumes/state_00.mrc")).unwrap();
    let (b, _) = read_volume(d.join("sim/volumes/state_01.mrc")).unwrap();
    let diff = (&a - &b).mapv(f32::abs);
    let mask = solvent_mask(diff.view(), ps as f64, 0.2, 6.0, 6.0).unwrap();
    write_volume(d.join("focus.mrc"), mask.view(), ps).unwrap();
    config(d, "a.yaml", "sim/particles.h5", "plain", "");
    config(
        d,
        "b.yaml",
        "sim/particles.h5",
        "focus",
        "focus_mask: focus.mrc\n",
    );
    emclass(d, &["-q", "classify3d", "a.yaml"]).ok();
    emclass(d, &["-q", "classify3d", "b.yaml"]).ok();
    let (plain, focus) = (
        ari(&d.join("plain/particles.h5")),
        ari(&d.join("focus/particles.h5")),
    );
    eprintln!("ARI without focus mask {plain:.4}, with {focus:.4}");
    assert!(focus >= plain - 1e-9, "focus {focus} < plain {plain}");
    assert!(focus > 0.5, "{focus}");
    assert!(d.join("focus/focus_mask.mrc").is_file());
}

#[test]
fn symmetry_reorder_and_per_iteration_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 600, &[]);
    let extra = "symmetry: C2\noutput_every_fem_iter: true\nfem_max_iterations: 2\nconvergence_switch_pct: 0\nrms_density_change_threshold: null\n";
    config(d, "c.yaml", "sim/particles.h5", "out", extra);
    emclass(d, &["-q", "classify3d", "c.yaml"]).ok();
    let out = d.join("out");
    let (v, _) = read_volume(out.join("volumes/class_00.mrc")).unwrap();
    // C2 about z: v(z, y, x) = v(z, n − y, n − x) around the centre n/2.
    let n = v.dim().0;
    let (mut e, mut p) = (0.0f64, 0.0f64);
    for z in 0..n {
        for y in 1..n {
            for x in 1..n {
                let w = v[[z, n - y, n - x]] as f64;
                e += (v[[z, y, x]] as f64 - w).powi(2);
                p += (v[[z, y, x]] as f64).powi(2);
            }
        }
    }
    assert!(e / p < 0.05, "not C2-symmetric: relative error {}", e / p);
    let fem = ls(&out.join("fem_iterations"));
    assert_eq!(fem.len(), 2, "{fem:?}");
    assert!(out
        .join("fem_iterations")
        .join(&fem[0])
        .join("volumes/class_01.mrc")
        .is_file());
    assert!(out
        .join("fem_iterations")
        .join(&fem[1])
        .join("particles.h5")
        .is_file());
    // Reordering: class 0 is the largest.
    config(
        d,
        "r.yaml",
        "sim/particles.h5",
        "re",
        "num_classes: 3\nreorder_classes_by_size: true\n",
    );
    emclass(d, &["-q", "classify3d", "r.yaml"]).ok();
    let c = column(&d.join("re/particles.h5"), "alignments3D/class");
    let count = |k: f64| c.iter().filter(|v| **v == k).count();
    assert!(count(0.0) >= count(1.0) && count(1.0) >= count(2.0));
}

#[test]
fn ranks_agree_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1200, &[]);
    config(d, "c1.yaml", "sim/particles.h5", "r1", "");
    config(d, "c2.yaml", "sim/particles.h5", "r2", "");
    config(d, "c3.yaml", "sim/particles.h5", "r3", "");
    mpirun(d, 1, &["-q", "classify3d", "c1.yaml"]).ok();
    mpirun(d, 2, &["-q", "classify3d", "c2.yaml"]).ok();
    mpirun(d, 3, &["-q", "classify3d", "c3.yaml"]).ok();
    let lab = |o: &str| -> Vec<i64> {
        column(&d.join(o).join("particles.h5"), "alignments3D/class")
            .iter()
            .map(|v| *v as i64)
            .collect()
    };
    let (a, b, c) = (lab("r1"), lab("r2"), lab("r3"));
    for (name, other) in [("2 ranks", &b), ("3 ranks", &c)] {
        let agree = matched_agreement(&a, other);
        assert!(agree >= 0.995, "{name}: {agree}");
    }
    // Each rank appended its own rows: input order, every input field, and per-class files
    // that partition the particles.
    let input = Dataset::open(&d.join("sim/particles.h5")).unwrap();
    let out = Dataset::open(&d.join("r3/particles.h5")).unwrap();
    assert_eq!(out.table().uid(), input.table().uid());
    for (name, col) in input.table().columns() {
        if name != "blob/image_row" {
            assert_eq!(out.table().get(name), Some(col), "{name}");
        }
    }
    let mut total = 0;
    for k in 0..2 {
        let part = column(
            &d.join(format!("r3/particles_class_{k:02}.h5")),
            "alignments3D/class",
        );
        assert!(part.iter().all(|v| *v as usize == k));
        total += part.len();
    }
    assert_eq!(total, c.len());
}

/// Makes the CUDA start-up panic inside its guard (as a broken driver would), on any machine.
const NO_GPU: &[(&str, &str)] = &[("EMCLASS_TEST_CUDA_PANIC", "1")];

/// `backend: cuda` gives the CPU's classes where a GPU is usable; without one it is a
/// one-line config error naming `backend` and `auto` runs on the CPU saying so. With the
/// CUDA start-up made to fail (any machine) `cuda` is refused and `auto` falls back.
#[test]
fn cuda_backend_matches_the_cpu_or_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 600, &[]);
    config(d, "c.yaml", "sim/particles.h5", "cpu", "backend: cpu\n");
    emclass(d, &["-q", "classify3d", "c.yaml"]).ok();
    let set = |b: &'static str, o: &'static str| ["classify3d", "c.yaml", "--set", b, "--set", o];
    let r = emclass(d, &set("backend=cuda", "output=gpu"));
    if r.code == Some(0) {
        let lab = |o: &str| -> Vec<i64> {
            column(&d.join(o).join("particles.h5"), "alignments3D/class")
                .iter()
                .map(|v| *v as i64)
                .collect()
        };
        let agree = matched_agreement(&lab("cpu"), &lab("gpu"));
        assert!(agree >= 0.995, "CPU vs CUDA classes agree on {agree}");
    } else {
        eprintln!("no usable CUDA device here: checking the refusal and the fallback instead");
        r.fails_with(&["c.yaml", "backend", "cuda:"]);
        assert!(!d.join("gpu").exists());
        let auto = emclass(d, &set("backend=auto", "output=auto")).ok();
        assert!(auto.stderr.contains("using the CPU"), "{}", auto.stderr);
    }
    let r = emclass_env(d, &set("backend=cuda", "output=forced"), NO_GPU);
    r.fails_with(&["c.yaml", "backend", "cuda:", "simulated failure"]);
    assert!(!d.join("forced").exists());
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 200, &[]);
    // A 2D set has no poses.
    std::fs::write(d.join("v.yaml"), "output: unused\nmode: views2d\n").unwrap();
    emclass(
        d,
        &[
            "-q",
            "simulate",
            "v.yaml",
            "--set",
            "output=views",
            "--set",
            "num_particles=50",
            "--set",
            "box_px=48",
        ],
    )
    .ok();
    config(d, "p.yaml", "views/particles.h5", "o1", "");
    emclass(d, &["classify3d", "p.yaml"]).fails_with(&["alignments3D/pose", "missing"]);
    // No filter resolution.
    std::fs::write(d.join("f.yaml"), "input: sim/particles.h5\noutput: o2\n").unwrap();
    emclass(d, &["classify3d", "f.yaml"]).fails_with(&["filter_res_A", "must be set"]);
    // Initial volumes that do not match num_classes.
    config(
        d,
        "i.yaml",
        "sim/particles.h5",
        "o3",
        "init_mode: input\ninitial_volumes: [sim/volumes/state_00.mrc]\n",
    );
    emclass(d, &["classify3d", "i.yaml"]).fails_with(&["initial_volumes", "one volume per class"]);
    // A mask of the wrong physical size.
    let small = ndarray::Array3::<f32>::ones((16, 16, 16));
    write_volume(d.join("small.mrc"), small.view(), 3.0).unwrap();
    config(
        d,
        "m.yaml",
        "sim/particles.h5",
        "o4",
        "solvent_mask: small.mrc\n",
    );
    emclass(d, &["classify3d", "m.yaml"]).fails_with(&["solvent_mask", "spans"]);
    // A mask with values outside [0, 1].
    let big = ndarray::Array3::<f32>::from_elem((48, 48, 48), 3.0);
    write_volume(d.join("bad.mrc"), big.view(), 3.0).unwrap();
    config(
        d,
        "b.yaml",
        "sim/particles.h5",
        "o5",
        "focus_mask: bad.mrc\n",
    );
    emclass(d, &["classify3d", "b.yaml"]).fails_with(&["bad.mrc", "not in [0, 1]"]);
    // Incompatible options.
    config(
        d,
        "x.yaml",
        "sim/particles.h5",
        "o6",
        "output_every_fem_iter: true\nreorder_classes_by_size: true\n",
    );
    emclass(d, &["classify3d", "x.yaml"]).fails_with(&["output_every_fem_iter"]);
    for o in ["o1", "o2", "o3", "o4", "o5", "o6"] {
        assert!(!d.join(o).exists(), "{o} was written");
    }
}

#[test]
fn example_config_documents_every_key_with_its_default() {
    use emclass::classify3d::config::Classify3dConfig;
    assert_example_config("classify3d.yaml", |c: &Classify3dConfig| {
        Classify3dConfig::with_paths(c.input.clone(), c.output.clone(), 10.0)
    });
}

/// Kills the run once the staging folder of `out` holds rank 0's checkpoint part for
/// iteration `next`.
fn kill_after_checkpoint(d: &Path, cmd: std::process::Command, out: &str, next: usize, mpi: bool) {
    let part = d.join(format!(
        ".{out}.emclass-tmp/checkpoint.rank0000.iter{next:03}.bin"
    ));
    kill_when(d, cmd, &part, out, mpi);
}

/// Per-particle results and volumes of two runs, bit for bit.
fn assert_same_3d(a: &Path, b: &Path) {
    for f in [
        "alignments3D/class",
        "alignments3D/class_probs",
        "alignments3D/class_posterior",
        "alignments3D/class_ess",
        "alignments3D/log_likelihood",
    ] {
        assert_eq!(
            column(&a.join("particles.h5"), f),
            column(&b.join("particles.h5"), f),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    for v in [
        "volumes/class_00.mrc",
        "volumes/class_01_half_B.mrc",
        "volumes/all_volumes.mrcs",
        "consensus.mrc",
    ] {
        assert_eq!(
            std::fs::read(a.join(v)).unwrap(),
            std::fs::read(b.join(v)).unwrap(),
            "{v} differs"
        );
    }
    let names = ls(b);
    assert!(
        !names.iter().any(|n| n.starts_with("checkpoint")),
        "{names:?}"
    );
}

/// A classify3d run killed mid-way (SIGKILL) and continued with `--resume` ends with exactly
/// the uninterrupted run's classes and volumes: alone, and with a rank killed under
/// `mpirun -n 2` and resumed on 2 ranks (bit for bit), on 1 and on 3 (the same classes as
/// the uninterrupted run there, equal to rounding). Resuming a finished run is refused.
#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1200, &[]);
    config(
        d,
        "c.yaml",
        "sim/particles.h5",
        "whole",
        "fem_max_iterations: 4\nconvergence_switch_pct: 0\n",
    );
    emclass(d, &["-q", "classify3d", "c.yaml"]).ok();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["-q", "classify3d", "c.yaml", "--set", "output=killed"]);
    kill_after_checkpoint(d, cmd, "killed", 3, false);
    let r = emclass(d, &["classify3d", "c.yaml", "--resume", "killed"]).ok();
    assert!(r.stderr.contains("resuming at iteration"), "{}", r.stderr);
    assert_same_3d(&d.join("whole"), &d.join("killed"));
    emclass(d, &["classify3d", "c.yaml", "--resume", "killed"]).fails_with(&["already finished"]);
    // Two ranks, the last one killed.
    mpirun(
        d,
        2,
        &["-q", "classify3d", "c.yaml", "--set", "output=whole2"],
    )
    .ok();
    let session = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("mpirun");
    cmd.env("OMPI_MCA_orte_tmpdir_base", session.path())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "2"])
        .arg(bin())
        .args(["-q", "classify3d", "c.yaml", "--set", "output=killed2"]);
    kill_after_checkpoint(d, cmd, "killed2", 4, true);
    // The same checkpoint resumed on 1 and on 3 ranks as well.
    for copy in ["killed1", "killed3"] {
        let st = std::process::Command::new("cp")
            .arg("-r")
            .arg(d.join(".killed2.emclass-tmp"))
            .arg(d.join(format!(".{copy}.emclass-tmp")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    mpirun(d, 2, &["-q", "classify3d", "c.yaml", "--resume", "killed2"]).ok();
    assert_same_3d(&d.join("whole2"), &d.join("killed2"));
    let r = emclass(d, &["classify3d", "c.yaml", "--resume", "killed1"]).ok();
    assert!(r.stderr.contains("resuming at iteration 5"), "{}", r.stderr);
    mpirun(
        d,
        3,
        &["-q", "classify3d", "c.yaml", "--set", "output=whole3"],
    )
    .ok();
    mpirun(d, 3, &["-q", "classify3d", "c.yaml", "--resume", "killed3"]).ok();
    // Iterations before the kill summed over 2 ranks, after it over 1 or 3: the same classes
    // as the uninterrupted run on the resumed rank count, probabilities and volumes equal to
    // rounding (f64 sums in another order).
    assert_close_3d(&d.join("whole"), &d.join("killed1"));
    assert_close_3d(&d.join("whole3"), &d.join("killed3"));
}

/// Two runs with the same classes, probabilities within 1e-4 and volumes within 1e-4 of
/// their RMS.
fn assert_close_3d(a: &Path, b: &Path) {
    let f = |d: &Path, c: &str| column(&d.join("particles.h5"), c);
    assert_eq!(f(a, "alignments3D/class"), f(b, "alignments3D/class"));
    let (pa, pb) = (
        f(a, "alignments3D/class_probs"),
        f(b, "alignments3D/class_probs"),
    );
    let worst = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "class_probs differ by {worst}");
    for v in ["volumes/class_00.mrc", "volumes/class_01.mrc"] {
        let read = |d: &Path| {
            let bytes = std::fs::read(d.join(v)).unwrap();
            bytes[1024..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect::<Vec<f64>>()
        };
        let (va, vb) = (read(a), read(b));
        let rms = (va.iter().map(|x| x * x).sum::<f64>() / va.len() as f64).sqrt();
        let diff = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-4 * rms, "{v}: differs by {diff} (RMS {rms})");
    }
}

/// Bytes rank 0 received in gathers, from the log line at the end of an MPI job.
fn gathered_bytes(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("communication (rank 0)"))
        .unwrap_or_else(|| panic!("no communication line in:\n{stderr}"));
    let after = line.split("gathered ").nth(1).expect("gathered field");
    after.split(' ').next().unwrap().parse().unwrap()
}

/// Nothing per particle reaches rank 0: on 3 ranks the bytes gathered on rank 0 are the same
/// for 600 and for 1,800 particles (only per-class and per-rank summaries travel), and the
/// statistics all-reduce per iteration is recorded.
#[test]
fn nothing_per_particle_reaches_rank_0() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = "fem_max_iterations: 2\nconvergence_switch_pct: 0\n";
    let mut gathered = Vec::new();
    for n in [600, 1800] {
        simulate(d, &format!("sim{n}"), n, &[]);
        config(
            d,
            &format!("c{n}.yaml"),
            &format!("sim{n}/particles.h5"),
            &format!("o{n}"),
            extra,
        );
        let r = mpirun(d, 3, &["classify3d", &format!("c{n}.yaml")]).ok();
        gathered.push(gathered_bytes(&r.stderr));
        let s = summary(&d.join(format!("o{n}")));
        let it = &s["iterations"][0];
        assert!(it["allreduce_bytes"].as_u64().unwrap() > 0, "{it}");
        // The binned diagnostics: two 4,096-bin summaries and 100 ESS bins per class,
        // whatever the particle count.
        let k = s["num_classes"].as_u64().unwrap();
        assert_eq!(
            it["diagnostics_allreduce_bytes"],
            2 * (4096 + 2) * 8 + k * 100 * 8,
            "{it}"
        );
    }
    assert_eq!(
        gathered[0], gathered[1],
        "gathered bytes grow with the particle count"
    );
}

/// `max_resident_gb: 0` streams the particles from the file in every pass: the same bits as
/// the resident run, on 1 rank and on 2.
#[test]
fn streamed_particles_give_the_resident_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1300, &[]);
    let extra = "fem_max_iterations: 3\n";
    config(d, "res.yaml", "sim/particles.h5", "res", extra);
    config(
        d,
        "str.yaml",
        "sim/particles.h5",
        "str",
        &format!("{extra}max_resident_gb: 0\n"),
    );
    emclass(d, &["-q", "classify3d", "res.yaml"]).ok();
    let r = emclass(d, &["classify3d", "str.yaml"]).ok();
    assert!(
        r.stderr.contains("memory plan (rank 0): streamed"),
        "{}",
        r.stderr
    );
    assert_same_3d(&d.join("res"), &d.join("str"));
    mpirun(
        d,
        2,
        &["-q", "classify3d", "res.yaml", "--set", "output=res2"],
    )
    .ok();
    mpirun(
        d,
        2,
        &["-q", "classify3d", "str.yaml", "--set", "output=str2"],
    )
    .ok();
    assert_same_3d(&d.join("res2"), &d.join("str2"));
}
