//! MPI behaviour, tested for real: the binary under `mpirun -n 2` and `-n 3`.

mod common;
use common::*;

#[test]
fn collectives_work_on_two_and_three_ranks() {
    let dir = tempfile::tempdir().unwrap();
    for n in [2, 3] {
        let r = mpirun(dir.path(), n, &["comm-check", "--particles", "1001"]).ok();
        assert!(r.stdout.contains(&format!("comm check passed on {n} rank(s)")), "{}", r.stdout);
        // Only rank 0 prints the result.
        assert_eq!(r.stdout.matches("comm check passed").count(), 1, "{}", r.stdout);
    }
}

#[test]
fn a_failing_job_fails_on_every_rank_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), "output: out\n").unwrap();
    let r = mpirun(dir.path(), 2, &["classify2d", "job.yaml"]);
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("not implemented yet"), "{}", r.stderr);
}
