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
    simulate_with(dir, "views2d", name, n, &["box_px=32"]);
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

/// A rank killed in the middle of a classification (as by the out-of-memory killer) ends the
/// whole job within a minute with a message naming it, a non-zero exit and no final output —
/// never a hang of the surviving rank in its next all-reduce.
#[test]
fn a_killed_rank_ends_the_job_within_a_minute() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(d, "sim", 2000);
    std::fs::write(
        d.join("c2d.yaml"),
        "input: sim/particles.h5\noutput: out\nnum_classes: 8\nmax_res_A: 8\nonline_em_iterations: 400\nbatch_size_per_class: 100\n",
    )
    .unwrap();
    let session = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root", "-n", "2"])
        .arg(bin())
        .args(["classify2d", "c2d.yaml"])
        .current_dir(d)
        .env("OMPI_MCA_orte_tmpdir_base", session.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut job = {
        let _g = HDF5_OR_SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        cmd.spawn().expect("start mpirun")
    };
    // Wait until both ranks are iterating (the staging folder exists), then kill rank 1's
    // process (the higher PID of mpirun's two emclass children).
    let t0 = Instant::now();
    while !d.join(".out.emclass-tmp").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids = child_pids(job.id());
    assert_eq!(pids.len(), 2, "expected two ranks under mpirun: {pids:?}");
    let killed_at = Instant::now();
    Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            job.kill().ok();
            panic!("the job still ran 60 s after one rank was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("signal 9") || stderr.contains("Killed"),
        "{stderr}"
    );
    assert!(!d.join("out").exists());
    // The killed run's staging folder does not block a new run.
    assert!(d.join(".out.emclass-tmp").exists());
    let quick = ["classify2d", "c2d.yaml", "--set", "online_em_iterations=2"];
    mpirun(d, 2, &quick).ok();
    assert!(d.join("out/particles.h5").exists() && !d.join(".out.emclass-tmp").exists());
}
