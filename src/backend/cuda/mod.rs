//! The CUDA backend: one GPU per MPI rank, cuBLAS for the dense products ([`gemm`]) and
//! kernels compiled at run time by NVRTC ([`nvrtc`]), all loaded at run time through cudarc
//! so the same binary builds and runs where CUDA is absent.
//!
//! Start-up ([`Cuda::for_rank`]), each step turning a failure into a reason, never a panic:
//! the driver, cuBLAS and NVRTC libraries must load; the driver must report a device; the
//! rank opens device `node-local rank mod count` (the node-local rank comes from the
//! communicator's shared-memory split, not from launcher variables: `SLURM_LOCALID` is 0 for
//! every rank under mpirun inside sbatch); a cuBLAS handle starts; and a self-test runs a
//! small kernel and a small product and compares them with the host, so a library that
//! loads and then fails is found before the job starts. cudarc panics on some of these
//! paths, hence [`crate::panic_guard::catch`] around them (the MPI panic hook leaves those
//! panics alone, so `auto` falls back on every rank count).
//!
//! `EMCLASS_TEST_CUDA_PANIC=1` makes the guarded start-up panic, for the tests of that
//! fallback on machines without a GPU.

pub mod gemm;
pub mod nvrtc;
pub mod plane;
pub mod volume;
#[cfg(test)]
pub mod volume_host;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::error::{Error, Result};

/// One GPU: its context, stream, a cuBLAS handle (one thread at a time) and the kernel
/// modules loaded so far.
pub struct Cuda {
    pub(crate) ordinal: usize,
    pub(crate) name: String,
    /// Compute capability.
    pub(crate) cc: (i32, i32),
    pub(crate) total_mem: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: Arc<Mutex<CudaBlas>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

/// Whether the CUDA driver, cuBLAS and NVRTC libraries can be loaded (no device needed).
pub fn libraries_present() -> std::result::Result<(), String> {
    // SAFETY: these only try to dlopen the libraries; they do not call into them.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("cuBLAS (libcublas.so) is not installed or not on the library path".into());
    }
    nvrtc::present()
}

pub(crate) fn gpu_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("CUDA: {what}: {e}"))
}

/// Threads per block of the element-wise kernel launches.
pub(crate) const THREADS: u32 = 256;

/// `v` as a kernel argument: the kernels index with 32-bit ints.
pub(crate) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| gpu_err("size beyond the kernels' 32-bit indices", what))
}

/// One thread per item in blocks of [`THREADS`]; `total` must fit the kernels' 32-bit
/// indices.
pub(crate) fn launch_for(total: usize) -> Result<LaunchConfig> {
    int(total, "threads of one launch")?;
    let blocks = total.div_ceil(THREADS as usize);
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(blocks).map_err(|_| gpu_err("launch too large", total))?,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Number of devices the driver reports (0 where CUDA is absent or fails).
pub fn device_count() -> usize {
    if unsafe { !cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    crate::panic_guard::catch(|| CudaContext::device_count().unwrap_or(0).max(0) as usize)
        .unwrap_or(0)
}

impl Cuda {
    /// The GPU for node-local rank `local_rank` (rank mod device count), checked by the
    /// self-test, or why there is none.
    pub fn for_rank(local_rank: usize) -> std::result::Result<Cuda, String> {
        let guarded = crate::panic_guard::catch(|| -> std::result::Result<Cuda, String> {
            if std::env::var("EMCLASS_TEST_CUDA_PANIC").as_deref() == Ok("1") {
                panic!("EMCLASS_TEST_CUDA_PANIC=1: simulated failure inside the CUDA start-up");
            }
            libraries_present()?;
            let count = CudaContext::device_count().map_err(|e| format!("no CUDA device ({e})"))?;
            if count <= 0 {
                return Err("the CUDA driver reports no device".into());
            }
            let ordinal = local_rank % count as usize;
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))?;
            let name = ctx.name().unwrap_or_else(|_| "unknown device".into());
            let cc = ctx
                .compute_capability()
                .map_err(|e| format!("device {ordinal}: no compute capability ({e})"))?;
            let total_mem = ctx.total_mem().unwrap_or(0);
            let stream = ctx.default_stream();
            let blas = CudaBlas::new(stream.clone())
                .map_err(|e| format!("cannot start cuBLAS on device {ordinal}: {e}"))?;
            let gpu = Cuda {
                ordinal,
                name,
                cc,
                total_mem,
                ctx,
                stream,
                blas: Arc::new(Mutex::new(blas)),
                modules: Mutex::new(HashMap::new()),
            };
            gpu.self_test()
                .map_err(|e| format!("device {ordinal} failed its self-test: {e}"))?;
            Ok(gpu)
        });
        guarded.unwrap_or_else(|p| Err(format!("the CUDA libraries failed to initialise ({p})")))
    }

    /// The device for the log: "CUDA device 0: NVIDIA H100 (compute 9.0, 79.2 GiB)".
    pub fn describe_device(&self) -> String {
        use crate::backend::Backend;
        self.describe()
    }

    /// Lets cuBLAS use TF32 tensor cores (`on`) or keeps FP32 products (the default).
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasStatus_t};
        let mode = if on {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        let blas = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the handle is live (owned by `blas`) and used by this thread only while
        // the lock is held.
        let status = unsafe { cublasSetMathMode(*blas.handle(), mode) };
        if status != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(gpu_err("cublasSetMathMode", format!("{status:?}")));
        }
        log::info!(
            "backend: cuBLAS products in {}",
            if on { "TF32 (gpu_tf32: true)" } else { "FP32" }
        );
        Ok(())
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Kernel `kernel` of source `source` ([`nvrtc::SOURCES`]), compiled for this device on
    /// first use.
    pub(crate) fn function(&self, source: &'static str, kernel: &str) -> Result<CudaFunction> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let module = match mods.get(source) {
            Some(m) => m.clone(),
            None => {
                let ptx = nvrtc::load(source, nvrtc::arch_for(self.cc.0, self.cc.1))
                    .map_err(Error::Backend)?;
                let m = self
                    .ctx
                    .load_module(ptx)
                    .map_err(|e| gpu_err(&format!("load {source}.cu"), e))?;
                mods.insert(source, m.clone());
                m
            }
        };
        module
            .load_function(kernel)
            .map_err(|e| gpu_err(&format!("kernel {kernel} of {source}.cu"), e))
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| gpu_err("memory query", e))
    }

    /// Checks that `need` bytes fit in 90% of the free device memory; the error names `key`
    /// of config `cfg` as the thing to lower.
    pub fn check_budget(&self, need: usize, cfg: &std::path::Path, key: &str) -> Result<()> {
        let (free, total) = self.memory()?;
        check_budget_of(need, free, total, self.ordinal, cfg, key)
    }

    /// A small axpy kernel and a small product against the host.
    fn self_test(&self) -> std::result::Result<(), String> {
        let n = 1000usize;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let y0: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
        let f = self
            .function("probe", "probe_axpy")
            .map_err(|e| e.to_string())?;
        let xd = self.stream.clone_htod(&x).map_err(|e| e.to_string())?;
        let mut yd = self.stream.clone_htod(&y0).map_err(|e| e.to_string())?;
        let (a, ni) = (2.0f32, n as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&mut yd).arg(&xd).arg(&a).arg(&ni);
        // SAFETY: probe_axpy(float*, const float*, float, int) with n elements in both.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }
            .map_err(|e| format!("probe kernel: {e}"))?;
        let y = self.stream.clone_dtoh(&yd).map_err(|e| e.to_string())?;
        if let Some(i) = (0..n).find(|&i| (y[i] - (y0[i] + 2.0 * x[i])).abs() > 1e-4) {
            return Err(format!(
                "probe kernel gave {} at {i}, expected {}",
                y[i],
                y0[i] + 2.0 * x[i]
            ));
        }
        use crate::backend::Backend;
        let a = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i + 2 * j) as f32);
        let b = ndarray::Array2::from_shape_fn((4, 5), |(i, j)| (i * j) as f32 - 1.0);
        let got = self
            .right_operand(b.clone())
            .and_then(|op| op.left_mul(a.view()))
            .map_err(|e| e.to_string())?;
        if got != a.dot(&b) {
            return Err("cuBLAS SGEMM differs from the host product".into());
        }
        Ok(())
    }
}

/// For tests that need a GPU: device 0, or `None` after printing why the test is skipped.
/// With `EMCLASS_REQUIRE_GPU=1` a missing GPU fails the test instead (set it on GPU machines
/// so a broken driver cannot pass as a skip).
pub fn gpu_for_test() -> Option<Cuda> {
    match Cuda::for_rank(0) {
        Ok(g) => Some(g),
        Err(why) if std::env::var("EMCLASS_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("EMCLASS_REQUIRE_GPU=1 but no usable CUDA device: {why}")
        }
        Err(why) => {
            eprintln!("skipped: no usable CUDA device ({why})");
            None
        }
    }
}

/// [`Cuda::check_budget`] on given figures.
fn check_budget_of(
    need: usize,
    free: usize,
    total: usize,
    ordinal: usize,
    cfg: &std::path::Path,
    key: &str,
) -> Result<()> {
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if need as f64 > 0.9 * free as f64 {
        return Err(Error::config(
            cfg,
            key,
            format!(
                "the GPU work needs {:.2} GiB on CUDA device {ordinal}, which has {:.2} of {:.2} GiB free; lower {key} (or use backend: cpu)",
                gib(need),
                gib(free),
                gib(total)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_are_a_reason_not_a_panic() {
        // Here (no CUDA) this returns the reason; with CUDA it returns a device.
        match Cuda::for_rank(0) {
            Ok(g) => assert!(g.ordinal() < device_count()),
            Err(why) => assert!(!why.is_empty()),
        }
    }

    #[test]
    fn a_budget_over_the_free_memory_names_the_key() {
        let p = std::path::Path::new("c.yaml");
        assert!(check_budget_of(1 << 30, 4 << 30, 8 << 30, 0, p, "k").is_ok());
        let e = check_budget_of(4 << 30, 4 << 30, 8 << 30, 1, p, "max_gpu_batch")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.yaml") && e.contains("max_gpu_batch") && e.contains("device 1"),
            "{e}"
        );
    }
}
