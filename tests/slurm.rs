//! The Slurm templates: valid bash, and they really run emclass through `srun` (a stand-in
//! `srun` on PATH that drops its own options and runs the command, as a one-task step).

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

fn templates() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slurm");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sbatch"))
        .collect();
    v.sort();
    v
}

#[test]
fn templates_are_valid_bash_with_sbatch_headers() {
    let t = templates();
    assert!(
        t.len() >= 2,
        "expected single-node and multi-node templates, found {t:?}"
    );
    for p in t {
        let st = Command::new("bash").arg("-n").arg(&p).status().unwrap();
        assert!(st.success(), "{} is not valid bash", p.display());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("#SBATCH --ntasks-per-node"),
            "{}",
            p.display()
        );
        assert!(text.contains("srun"), "{}", p.display());
    }
}

#[test]
fn templates_run_emclass_through_srun() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("bin");
    std::fs::create_dir(&fake).unwrap();
    let srun = fake.join("srun");
    std::fs::write(
        &srun,
        "#!/bin/bash\nwhile [[ \"$1\" == --* ]]; do shift; done\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&srun, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for p in templates() {
        let out = Command::new("bash")
            .arg(&p)
            .args(["comm-check", "--particles", "10"])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("EMCLASS", bin())
            .env("SLURM_JOB_NUM_NODES", "1")
            .env("SLURM_NTASKS", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("comm check passed on 1 rank(s)"),
            "{}: {stdout}",
            p.display()
        );
        // Without arguments the template explains its usage and fails.
        let st = Command::new("bash")
            .arg(&p)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&st.stderr).contains("usage"));
    }
}

/// The scaling study script runs end to end on a tiny problem (mpirun, 1 and 2 ranks) and
/// writes its table, CSV and plot.
#[test]
fn scaling_study_script_writes_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slurm/scaling.sh");
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let session = tempfile::tempdir().unwrap();
    let out = run_command(
        Command::new("bash")
            .arg(&script)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("EMCLASS", bin())
            .env("WORK", dir.path())
            .env("MAX_RANKS", "2")
            .env("N", "400")
            .env("PER_RANK", "200")
            .env("BOX", "32")
            .env("K", "2")
            .env("ITERS", "2")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_orte_tmpdir_base", session.path())
            .env_remove("SLURM_JOB_ID"),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let md = std::fs::read_to_string(dir.path().join("scaling.md")).unwrap();
    for row in [
        "| strong | 1 | 400 |",
        "| strong | 2 | 400 |",
        "| weak | 1 | 200 |",
        "| weak | 2 | 400 |",
    ] {
        assert!(md.contains(row), "{md}");
    }
    let svg = std::fs::read_to_string(dir.path().join("scaling.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<polyline").count() == 2,
        "{svg}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("scaling.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );
}
