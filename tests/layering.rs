//! The module layering the design promises, checked on the sources: classify3d uses nothing
//! of classify2d, and the shared layers (the EM engine, the particle layer, the backends)
//! use no job. A `use` or path naming a forbidden module in any of their files fails here.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Lines of the files under `src/<dir>` (comments left out) that name `crate::<m>` for a
/// forbidden `m`.
fn offending(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut bad = Vec::new();
    for f in rust_files(&root) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for m in forbidden {
                if code.contains(&format!("crate::{m}::")) || code.contains(&format!("crate::{m};"))
                {
                    bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    bad
}

const JOBS: [&str; 5] = ["jobs", "classify2d", "classify3d", "curate", "cli"];

#[test]
fn classify3d_uses_nothing_of_classify2d() {
    let bad = offending("classify3d", &["classify2d"]);
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_shared_layers_use_no_job() {
    for dir in ["backend", "em", "particles"] {
        let bad = offending(dir, &JOBS);
        assert!(bad.is_empty(), "{dir}: {bad:#?}");
    }
}

#[test]
fn the_check_sees_a_forbidden_path() {
    // The classify2d sources do name the backend (allowed): the scan finds such paths.
    assert!(!offending("classify2d", &["backend"]).is_empty());
}

#[test]
fn algorithm_code_never_names_mpi_or_cudarc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in [
        "em",
        "particles",
        "classify2d",
        "classify3d",
        "reconstruct3d",
        "curate",
        "numerics",
    ] {
        for f in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains("mpi::") && !code.contains("cudarc::"),
                    "{}:{}: {}",
                    f.display(),
                    i + 1,
                    line.trim()
                );
            }
        }
    }
}
