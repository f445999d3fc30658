//! The command-line contract: subcommands listed, later jobs refuse plainly, errors are one
//! line with a non-zero exit.

mod common;
use common::*;

#[test]
fn help_lists_every_subcommand_of_the_design() {
    let dir = tempfile::tempdir().unwrap();
    let r = emclass(dir.path(), &["--help"]).ok();
    for sub in ["import", "export", "simulate", "classify2d", "classify3d", "subset", "select2d", "rebalance2d"] {
        assert!(r.stdout.contains(sub), "--help lacks {sub}:\n{}", r.stdout);
    }
}

#[test]
fn jobs_of_later_issues_say_not_implemented_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.yaml"), "output: out\n").unwrap();
    for (job, issue) in [("classify2d", "3"), ("classify3d", "4"), ("subset", "5"), ("select2d", "5"), ("rebalance2d", "5")] {
        let line = emclass(dir.path(), &[job, "job.yaml"]).fails_with(&[job, "not implemented yet"]);
        assert!(line.contains(&format!("issue {issue}")), "{line}");
    }
    assert_eq!(ls(dir.path()), vec!["job.yaml"]);
}

#[test]
fn comm_check_passes_without_a_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let r = emclass(dir.path(), &["comm-check"]).ok();
    assert!(r.stdout.contains("comm check passed on 1 rank(s)"), "{}", r.stdout);
}
