//! Where the dense math of the E-step runs. The 2D E-step is two matrix products per batch
//! of particles against a template matrix that stays fixed for a whole iteration
//! (`classify2d::estep`); a [`Backend`] keeps that right-hand operand (on the GPU for CUDA)
//! and multiplies batches by it. [`Cpu`] is the reference (ndarray's GEMM on rayon's
//! threads); `cuda` (cuBLAS SGEMM through cudarc, loaded at run time) is tested against it.
//!
//! `backend: auto` uses CUDA when every rank opens a GPU that passes its self-test, otherwise
//! the CPU with a log line saying why; `backend: cuda` makes a missing GPU an error (see
//! [`select`]). One GPU per MPI rank: the node-local rank from the communicator modulo the
//! number of devices.

pub mod cuda;
pub mod phases;

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2};

use crate::comm::Comm;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which implementation runs the hot kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when a driver and device are present, otherwise the CPU (with a log line).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// A fixed right-hand operand `b` (k × n) kept for repeated products `a · b`.
pub trait RightOperand: Send + Sync {
    /// `a · b` for `a` (m × k), row-major in and out.
    fn left_mul(&self, a: ArrayView2<f32>) -> Result<Array2<f32>>;
    /// `b` on the device (row-major k × n), when this operand is CUDA's.
    fn cuda_matrix(&self) -> Option<&cudarc::driver::CudaSlice<f32>> {
        None
    }
}

/// An implementation of the E-step's dense math.
pub trait Backend: Send + Sync {
    /// What runs, for the log ("CPU (rayon, 2 threads)", "CUDA device 0: NVIDIA H100").
    fn describe(&self) -> String;
    /// Takes `b` (k × n) for products [`RightOperand::left_mul`] (kept as is on the CPU,
    /// moved to the device for CUDA).
    fn right_operand(&self, b: Array2<f32>) -> Result<Box<dyn RightOperand>>;
    /// The GPU, when this backend is CUDA (the per-phase CUDA implementations need it).
    fn as_cuda(&self) -> Option<&cuda::Cuda> {
        None
    }
}

/// The CPU reference.
pub struct Cpu;

struct CpuOperand(Array2<f32>);

impl RightOperand for CpuOperand {
    fn left_mul(&self, a: ArrayView2<f32>) -> Result<Array2<f32>> {
        check_inner(a.ncols(), self.0.nrows())?;
        Ok(a.dot(&self.0))
    }
}

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("CPU (rayon, {} threads)", rayon::current_num_threads())
    }
    fn right_operand(&self, b: Array2<f32>) -> Result<Box<dyn RightOperand>> {
        Ok(Box::new(CpuOperand(b)))
    }
}

/// A slow, straightforward reference for parity tests: products summed in f64 in index
/// order (no blocking, no SIMD), so it differs from [`Cpu`]'s SGEMM only by rounding.
pub struct Naive;

struct NaiveOperand(Array2<f32>);

impl RightOperand for NaiveOperand {
    fn left_mul(&self, a: ArrayView2<f32>) -> Result<Array2<f32>> {
        check_inner(a.ncols(), self.0.nrows())?;
        let b = &self.0;
        Ok(Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| {
            (0..a.ncols())
                .map(|l| a[[i, l]] as f64 * b[[l, j]] as f64)
                .sum::<f64>() as f32
        }))
    }
}

impl Backend for Naive {
    fn describe(&self) -> String {
        "naive reference (f64 sums)".into()
    }
    fn right_operand(&self, b: Array2<f32>) -> Result<Box<dyn RightOperand>> {
        Ok(Box::new(NaiveOperand(b)))
    }
}

/// `a`'s columns must match `b`'s rows.
pub(crate) fn check_inner(a_cols: usize, b_rows: usize) -> Result<()> {
    if a_cols != b_rows {
        return Err(Error::Internal(format!(
            "matrix product: {a_cols} columns on the left, {b_rows} rows on the right"
        )));
    }
    Ok(())
}

/// The backend a job's `backend:` key asks for, on every rank (collective: every rank calls
/// it). `cfg`/`job` name it in errors.
///
/// - `cpu`: the CPU.
/// - `auto`: each rank opens the GPU of its node-local rank ([`Comm::node_rank`]); the job
///   uses CUDA only when every rank got one (one rank on the CPU would hold every iteration
///   back), otherwise every rank uses the CPU, with a log line saying which ranks had none.
/// - `cuda`: a rank without a usable GPU fails the job with a config error saying why.
///
/// Each rank logs the device it got; ranks that outnumber the node's GPUs share them, with a
/// warning.
pub fn select(
    choice: BackendChoice,
    cfg: &Path,
    job: &str,
    comm: &dyn Comm,
) -> Result<Arc<dyn Backend>> {
    let cpu = || -> Arc<dyn Backend> { Arc::new(Cpu) };
    if choice == BackendChoice::Cpu {
        log::info!("backend: {}", Cpu.describe());
        return Ok(cpu());
    }
    let mine = cuda::Cuda::for_rank(comm.node_rank());
    let b: Arc<dyn Backend> = match (choice, mine) {
        (BackendChoice::Cuda, Err(why)) => {
            return Err(Error::config(
                cfg,
                "backend",
                format!("cuda: {why}; {job} can run with backend auto or cpu"),
            ))
        }
        (BackendChoice::Cuda, Ok(g)) => Arc::new(g),
        (_, mine) => {
            let everywhere = comm.all_ok(mine.is_ok());
            match mine {
                Ok(g) if everywhere => Arc::new(g),
                Ok(_) => {
                    log::warn!(
                        "backend: some ranks have no usable CUDA device; every rank uses the CPU (set backend: cuda to make that an error)"
                    );
                    cpu()
                }
                Err(why) => {
                    log::info!("backend: no usable CUDA device ({why}); using the CPU");
                    cpu()
                }
            }
        }
    };
    if let Some(g) = b.as_cuda() {
        let count = cuda::device_count();
        if comm.node_size() > count {
            log::warn!(
                "backend: {} ranks on this node share {count} GPU(s); one rank per GPU is fastest",
                comm.node_size()
            );
        }
        log::info!(
            "backend: rank {} (node-local rank {}) uses {}",
            comm.rank(),
            comm.node_rank(),
            g.describe_device()
        );
    } else {
        log::info!("backend: {}", b.describe());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mats(m: usize, k: usize, n: usize) -> (Array2<f32>, Array2<f32>) {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f32 * 0.25);
        (a, b)
    }

    #[test]
    fn cpu_operand_is_the_plain_product_and_checks_shapes() {
        let (a, b) = mats(5, 4, 3);
        let op = Cpu.right_operand(b.clone()).unwrap();
        assert_eq!(op.left_mul(a.view()).unwrap(), a.dot(&b));
        let e = op.left_mul(b.view()).unwrap_err().to_string();
        assert!(e.contains("3 columns on the left, 4 rows"), "{e}");
    }

    #[test]
    fn auto_falls_back_and_cuda_is_refused_without_a_device() {
        // On machines with a usable GPU this test compares instead (see cuda::tests).
        if cuda::Cuda::for_rank(0).is_ok() {
            eprintln!("skipped: a CUDA device is present");
            return;
        }
        let one = crate::comm::Single;
        let b = select(BackendChoice::Auto, Path::new("c.yaml"), "classify2d", &one).unwrap();
        assert!(b.describe().starts_with("CPU"));
        let e = select(BackendChoice::Cuda, Path::new("c.yaml"), "classify2d", &one)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("c.yaml") && e.contains("backend") && e.contains("cuda:"),
            "{e}"
        );
    }
}
