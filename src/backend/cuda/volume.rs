//! The 3D classification kernels (`kernels/volume.cu`) behind a plain-data API: the
//! caller (classify3d's GPU phases) converts its model and particles into slices, so this
//! layer names no job type.
//!
//! What crosses PCIe:
//! - once per iteration ([`VolumeDevice::upload`]): the K padded Fourier class volumes
//!   (8·V bytes each, V = m²·(m/2+1), m = pad·n), the shell lists and the padded-slice
//!   point positions;
//! - per block, scoring ([`VolumeDevice::score_block`]): up, the spectra (8·n·(n/2+1) B per
//!   particle), poses, CTF coefficients and scales; down, the residual power per particle,
//!   class and shell (8·K·n_shells B per particle);
//! - per block, back-projection ([`VolumeDevice::backproject_block`]): up, the padded-slice
//!   values (8 B per point, about 4× the spectrum), the pose × symmetry matrices, CTF
//!   coefficients, class probabilities, scales and half sets; nothing comes down: the sums
//!   stay on the device;
//! - once per iteration ([`VolumeDevice::take_sums`], classify3d's `finish_e_step`, or at
//!   the end of each `Accumulate` call): down, the f64 sums of the 2K (class, half)
//!   accumulators, V voxels × (re, im, den) × 8 B = 48·K·V bytes in all (24·V B per
//!   accumulator) — the statistics segment. Before, that many bytes came down after every
//!   block (about 1.2 GB per 1024-particle block at K = 10).
//!
//! Back-projection sums are 64-bit fixed point (`fx_add` of common.cuh): the same bits
//! whatever order the threads run in. The quantum is chosen per block from a bound on what
//! any voxel can receive (see [`fixed_point_scale`]). After each block, `volume_add_fixed`
//! converts the block's fixed-point sums to f64 (`(double)(i64)acc / scale`), adds them to
//! resident f64 sums and clears the fixed-point buffer: one thread per element, so every
//! element receives the blocks in block order and the f64 sums are reproducible too.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use rayon::prelude::*;

use super::{gpu_err, int, launch_for, Cuda};
use crate::error::{Error, Result};
use crate::numerics::fft::Complex32;

/// Contributions one particle's slice (and one symmetry copy) can make to one voxel,
/// counted generously: a unit lattice plane has at most ~21 points within the 2×2×2 cube of
/// a voxel's trilinear support, and each point may also reach it flipped (x < 0) and as a
/// kx = 0 mirror, each with a trilinear weight ≤ 1.
const CONTRIBUTIONS_PER_VOXEL: f64 = 128.0;

/// What the volumes and particles of a run share.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// Working box (half plane n × (n/2+1)), oversampling, last shell.
    pub n: usize,
    pub pad: usize,
    pub k_max: usize,
    /// Coefficient indices of each shell `0..n_shells` (increasing within a shell): the
    /// residual of shell `s` sums over `shells[s]` (shell 0 is left out by the kernels).
    pub shells: Vec<Vec<u32>>,
    /// `(fx, fy)` of the padded-slice points, padded units (the same for every particle).
    pub points: Vec<(f32, f32)>,
}

/// The particles of one block, in the order results come back.
pub struct ParticleBlock<'a> {
    /// Spectra, `len × n·(n/2+1)`, row-major.
    pub spectra: &'a [Complex32],
    /// Pose of each particle, 3×3 row-major.
    pub poses: &'a [[f64; 9]],
    /// `Ctf::coefficients()` of each particle, or None (CTF = 1).
    pub ctfs: Option<&'a [[f64; 9]]>,
    /// Frequency per index of the working grid, Å⁻¹ (`1 / (n·psize)`).
    pub freq_step: f64,
}

/// One block's back-projection inputs (`len` particles).
pub struct Backprojection<'a> {
    /// Padded-slice values, `len × points`: the zero-padded transform of C·X with the
    /// centring sign applied (`PaddedSlice`'s values).
    pub values: &'a [Complex32],
    /// `A_j·R_gᵀ` for particle j and symmetry operator g, `len × n_syms`.
    pub mats: &'a [[f64; 9]],
    pub n_syms: usize,
    pub ctfs: Option<&'a [[f64; 9]]>,
    /// Frequency per index of the input box, Å⁻¹ (`1 / (box_in·psize_in)`).
    pub freq_step_in: f64,
    /// Class probabilities, `len × K`, row-major (those below 1e-3 are skipped).
    pub probs: &'a [f64],
    pub alpha: &'a [f64],
    pub half: &'a [u8],
    /// An upper bound of C² over each particle's slice.
    pub c2_max: &'a [f64],
}

/// The back-projection sums on the device: one block's fixed-point sums (all zero between
/// blocks) and the f64 sums of the blocks since the last [`VolumeDevice::take_sums`].
struct Accumulator {
    fixed: CudaSlice<u64>,
    sums: CudaSlice<f64>,
    /// Blocks added to `sums` since the last take.
    blocks: usize,
}

/// The state of a [`VolumeDevice`]'s accumulator.
enum AccState {
    /// Not allocated yet (no block back-projected).
    Empty,
    Ready(Accumulator),
    /// A back-projection failed part way: its sums are unusable.
    Failed(String),
}

/// K class volumes resident on one GPU for an iteration, with the kernels that use them.
pub struct VolumeDevice {
    stream: Arc<CudaStream>,
    n: usize,
    pad: usize,
    k_max: usize,
    n_shells: usize,
    n_points: usize,
    k: usize,
    voxels: usize,
    vols: CudaSlice<f32>,
    shell_start: CudaSlice<i32>,
    shell_coef: CudaSlice<i32>,
    points: CudaSlice<f32>,
    score_fn: CudaFunction,
    fit_fn: CudaFunction,
    bp_fn: CudaFunction,
    add_fn: CudaFunction,
    acc: Mutex<AccState>,
}

/// The fixed-point scale (a power of two) for sums whose magnitude is at most `bound`:
/// every partial sum then stays below 2⁶² in units of 1/scale (2⁶³ overflows), and the
/// quantum is `bound·2⁻⁶²` (relative 2·10⁻¹⁹ of the bound).
pub fn fixed_point_scale(bound: f64) -> Result<f64> {
    if !bound.is_finite() {
        return Err(Error::Backend(format!(
            "CUDA back-projection: non-finite bound {bound} on the sums (non-finite input?)"
        )));
    }
    if bound <= 0.0 {
        return Ok(1.0);
    }
    // Clamped so that a tiny bound cannot make the scale overflow to infinity.
    Ok((2f64.powi(62) / bound)
        .log2()
        .floor()
        .clamp(-1000.0, 1000.0)
        .exp2())
}

/// The fixed-point scale of one block's back-projection (`np` points per particle): from a
/// bound on any voxel's sum, Σ_j over the particles of the most one slice copy can add
/// (p ≤ 1: α_j·max(max|v_j|, α_j·max C²_j) per contribution), times the contributions per
/// voxel and the symmetry copies.
pub fn block_scale(b: &Backprojection, np: usize) -> Result<f64> {
    let bound: f64 = (0..b.alpha.len())
        .map(|j| {
            let v = b.values[j * np..(j + 1) * np]
                .iter()
                .fold(0.0f64, |a, c| a.max(c.norm() as f64));
            b.alpha[j].abs() * v.max(b.alpha[j].abs() * b.c2_max[j])
        })
        .sum::<f64>()
        * CONTRIBUTIONS_PER_VOXEL
        * b.n_syms as f64;
    fixed_point_scale(bound)
}

fn flat_c(v: &[Complex32]) -> Vec<f32> {
    v.iter().flat_map(|c| [c.re, c.im]).collect()
}

fn flat9(v: &[[f64; 9]]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

impl VolumeDevice {
    /// Uploads `volumes` (each the padded half-space spectrum of `Projector::spectrum`,
    /// `m²·(m/2+1)` values, m = pad·n) with the geometry.
    pub fn upload(gpu: &Cuda, geom: &Geometry, volumes: &[&[Complex32]]) -> Result<VolumeDevice> {
        let m = geom.n * geom.pad;
        let voxels = m * m * (m / 2 + 1);
        if volumes.is_empty() || volumes.iter().any(|v| v.len() != voxels) {
            return Err(Error::Internal(format!(
                "volume upload: {} volumes, expected {voxels} voxels each",
                volumes.len()
            )));
        }
        let s = &gpu.stream;
        let up = |e| gpu_err("copy to device", e);
        let mut host = Vec::with_capacity(2 * voxels * volumes.len());
        for v in volumes {
            host.extend(v.iter().flat_map(|c| [c.re, c.im]));
        }
        let vols = s.clone_htod(&host).map_err(up)?;
        drop(host);
        let mut start = vec![0i32];
        let mut coef = Vec::new();
        for sh in &geom.shells {
            coef.extend(sh.iter().map(|&c| c as i32));
            start.push(int(coef.len(), "coefficients")?);
        }
        coef.push(0); // never empty
        let pts: Vec<f32> = geom.points.iter().flat_map(|&(x, y)| [x, y]).collect();
        Ok(VolumeDevice {
            stream: s.clone(),
            n: geom.n,
            pad: geom.pad,
            k_max: geom.k_max,
            n_shells: geom.shells.len(),
            n_points: geom.points.len(),
            k: volumes.len(),
            voxels,
            vols,
            shell_start: s.clone_htod(&start).map_err(up)?,
            shell_coef: s.clone_htod(&coef).map_err(up)?,
            points: s.clone_htod(&pts).map_err(up)?,
            score_fn: gpu.function("volume", "volume_score")?,
            fit_fn: gpu.function("volume", "volume_fit_scale")?,
            bp_fn: gpu.function("volume", "volume_backproject")?,
            add_fn: gpu.function("volume", "volume_add_fixed")?,
            acc: Mutex::new(AccState::Empty),
        })
    }

    /// Number of volumes.
    pub fn classes(&self) -> usize {
        self.k
    }

    /// Device bytes of `k` volumes and their back-projection accumulators for box `n`
    /// oversampled `pad` times: `V·(8·k + 48·k + 48·k)` = `104·k·V` (complex f32 volumes;
    /// 2k accumulators of 3 values per voxel, once as one block's 64-bit fixed point and
    /// once as the iteration's f64 sums).
    pub fn resident_bytes(n: usize, pad: usize, k: usize) -> usize {
        let m = n * pad;
        m * m * (m / 2 + 1) * 104 * k
    }

    /// Values of the accumulators: 2K (class, half) × V voxels × `[re, im, den]`.
    fn acc_len(&self) -> usize {
        6 * self.k * self.voxels
    }

    /// The spectra, poses and CTF coefficients of a block on the device.
    #[allow(clippy::type_complexity)]
    fn upload_block(
        &self,
        b: &ParticleBlock,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f64>, CudaSlice<f64>, i32)> {
        let per = self.n * (self.n / 2 + 1);
        let nb = b.poses.len();
        if b.spectra.len() != nb * per || b.ctfs.is_some_and(|c| c.len() != nb) {
            return Err(Error::Internal(format!(
                "GPU block: {} spectrum values and {nb} poses (expected {per} per particle)",
                b.spectra.len()
            )));
        }
        let up = |e| gpu_err("copy to device", e);
        let s = &self.stream;
        let ctfs = b.ctfs.map_or(vec![0.0; 9], flat9);
        Ok((
            s.clone_htod(&flat_c(b.spectra)).map_err(up)?,
            s.clone_htod(&flat9(b.poses)).map_err(up)?,
            s.clone_htod(&ctfs).map_err(up)?,
            i32::from(b.ctfs.is_some()),
        ))
    }

    /// Residual power per particle, class and shell, `len × K × n_shells` (the CPU's
    /// `Scores::resid`), for particles at scales `alpha`.
    pub fn score_block(&self, b: &ParticleBlock, alpha: &[f64]) -> Result<Vec<f64>> {
        let nb = b.poses.len();
        if nb == 0 {
            return Ok(Vec::new());
        }
        let (spec, poses, ctfs, has_ctf) = self.upload_block(b)?;
        let s = &self.stream;
        let al: Vec<f32> = alpha.iter().map(|&a| a as f32).collect();
        let al = s
            .clone_htod(&al)
            .map_err(|e| gpu_err("copy to device", e))?;
        let total = nb * self.k * self.n_shells;
        let mut out = s
            .alloc_zeros::<f64>(total)
            .map_err(|e| gpu_err("allocate", e))?;
        let (nbi, nk, ns) = (
            int(nb, "block")?,
            int(self.k, "classes")?,
            int(self.n_shells, "shells")?,
        );
        let (n, pad, km) = (
            int(self.n, "box")?,
            int(self.pad, "pad")?,
            int(self.k_max, "k_max")?,
        );
        let mut l = s.launch_builder(&self.score_fn);
        l.arg(&mut out)
            .arg(&self.vols)
            .arg(&spec)
            .arg(&poses)
            .arg(&ctfs)
            .arg(&al)
            .arg(&self.shell_start)
            .arg(&self.shell_coef)
            .arg(&has_ctf)
            .arg(&b.freq_step)
            .arg(&nbi)
            .arg(&nk)
            .arg(&ns)
            .arg(&n)
            .arg(&pad)
            .arg(&km);
        // SAFETY: the arguments match volume_score's signature; every buffer holds what the
        // kernel indexes (nb particles, K volumes of V voxels, the shell lists).
        unsafe { l.launch(launch_for(total)?) }.map_err(|e| gpu_err("volume_score", e))?;
        s.clone_dtoh(&out)
            .map_err(|e| gpu_err("copy from device", e))
    }

    /// The per-shell sums of the scale fit against volume 0: `len × n_shells × 2`
    /// (`Σ w·Re(conj(C·P)·X)`, `Σ w·|C·P|²`; shell 0 is 0).
    pub fn fit_block(&self, b: &ParticleBlock) -> Result<Vec<f64>> {
        let nb = b.poses.len();
        if nb == 0 {
            return Ok(Vec::new());
        }
        let (spec, poses, ctfs, has_ctf) = self.upload_block(b)?;
        let s = &self.stream;
        let total = nb * self.n_shells;
        let mut out = s
            .alloc_zeros::<f64>(2 * total)
            .map_err(|e| gpu_err("allocate", e))?;
        let (nbi, ns) = (int(nb, "block")?, int(self.n_shells, "shells")?);
        let (n, pad, km) = (
            int(self.n, "box")?,
            int(self.pad, "pad")?,
            int(self.k_max, "k_max")?,
        );
        let mut l = s.launch_builder(&self.fit_fn);
        l.arg(&mut out)
            .arg(&self.vols)
            .arg(&spec)
            .arg(&poses)
            .arg(&ctfs)
            .arg(&self.shell_start)
            .arg(&self.shell_coef)
            .arg(&has_ctf)
            .arg(&b.freq_step)
            .arg(&nbi)
            .arg(&ns)
            .arg(&n)
            .arg(&pad)
            .arg(&km);
        // SAFETY: the arguments match volume_fit_scale's signature (volume 0 of vols).
        unsafe { l.launch(launch_for(total)?) }.map_err(|e| gpu_err("volume_fit_scale", e))?;
        s.clone_dtoh(&out)
            .map_err(|e| gpu_err("copy from device", e))
    }

    /// Back-projects a block and adds its sums to the resident f64 sums of the 2K (class,
    /// half) accumulators (V voxels × `[re, im, den]`, target 2·class + half), which
    /// [`VolumeDevice::take_sums`] brings down. Nothing comes back: the launches are queued
    /// on the stream (errors of the kernels themselves surface at the next copy down).
    pub fn backproject_block(&self, b: &Backprojection) -> Result<()> {
        let nb = b.alpha.len();
        let (np, ng, k) = (self.n_points, b.n_syms, self.k);
        if b.values.len() != nb * np
            || b.mats.len() != nb * ng
            || b.probs.len() != nb * k
            || b.half.len() != nb
            || b.c2_max.len() != nb
            || b.ctfs.is_some_and(|c| c.len() != nb)
        {
            return Err(Error::Internal(
                "GPU back-projection: inconsistent sizes".into(),
            ));
        }
        if nb == 0 || np == 0 {
            return Ok(());
        }
        let scale = block_scale(b, np)?;
        let s = &self.stream;
        let up = |e| gpu_err("copy to device", e);
        let vals = s.clone_htod(&flat_c(b.values)).map_err(up)?;
        let mats = s.clone_htod(&flat9(b.mats)).map_err(up)?;
        let ctfs = s
            .clone_htod(&b.ctfs.map_or(vec![0.0; 9], flat9))
            .map_err(up)?;
        let probs = s.clone_htod(b.probs).map_err(up)?;
        let alpha = s.clone_htod(b.alpha).map_err(up)?;
        let half: Vec<i32> = b.half.iter().map(|&h| i32::from(h)).collect();
        let half = s.clone_htod(&half).map_err(up)?;
        let has_ctf = i32::from(b.ctfs.is_some());
        let (nbi, npi, ngi, nk) = (
            int(nb, "block")?,
            int(np, "points")?,
            int(ng, "symmetry")?,
            int(k, "classes")?,
        );
        let (m, pad) = (int(self.n * self.pad, "side")?, int(self.pad, "pad")?);
        let len = self.acc_len();
        let n_acc = i64::try_from(len).map_err(|_| gpu_err("accumulators too large", len))?;
        let mut guard = self.acc.lock().unwrap_or_else(|e| e.into_inner());
        if let AccState::Failed(e) = &*guard {
            return Err(Error::Backend(format!(
                "CUDA back-projection: an earlier block failed ({e})"
            )));
        }
        if matches!(*guard, AccState::Empty) {
            let alloc = |e| gpu_err("allocate", e);
            *guard = AccState::Ready(Accumulator {
                fixed: s.alloc_zeros::<u64>(len).map_err(alloc)?,
                sums: s.alloc_zeros::<f64>(len).map_err(alloc)?,
                blocks: 0,
            });
        }
        let AccState::Ready(acc) = &mut *guard else {
            unreachable!("accumulator allocated above");
        };
        let total = nb * ng * np;
        let run = |acc: &mut Accumulator| -> Result<()> {
            let mut l = s.launch_builder(&self.bp_fn);
            l.arg(&mut acc.fixed)
                .arg(&vals)
                .arg(&self.points)
                .arg(&mats)
                .arg(&ctfs)
                .arg(&has_ctf)
                .arg(&b.freq_step_in)
                .arg(&probs)
                .arg(&alpha)
                .arg(&half)
                .arg(&scale)
                .arg(&nbi)
                .arg(&npi)
                .arg(&ngi)
                .arg(&nk)
                .arg(&m)
                .arg(&pad);
            // SAFETY: the arguments match volume_backproject's signature; fixed holds
            // 2K·V·3 values (zero: cleared by the last volume_add_fixed or allocated so)
            // and the inputs nb particles of np points and ng copies (checked above).
            unsafe { l.launch(launch_for(total)?) }
                .map_err(|e| gpu_err("volume_backproject", e))?;
            let mut l = s.launch_builder(&self.add_fn);
            l.arg(&mut acc.sums)
                .arg(&mut acc.fixed)
                .arg(&scale)
                .arg(&n_acc);
            // SAFETY: the arguments match volume_add_fixed's signature; sums and fixed
            // both hold n_acc values. Same stream: runs after the back-projection.
            unsafe { l.launch(launch_for(len)?) }.map_err(|e| gpu_err("volume_add_fixed", e))?;
            Ok(())
        };
        match run(acc) {
            Ok(()) => {
                acc.blocks += 1;
                Ok(())
            }
            Err(e) => {
                // The fixed-point buffer may hold part of this block: never reuse it.
                *guard = AccState::Failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Brings the resident f64 sums of the blocks back-projected since the last call down
    /// (48·K·V bytes), adds them to `out` (the classify3d `acc` segment, the layout of
    /// [`VolumeDevice::backproject_block`]) and clears them. Nothing crosses PCIe when no
    /// block was added. Returns the number of blocks the sums held.
    pub fn take_sums(&self, out: &mut [f64]) -> Result<usize> {
        let len = self.acc_len();
        if out.len() != len {
            return Err(Error::Internal(format!(
                "GPU back-projection sums: {} values, expected {len}",
                out.len()
            )));
        }
        let mut guard = self.acc.lock().unwrap_or_else(|e| e.into_inner());
        let acc = match &mut *guard {
            AccState::Empty => return Ok(0),
            AccState::Failed(e) => {
                return Err(Error::Backend(format!(
                    "CUDA back-projection: a block failed ({e})"
                )))
            }
            AccState::Ready(a) if a.blocks == 0 => return Ok(0),
            AccState::Ready(a) => a,
        };
        let s = &self.stream;
        let fetched = s
            .clone_dtoh(&acc.sums)
            .map_err(|e| gpu_err("copy from device", e))
            .and_then(|host| {
                s.memset_zeros(&mut acc.sums)
                    .map_err(|e| gpu_err("clear", e))?;
                s.synchronize().map_err(|e| gpu_err("synchronize", e))?;
                Ok(host)
            });
        let host = match fetched {
            Ok(h) => h,
            Err(e) => {
                *guard = AccState::Failed(e.to_string());
                return Err(e);
            }
        };
        let blocks = std::mem::replace(&mut acc.blocks, 0);
        drop(guard);
        out.par_iter_mut()
            .zip(host.par_iter())
            .for_each(|(o, &v)| *o += v);
        Ok(blocks)
    }
}
