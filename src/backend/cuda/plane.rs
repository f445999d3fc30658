//! The 2D E-step and M-step sums on the device, as plain data (no classify2d types): the
//! kernels of `kernels/plane.cu` and cuBLAS SGEMMs (FP32) against the template matrices that
//! the scorer already put on the device ([`crate::backend::RightOperand::cuda_matrix`]).
//!
//! Per iteration ([`PlaneDevice::upload`]): band indices and frequencies, 1/σ², the
//! conjugated band ramps (T × D), the full-plane ramps (T × L), the half-plane frequencies,
//! shell mask and the angles go up once.
//!
//! Per block of `nb` particles, ordered with the particles of half set 0 first
//! ([`PlaneBlock::n_half0`]):
//! - [`PlaneDevice::score_block`]: up go the spectra (nb × L complex) and the CTF
//!   coefficients (nb × 9 f64); the device builds P and Q, computes G = P·M and H = Q·W,
//!   and reduces over poses; down come only the log-marginals (nb × K f64) and best poses
//!   (nb × K i32). The pose weights stay on the device in the returned [`BlockScores`].
//! - [`PlaneDevice::accumulate_block`]: up go the responsibilities (nb × K f64); the device
//!   forms the weighted numerator spectra per class, half set and rotation
//!   (Σ_{b,t} p·w_t·C·X·ρ_t, one SGEMM per half set) and the CTF² denominators at the rotated
//!   frequencies (Σ_{b,r} c·C(R_ψr f)², and with c², one SGEMM per half set), added into
//!   f64 sums resident for as many blocks as the caller wants; down come the kept weights
//!   (nb × K f64).
//! - [`PlaneDevice::take_sums`]: the f64 sums come down (2·K·R × 2L + 2·2K × L values) and
//!   are reset; the host does the K·R inverse FFTs and rotations back per half set.
//!
//! Every reduction is in a fixed order (tree reductions, cuBLAS with the same shapes on the
//! same stream), so the same block gives the same bits.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use super::{gpu_err, int, launch_for, Cuda, THREADS};
use crate::backend::RightOperand;
use crate::error::{Error, Result};
use crate::numerics::fft::Complex32;

mod sums;

/// What an iteration's device data is made from.
pub struct PlaneSetup<'a> {
    pub n_classes: usize,
    pub n_rot: usize,
    pub n_shift: usize,
    /// Half-plane coefficients L of the working grid.
    pub len: usize,
    /// Band: index into the half plane, frequency (Å⁻¹), 1/σ² of each coefficient.
    pub band_idx: &'a [u32],
    pub band_freq: &'a [(f64, f64)],
    pub inv_sigma2: &'a [f32],
    /// Conjugated ramps on the band, `T × D`.
    pub conj_ramps: &'a [Complex32],
    /// Ramps on the whole half plane, `T × L`.
    pub ramps: &'a [Complex32],
    /// Frequency (Å⁻¹) of every half-plane coefficient and whether it is inside k_max.
    pub freq: &'a [(f64, f64)],
    pub inside: &'a [bool],
    pub psi_rad: &'a [f64],
}

/// One block's particles in device order (half set 0 first).
pub struct PlaneBlock<'a> {
    /// `nb × L` spectra.
    pub spectra: &'a [Complex32],
    /// `Ctf::coefficients()` per particle, or none (CTF = 1).
    pub ctf: Option<&'a [[f64; 9]]>,
    /// Particles `0..n_half0` are of half set 0, the rest of half set 1.
    pub n_half0: usize,
}

/// A scored block: per particle and class (device order, `b·K + k`) the log-marginal over
/// poses and the best pose `r·T + t`; the pose weights and the block stay on the device.
pub struct BlockScores {
    pub log_marginal: Vec<f64>,
    pub best_pose: Vec<i32>,
    nb: usize,
    n_half0: usize,
    has_ctf: i32,
    spectra: CudaSlice<f32>,
    ctf: CudaSlice<f64>,
    /// Pose weights, G's layout `[(b·T + t)][k·R + r]`.
    weights: CudaSlice<f32>,
    best: CudaSlice<i32>,
}

/// The summed M-step spectra of the blocks accumulated since the last [`PlaneDevice::take_sums`].
pub struct PlaneSums {
    /// `[h][k·R + r][2L]`: interleaved (re, im) numerator spectra per half set, class, rotation.
    pub num: Vec<f64>,
    /// `[h][j][L]`: rows `j < K` Σ c·C², rows `K + k` Σ c²·C², per half set.
    pub den: Vec<f64>,
}

struct Sums {
    num: CudaSlice<f64>,
    den: CudaSlice<f64>,
    scratch: CudaSlice<f32>,
}

/// The resident data of one iteration and the kernels.
pub struct PlaneDevice {
    k: usize,
    r: usize,
    t: usize,
    d: usize,
    len: usize,
    stream: Arc<CudaStream>,
    blas: Arc<Mutex<CudaBlas>>,
    band_idx: CudaSlice<i32>,
    band_freq: CudaSlice<f64>,
    inv_sigma2: CudaSlice<f32>,
    conj_ramps: CudaSlice<f32>,
    ramps: CudaSlice<f32>,
    freq: CudaSlice<f64>,
    inside: CudaSlice<i32>,
    psi: CudaSlice<f64>,
    f: [CudaFunction; 7],
    sums: Mutex<Option<Sums>>,
}

fn flat_c(v: &[Complex32]) -> Vec<f32> {
    v.iter().flat_map(|c| [c.re, c.im]).collect()
}

fn flat_f(v: &[(f64, f64)]) -> Vec<f64> {
    v.iter().flat_map(|&(a, b)| [a, b]).collect()
}

/// Row-major `C (m × n) = op(A) · B` on cuBLAS (column-major, see `gemm.rs`): with
/// `a_rows_k = false`, A is `m × k` (`C = A·B`); with `true`, A is stored `k × m` and
/// `C = Aᵀ·B`. B is `k × n`.
#[allow(clippy::too_many_arguments)]
fn sgemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &Mutex<CudaBlas>,
    a_transposed: bool,
    (m, n, k): (usize, usize, usize),
    a: &A,
    b: &B,
    c: &mut C,
) -> Result<()> {
    // Column-major: Cᵀ (n × m) = Bᵀ (n × k) · op(A)ᵀ (k × m).
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: if a_transposed {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        },
        m: int(n, "gemm n")?,
        n: int(m, "gemm m")?,
        k: int(k, "gemm k")?,
        alpha: 1.0f32,
        lda: int(n, "gemm n")?,
        ldb: int(if a_transposed { m } else { k }, "gemm ld")?,
        beta: 0.0f32,
        ldc: int(n, "gemm n")?,
    };
    let blas = blas.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: b holds k·n values (column-major n × k, ld n), a holds m·k values (k × m with
    // ld k, or, transposed, m × k with ld m), c holds m·n values (n × m, ld n).
    unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| gpu_err("SGEMM", e))
}

fn device_matrix<'a>(op: &'a dyn RightOperand, what: &str) -> Result<&'a CudaSlice<f32>> {
    op.cuda_matrix()
        .ok_or_else(|| Error::Internal(format!("{what}: the template matrix is not on the GPU")))
}

impl PlaneDevice {
    /// Device bytes of one iteration's resident data plus one block of `nb` particles.
    pub fn bytes_for(s: &PlaneSetup, nb: usize) -> usize {
        let (k, r, t, d, l) = (s.n_classes, s.n_rot, s.n_shift, s.band_idx.len(), s.len);
        let kr = k * r;
        let resident = 8 * (2 * kr * 2 * l + 2 * 2 * k * l)
            + 4 * (kr * 2 * l).max(2 * k * l)
            + 8 * t * (l + d)
            + 24 * l
            + 24 * d;
        let block = 4 * (nb * t * 2 * d + nb * d + 2 * nb * t * kr + nb * kr)
            + 4 * (nb * t * 2 * l + nb * r * l + nb * r * 2 * k)
            + 8 * nb * l
            + 8 * 4 * nb * k
            + 72 * nb;
        resident + block
    }

    pub fn upload(gpu: &Cuda, s: &PlaneSetup) -> Result<PlaneDevice> {
        let st = &gpu.stream;
        let up_f32 = |v: &[f32]| st.clone_htod(v).map_err(|e| gpu_err("copy to device", e));
        let up_f64 = |v: &[f64]| st.clone_htod(v).map_err(|e| gpu_err("copy to device", e));
        let up_i32 = |v: &[i32]| st.clone_htod(v).map_err(|e| gpu_err("copy to device", e));
        let idx: Vec<i32> = s.band_idx.iter().map(|&i| i as i32).collect();
        let inside: Vec<i32> = s.inside.iter().map(|&b| b as i32).collect();
        // Every kernel of plane.cu, in the order of its entry in nvrtc::SOURCES.
        let names = super::nvrtc::source("plane")
            .map_err(Error::Backend)?
            .kernels;
        let mut f = Vec::with_capacity(names.len());
        for n in names {
            f.push(gpu.function("plane", n)?);
        }
        let f: [CudaFunction; 7] = f
            .try_into()
            .map_err(|_| Error::Internal("kernels".into()))?;
        Ok(PlaneDevice {
            k: s.n_classes,
            r: s.n_rot,
            t: s.n_shift,
            d: s.band_idx.len(),
            len: s.len,
            stream: gpu.stream.clone(),
            blas: gpu.blas.clone(),
            band_idx: up_i32(&idx)?,
            band_freq: up_f64(&flat_f(s.band_freq))?,
            inv_sigma2: up_f32(s.inv_sigma2)?,
            conj_ramps: up_f32(&flat_c(s.conj_ramps))?,
            ramps: up_f32(&flat_c(s.ramps))?,
            freq: up_f64(&flat_f(s.freq))?,
            inside: up_i32(&inside)?,
            psi: up_f64(s.psi_rad)?,
            f,
            sums: Mutex::new(None),
        })
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| gpu_err("allocate", e))
    }
}

impl PlaneDevice {
    /// Scores a block against the templates `mat` (2D × K·R) and `pow` (D × K·R).
    pub fn score_block(
        &self,
        mat: &dyn RightOperand,
        pow: &dyn RightOperand,
        blk: &PlaneBlock,
    ) -> Result<BlockScores> {
        let (k, r, t, d, l) = (self.k, self.r, self.t, self.d, self.len);
        let nb = blk.spectra.len() / l.max(1);
        if nb == 0 || nb * l != blk.spectra.len() || blk.n_half0 > nb {
            return Err(Error::Internal(
                "plane block: no particles or a spectra length not a multiple of L".into(),
            ));
        }
        let (mat, pow) = (device_matrix(mat, "M")?, device_matrix(pow, "W")?);
        let kr = k * r;
        let st = &self.stream;
        let spectra = st
            .clone_htod(&flat_c(blk.spectra))
            .map_err(|e| gpu_err("copy to device", e))?;
        let coef: Vec<f64> = match blk.ctf {
            Some(c) => c.iter().flatten().copied().collect(),
            None => vec![0.0; 9],
        };
        let ctf = st
            .clone_htod(&coef)
            .map_err(|e| gpu_err("copy to device", e))?;
        let has_ctf = blk.ctf.is_some() as i32;
        let mut p = self.alloc::<f32>(nb * t * 2 * d)?;
        let mut q = self.alloc::<f32>(nb * d)?;
        let (nbi, nti, di, li) = (
            int(nb, "block")?,
            int(t, "shifts")?,
            int(d, "band")?,
            int(l, "plane")?,
        );
        let mut lb = st.launch_builder(&self.f[0]);
        lb.arg(&mut p)
            .arg(&mut q)
            .arg(&spectra)
            .arg(&ctf)
            .arg(&has_ctf)
            .arg(&self.band_idx)
            .arg(&self.band_freq)
            .arg(&self.inv_sigma2)
            .arg(&self.conj_ramps)
            .arg(&nbi)
            .arg(&nti)
            .arg(&di)
            .arg(&li);
        // SAFETY: plane_operands' signature; P holds nb·T·2D, Q nb·D, spectra nb·L float2,
        // the band arrays D entries, the ramps T·D float2.
        unsafe { lb.launch(launch_for(nb * d)?) }.map_err(|e| gpu_err("plane_operands", e))?;
        let mut g = self.alloc::<f32>(nb * t * kr)?;
        let mut h = self.alloc::<f32>(nb * kr)?;
        sgemm(&self.blas, false, (nb * t, kr, 2 * d), &p, mat, &mut g)?;
        sgemm(&self.blas, false, (nb, kr, d), &q, pow, &mut h)?;
        drop((p, q));
        let mut lm = self.alloc::<f64>(nb * k)?;
        let mut best = self.alloc::<i32>(nb * k)?;
        let (ri, ki) = (int(r, "rotations")?, int(k, "classes")?);
        let mut lb = st.launch_builder(&self.f[1]);
        lb.arg(&mut g)
            .arg(&h)
            .arg(&mut lm)
            .arg(&mut best)
            .arg(&nti)
            .arg(&ri)
            .arg(&ki);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(nb * k).map_err(|_| gpu_err("launch too large", nb * k))?,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: plane_reduce's signature; one block of 256 threads (its shared arrays) per
        // (b, k); G holds nb·T·K·R, H nb·K·R, the outputs nb·K.
        unsafe { lb.launch(cfg) }.map_err(|e| gpu_err("plane_reduce", e))?;
        let log_marginal = st
            .clone_dtoh(&lm)
            .map_err(|e| gpu_err("copy from device", e))?;
        let best_pose = st
            .clone_dtoh(&best)
            .map_err(|e| gpu_err("copy from device", e))?;
        Ok(BlockScores {
            log_marginal,
            best_pose,
            nb,
            n_half0: blk.n_half0,
            has_ctf,
            spectra,
            ctf,
            weights: g,
            best,
        })
    }

    pub fn n_classes(&self) -> usize {
        self.k
    }
    pub fn n_rot(&self) -> usize {
        self.r
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
