//! MPI behaviour, tested for real: the binary under `mpirun -n 2` and `-n 3`.

mod common;
use common::*;

#[test]
fn collectives_work_on_two_and_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    for n in [2, 3] {
        let r = mpirun(dir.path(), n, &["comm-check", "--particles", "1001"]).ok();
        assert!(
            r.stdout
                .contains(&format!("comm check passed on {n} rank(s)")),
            "{}",
            r.stdout
        );
        // Only rank 0 prints the result.
        assert_eq!(
            r.stdout.matches("comm check passed").count(),
            1,
            "{}",
            r.stdout
        );
    }
}

#[test]
fn a_failing_job_fails_on_every_rank_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), "output: out\n").unwrap();
    let r = mpirun(dir.path(), 2, &["subset", "job.yaml"]);
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("missing field `input`"), "{}", r.stderr);
    assert!(!dir.path().join("out").exists());
}

/// Writes a minimal simulate config and runs it (single process) into `dir/name`.
fn simulate(dir: &std::path::Path, name: &str, n: usize) {
    std::fs::write(dir.join("sim.yaml"), "output: unused\nmode: views2d\n").unwrap();
    emclass(
        dir,
        &[
            "-q",
            "simulate",
            "sim.yaml",
            "--set",
            &format!("output={name}"),
            "--set",
            &format!("num_particles={n}"),
            "--set",
            "box_px=32",
        ],
    )
    .ok();
}

#[test]
fn each_rank_reads_only_its_block_and_the_totals_match() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path(), "sim", 301);
    for n in [2, 3] {
        let r = mpirun(
            dir.path(),
            n,
            &["comm-check", "--dataset", "sim/particles.h5"],
        )
        .ok();
        assert!(
            r.stdout
                .contains(&format!("comm check passed on {n} rank(s)")),
            "{}",
            r.stdout
        );
        // Rank 0 reports its own block: the first ceil(301/n) particles.
        let first = 301usize.div_ceil(n);
        assert!(
            r.stderr
                .contains(&format!("read particles 0..{first} of 301")),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn simulate_under_mpirun_matches_a_single_process() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path(), "single", 200);
    let r = mpirun(
        dir.path(),
        2,
        &[
            "-q",
            "simulate",
            "sim.yaml",
            "--set",
            "output=multi",
            "--set",
            "num_particles=200",
            "--set",
            "box_px=32",
        ],
    )
    .ok();
    assert!(
        r.stderr.is_empty() || !r.stderr.contains("error"),
        "{}",
        r.stderr
    );
    let a = std::fs::read(dir.path().join("single/ground_truth.csv")).unwrap();
    let b = std::fs::read(dir.path().join("multi/ground_truth.csv")).unwrap();
    assert_eq!(a, b);
    let info = |p: &str| {
        let out = emclass(dir.path(), &["info", p]).ok().stdout;
        out.lines()
            .filter(|l| !l.starts_with("dataset") && !l.starts_with("images"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(info("single/particles.h5"), info("multi/particles.h5"));
}

#[test]
fn export_under_mpirun_writes_once() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path(), "sim", 50);
    for n in [2, 3] {
        let star = format!("out{n}.star");
        let mrcs = format!("out{n}.mrcs");
        mpirun(
            dir.path(),
            n,
            &[
                "export",
                "--in",
                "sim/particles.h5",
                "--star",
                &star,
                "--mrcs",
                &mrcs,
            ],
        )
        .ok();
        let text = std::fs::read_to_string(dir.path().join(&star)).unwrap();
        assert!(
            text.contains(&format!("000050@{mrcs}")),
            "last image name missing"
        );
    }
    let left: Vec<String> = ls(dir.path())
        .into_iter()
        .filter(|f| f.contains("emclass"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
