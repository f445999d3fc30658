//! The command-line contract: subcommands listed, a config without its required keys is
//! refused plainly, errors are one line with a non-zero exit.

mod common;
use common::*;

#[test]
fn help_lists_every_subcommand_of_the_design() {
    let dir = tempfile::tempdir().unwrap();
    let r = emclass(dir.path(), &["--help"]).ok();
    for sub in [
        "import",
        "export",
        "simulate",
        "classify2d",
        "classify3d",
        "reconstruct3d",
        "subset",
        "select2d",
        "rebalance2d",
    ] {
        assert!(r.stdout.contains(sub), "--help lacks {sub}:\n{}", r.stdout);
    }
}

#[test]
fn jobs_without_their_input_say_so_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), "output: out\n").unwrap();
    for job in [
        "classify2d",
        "classify3d",
        "reconstruct3d",
        "subset",
        "select2d",
        "rebalance2d",
    ] {
        emclass(dir.path(), &[job, "job.yaml"]).fails_with(&["job.yaml", "input"]);
    }
    assert_eq!(ls(dir.path()), vec!["job.yaml"]);
}

#[test]
fn comm_check_passes_without_a_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let r = emclass(dir.path(), &["comm-check"]).ok();
    assert!(
        r.stdout.contains("comm check passed on 1 rank(s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn existing_output_folder_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sim.yaml"),
        "output: sim\nnum_particles: 20\nbox_px: 32\n",
    )
    .unwrap();
    emclass(dir.path(), &["-q", "simulate", "sim.yaml"]).ok();
    let first = std::fs::read(dir.path().join("sim/ground_truth.csv")).unwrap();
    assert!(dir.path().join("sim/config.used.yaml").exists());
    assert!(dir.path().join("sim/summary.json").exists());
    emclass(dir.path(), &["simulate", "sim.yaml", "--set", "seed=1"])
        .fails_with(&["sim", "--overwrite"]);
    assert_eq!(
        std::fs::read(dir.path().join("sim/ground_truth.csv")).unwrap(),
        first,
        "refused run changed the output"
    );
    // A run that fails validation with --overwrite leaves the old output alone.
    emclass(
        dir.path(),
        &["simulate", "sim.yaml", "--overwrite", "--set", "snr=-1"],
    )
    .fails_with(&["sim.yaml", "snr"]);
    assert_eq!(
        std::fs::read(dir.path().join("sim/ground_truth.csv")).unwrap(),
        first
    );
    emclass(
        dir.path(),
        &[
            "-q",
            "simulate",
            "sim.yaml",
            "--overwrite",
            "--set",
            "seed=1",
        ],
    )
    .ok();
    assert_ne!(
        std::fs::read(dir.path().join("sim/ground_truth.csv")).unwrap(),
        first
    );
    let used = std::fs::read_to_string(dir.path().join("sim/config.used.yaml")).unwrap();
    assert!(used.contains("seed: 1"), "{used}");
    assert_eq!(
        ls(dir.path()),
        vec!["sim", "sim.yaml"],
        "no temporary folders left"
    );
}
