//! The CUDA kernels' sources and their run-time compilation by NVRTC.
//!
//! Every kernel file under `src/backend/cuda/kernels/` is embedded in the binary
//! ([`SOURCES`]), prefixed with the shared `common.cuh`, and compiled to PTX for the device's
//! architecture the first time a job needs it (the driver JIT-compiles the PTX to machine
//! code). NVRTC is loaded at run time like the driver: a missing `libnvrtc.so` is a reason to
//! fall back, never a panic. NVRTC needs no GPU, so the test suite compiles every source
//! here (`every_kernel_compiles_to_ptx`; CI installs the PyPI package `nvidia-cuda-nvrtc-cu12`
//! and sets `EMCLASS_REQUIRE_NVRTC=1`, which turns a missing NVRTC into a test failure).
//!
//! Cache: compiled PTX is kept per process (one compilation per source and architecture) and
//! on disk under `$EMCLASS_KERNEL_CACHE` (default `$XDG_CACHE_HOME/emclass/kernels`, else
//! `$HOME/.cache/emclass/kernels`), named by a hash of the source, the options and the NVRTC
//! version, so an edited kernel or another NVRTC never reuses a stale file. A cache that
//! cannot be written only costs a recompilation.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{CompileOptions, Ptx};

/// Helpers every kernel file may use (fixed-point accumulation, complex arithmetic, CTF).
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// One kernel file: its name, its source and the `extern "C"` kernels it defines.
pub struct Source {
    pub name: &'static str,
    pub code: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every kernel file of the program.
pub const SOURCES: &[Source] = &[
    Source {
        name: "probe",
        code: include_str!("kernels/probe.cu"),
        kernels: &["probe_axpy"],
    },
    Source {
        name: "plane",
        code: include_str!("kernels/plane.cu"),
        kernels: &[
            "plane_operands",
            "plane_reduce",
            "plane_weights",
            "plane_kept",
            "plane_shifted",
            "plane_ctf2",
            "plane_add",
        ],
    },
    Source {
        name: "volume",
        code: include_str!("kernels/volume.cu"),
        kernels: &[
            "volume_score",
            "volume_fit_scale",
            "volume_backproject",
            "volume_add_fixed",
        ],
    },
];

/// The source called `name`.
pub fn source(name: &str) -> Result<&'static Source, String> {
    SOURCES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no CUDA kernel source named {name}"))
}

/// Whether NVRTC (`libnvrtc.so`) can be loaded.
pub fn present() -> Result<(), String> {
    // SAFETY: only tries to dlopen the library.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc.so) is not installed or not on the library path".into())
    }
}

/// The virtual architecture for compute capability `major.minor` (NVRTC wants a `'static`
/// name): the closest one at or below it that NVRTC 12 knows.
pub fn arch_for(major: i32, minor: i32) -> &'static str {
    const ARCHS: &[((i32, i32), &str)] = &[
        ((10, 0), "compute_100"),
        ((9, 0), "compute_90"),
        ((8, 9), "compute_89"),
        ((8, 6), "compute_86"),
        ((8, 0), "compute_80"),
        ((7, 5), "compute_75"),
        ((7, 0), "compute_70"),
    ];
    ARCHS
        .iter()
        .find(|(cc, _)| *cc <= (major, minor))
        .map_or("compute_70", |(_, a)| a)
}

fn options(arch: &'static str) -> CompileOptions {
    CompileOptions {
        arch: Some(arch),
        // IEEE division and square roots and no flush-to-zero: the kernels must agree with
        // the CPU reference to rounding, not to fast-math error.
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    }
}

fn nvrtc_version() -> String {
    // SAFETY: NVRTC is present (checked by the caller); the call only writes two ints.
    unsafe {
        let (mut a, mut b) = (0i32, 0i32);
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b);
        format!("{a}.{b}")
    }
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("EMCLASS_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("emclass").join("kernels"))
}

/// The PTX text of source `name` for `arch`: from this process's cache, the disk cache, or
/// NVRTC (then stored in both). The error carries NVRTC's log.
pub fn ptx(name: &str, arch: &'static str) -> Result<String, String> {
    static CACHE: OnceLock<Mutex<HashMap<(String, &'static str), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (name.to_string(), arch);
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    present()?;
    let src = source(name)?;
    let code = format!("{COMMON}\n{}", src.code);
    let opts = options(arch);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&code, format!("{opts:?}"), nvrtc_version()).hash(&mut h);
    let file = cache_dir().map(|d| d.join(format!("{name}-{arch}-{:016x}.ptx", h.finish())));
    let text = match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(t) => t,
        None => {
            let t = compile(&code, name, opts)?;
            if let Some(f) = &file {
                // A cache that cannot be written only costs a recompilation next time.
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                let _ = std::fs::create_dir_all(f.parent().unwrap_or(f))
                    .and_then(|_| std::fs::write(&tmp, &t))
                    .and_then(|_| std::fs::rename(&tmp, f));
            }
            t
        }
    };
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, text.clone());
    Ok(text)
}

fn compile(code: &str, name: &str, mut opts: CompileOptions) -> Result<String, String> {
    opts.name = Some(format!("{name}.cu"));
    let guarded = crate::panic_guard::catch(|| cudarc::nvrtc::compile_ptx_with_opts(code, opts));
    match guarded {
        Ok(Ok(p)) => Ok(p.to_src()),
        Ok(Err(cudarc::nvrtc::CompileError::CompileError { log, .. })) => Err(format!(
            "NVRTC cannot compile {name}.cu: {}",
            log.to_string_lossy().trim()
        )),
        Ok(Err(e)) => Err(format!("NVRTC failed on {name}.cu: {e}")),
        Err(panic) => Err(format!("NVRTC failed on {name}.cu ({panic})")),
    }
}

/// The PTX of `name` as cudarc loads it.
pub fn load(name: &str, arch: &'static str) -> Result<Ptx, String> {
    ptx(name, arch).map(Ptx::from_src)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC, or `None` after saying why the test is skipped; with `EMCLASS_REQUIRE_NVRTC=1`
    /// (CI) a missing NVRTC fails the test.
    fn nvrtc_or_skip() -> bool {
        match present() {
            Ok(()) => true,
            Err(why) if std::env::var("EMCLASS_REQUIRE_NVRTC").as_deref() == Ok("1") => {
                panic!("EMCLASS_REQUIRE_NVRTC=1 but {why}")
            }
            Err(why) => {
                eprintln!("skipped: {why}");
                false
            }
        }
    }

    /// Every kernel source compiles for the oldest and the newest architecture we target,
    /// and its PTX defines every kernel the source lists (no GPU needed).
    #[test]
    fn every_kernel_compiles_to_ptx() {
        if !nvrtc_or_skip() {
            return;
        }
        for arch in ["compute_70", "compute_90"] {
            for s in SOURCES {
                let p = ptx(s.name, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
                for k in s.kernels {
                    assert!(
                        p.contains(&format!(".entry {k}(")),
                        "{}.cu for {arch}: no kernel {k} in the PTX",
                        s.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_kernel_that_does_not_compile_is_an_error_with_the_log() {
        if !nvrtc_or_skip() {
            return;
        }
        let e = compile(
            "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
            "broken",
            options("compute_70"),
        )
        .unwrap_err();
        assert!(
            e.contains("broken.cu") && e.contains("undefined_name"),
            "{e}"
        );
    }

    #[test]
    fn architectures_round_down_to_a_known_one() {
        assert_eq!(arch_for(9, 0), "compute_90");
        assert_eq!(arch_for(8, 7), "compute_86");
        assert_eq!(arch_for(12, 0), "compute_100");
        assert_eq!(arch_for(6, 1), "compute_70");
        assert!(source("probe").is_ok() && source("nope").is_err());
    }
}
