//! `emclass classify2d` end to end on simulated data: recovered views, the outputs the seed
//! lists, duplicate removal, rank independence under `mpirun`, and bad input.

mod common;
use common::*;

use std::path::Path;

use emclass::dataset::Dataset;
use emclass::em::metrics::{adjusted_rand_index, matched_agreement};

/// A small, quick views2d set: box 64 at 3 Å, 4 views, 10% junk, 5% duplicates.
fn simulate(dir: &Path, name: &str, n: usize, extra: &[&str]) {
    let base = [
        "box_px=64",
        "psize_A=3.0",
        "num_views=4",
        "junk_fraction=0.1",
        "snr=0.08",
        "max_shift_px=2",
        "seed=7",
    ];
    let sets: Vec<&str> = base.iter().chain(extra).copied().collect();
    simulate_with(dir, "views2d", name, n, &sets);
}

/// A config for the small set: 6 classes, coarse resolution; `extra` lines (`key: value`)
/// replace or add keys.
fn config(dir: &Path, input: &str, output: &str, extra: &str) {
    let mut keys: Vec<(String, String)> = [
        ("input", input),
        ("output", output),
        ("num_classes", "6"),
        ("max_res_A", "9"),
        ("online_em_iterations", "20"),
        ("batch_size_per_class", "60"),
        ("max_shift_px", "2"),
        ("seed", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line.split_once(':').unwrap();
        match keys.iter_mut().find(|(kk, _)| kk == k.trim()) {
            Some(e) => e.1 = v.trim().to_string(),
            None => keys.push((k.trim().to_string(), v.trim().to_string())),
        }
    }
    let text: String = keys.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(dir.join("c2d.yaml"), text).unwrap();
}

fn labels_f64(path: &Path, field: &str) -> Vec<f64> {
    let ds = Dataset::open(path).unwrap();
    ds.table()
        .get(field)
        .unwrap_or_else(|| panic!("{} lacks {field}", path.display()))
        .data
        .to_f64()
        .unwrap()
}

fn labels(path: &Path, field: &str) -> Vec<i64> {
    labels_f64(path, field).iter().map(|&v| v as i64).collect()
}

#[test]
fn recovers_views_writes_every_output_and_removes_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1600, &["duplicate_fraction=0.05"]);
    config(
        d,
        "sim/particles.h5",
        "out",
        "remove_duplicates: true\nmin_separation_A: 20\n",
    );
    emclass(d, &["classify2d", "c2d.yaml"]).ok();
    let files = ls(&d.join("out"));
    for f in [
        "classes.mrcs",
        "config.used.yaml",
        "duplicates.h5",
        "particles.h5",
        "plots",
        "summary.json",
    ] {
        assert!(files.contains(&f.to_string()), "missing {f}: {files:?}");
    }
    let plots = ls(&d.join("out/plots"));
    for f in [
        "best_class_probability.png",
        "class_ess.png",
        "classes.png",
        "classes_iter000.png",
        "noise_model.png",
    ] {
        assert!(
            plots.contains(&f.to_string()),
            "missing plots/{f}: {plots:?}"
        );
    }
    // After every iteration, as the seed shows them: montage, ESS and best-probability
    // histograms, noise model; each a readable PNG.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/summary.json")).unwrap())
            .unwrap();
    let iterations = summary["iterations"].as_array().unwrap();
    assert!(iterations.len() > 5);
    for it in iterations {
        let t = it["iteration"].as_u64().unwrap();
        for stem in [
            "classes",
            "class_ess",
            "best_class_probability",
            "noise_model",
        ] {
            let f = d.join(format!("out/plots/{stem}_iter{t:03}.png"));
            let img = image::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(img.width() > 100 && img.height() > 100, "{}", f.display());
        }
    }
    // Every particle is in exactly one of particles.h5 / duplicates.h5, with its fields.
    let kept = Dataset::open(&d.join("out/particles.h5")).unwrap();
    let dups = Dataset::open(&d.join("out/duplicates.h5")).unwrap();
    assert_eq!(kept.len() + dups.len(), 1600);
    let t = kept.table();
    for f in [
        "alignments2D/class",
        "alignments2D/class_posterior",
        "alignments2D/class_ess",
        "alignments2D/pose",
        "alignments2D/shift",
        "alignments2D/class_probs",
        "alignments2D/log_likelihood",
        "ctf/df1_A",
        "gt/view",
    ] {
        assert!(t.has(f), "particles.h5 lacks {f}");
    }
    assert_eq!(t.get("alignments2D/class_probs").unwrap().width, 6);
    let probs = t.f32("alignments2D/class_probs").unwrap();
    for row in probs.chunks(6) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-3, "probabilities sum to {s}");
    }
    // The images are referenced, not copied: reading them gives the input's pixels.
    let input = Dataset::open(&d.join("sim/particles.h5")).unwrap();
    let a = kept.read_images(0..3).unwrap();
    let row0 = input
        .table()
        .uid()
        .iter()
        .position(|&u| u == t.uid()[0])
        .unwrap();
    let b = input.read_images(row0..row0 + 1).unwrap();
    assert_eq!(
        a.index_axis(ndarray::Axis(0), 0),
        b.index_axis(ndarray::Axis(0), 0)
    );

    // Recovered views on the non-junk particles (duplicates included from both files).
    let mut truth = labels(&d.join("out/particles.h5"), "gt/view");
    truth.extend(labels(&d.join("out/duplicates.h5"), "gt/view"));
    let mut class = labels(&d.join("out/particles.h5"), "alignments2D/class");
    class.extend(labels(&d.join("out/duplicates.h5"), "alignments2D/class"));
    let (a, b): (Vec<i64>, Vec<i64>) = truth
        .iter()
        .zip(&class)
        .filter(|(v, _)| **v >= 0)
        .map(|(v, c)| (*v, *c))
        .unzip();
    let ari = adjusted_rand_index(&a, &b);
    assert!(ari >= 0.85, "ARI {ari}");
    // The log-likelihood (mean over classes and poses of exp(−residual/σ²)) is ≤ 0, and
    // junk (noise, blobs) fits the class averages worse than the views do.
    let ll = labels_f64(&d.join("out/particles.h5"), "alignments2D/log_likelihood");
    let view = labels(&d.join("out/particles.h5"), "gt/view");
    assert!(ll.iter().all(|l| l.is_finite() && *l < 0.0));
    let median = |junk: bool| {
        let mut v: Vec<f64> = ll
            .iter()
            .zip(&view)
            .filter(|(_, &g)| (g < 0) == junk)
            .map(|(l, _)| *l)
            .collect();
        assert!(v.len() > 20, "{} particles", v.len());
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (good, junk) = (median(false), median(true));
    assert!(
        junk < good,
        "median log-likelihood: junk {junk}, views {good}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/summary.json")).unwrap())
            .unwrap();
    let iters = summary["iterations"].as_array().unwrap();
    // 20 online, then 2..=10 full iterations (the 1% class-switch stop may end them early).
    assert!(
        (22..=30).contains(&iters.len()),
        "{} iterations",
        iters.len()
    );
    assert_eq!(iters.last().unwrap()["phase"].as_str(), Some("full"));
    assert!(
        iters[0]["ess_quartiles"][2].as_f64().unwrap()
            > iters[20]["ess_quartiles"][2].as_f64().unwrap()
    );

    // Duplicates: each simulated pair loses exactly one member; originals are kept.
    let uid_kept: std::collections::HashSet<u64> = t.uid().iter().copied().collect();
    let it = input.table();
    let is_dup = it.get("gt/is_duplicate").unwrap().data.to_f64().unwrap();
    let of = it.u64("gt/duplicate_of").unwrap();
    let (mut pairs, mut found) = (0, 0);
    for i in 0..it.len() {
        if is_dup[i] > 0.5 {
            pairs += 1;
            let (x, y) = (it.uid()[i], of[i]);
            if uid_kept.contains(&x) != uid_kept.contains(&y) {
                found += 1;
            }
        }
    }
    let in_pair: std::collections::HashSet<u64> = (0..it.len())
        .filter(|&i| is_dup[i] > 0.5)
        .flat_map(|i| [it.uid()[i], of[i]])
        .collect();
    let false_removed = dups
        .table()
        .uid()
        .iter()
        .filter(|u| !in_pair.contains(u))
        .count();
    assert!(pairs > 40, "{pairs} simulated duplicates");
    assert!(
        found as f64 >= 0.95 * pairs as f64,
        "found {found} of {pairs} pairs"
    );
    assert!(
        (false_removed as f64) < 0.01 * (it.len() - in_pair.len()) as f64,
        "{false_removed} false removals"
    );
}

#[test]
fn one_and_two_ranks_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1200, &[]);
    config(d, "sim/particles.h5", "one", "");
    emclass(d, &["classify2d", "c2d.yaml"]).ok();
    mpirun(d, 2, &["classify2d", "c2d.yaml", "--set", "output=two"]).ok();
    let a = labels(&d.join("one/particles.h5"), "alignments2D/class");
    let b = labels(&d.join("two/particles.h5"), "alignments2D/class");
    let agree = matched_agreement(&a, &b);
    assert!(agree >= 0.995, "1 vs 2 ranks agree on {agree}");
    // Per-iteration timing split and all-reduce size: the same buffer on 1 and 2 ranks.
    let iters = |o: &str| -> Vec<serde_json::Value> {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(o).join("summary.json")).unwrap())
                .unwrap();
        s["iterations"].as_array().unwrap().clone()
    };
    for (x, y) in iters("one").iter().zip(iters("two").iter()) {
        assert_eq!(x["allreduce_bytes"], y["allreduce_bytes"]);
        assert!(y["allreduce_bytes"].as_u64().unwrap() > 0 || y["phase"] == "assign");
        let (e, c, t) = (
            y["estep_seconds"].as_f64().unwrap(),
            y["comm_seconds"].as_f64().unwrap(),
            y["seconds"].as_f64().unwrap(),
        );
        assert!(e >= 0.0 && c >= 0.0 && e + c <= t + 1e-6, "{y}");
    }
    mpirun(d, 3, &["classify2d", "c2d.yaml", "--set", "output=three"]).ok();
    let c = labels(&d.join("three/particles.h5"), "alignments2D/class");
    let agree = matched_agreement(&a, &c);
    assert!(agree >= 0.995, "1 vs 3 ranks agree on {agree}");
}

/// `backend: cuda` and `backend: cpu` give the same classes where a GPU is usable; without
/// one, `cuda` is a one-line config error and `auto` runs on the CPU saying so.
#[test]
fn cuda_backend_matches_the_cpu_or_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 800, &[]);
    config(d, "sim/particles.h5", "cpu", "backend: cpu\n");
    emclass(d, &["classify2d", "c2d.yaml"]).ok();
    let r = emclass(
        d,
        &[
            "classify2d",
            "c2d.yaml",
            "--set",
            "backend=cuda",
            "--set",
            "output=gpu",
        ],
    );
    if r.code == Some(0) {
        let a = labels(&d.join("cpu/particles.h5"), "alignments2D/class");
        let b = labels(&d.join("gpu/particles.h5"), "alignments2D/class");
        let agree = matched_agreement(&a, &b);
        assert!(agree >= 0.995, "CPU vs CUDA classes agree on {agree}");
        return;
    }
    eprintln!("no usable CUDA device here: checking the refusal and the fallback instead");
    r.fails_with(&["c2d.yaml", "backend", "cuda:"]);
    assert!(!d.join("gpu").exists());
    let auto = emclass(
        d,
        &[
            "classify2d",
            "c2d.yaml",
            "--set",
            "backend=auto",
            "--set",
            "output=auto",
            "--set",
            "online_em_iterations=2",
        ],
    )
    .ok();
    assert!(
        auto.stderr.contains("no usable CUDA device") && auto.stderr.contains("using the CPU"),
        "{}",
        auto.stderr
    );
}

/// Makes the CUDA start-up panic inside its guard (as a broken driver would), on any machine.
const NO_GPU: &[(&str, &str)] = &[("EMCLASS_TEST_CUDA_PANIC", "1")];

/// A CUDA start-up that panics is a reason to fall back, not a crash, on every rank count:
/// `auto` runs on the CPU (saying why) on 1, 2 and 3 ranks; `cuda` ends the job with one
/// error line and no output.
#[test]
fn a_panicking_cuda_start_up_falls_back_on_every_rank_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 300, &[]);
    config(
        d,
        "sim/particles.h5",
        "x",
        "online_em_iterations: 2\nfull_iterations: 1\n",
    );
    let args =
        |out: &'static str, b: &'static str| ["classify2d", "c2d.yaml", "--set", out, "--set", b];
    let r = emclass_env(d, &args("output=one", "backend=auto"), NO_GPU).ok();
    assert!(
        r.stderr.contains("simulated failure") && r.stderr.contains("using the CPU"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for (n, out) in [(2, "output=two"), (3, "output=three")] {
        let r = mpirun_env(d, n, &args(out, "backend=auto"), NO_GPU).ok();
        assert!(
            r.stderr.contains("using the CPU"),
            "{n} ranks: {}",
            r.stderr
        );
        assert!(d.join(&out[7..]).join("particles.h5").exists());
    }
    let r = mpirun_env(d, 2, &args("output=cuda", "backend=cuda"), NO_GPU);
    assert_ne!(r.code, Some(0));
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    r.fails_with(&["c2d.yaml", "backend", "cuda:", "simulated failure"]);
    assert!(!d.join("cuda").exists());
}

#[test]
fn marginalised_poses_hard_final_and_no_ctf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 600, &["ctf=false"]);
    config(
        d,
        "sim/particles.h5",
        "out",
        "force_max: false\nfinal_hard_classification: true\nctf_correct: false\nonline_em_iterations: 4\n",
    );
    emclass(d, &["classify2d", "c2d.yaml"]).ok();
    let ds = Dataset::open(&d.join("out/particles.h5")).unwrap();
    let t = ds.table();
    // Final hard classification (issue 19): the written posterior is the soft one of the
    // hard last pass, `class` its hard assignment.
    assert_soft_posterior_with_hard_class(t, "alignments2D", 6);
    // ctf_correct off writes CryoSPARC's "no CTF" values.
    assert!(t.f32("ctf/amp_contrast").unwrap().iter().all(|&v| v == 1.0));
    assert!(t.f32("ctf/df1_A").unwrap().iter().all(|&v| v == 0.0));
    assert!(t.f32("ctf/cs_mm").unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn bad_input_fails_with_one_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 100, &["ctf=false"]);
    // CTF correction on data without CTF fields.
    config(d, "sim/particles.h5", "out", "");
    emclass(d, &["classify2d", "c2d.yaml"]).fails_with(&["ctf/accel_kv", "missing", "ctf_correct"]);
    // Alignment resolution finer than the maximum resolution.
    config(d, "sim/particles.h5", "out", "max_align_res_A: 8\n");
    emclass(d, &["classify2d", "c2d.yaml"])
        .fails_with(&["max_align_res_A", "finer than max_res_A"]);
    // Unknown key, resolution beyond Nyquist, too many classes, missing input, cuda.
    config(d, "sim/particles.h5", "out", "num_clases: 3\n");
    emclass(d, &["classify2d", "c2d.yaml"]).fails_with(&["num_clases"]);
    config(
        d,
        "sim/particles.h5",
        "out",
        "ctf_correct: false\nmax_res_A: 4\n",
    );
    emclass(d, &["classify2d", "c2d.yaml"]).fails_with(&["max_res_A", "Nyquist"]);
    config(
        d,
        "sim/particles.h5",
        "out",
        "ctf_correct: false\nnum_classes: 101\n",
    );
    emclass(d, &["classify2d", "c2d.yaml"])
        .fails_with(&["num_classes", "101 classes for 100 particles"]);
    config(d, "nowhere.h5", "out", "");
    emclass(d, &["classify2d", "c2d.yaml"]).fails_with(&["nowhere.h5"]);
    config(
        d,
        "sim/particles.h5",
        "out",
        "ctf_correct: false\nbackend: cuda\n",
    );
    // (The CUDA start-up is made to fail, so this is refused on GPU machines too.)
    emclass_env(d, &["classify2d", "c2d.yaml"], NO_GPU).fails_with(&["backend", "cuda"]);
    // Under MPI, a failure ends every rank with one error line.
    config(d, "nowhere.h5", "out", "");
    let r = mpirun(d, 2, &["classify2d", "c2d.yaml"]);
    assert_ne!(r.code, Some(0));
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    let mut names = ls(d);
    names.sort();
    assert_eq!(names, vec!["c2d.yaml", "sim", "sim.yaml"]);
    // An existing output folder is refused unless --overwrite.
    config(
        d,
        "sim/particles.h5",
        "out",
        "ctf_correct: false\nnum_classes: 2\nonline_em_iterations: 1\nfull_iterations: 0\n",
    );
    emclass(d, &["classify2d", "c2d.yaml"]).ok();
    emclass(d, &["classify2d", "c2d.yaml"]).fails_with(&["out", "exists"]);
    emclass(d, &["classify2d", "c2d.yaml", "--overwrite"]).ok();
}

#[test]
fn shipped_config_documents_every_parameter() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/classify2d.yaml"),
    )
    .unwrap();
    let cfg: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let map = cfg.as_mapping().unwrap();
    let defaults = emclass::classify2d::config::Classify2dConfig::with_paths("a", "b");
    let yaml = serde_norway::to_value(&defaults).unwrap();
    for (k, v) in yaml.as_mapping().unwrap() {
        let key = k.as_str().unwrap();
        assert!(map.contains_key(k), "configs/classify2d.yaml lacks {key}");
        if key != "input" && key != "output" {
            assert_eq!(map.get(k).unwrap(), v, "default of {key}");
        }
    }
    // Every key line carries a one-line explanation.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(':'))
    {
        assert!(line.contains(" # "), "undocumented: {line}");
    }
}

/// Starts `cmd` (emclass or mpirun) in the background, waits until the run has written the
/// per-iteration montage of `iteration` (so checkpoints exist), and SIGKILLs it (for mpirun:
/// its rank 1, which makes mpirun end the job). Returns once everything has exited.
/// Kills the run once the staging folder of `out` holds the plots of `iteration`.
fn kill_mid_run(d: &Path, cmd: std::process::Command, out: &str, iteration: usize, mpi: bool) {
    let plot = d.join(format!(
        ".{out}.emclass-tmp/plots/classes_iter{iteration:03}.png"
    ));
    kill_when(d, cmd, &plot, out, mpi);
}

/// Per-particle results and class averages of two runs, compared bit for bit.
fn assert_same_results(a: &Path, b: &Path) {
    let (ta, tb) = (
        Dataset::open(&a.join("particles.h5")).unwrap(),
        Dataset::open(&b.join("particles.h5")).unwrap(),
    );
    for f in [
        "alignments2D/class",
        "alignments2D/class_probs",
        "alignments2D/pose",
        "alignments2D/shift",
        "alignments2D/class_ess",
        "alignments2D/log_likelihood",
    ] {
        assert_eq!(
            ta.table().get(f),
            tb.table().get(f),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(
        std::fs::read(a.join("classes.mrcs")).unwrap(),
        std::fs::read(b.join("classes.mrcs")).unwrap(),
        "class averages differ"
    );
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 1200, &[]);
    config(d, "sim/particles.h5", "whole", "online_em_iterations: 14\n");
    emclass(d, &["-q", "classify2d", "c2d.yaml"]).ok();
    // One process: killed after iteration 6, resumed.
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["-q", "classify2d", "c2d.yaml", "--set", "output=killed"]);
    kill_mid_run(d, cmd, "killed", 6, false);
    let r = emclass(d, &["classify2d", "c2d.yaml", "--resume", "killed"]).ok();
    assert!(r.stderr.contains("resuming at iteration"), "{}", r.stderr);
    assert_same_results(&d.join("whole"), &d.join("killed"));
    // Two ranks: rank 1 killed after iteration 4, the job resumed on two ranks.
    mpirun(
        d,
        2,
        &["-q", "classify2d", "c2d.yaml", "--set", "output=whole2"],
    )
    .ok();
    let session = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("mpirun");
    cmd.env("OMPI_MCA_orte_tmpdir_base", session.path())
        .args(["--oversubscribe", "--allow-run-as-root", "-n", "2"])
        .arg(bin())
        .args(["-q", "classify2d", "c2d.yaml", "--set", "output=killed2"]);
    kill_mid_run(d, cmd, "killed2", 4, true);
    mpirun(
        d,
        2,
        &["-q", "classify2d", "c2d.yaml", "--resume", "killed2"],
    )
    .ok();
    assert_same_results(&d.join("whole2"), &d.join("killed2"));
    // Nothing to resume, a finished run, another configuration (the checkpoint is kept).
    emclass(d, &["classify2d", "c2d.yaml", "--resume", "nowhere"])
        .fails_with(&["nowhere", "nothing to resume"]);
    emclass(d, &["classify2d", "c2d.yaml", "--resume", "whole"])
        .fails_with(&["whole", "already finished"]);
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["-q", "classify2d", "c2d.yaml", "--set", "output=again"]);
    kill_mid_run(d, cmd, "again", 3, false);
    emclass(
        d,
        &[
            "classify2d",
            "c2d.yaml",
            "--resume",
            "again",
            "--set",
            "num_classes=5",
        ],
    )
    .fails_with(&["again", "another configuration"]);
    assert!(d.join(".again.emclass-tmp/checkpoint.bin").exists());
    emclass(d, &["subset", "c2d.yaml", "--resume", "again"])
        .fails_with(&["--resume", "only classify2d"]);
}

/// With `max_resident_gb: 0` every rank streams its particles from the file, block by block
/// with read-ahead, instead of holding them: the results are bit for bit those of the
/// resident run, on one rank and on two, and every rank's rows land in input order.
#[test]
fn streamed_particles_give_the_resident_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // More than two blocks of 1024 on one rank, so blocks and read-ahead are exercised.
    simulate(d, "sim", 2600, &[]);
    config(
        d,
        "sim/particles.h5",
        "resident",
        "online_em_iterations: 6\n",
    );
    let r = emclass(d, &["classify2d", "c2d.yaml"]).ok();
    assert!(
        r.stderr.contains("memory plan (rank 0): resident"),
        "{}",
        r.stderr
    );
    let stream = ["--set", "max_resident_gb=0"];
    let r = emclass(
        d,
        &[
            "classify2d",
            "c2d.yaml",
            stream[0],
            stream[1],
            "--set",
            "output=streamed",
        ],
    )
    .ok();
    assert!(
        r.stderr.contains("memory plan (rank 0): streamed"),
        "{}",
        r.stderr
    );
    assert_same_results(&d.join("resident"), &d.join("streamed"));
    mpirun(
        d,
        2,
        &["classify2d", "c2d.yaml", "--set", "output=resident2"],
    )
    .ok();
    mpirun(
        d,
        2,
        &[
            "classify2d",
            "c2d.yaml",
            stream[0],
            stream[1],
            "--set",
            "output=streamed2",
        ],
    )
    .ok();
    assert_same_results(&d.join("resident2"), &d.join("streamed2"));
    // Rows in input order with every input field, whoever wrote them.
    let input = Dataset::open(&d.join("sim/particles.h5")).unwrap();
    let out = Dataset::open(&d.join("streamed2/particles.h5")).unwrap();
    assert_eq!(out.table().uid(), input.table().uid());
    for (name, col) in input.table().columns() {
        if name != "blob/image_row" {
            assert_eq!(out.table().get(name), Some(col), "{name}");
        }
    }
    let names = ls(&d.join("streamed2"));
    assert!(
        !names.iter().any(|n| n.contains(".results.rank")),
        "spill files left behind: {names:?}"
    );
}

/// A rank that meets a bad block of particles mid-run (here a NaN pixel in the last rank's
/// share, read only when streamed) ends the whole job: one error line naming the file and
/// particle, a non-zero exit, no output, within a minute.
#[test]
fn a_bad_block_on_one_rank_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 900, &[]);
    {
        let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let f = hdf5::File::open_rw(d.join("sim/particles.h5")).unwrap();
        let images = f.dataset("images").unwrap();
        let nan = ndarray::Array3::<f32>::from_elem((1, 1, 1), f32::NAN);
        images
            .write_slice(&nan, ndarray::s![850..851, 10..11, 10..11])
            .unwrap();
    }
    config(
        d,
        "sim/particles.h5",
        "out",
        "online_em_iterations: 3\nmax_resident_gb: 0\n",
    );
    let t0 = std::time::Instant::now();
    let r = mpirun(d, 3, &["classify2d", "c2d.yaml"]);
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    assert_ne!(r.code, Some(0));
    assert_eq!(r.stderr.matches("error:").count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("particles.h5"), "{}", r.stderr);
    assert!(
        r.stderr.contains("850") || r.stderr.contains("non-finite"),
        "{}",
        r.stderr
    );
    assert!(!d.join("out").exists());
    assert!(
        !ls(d).iter().any(|n| n.contains("emclass-tmp")),
        "staging left: {:?}",
        ls(d)
    );
}
