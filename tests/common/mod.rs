//! Helpers for integration tests: run the real `emclass` binary (alone or under mpirun) in a
//! temporary folder and look at its exit code, stdout and stderr.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_emclass"))
}

/// What a finished run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// Panics with the output unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "run failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    /// Panics unless the run failed with exit code 1 and printed one `error:` line
    /// containing every string in `needles`; returns that line.
    pub fn fails_with(self, needles: &[&str]) -> String {
        assert_eq!(self.code, Some(1), "expected failure:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "expected one error line, stderr:\n{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        for n in needles {
            assert!(errors[0].contains(n), "error line lacks {n:?}: {}", errors[0]);
        }
        errors[0].to_string()
    }
}

/// Runs `emclass args...` in `dir`.
pub fn emclass(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("EMCLASS_MPI")
        .output()
        .expect("start emclass");
    Run::from(out)
}

/// Runs `mpirun -n ranks emclass args...` in `dir`.
pub fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> Run {
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "--allow-run-as-root", "-n", &ranks.to_string()])
        .arg(bin())
        .args(args)
        .current_dir(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .output()
        .expect("start mpirun (install openmpi-bin)");
    Run::from(out)
}

/// Lists the entries of `dir` (names), sorted.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
