//! Row-major products on cuBLAS (column-major): the row-major buffers of A (m × k),
//! B (k × n), C (m × n) are, read column-major, Aᵀ (k × m), Bᵀ (n × k), Cᵀ (n × m), and
//! C = A·B ⇔ Cᵀ = Bᵀ·Aᵀ, so one `gemm(N, N, n, m, k, B, ldb = n, A, lda = k, C, ldc = n)`
//! computes C in place with no transposition. Host ↔ device copies per call: A up
//! (4·m·k bytes) and C down (4·m·n bytes); B stays on the device for the iteration.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream};
use ndarray::{Array2, ArrayView2};

use super::{gpu_err, Cuda};
use crate::backend::{check_inner, Backend, RightOperand};
use crate::error::Result;

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
        format!(
            "CUDA device {}: {} (compute {}.{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.cc.0,
            self.cc.1,
            self.total_mem as f64 / (1u64 << 30) as f64
        )
    }
    fn as_cuda(&self) -> Option<&Cuda> {
        Some(self)
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
    fn cuda_matrix(&self) -> Option<&CudaSlice<f32>> {
        Some(&self.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Cpu};

    use crate::backend::cuda::gpu_for_test as gpu_or_skip;

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
}
