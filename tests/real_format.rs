//! Real-format regression tests (issue 15). A RELION 3.1 STAR + MRC stacks set and a
//! CryoSPARC .cs of the same particles are written by the reference Python libraries
//! (`scripts/interop/sim_to_formats.py`: starfile, mrcfile, cryosparc-tools) from an emclass
//! simulation shaped like the user's data — 2,999 particles (divisible by neither 2 nor 3),
//! box 64, 2.5 Å/px, SNR 0.05, CTF with per-micrograph defocus, 6 views, 15% junk, 3%
//! duplicate picks, ~100 picks per micrograph, coordinates in micrograph pixels — imported
//! with `emclass import --star` / `--cs`, and every job is run on 1, 2 and 3 ranks (a plain
//! process, `mpirun -n 2`, `mpirun -n 3`).
//!
//! Rows are ordered with every particle of a duplicate pair first and the rest by true view,
//! so that under `mpirun -n 3` the last rank holds no duplicate pair and only the last views
//! (zero particles of most classes): the kind of layout in which the user's `mpirun -n 2`
//! classify2d crashed at the end (an empty MPI_Gatherv contribution).
//!
//! The results must not depend on the rank count: classes agree for ≥ 99.5% of the particles,
//! and the duplicate, selected / excluded and subset uid sets are identical. Each run must
//! also be a real classification (lenient floors against the ground truth).
//!
//! Needs the venv `.venv` (`scripts/setup_venv.sh`): without it each test prints a skip
//! message and passes, unless `EMCLASS_REQUIRE_INTEROP=1`, where it fails.
//! `EMCLASS_KEEP_TEST_DIR=1` keeps each test's folder (its path is printed) to reproduce a
//! failure by hand with the command in the panic message.

mod common;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use emclass::em::metrics::{adjusted_rand_index, matched_agreement};

/// Rank counts every job runs on.
const RANKS: [usize; 3] = [1, 2, 3];
/// Particles of the 2D (user's) dataset and of the 3D one: odd, not divisible by 3.
const N2D: usize = 2999;
const N3D: usize = 1501;
/// Classes must agree between rank counts for at least this fraction of the particles.
const MIN_AGREEMENT: f64 = 0.995;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, or `None` (after saying so on stderr) when the venv is missing.
/// Panics when it is missing and `EMCLASS_REQUIRE_INTEROP=1`.
fn python() -> Option<PathBuf> {
    let exe = repo().join(".venv/bin/python");
    if exe.exists() {
        return Some(exe);
    }
    if std::env::var("EMCLASS_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!(
            "{} is missing and EMCLASS_REQUIRE_INTEROP=1: run `bash scripts/setup_venv.sh`",
            exe.display()
        );
    }
    eprintln!(
        "skipping real-format test: {} is missing (run `bash scripts/setup_venv.sh` to enable it)",
        exe.display()
    );
    None
}

/// Runs `python args...` in `dir`; it must succeed.
fn py(exe: &Path, dir: &Path, args: &[&str]) -> Run {
    let out = run_command(Command::new(exe).args(args).current_dir(dir)).expect("start python");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .ok()
}

/// A test's folder: removed at the end unless `EMCLASS_KEEP_TEST_DIR=1`.
struct Folder {
    _tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

fn folder(test: &str) -> Folder {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("real_format-{test}-"))
        .tempdir()
        .unwrap();
    if std::env::var("EMCLASS_KEEP_TEST_DIR").as_deref() == Ok("1") {
        let path = tmp.keep();
        eprintln!("[real_format] {test}: keeping {}", path.display());
        return Folder { _tmp: None, path };
    }
    let path = tmp.path().to_path_buf();
    Folder {
        _tmp: Some(tmp),
        path,
    }
}

/// Runs `emclass args...` in `dir` on `ranks` ranks (1: a plain process, else mpirun) and
/// panics, with the command to reproduce it and its output, unless it succeeds.
fn on_ranks(dir: &Path, ranks: usize, args: &[&str]) -> Run {
    let t0 = Instant::now();
    let r = if ranks == 1 {
        emclass(dir, args)
    } else {
        mpirun(dir, ranks, args)
    };
    let launcher = if ranks == 1 {
        String::new()
    } else {
        format!("mpirun --oversubscribe -n {ranks} ")
    };
    let cmd = format!(
        "cd {} && {launcher}emclass {}",
        dir.display(),
        args.join(" ")
    );
    if r.code != Some(0) {
        panic!(
            "failed (exit {:?}) on {ranks} rank(s): {cmd}\n(EMCLASS_KEEP_TEST_DIR=1 keeps the folder)\nstdout:\n{}\nstderr:\n{}",
            r.code, r.stdout, r.stderr
        );
    }
    assert!(
        !r.stderr.contains("panicked"),
        "{cmd}: a rank panicked:\n{}",
        r.stderr
    );
    eprintln!(
        "[real_format] {:.1} s  {launcher}emclass {}",
        t0.elapsed().as_secs_f64(),
        args.join(" ")
    );
    r
}

/// Runs the job of `args(ranks)` on 1, 2 and 3 ranks at once (each as [`on_ranks`]), so
/// that the runs share the cores; panics if any fails.
fn on_every_rank_count(dir: &Path, args: impl Fn(usize) -> Vec<String> + Sync) {
    std::thread::scope(|s| {
        let runs: Vec<_> = RANKS
            .iter()
            .map(|&ranks| {
                let a = args(ranks);
                s.spawn(move || {
                    let a: Vec<&str> = a.iter().map(String::as_str).collect();
                    on_ranks(dir, ranks, &a);
                })
            })
            .collect();
        let failed = runs
            .into_iter()
            .map(|h| h.join())
            .filter(|r| r.is_err())
            .count();
        assert_eq!(failed, 0, "{failed} of the runs failed (see above)");
    });
}

/// One row of `truth.csv` (the ground truth in the STAR / .cs row order).
#[derive(Clone, Debug)]
struct Truth {
    /// The simulation's uid (= the .cs uid).
    uid: u64,
    /// True view (views2d) or state (hetero3d); -1 for junk.
    class: i64,
    is_duplicate: bool,
    duplicate_of: u64,
    /// A duplicate, or the original that a duplicate repeats.
    in_pair: bool,
}

/// A simulation converted to STAR and .cs and imported: `dir/star.h5`, `dir/cs.h5`.
struct Prepared {
    dir: PathBuf,
    truth: Vec<Truth>,
    /// uid that `emclass import --star` gave each STAR row → simulation uid.
    star_to_sim: HashMap<u64, u64>,
}

impl Prepared {
    /// `values` (uid → value, for an output made from `input`, "star.h5" or "cs.h5") keyed by
    /// the simulation's uid.
    fn by_sim_uid(&self, input: &str, values: HashMap<u64, f64>) -> HashMap<u64, f64> {
        if input.starts_with("cs") {
            return values;
        }
        values
            .into_iter()
            .map(|(u, v)| {
                let s = *self
                    .star_to_sim
                    .get(&u)
                    .unwrap_or_else(|| panic!("uid {u} is not a particle of star.h5"));
                (s, v)
            })
            .collect()
    }
    fn true_class(&self) -> HashMap<u64, i64> {
        self.truth.iter().map(|t| (t.uid, t.class)).collect()
    }
}

fn parse_truth(path: &Path) -> Vec<Truth> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("truth.csv has no {name}"))
    };
    let (u, c, d, of, p) = (
        col("uid"),
        col("class"),
        col("is_duplicate"),
        col("duplicate_of"),
        col("in_duplicate_pair"),
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Truth {
                uid: f[u].parse().unwrap(),
                class: f[c].parse().unwrap(),
                is_duplicate: f[d] == "1",
                duplicate_of: f[of].parse().unwrap(),
                in_pair: f[p] == "1",
            }
        })
        .collect()
}

/// Simulates `n` particles (`mode`, then `sets`) in `dir/sim`, exports its images to
/// `dir/ex/stack.mrcs`, converts with sim_to_formats.py (`--order
/// duplicates-first-then-by-view`, stacks per micrograph) into `dir/fmt/`, and imports
/// `fmt/particles.star` → `dir/star.h5`, `fmt/particles.cs` → `dir/cs.h5`.
fn prepare(exe: &Path, dir: &Path, mode: &str, n: usize, sets: &[&str]) -> Prepared {
    let t0 = Instant::now();
    simulate_with(dir, mode, "sim", n, sets);
    std::fs::create_dir(dir.join("ex")).unwrap();
    emclass(
        dir,
        &[
            "-q",
            "export",
            "--in",
            "sim/particles.h5",
            "--mrcs",
            "ex/stack.mrcs",
        ],
    )
    .ok();
    let script = repo().join("scripts/interop/sim_to_formats.py");
    let r = py(
        exe,
        dir,
        &[
            script.to_str().unwrap(),
            "sim",
            "ex/stack.mrcs",
            "fmt",
            "--order",
            "duplicates-first-then-by-view",
        ],
    );
    assert!(
        r.stdout.contains(&format!("({n} particles")),
        "{}",
        r.stdout
    );
    emclass(
        dir,
        &[
            "-q",
            "import",
            "--star",
            "fmt/particles.star",
            "--out",
            "star.h5",
        ],
    )
    .ok();
    emclass(
        dir,
        &["-q", "import", "--cs", "fmt/particles.cs", "--out", "cs.h5"],
    )
    .ok();
    let truth = parse_truth(&dir.join("fmt/truth.csv"));
    assert_eq!(truth.len(), n);
    let star_uids = dataset_uids(&dir.join("star.h5"));
    assert_eq!(star_uids.len(), n, "star.h5 rows");
    let cs_uids = dataset_uids(&dir.join("cs.h5"));
    let want: Vec<u64> = truth.iter().map(|t| t.uid).collect();
    assert_eq!(
        cs_uids, want,
        "cs.h5 must keep the .cs uids in the .cs row order"
    );
    let star_to_sim = star_uids
        .iter()
        .zip(&truth)
        .map(|(&s, t)| (s, t.uid))
        .collect();
    eprintln!(
        "[real_format] {:.1} s  simulate {mode} {n} + export + sim_to_formats.py + 2 imports",
        t0.elapsed().as_secs_f64()
    );
    Prepared {
        dir: dir.to_path_buf(),
        truth,
        star_to_sim,
    }
}

/// First row of each rank's block of `n` rows on `ranks` ranks (as emclass splits them:
/// ceil(n / ranks) rows each, the last rank the rest).
fn rank_start(n: usize, ranks: usize, rank: usize) -> usize {
    (n.div_ceil(ranks) * rank).min(n)
}

/// The dataset has the layout the test is about: on 2 and on 3 ranks the last rank holds no
/// particle of a duplicate pair, and on 3 ranks it holds only a few of the true classes.
fn assert_rank_layout(p: &Prepared) {
    let n = p.truth.len();
    let pairs = p.truth.iter().filter(|t| t.in_pair).count();
    assert!(pairs > 0, "the simulation has no duplicates");
    for ranks in [2, 3] {
        let last = &p.truth[rank_start(n, ranks, ranks - 1)..];
        assert!(
            last.iter().all(|t| !t.in_pair),
            "on {ranks} ranks the last rank holds particles of duplicate pairs"
        );
    }
    let last = &p.truth[rank_start(n, 3, 2)..];
    let classes: BTreeSet<i64> = last.iter().map(|t| t.class).collect();
    let all: BTreeSet<i64> = p.truth.iter().map(|t| t.class).collect();
    assert!(
        classes.len() * 2 <= all.len(),
        "the last of 3 ranks holds classes {classes:?} of {all:?}"
    );
}

/// Writes `dir/name` with `text`.
fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// `field` of `file` per simulation uid (the file made from `input`).
fn per_sim_uid(p: &Prepared, input: &str, file: &str, field: &str) -> HashMap<u64, f64> {
    p.by_sim_uid(input, column_by_uid(&p.dir.join(file), field))
}

/// Uids (simulation's) of an output dataset made from `input`.
fn uid_set(p: &Prepared, input: &str, file: &Path) -> BTreeSet<u64> {
    let uids = dataset_uids(file);
    let n = uids.len();
    let set: BTreeSet<u64> = uids
        .into_iter()
        .map(|u| {
            if input.starts_with("cs") {
                u
            } else {
                p.star_to_sim[&u]
            }
        })
        .collect();
    assert_eq!(set.len(), n, "{}: repeated uids", file.display());
    set
}

/// Runs classify2d on `input` (star.h5 or cs.h5) with num_classes 10 and seed 7 (the user's
/// settings) plus `extra` on 1, 2 and 3 ranks into `{tag}_r{ranks}`, and checks: classes agree
/// with the 1-rank run for ≥ 99.5% of the particles, the duplicate sets are identical, every
/// particle is in exactly one of particles.h5 / duplicates.h5, and the views are recovered
/// at least `min_ari` (adjusted Rand index over non-junk particles).
fn classify2d_on_every_rank_count(p: &Prepared, input: &str, tag: &str, extra: &str, min_ari: f64) {
    let d = &p.dir;
    let cfg = format!("c2d_{tag}.yaml");
    write(
        d,
        &cfg,
        &format!("input: {input}\noutput: unused\nnum_classes: 10\nseed: 7\n{extra}"),
    );
    let dedup = extra.contains("remove_duplicates: true");
    let all: BTreeSet<u64> = p.truth.iter().map(|t| t.uid).collect();
    let mut first: Option<(HashMap<u64, f64>, BTreeSet<u64>)> = None;
    on_every_rank_count(d, |ranks| {
        let out = format!("output={tag}_r{ranks}");
        ["-q", "classify2d", &cfg, "--set", &out]
            .map(String::from)
            .to_vec()
    });
    for ranks in RANKS {
        let out = format!("{tag}_r{ranks}");
        let classes = per_sim_uid(
            p,
            input,
            &format!("{out}/particles.h5"),
            "alignments2D/class",
        );
        let dups = if d.join(&out).join("duplicates.h5").exists() {
            uid_set(p, input, &d.join(&out).join("duplicates.h5"))
        } else {
            BTreeSet::new()
        };
        assert_eq!(
            dedup,
            d.join(&out).join("duplicates.h5").exists(),
            "{out}: duplicates.h5 present without remove_duplicates, or missing with it"
        );
        // Every particle exactly once.
        let kept: BTreeSet<u64> = classes.keys().copied().collect();
        assert!(
            kept.is_disjoint(&dups),
            "{out}: a particle is kept and removed"
        );
        let union: BTreeSet<u64> = kept.union(&dups).copied().collect();
        assert_eq!(union, all, "{out}: particles lost or added");
        // A real classification.
        let truth = p.true_class();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (u, c) in &classes {
            if truth[u] >= 0 {
                a.push(truth[u]);
                b.push(*c as i64);
            }
        }
        let ari = adjusted_rand_index(&a, &b);
        let used: BTreeSet<i64> = b.iter().copied().collect();
        eprintln!(
            "[real_format] {out}: ARI vs true views {ari:.3}, {} classes used, {} duplicates removed",
            used.len(),
            dups.len()
        );
        assert!(
            ari >= min_ari,
            "{out}: ARI {ari:.3} of the classes against the true views is below {min_ari}"
        );
        if dedup {
            assert_duplicates_are_true_pairs(p, &dups, &out);
        }
        match &first {
            None => first = Some((classes, dups)),
            Some((c1, d1)) => {
                let agree = agreement_by_uid(c1, &classes);
                assert!(
                    agree >= MIN_AGREEMENT,
                    "{out}: classes agree with the 1-rank run for only {:.2}% of the particles",
                    100.0 * agree
                );
                assert_eq!(
                    d1,
                    &dups,
                    "{out}: the duplicate set differs from the 1-rank run ({} vs {} uids)",
                    d1.len(),
                    dups.len()
                );
            }
        }
    }
}

/// The removed duplicates are right: each removed particle belongs to a true duplicate pair,
/// no pair loses both members, and most pairs lose one.
fn assert_duplicates_are_true_pairs(p: &Prepared, removed: &BTreeSet<u64>, out: &str) {
    let in_pair: HashMap<u64, bool> = p.truth.iter().map(|t| (t.uid, t.in_pair)).collect();
    let wrong: Vec<&u64> = removed.iter().filter(|u| !in_pair[u]).take(5).collect();
    assert!(
        wrong.is_empty(),
        "{out}: removed particles of no duplicate pair, e.g. {wrong:?}"
    );
    let pairs: Vec<(u64, u64)> = p
        .truth
        .iter()
        .filter(|t| t.is_duplicate)
        .map(|t| (t.uid, t.duplicate_of))
        .collect();
    let both = pairs
        .iter()
        .filter(|(a, b)| removed.contains(a) && removed.contains(b))
        .count();
    assert_eq!(both, 0, "{out}: {both} duplicate pairs lost both members");
    let resolved = pairs
        .iter()
        .filter(|(a, b)| removed.contains(a) || removed.contains(b))
        .count();
    assert!(
        resolved * 10 >= pairs.len() * 8,
        "{out}: only {resolved} of {} duplicate pairs were found",
        pairs.len()
    );
}

/// Runs curation job `job` with config `cfg` (whose input is `from`, made from `input`) on 1, 2 and 3 ranks into `{tag}_r{ranks}` and
/// checks that each run writes the same .h5 files holding the same uids, that the .h5 files
/// of one run partition the input, and that the .csv and .mrcs outputs are byte-identical.
/// Returns the 1-rank uid sets by file name.
fn curation_on_every_rank_count(
    p: &Prepared,
    input: &str,
    from: &str,
    job: &str,
    tag: &str,
    cfg: &str,
) -> HashMap<String, BTreeSet<u64>> {
    let d = &p.dir;
    let name = format!("{tag}.yaml");
    write(d, &name, cfg);
    let inp = uid_set(p, input, &d.join(from));
    type Outcome = (HashMap<String, BTreeSet<u64>>, Vec<(String, Vec<u8>)>);
    let mut first: Option<Outcome> = None;
    on_every_rank_count(d, |ranks| {
        let out = format!("output={tag}_r{ranks}");
        ["-q", job, &name, "--set", &out].map(String::from).to_vec()
    });
    for ranks in RANKS {
        let out = format!("{tag}_r{ranks}");
        let mut sets = HashMap::new();
        let mut other = Vec::new();
        for f in ls(&d.join(&out)) {
            let path = d.join(&out).join(&f);
            if f.ends_with(".h5") {
                sets.insert(f, uid_set(p, input, &path));
            } else if f.ends_with(".csv") || f.ends_with(".mrcs") {
                other.push((f, std::fs::read(&path).unwrap()));
            }
        }
        assert!(!sets.is_empty(), "{out}: no .h5 output");
        let total: usize = sets.values().map(|s| s.len()).sum();
        let union: BTreeSet<u64> = sets.values().flatten().copied().collect();
        assert!(
            total == inp.len() && union == inp,
            "{out}: the .h5 outputs do not partition the input ({total} rows, {} distinct, input {})",
            union.len(),
            inp.len()
        );
        let sizes: Vec<(String, usize)> = {
            let mut v: Vec<(String, usize)> =
                sets.iter().map(|(k, s)| (k.clone(), s.len())).collect();
            v.sort();
            v
        };
        eprintln!("[real_format] {out}: {sizes:?}");
        match &first {
            None => first = Some((sets, other)),
            Some((s1, o1)) => {
                let mut k1: Vec<&String> = s1.keys().collect();
                let mut k: Vec<&String> = sets.keys().collect();
                k1.sort();
                k.sort();
                assert_eq!(k1, k, "{out}: other .h5 files than on 1 rank");
                for (f, s) in &sets {
                    assert!(
                        s == &s1[f],
                        "{out}/{f}: {} uids, {} on 1 rank, {} in common",
                        s.len(),
                        s1[f].len(),
                        s.intersection(&s1[f]).count()
                    );
                }
                let names1: Vec<&String> = o1.iter().map(|(f, _)| f).collect();
                let names: Vec<&String> = other.iter().map(|(f, _)| f).collect();
                assert_eq!(names1, names, "{out}: other files than on 1 rank");
                for ((f, a), (_, b)) in o1.iter().zip(&other) {
                    assert!(a == b, "{out}/{f} differs from the 1-rank run");
                }
            }
        }
    }
    first.unwrap().0
}

/// The user's run: STAR import, classify2d with num_classes 10, seed 7 and the default
/// schedule on 1, 2 and 3 ranks; then subset (class probability threshold, a Gaussian
/// mixture, several thresholds of a statistic), select2d (keeping only classes absent from
/// the last of 3 ranks, which then selects nothing) and rebalance2d on the 1-rank output,
/// each on 1, 2 and 3 ranks.
#[test]
fn star_classify2d_default_schedule_and_curation_agree_on_1_2_3_ranks() {
    let Some(exe) = python() else { return };
    let t0 = Instant::now();
    let f = folder("star2d");
    let p = prepare(&exe, &f.path, "views2d", N2D, &user_dataset());
    assert_rank_layout(&p);
    classify2d_on_every_rank_count(&p, "star.h5", "star", "", 0.3);

    let input = "star_r1/particles.h5";
    let s = curation_on_every_rank_count(
        &p,
        "star.h5",
        input,
        "subset",
        "subset_threshold",
        &format!("input: {input}\noutput: unused\nmode: class_probability_2d\nthresholds: [0.5]\n"),
    );
    assert!(
        !s["selected.h5"].is_empty() && !s["excluded.h5"].is_empty(),
        "threshold 0.5 selects all or nothing"
    );
    let s = curation_on_every_rank_count(
        &p,
        "star.h5",
        input,
        "subset",
        "subset_gmm",
        &format!("input: {input}\noutput: unused\nmode: class_probability_2d\nmethod: gmm\ngmm_components: 2\n"),
    );
    assert_eq!(s.len(), 2, "{:?}", s.keys());
    curation_on_every_rank_count(
        &p,
        "star.h5",
        input,
        "subset",
        "subset_statistic",
        &format!(
            "input: {input}\noutput: unused\nmode: statistic\nfield: alignments2D/class_ess\nthresholds: [1.5, 3.0]\n"
        ),
    );

    // select2d: keep the classes that the last of 3 ranks holds none of.
    let (uids, classes) = read_column(&p.dir.join(input), "alignments2D/class");
    let row_of: HashMap<u64, usize> = dataset_uids(&p.dir.join("star.h5"))
        .into_iter()
        .enumerate()
        .map(|(i, u)| (u, i))
        .collect();
    let last_start = rank_start(N2D, 3, 2);
    let mut in_last = BTreeSet::new();
    let mut every = BTreeSet::new();
    for (u, c) in uids.iter().zip(&classes) {
        every.insert(c[0] as u32);
        if row_of[u] >= last_start {
            in_last.insert(c[0] as u32);
        }
    }
    let keep: Vec<String> = every.difference(&in_last).map(|c| c.to_string()).collect();
    eprintln!(
        "[real_format] classes of the last of 3 ranks {in_last:?}; select2d keeps [{}]",
        keep.join(", ")
    );
    let sel_cfg = if keep.is_empty() {
        // Every class reaches the last rank: drop its most common one instead.
        format!(
            "input: {input}\noutput: unused\ndrop: [{}]\n",
            in_last.iter().next().unwrap()
        )
    } else {
        format!(
            "input: {input}\noutput: unused\nkeep: [{}]\n",
            keep.join(", ")
        )
    };
    let s = curation_on_every_rank_count(&p, "star.h5", input, "select2d", "select2d", &sel_cfg);
    assert!(!s["selected.h5"].is_empty(), "select2d selected nothing");

    let s = curation_on_every_rank_count(
        &p,
        "star.h5",
        input,
        "rebalance2d",
        "rebalance2d",
        &format!(
            "input: {input}\noutput: unused\nnum_superclasses: 6\nrebalance_factor: 0.5\nseed: 7\n"
        ),
    );
    assert!(
        !s["selected.h5"].is_empty() && !s["excluded.h5"].is_empty(),
        "rebalance2d kept all or nothing"
    );
    eprintln!(
        "[real_format] star2d test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The simulation settings of the user's dataset (with `seed=7`).
fn user_dataset() -> Vec<&'static str> {
    vec![
        "box_px=64",
        "psize_A=2.5",
        "snr=0.05",
        "ctf=true",
        "num_views=6",
        "junk_fraction=0.15",
        "duplicate_fraction=0.03",
        "particles_per_micrograph=100",
        "seed=7",
    ]
}

/// Duplicate removal on the STAR import, whose location is `location/micrograph_path` +
/// `center_x_px` / `center_y_px` (RELION's rlnMicrographName and rlnCoordinateX/Y; no
/// micrograph uid, shape or pixel size). Expected to pass: classify2d must take STAR
/// locations (src/classify2d/duplicates.rs); a failure naming 'missing
/// location/micrograph_uid' means it does not yet.
#[test]
fn star_classify2d_with_duplicate_removal_agrees_on_1_2_3_ranks() {
    let Some(exe) = python() else { return };
    let t0 = Instant::now();
    let f = folder("star2d-dups");
    let p = prepare(&exe, &f.path, "views2d", N2D, &user_dataset());
    classify2d_on_every_rank_count(
        &p,
        "star.h5",
        "stardup",
        "remove_duplicates: true\nonline_em_iterations: 6\nbatch_size_per_class: 50\n",
        0.1,
    );
    eprintln!(
        "[real_format] star2d-dups test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Duplicate removal on the .cs import (micrograph uid, shape and centre fractions), and the
/// .cs and STAR imports of the same particles classify alike.
#[test]
fn cs_classify2d_with_duplicate_removal_agrees_on_1_2_3_ranks() {
    let Some(exe) = python() else { return };
    let t0 = Instant::now();
    let f = folder("cs2d-dups");
    let p = prepare(&exe, &f.path, "views2d", N2D, &user_dataset());
    classify2d_on_every_rank_count(
        &p,
        "cs.h5",
        "csdup",
        "remove_duplicates: true\nonline_em_iterations: 6\nbatch_size_per_class: 50\n",
        0.1,
    );
    eprintln!(
        "[real_format] cs2d-dups test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// classify3d on a hetero3d simulation converted the same way (STAR with rlnAngleRot/Tilt/Psi
/// and rlnOriginX/YAngst; .cs with alignments3D/pose and shift): the imported poses are the
/// simulator's, and K=2 classes agree across 1, 2 and 3 ranks and between the two formats.
#[test]
fn classify3d_on_star_and_cs_imports_agrees_on_1_2_3_ranks() {
    let Some(exe) = python() else { return };
    let t0 = Instant::now();
    let f = folder("hetero3d");
    let p = prepare(
        &exe,
        &f.path,
        "hetero3d",
        N3D,
        &[
            "box_px=64",
            "psize_A=2.5",
            "snr=0.1",
            "num_states=2",
            "domain_mass_fraction=0.2",
            "junk_fraction=0.15",
            "duplicate_fraction=0.03",
            "particles_per_micrograph=100",
            "seed=7",
        ],
    );
    assert_rank_layout(&p);
    let d = &p.dir;
    // The poses that reached the datasets are the simulator's (as rotations; shifts in px).
    let (sim_uids, sim_pose) = read_column(&d.join("sim/particles.h5"), "alignments3D/pose");
    let (_, sim_shift) = read_column(&d.join("sim/particles.h5"), "alignments3D/shift");
    let sim: HashMap<u64, (Vec<f64>, Vec<f64>)> = sim_uids
        .into_iter()
        .zip(sim_pose.into_iter().zip(sim_shift))
        .collect();
    for input in ["star.h5", "cs.h5"] {
        let (uids, pose) = read_column(&d.join(input), "alignments3D/pose");
        let (_, shift) = read_column(&d.join(input), "alignments3D/shift");
        let (mut worst_r, mut worst_s) = (0.0f64, 0.0f64);
        for (i, u) in uids.iter().enumerate() {
            let su = if input == "cs.h5" {
                *u
            } else {
                p.star_to_sim[u]
            };
            let (sp, ss) = &sim[&su];
            let m = |v: &[f64]| emclass::numerics::rotation::pose_to_matrix([v[0], v[1], v[2]]);
            let (a, b) = (m(&pose[i]), m(sp));
            for r in 0..3 {
                for c in 0..3 {
                    worst_r = worst_r.max((a[r][c] - b[r][c]).abs());
                }
            }
            for k in 0..2 {
                worst_s = worst_s.max((shift[i][k] - ss[k]).abs());
            }
        }
        assert!(
            worst_r < 1e-5 && worst_s < 1e-4,
            "{input}: poses differ from the simulation's by up to {worst_r:e} (matrix), shifts by {worst_s:e} px"
        );
    }
    write(
        d,
        "c3d.yaml",
        "input: unused\noutput: unused\nnum_classes: 2\nfilter_res_A: 10\nseed: 7\noem_epochs: 1\nfem_max_iterations: 8\n",
    );
    let truth = p.true_class();
    let mut one_rank: HashMap<&str, HashMap<u64, f64>> = HashMap::new();
    for input in ["star.h5", "cs.h5"] {
        let tag = input.trim_end_matches(".h5");
        type Outcome = (HashMap<u64, f64>, Vec<BTreeSet<u64>>);
        let mut first: Option<Outcome> = None;
        on_every_rank_count(d, |ranks| {
            let (i, o) = (
                format!("input={input}"),
                format!("output=c3d_{tag}_r{ranks}"),
            );
            ["-q", "classify3d", "c3d.yaml", "--set", &i, "--set", &o]
                .map(String::from)
                .to_vec()
        });
        for ranks in RANKS {
            let out = format!("c3d_{tag}_r{ranks}");
            let classes = per_sim_uid(
                &p,
                input,
                &format!("{out}/particles.h5"),
                "alignments3D/class",
            );
            assert_eq!(classes.len(), N3D, "{out}: particles.h5 rows");
            let per_class: Vec<BTreeSet<u64>> = (0..2)
                .map(|k| {
                    uid_set(
                        &p,
                        input,
                        &d.join(&out).join(format!("particles_class_{k:02}.h5")),
                    )
                })
                .collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (u, c) in &classes {
                if truth[u] >= 0 {
                    a.push(truth[u]);
                    b.push(*c as i64);
                }
            }
            let acc = matched_agreement(&a, &b);
            eprintln!("[real_format] {out}: accuracy vs true states {acc:.3}");
            assert!(
                acc >= 0.9,
                "{out}: accuracy {acc:.3} against the true states"
            );
            match &first {
                None => first = Some((classes, per_class)),
                Some((c1, p1)) => {
                    let agree = agreement_by_uid(c1, &classes);
                    assert!(
                        agree >= MIN_AGREEMENT,
                        "{out}: classes agree with the 1-rank run for only {:.2}%",
                        100.0 * agree
                    );
                    for k in 0..2 {
                        let common = p1[k].intersection(&per_class[k]).count();
                        let n = p1[k].len().max(per_class[k].len()).max(1);
                        assert!(
                            common as f64 / n as f64 >= MIN_AGREEMENT,
                            "{out}/particles_class_{k:02}.h5: {} uids, {} on 1 rank, {common} in common",
                            per_class[k].len(),
                            p1[k].len()
                        );
                    }
                }
            }
        }
        one_rank.insert(tag, first.unwrap().0);
    }
    let agree = agreement_by_uid(&one_rank["star"], &one_rank["cs"]);
    assert!(
        agree >= MIN_AGREEMENT,
        "classify3d of the STAR and the .cs import agree for only {:.2}%",
        100.0 * agree
    );
    eprintln!(
        "[real_format] hetero3d test: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// sim_to_formats.py itself: the same arguments give byte-identical files; both files import
/// and carry the simulation's values (CTF, coordinates, micrographs) and pixels (through the
/// re-split stacks, in the reordered rows).
#[test]
fn sim_to_formats_is_deterministic_and_imports_hold_the_simulation() {
    let Some(exe) = python() else { return };
    let f = folder("script");
    let d = &f.path;
    simulate_with(
        d,
        "views2d",
        "sim",
        301,
        &[
            "box_px=32",
            "psize_A=2.5",
            "particles_per_micrograph=100",
            "seed=3",
        ],
    );
    std::fs::create_dir(d.join("ex")).unwrap();
    emclass(
        d,
        &[
            "-q",
            "export",
            "--in",
            "sim/particles.h5",
            "--mrcs",
            "ex/stack.mrcs",
        ],
    )
    .ok();
    let script = repo().join("scripts/interop/sim_to_formats.py");
    for out in ["a", "b"] {
        py(
            &exe,
            d,
            &[
                script.to_str().unwrap(),
                "sim",
                "ex/stack.mrcs",
                out,
                "--split",
                "3",
                "--order",
                "shuffle",
                "--seed",
                "5",
            ],
        );
    }
    let (ta, tb) = (tree_snapshot(&d.join("a")), tree_snapshot(&d.join("b")));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, (bytes, _)) in &ta {
        assert!(
            bytes == &tb[k].0,
            "{k} differs between two runs of the script"
        );
    }
    assert!(
        ta.contains_key("Extract/job005/Particles/stack_02.mrcs"),
        "{:?}",
        ta.keys()
    );

    emclass(
        d,
        &[
            "-q",
            "import",
            "--star",
            "a/particles.star",
            "--out",
            "s.h5",
        ],
    )
    .ok();
    emclass(
        d,
        &["-q", "import", "--cs", "a/particles.cs", "--out", "c.h5"],
    )
    .ok();
    let info = emclass(d, &["info", "s.h5"]).ok().stdout;
    for field in [
        "blob/path",
        "ctf/df1_A",
        "ctf/df_angle_rad",
        "location/micrograph_path",
        "location/center_x_px",
        "location/center_y_px",
        "particles 301",
    ] {
        assert!(
            info.contains(field),
            "info of the STAR import lacks {field}:\n{info}"
        );
    }
    let info = emclass(d, &["info", "c.h5"]).ok().stdout;
    for field in [
        "location/micrograph_uid",
        "location/micrograph_shape",
        "location/center_x_frac",
        "ctf/df2_A",
        "particles 301",
    ] {
        assert!(
            info.contains(field),
            "info of the .cs import lacks {field}:\n{info}"
        );
    }
    // Values: per simulation uid, the imports hold the simulation's.
    let truth = parse_truth(&d.join("a/truth.csv"));
    let star_uids = dataset_uids(&d.join("s.h5"));
    let star_to_sim: HashMap<u64, u64> = star_uids
        .iter()
        .zip(&truth)
        .map(|(&s, t)| (s, t.uid))
        .collect();
    let sim = |field: &str| column_by_uid(&d.join("sim/particles.h5"), field);
    let star = |field: &str| -> HashMap<u64, f64> {
        column_by_uid(&d.join("s.h5"), field)
            .into_iter()
            .map(|(u, v)| (star_to_sim[&u], v))
            .collect()
    };
    let cs = |field: &str| column_by_uid(&d.join("c.h5"), field);
    let close = |what: &str, a: &HashMap<u64, f64>, b: &HashMap<u64, f64>, tol: f64| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (u, v) in a {
            assert!((v - b[u]).abs() <= tol, "{what}: uid {u}: {v} vs {}", b[u]);
        }
    };
    for field in [
        "ctf/df1_A",
        "ctf/df2_A",
        "ctf/df_angle_rad",
        "ctf/accel_kv",
        "ctf/cs_mm",
        "ctf/amp_contrast",
    ] {
        let want = sim(field);
        let tol = if field.ends_with("_A") { 1e-2 } else { 1e-5 };
        close(&format!("STAR {field}"), &star(field), &want, tol);
        close(&format!(".cs {field}"), &cs(field), &want, tol);
    }
    close(
        ".cs micrograph uid",
        &cs("location/micrograph_uid"),
        &sim("location/micrograph_uid"),
        0.0,
    );
    for (px, frac) in [
        ("location/center_x_px", "location/center_x_frac"),
        ("location/center_y_px", "location/center_y_frac"),
    ] {
        let want: HashMap<u64, f64> = sim(frac)
            .into_iter()
            .map(|(u, v)| (u, v * 4096.0))
            .collect();
        close(&format!("STAR {px}"), &star(px), &want, 1e-2);
        close(&format!(".cs {frac}"), &cs(frac), &sim(frac), 1e-6);
    }
    // Pixels: both imports, exported in their row order, are the simulation's images of the
    // rows truth.csv names.
    emclass(d, &["-q", "export", "--in", "s.h5", "--mrcs", "ex/s.mrcs"]).ok();
    emclass(d, &["-q", "export", "--in", "c.h5", "--mrcs", "ex/c.mrcs"]).ok();
    let r = py(
        &exe,
        d,
        &[
            "-c",
            r#"
import sys
import mrcfile, numpy as np, pandas as pd
t = pd.read_csv("a/truth.csv")
sim = mrcfile.read("ex/stack.mrcs")
for f in ("ex/s.mrcs", "ex/c.mrcs"):
    assert np.array_equal(mrcfile.read(f), sim[t["sim_row"].to_numpy()]), f
print("OK")
"#,
        ],
    );
    assert!(r.stdout.contains("OK"), "{}", r.stdout);
}

/// A STAR as RELION's Extract writes it after LoG AutoPick carries AutoPick's
/// `_rlnClassNumber 0` and `_rlnAnglePsi -999` (no class, no angle yet). Importing it should
/// work (classify2d replaces both anyway): both are read as "unset", so the dataset holds no
/// class and no 2D pose, while a class 0 among real classes stays an error.
#[test]
fn star_with_autopick_class_zero_and_psi_minus_999_imports() {
    let Some(exe) = python() else { return };
    let f = folder("autopick");
    let d = &f.path;
    simulate_with(
        d,
        "views2d",
        "sim",
        50,
        &["box_px=32", "particles_per_micrograph=20"],
    );
    std::fs::create_dir(d.join("ex")).unwrap();
    emclass(
        d,
        &[
            "-q",
            "export",
            "--in",
            "sim/particles.h5",
            "--mrcs",
            "ex/stack.mrcs",
        ],
    )
    .ok();
    let script = repo().join("scripts/interop/sim_to_formats.py");
    py(
        &exe,
        d,
        &[
            script.to_str().unwrap(),
            "sim",
            "ex/stack.mrcs",
            "fmt",
            "--formats",
            "star",
            "--autopick-columns",
        ],
    );
    emclass(
        d,
        &[
            "-q",
            "import",
            "--star",
            "fmt/particles.star",
            "--out",
            "s.h5",
        ],
    )
    .ok();
    let info = emclass(d, &["info", "s.h5"]).ok();
    assert!(
        !info.stdout.contains("alignments2D/class") && !info.stdout.contains("alignments2D/pose"),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("ctf/"), "{}", info.stdout);
    write(
        d,
        "c.yaml",
        "input: s.h5\noutput: out\nnum_classes: 2\nonline_em_iterations: 2\n",
    );
    emclass(d, &["-q", "classify2d", "c.yaml"]).ok();
    // One real class among the zeros is not AutoPick's placeholder: refused, naming the row.
    let star = std::fs::read_to_string(d.join("fmt/particles.star")).unwrap();
    write(d, "fmt/mixed.star", &set_first_class(&star, "3"));
    let r = emclass(
        d,
        &["-q", "import", "--star", "fmt/mixed.star", "--out", "m.h5"],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("_rlnClassNumber"), "{}", r.stderr);
    assert!(!d.join("m.h5").exists());
}

/// `star` with the `_rlnClassNumber` of its first particle row set to `value`.
fn set_first_class(star: &str, value: &str) -> String {
    let mut out = Vec::new();
    let (mut in_particles, mut labels, mut done) = (false, Vec::new(), false);
    for line in star.lines() {
        let t = line.trim();
        if t.starts_with("data_") {
            in_particles = t == "data_particles";
            labels.clear();
        } else if in_particles && t.starts_with("_rln") {
            labels.push(t.split_whitespace().next().unwrap().to_string());
        } else if in_particles
            && !done
            && !t.is_empty()
            && !t.starts_with("loop_")
            && !labels.is_empty()
        {
            let k = labels.iter().position(|l| l == "_rlnClassNumber").unwrap();
            let mut f: Vec<&str> = t.split_whitespace().collect();
            f[k] = value;
            out.push(f.join(" "));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}
