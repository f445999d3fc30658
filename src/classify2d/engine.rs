//! 2D classification as a problem of the shared EM engine ([`crate::em::engine`]): class
//! averages over in-plane rotations and shifts. The engine runs the loop (O-EM batches from
//! the second batch of the seeded permutation on, then full passes, the one all-reduce,
//! blending with η(t) = 1/(1 + t/2), records, checkpoints); this file says what one
//! iteration does:
//!
//! - start ([`super::start`]): σ²_init from 100 random particles and random initial
//!   classes from the first batch (or the checkpoint's classes and noise model);
//! - prepare: the alignment band and pose grid at the current alignment limit, the
//!   templates (class averages × rotations, whitened by the per-class noise), the
//!   ICUF-annealed σ² and the scorer on the backend; hard in the last iterations with
//!   `final_hard_classification`;
//! - E-step per chunk of 16 particles, through the backend's phases
//!   ([`crate::backend::phases`], the CPU ones in [`super::accumulate`]): scores against
//!   every class × pose, responsibilities, back-rotated class sums and noise sums; on the
//!   CUDA backend ([`super::gpu`]) in blocks of up to 256 particles, one at a time, sized
//!   to the free device memory;
//! - M-step: class averages (mask, re-centring, …) and the noise model;
//! - conclude: the record (alignment limit, class sizes and FRC resolutions, and after a
//!   full pass the percentage of particles that switched class, [`super::convergence`],
//!   which stops the full passes), then the alignment limit is raised to where the class
//!   averages have signal.
//!
//! The checkpoint's model is [`super::checkpoint::Shared`], the record's fields
//! [`super::record::Extra`].
//!
//! Rank independence: batches come from one seeded global permutation, the random initial
//! assignment and the 100 noise particles are functions of the global row, and statistics
//! are summed in f64, so 1, 2 or 64 ranks give the same classes up to summation order.

use crate::em::engine::{Conclusion, Context, Iteration, Problem};
use crate::em::responsibilities::EStepParams;
use crate::em::schedule::IcufSchedule;
use crate::em::stats::{Stats, StatsLayout};
use crate::error::{Error, Result};
use crate::numerics::frc::frc_resolution_a;
use crate::particles::{Particles, WorkGrid};

use super::accumulate::{signal_shell, PlaneModel};
pub use super::checkpoint::Shared;
use super::convergence::Convergence;
use super::estep::{Scorer, Templates};
use super::gpu;
use super::grid::{align_shells, Band, PoseGrid};
use super::model::{self, ClassUpdate, PostProcess};
use super::plan::Plan2d;
pub use super::record::Extra;
use super::results::ResultRow;

/// What the E-step of one iteration uses.
pub struct Prepared<'a> {
    model: PlaneModel<'a>,
    params: EStepParams,
    /// Particles per GPU block (CUDA backend only).
    gpu_batch: usize,
    /// Why the GPU set-up of this iteration failed (memory budget, upload), returned by the
    /// first E-step call: its errors are agreed by every rank, an error of `prepare` on one
    /// rank would leave the others waiting.
    gpu_error: std::sync::Mutex<Option<Error>>,
}

/// 2D classification: inputs and the model as it evolves.
pub struct Classify2d<'a> {
    pub plan: &'a Plan2d,
    pub grid: &'a WorkGrid,
    pub post: PostProcess,
    /// Where the E-step's matrix products run.
    backend: &'a dyn crate::backend::Backend,
    pub(super) layout: StatsLayout,
    icuf: IcufSchedule,
    pub(super) k_lo: usize,
    pub(super) k_align: usize,
    pub(super) k_start: usize,
    /// Alignment limit (shell) of the next iteration.
    pub k_hi: usize,
    /// This iteration's record fields fixed at prepare: limit, rotations, shifts, band.
    now: (f64, usize, usize, usize),
    pub classes: ClassUpdate,
    pub sigma2_init: Vec<f64>,
    pub sigma2_current: Vec<f64>,
    pub sigma2_used: Vec<f64>,
    /// When the full passes stop; this iteration is hard.
    pub(super) conv: Convergence,
    hard_now: bool,
    /// The configuration file, named in the GPU memory budget error.
    pub config: std::path::PathBuf,
}

impl<'a> Classify2d<'a> {
    pub fn new(
        plan: &'a Plan2d,
        grid: &'a WorkGrid,
        post: PostProcess,
        backend: &'a dyn crate::backend::Backend,
    ) -> Result<Self> {
        let [k_lo, k_align, k_start] = align_shells(grid, plan.align_res_a, plan.min_align_res_a);
        Ok(Classify2d {
            layout: model::layout(plan.num_classes, grid)?,
            icuf: plan.icuf,
            plan,
            grid,
            post,
            backend,
            k_lo,
            k_align,
            k_start,
            k_hi: k_start,
            now: (f64::NAN, 0, 0, 0),
            classes: ClassUpdate::empty(),
            sigma2_init: Vec::new(),
            sigma2_current: Vec::new(),
            sigma2_used: Vec::new(),
            conv: Convergence::new(plan.convergence_switch_pct, plan.hard_from.is_some()),
            hard_now: false,
            config: std::path::PathBuf::from("the configuration"),
        })
    }
}

impl<'a> Problem for Classify2d<'a> {
    type Prepared = Prepared<'a>;
    type Row = ResultRow;
    type Extra = Extra;
    type Shared = Shared;
    type RowState = u32;

    fn layout(&self) -> &StatsLayout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        self.plan.num_classes
    }

    fn start(&mut self, ctx: &Context, resume: Option<(Shared, Vec<u32>)>) -> Result<()> {
        match resume {
            Some((s, rows)) => {
                self.conv.start(ctx.source.len(), Some(rows), s.hard_next);
                self.k_hi = s.k_hi;
                (self.classes, self.sigma2_init, self.sigma2_current) = s.into_model()?;
            }
            None => {
                self.conv.start(ctx.source.len(), None, false);
                self.sigma2_init = self.initial_noise(ctx)?;
                self.sigma2_current = self.sigma2_init.clone();
                let poses = PoseGrid::new(self.k_hi, self.plan.max_shift_px);
                self.classes = self.initial_classes(ctx, &poses)?;
            }
        }
        self.sigma2_used = self.sigma2_init.clone();
        Ok(())
    }

    fn prepare(&mut self, it: &Iteration, _: &Context) -> Result<Prepared<'a>> {
        let band = Band::new(self.grid, self.k_lo, self.k_hi);
        let poses = PoseGrid::new(self.k_hi, self.plan.max_shift_px);
        let noise_power =
            self.classes
                .noise_power(self.grid, &self.sigma2_current, &self.post.mask);
        let templates = Templates::build(&self.classes.images, &poses, &band, Some(&noise_power));
        self.icuf.sigma2(
            it.t,
            &self.sigma2_init,
            &self.sigma2_current,
            &mut self.sigma2_used,
        )?;
        let hard = self.plan.hard_from.is_some_and(|h| it.t >= h) || self.conv.hard_next;
        self.hard_now = hard;
        self.now = (
            self.grid.shell_res_a(self.k_hi),
            poses.n_rot(),
            poses.n_shift(),
            band.len(),
        );
        let ramps = self.full_ramps(&poses);
        let scorer = Scorer::new(
            self.grid,
            band,
            poses,
            templates,
            &self.sigma2_used,
            self.backend,
        )?;
        let (device, gpu_batch, gpu_error) =
            gpu::prepare(self.backend, &scorer, self.grid, &ramps, &self.config);
        Ok(Prepared {
            model: PlaneModel {
                num_classes: self.plan.num_classes,
                scorer,
                images: self.classes.images.clone(),
                ramps,
                best_pose_only: self.plan.force_max || hard,
                device,
            },
            params: EStepParams::new(1.0, 0.0, hard)?,
            gpu_batch,
            gpu_error: std::sync::Mutex::new(gpu_error),
        })
    }

    fn finish_e_step(&self, prep: &Prepared<'a>, stats: &mut Stats) -> Result<()> {
        match (self.backend.as_cuda(), &prep.model.device) {
            (Some(_), Some(_)) => gpu::flush(&prep.model, stats),
            _ => Ok(()),
        }
    }

    fn e_step(
        &self,
        prep: &Prepared<'a>,
        _: &Iteration,
        block: &Particles,
        idx: &[usize],
        _: &[usize],
        stats: &mut Stats,
    ) -> Result<Vec<(usize, ResultRow)>> {
        if let Some(gpu) = self.backend.as_cuda() {
            gpu::setup_succeeded(&prep.gpu_error, &prep.model)?;
            return gpu::e_step(
                gpu,
                &prep.model,
                &prep.params,
                &self.layout,
                block,
                idx,
                prep.gpu_batch,
                stats,
            );
        }
        super::accumulate::cpu_e_step(&prep.model, &prep.params, &self.layout, block, idx, stats)
    }

    fn keep(&mut self, l: usize, row: &ResultRow, _: &Iteration) -> Result<()> {
        self.conv.keep(l, row.class);
        Ok(())
    }

    fn m_step(&mut self, running: &Stats, _: &Iteration) -> Result<()> {
        let k = self.plan.num_classes;
        self.classes = model::update_classes(
            running,
            self.grid,
            k,
            &self.post,
            Some(&self.classes.images),
        );
        for (s, v) in self
            .sigma2_current
            .iter_mut()
            .zip(model::noise_per_shell(running))
        {
            if let Some(v) = v {
                *s = v.max(1e-12);
            }
        }
        Ok(())
    }

    fn conclude(&mut self, it: &Iteration, ctx: &Context) -> Result<Conclusion<Extra>> {
        let (switched_pct, stop) =
            self.conv
                .conclude(it.phase, self.hard_now, self.plan.num_classes, ctx.comm);
        let (res, n_rot, n_shift, band) = self.now;
        let frc05 = self
            .classes
            .frc
            .iter()
            .map(|f| frc_resolution_a(f, 0.5, self.grid.n, self.grid.psize_a()))
            .collect();
        // Raise the alignment limit to where the class averages have signal.
        let k_est = signal_shell(&self.classes, 0.143);
        self.k_hi = self.k_hi.max(k_est.min(self.k_align)).max(self.k_start);
        Ok(Conclusion {
            extra: Extra {
                align_res_a: res,
                n_rotations: n_rot,
                n_shifts: n_shift,
                band_coefficients: band,
                class_counts: self.classes.counts.clone(),
                class_frc05_res_a: frc05,
                switched_pct,
            },
            stop,
        })
    }

    fn describe(&self, e: &Extra) -> Vec<String> {
        e.describe()
    }

    fn shared_state(&self) -> Shared {
        Shared::of(self)
    }

    fn row_states(&self) -> Vec<u32> {
        self.conv.row_states()
    }
}
