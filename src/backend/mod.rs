//! Where the dense math of the E-step runs. The 2D E-step is two matrix products per batch
//! of particles against a template matrix that stays fixed for a whole iteration
//! (`classify2d::estep`); a [`Backend`] keeps that right-hand operand (on the GPU for CUDA)
//! and multiplies batches by it. [`Cpu`] is the reference (ndarray's GEMM on rayon's
//! threads); `cuda` (cuBLAS SGEMM through cudarc, loaded at run time) is tested against it.
//!
//! `backend: auto` uses CUDA when the driver and cuBLAS libraries load and a device answers,
//! otherwise the CPU with a log line saying why; `backend: cuda` makes that an error. One GPU
//! per MPI rank: the node-local rank (OpenMPI, Slurm, MPICH and PMI variables) modulo the
//! number of devices.

pub mod cuda;
pub mod phases;

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2};

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
}

/// An implementation of the E-step's dense math.
pub trait Backend: Send + Sync {
    /// What runs, for the log ("CPU (rayon, 2 threads)", "CUDA device 0: NVIDIA H100").
    fn describe(&self) -> String;
    /// Takes `b` (k × n) for products [`RightOperand::left_mul`] (kept as is on the CPU,
    /// moved to the device for CUDA).
    fn right_operand(&self, b: Array2<f32>) -> Result<Box<dyn RightOperand>>;
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

/// This process's rank among the ranks on its node, from the launcher's environment
/// (0 when run without one).
pub fn node_local_rank() -> usize {
    local_rank_from(|v| std::env::var(v).ok())
}

/// [`node_local_rank`] with the environment lookup `get`.
fn local_rank_from(get: impl Fn(&str) -> Option<String>) -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| get(v)?.trim().parse().ok())
    .unwrap_or(0)
}

/// The backend a job's `backend:` key asks for (`cfg`/`job` name it in errors). `auto` falls
/// back to the CPU with a log line; `cuda` without a usable device is a config error.
pub fn select(choice: BackendChoice, cfg: &Path, job: &str) -> Result<Arc<dyn Backend>> {
    let cpu = || -> Arc<dyn Backend> { Arc::new(Cpu) };
    let b: Arc<dyn Backend> = match choice {
        BackendChoice::Cpu => cpu(),
        BackendChoice::Auto => match cuda::Cuda::for_rank(node_local_rank()) {
            Ok(c) => Arc::new(c),
            Err(why) => {
                log::info!("backend: no usable CUDA device ({why}); using the CPU");
                cpu()
            }
        },
        BackendChoice::Cuda => match cuda::Cuda::for_rank(node_local_rank()) {
            Ok(c) => Arc::new(c),
            Err(why) => {
                return Err(Error::config(
                    cfg,
                    "backend",
                    format!("cuda: {why}; {job} can run with backend auto or cpu"),
                ))
            }
        },
    };
    log::info!("backend: {}", b.describe());
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
        let b = select(BackendChoice::Auto, Path::new("c.yaml"), "classify2d").unwrap();
        assert!(b.describe().starts_with("CPU"));
        let e = select(BackendChoice::Cuda, Path::new("c.yaml"), "classify2d")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("c.yaml") && e.contains("backend") && e.contains("cuda:"),
            "{e}"
        );
    }

    #[test]
    fn local_rank_comes_from_the_first_launcher_variable_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        assert_eq!(local_rank_from(env(&[])), 0);
        assert_eq!(local_rank_from(env(&[("SLURM_LOCALID", "3")])), 3);
        assert_eq!(
            local_rank_from(env(&[
                ("SLURM_LOCALID", "3"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1")
            ])),
            1
        );
        assert_eq!(
            local_rank_from(env(&[("PMI_LOCAL_RANK", "x"), ("MPI_LOCALRANKID", " 2 ")])),
            2
        );
    }
}
