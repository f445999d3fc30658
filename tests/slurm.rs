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
