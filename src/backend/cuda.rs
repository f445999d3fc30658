//! The CUDA backend: cuBLAS SGEMM through cudarc with the CUDA libraries loaded at run time,
//! so the same binary builds and runs where CUDA is absent.
//!
//! Probe order, each step turning a failure into a reason (never a panic): the driver
//! library (`libcuda.so`), cuBLAS (`libcublas.so`), the device count, a context on device
//! `node-local rank mod count`, a cuBLAS handle. cudarc panics on some of these paths when a
//! library is missing (`CudaContext::new` without `libcuda`), hence the presence checks first
//! and `catch_unwind` around the rest.
//!
//! Row-major products on a column-major library: the row-major buffers of A (m × k),
//! B (k × n), C (m × n) are, read column-major, Aᵀ (k × m), Bᵀ (n × k), Cᵀ (n × m), and
//! C = A·B ⇔ Cᵀ = Bᵀ·Aᵀ, so one `gemm(N, N, n, m, k, B, ldb = n, A, lda = k, C, ldc = n)`
//! computes C in place with no transposition. Host ↔ device copies per call: A up
//! (4·m·k bytes) and C down (4·m·n bytes); B stays on the device for the iteration.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use ndarray::{Array2, ArrayView2};

use super::{check_inner, Backend, RightOperand};
use crate::error::{Error, Result};

/// One GPU: its stream and a cuBLAS handle (used by one thread at a time).
pub struct Cuda {
    ordinal: usize,
    name: String,
    stream: Arc<CudaStream>,
    blas: Arc<Mutex<CudaBlas>>,
}

/// Whether the CUDA driver and cuBLAS libraries can be loaded (no device needed).
pub fn libraries_present() -> std::result::Result<(), String> {
    // SAFETY: these only try to dlopen the libraries; they do not call into them.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("cuBLAS (libcublas.so) is not installed or not on the library path".into());
    }
    Ok(())
}

impl Cuda {
    /// The GPU for node-local rank `local_rank` (rank mod device count), or why there is none.
    pub fn for_rank(local_rank: usize) -> std::result::Result<Cuda, String> {
        libraries_present()?;
        let guarded = catch_unwind(AssertUnwindSafe(|| -> std::result::Result<Cuda, String> {
            let count = CudaContext::device_count().map_err(|e| format!("no CUDA device ({e})"))?;
            if count <= 0 {
                return Err("the CUDA driver reports no device".into());
            }
            let ordinal = local_rank % count as usize;
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))?;
            let name = ctx.name().unwrap_or_else(|_| "unknown device".into());
            let stream = ctx.default_stream();
            let blas = CudaBlas::new(stream.clone())
                .map_err(|e| format!("cannot start cuBLAS on device {ordinal}: {e}"))?;
            Ok(Cuda {
                ordinal,
                name,
                stream,
                blas: Arc::new(Mutex::new(blas)),
            })
        }));
        guarded.unwrap_or_else(|_| Err("the CUDA libraries failed to initialise".into()))
    }
}

fn gpu_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("CUDA: {what}: {e}"))
}

/// A right-hand operand resident on the device.
struct CudaOperand {
    b: CudaSlice<f32>,
    k: usize,
    n: usize,
    stream: Arc<CudaStream>,
    blas: Arc<Mutex<CudaBlas>>,
}

impl Backend for Cuda {
    fn describe(&self) -> String {
        format!("CUDA device {}: {} (cuBLAS SGEMM)", self.ordinal, self.name)
    }
    fn right_operand(&self, b: Array2<f32>) -> Result<Box<dyn RightOperand>> {
        let host = b.as_standard_layout();
        let slice = host.as_slice().expect("standard layout");
        let dev = self
            .stream
            .clone_htod(slice)
            .map_err(|e| gpu_err("copy to device", e))?;
        Ok(Box::new(CudaOperand {
            b: dev,
            k: b.nrows(),
            n: b.ncols(),
            stream: self.stream.clone(),
            blas: self.blas.clone(),
        }))
    }
}

impl RightOperand for CudaOperand {
    fn left_mul(&self, a: ArrayView2<f32>) -> Result<Array2<f32>> {
        check_inner(a.ncols(), self.k)?;
        let (m, k, n) = (a.nrows(), self.k, self.n);
        if m == 0 || n == 0 || k == 0 {
            return Ok(Array2::zeros((m, n)));
        }
        let dim = |v: usize| i32::try_from(v).map_err(|_| gpu_err("matrix too large", v));
        let host = a.as_standard_layout();
        let a_dev = self
            .stream
            .clone_htod(host.as_slice().expect("standard layout"))
            .map_err(|e| gpu_err("copy to device", e))?;
        let mut c_dev = self
            .stream
            .alloc_zeros::<f32>(m * n)
            .map_err(|e| gpu_err("allocate", e))?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: dim(n)?,
            n: dim(m)?,
            k: dim(k)?,
            alpha: 1.0f32,
            lda: dim(n)?,
            ldb: dim(k)?,
            beta: 0.0f32,
            ldc: dim(n)?,
        };
        {
            let blas = self.blas.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: b holds k·n, a_dev m·k and c_dev m·n f32 values, matching the
            // column-major shapes (n × k, ld n), (k × m, ld k), (n × m, ld n) given above.
            unsafe { blas.gemm(cfg, &self.b, &a_dev, &mut c_dev) }
                .map_err(|e| gpu_err("SGEMM", e))?;
        }
        let c = self
            .stream
            .clone_dtoh(&c_dev)
            .map_err(|e| gpu_err("copy from device", e))?;
        Array2::from_shape_vec((m, n), c).map_err(|e| gpu_err("result shape", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// The GPU, or `None` after saying why the test is skipped.
    fn gpu_or_skip() -> Option<Cuda> {
        Cuda::for_rank(0)
            .map_err(|why| eprintln!("skipped: no usable CUDA device ({why})"))
            .ok()
    }

    /// CPU and CUDA products agree to f32 rounding. Runs where a GPU is usable; elsewhere it
    /// says why it is skipped.
    #[test]
    fn cuda_gemm_matches_the_cpu() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (m, k, n) in [(1, 1, 1), (7, 33, 5), (300, 2216, 1120), (0, 4, 3)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| {
                ((i * 31 + j * 17) % 23) as f32 / 23.0 - 0.5
            });
            let b = Array2::from_shape_fn((k, n), |(i, j)| {
                ((i * 13 + j * 29) % 19) as f32 / 19.0 - 0.5
            });
            let want = Cpu
                .right_operand(b.clone())
                .unwrap()
                .left_mul(a.view())
                .unwrap();
            let got = gpu.right_operand(b).unwrap().left_mul(a.view()).unwrap();
            let scale = want.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
            let err = want
                .iter()
                .zip(&got)
                .fold(0f32, |e, (x, y)| e.max((x - y).abs()));
            assert!(
                err <= 1e-4 * scale * (k as f32).sqrt().max(1.0),
                "{m}×{k}×{n}: {err} vs {scale}"
            );
        }
    }

    /// The device's SGEMM throughput on square products (the yardstick of the E-step's
    /// efficiency). `cargo test --release --lib sgemm_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sgemm_throughput() {
        let Some(gpu) = gpu_or_skip() else { return };
        let n = 8192;
        let a = Array2::from_elem((n, n), 0.5f32);
        let op = gpu.right_operand(a.clone()).unwrap();
        op.left_mul(a.view()).unwrap(); // warm-up
        let t = std::time::Instant::now();
        let reps = 5;
        for _ in 0..reps {
            op.left_mul(a.view()).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        // Includes the copies of A up and C down (2 × 256 MiB per product).
        println!(
            "SGEMM {n}³ on {}: {:.1} TFLOP/s including transfers",
            gpu.describe(),
            reps as f64 * 2.0 * (n as f64).powi(3) / s / 1e12
        );
    }

    #[test]
    fn missing_libraries_are_a_reason_not_a_panic() {
        // Here (no CUDA) this returns the reason; with CUDA it returns a device.
        match Cuda::for_rank(0) {
            Ok(g) => assert!(g.describe().starts_with("CUDA device")),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
