//! 3D classification as a problem of the shared EM engine ([`crate::em::engine`]): class
//! volumes at the particles' known poses. The engine runs the loop (O-EM batches, F-EM
//! passes, the one all-reduce, blending, records, checkpoints); this file says what one
//! iteration does:
//!
//! - start ([`super::start`]): consensus, solvent mask, noise model, per-particle scales,
//!   initial classes (or the checkpoint's classes, [`super::checkpoint`]);
//! - prepare: the effective volumes (focus mask) as projectors, the class priors from the
//!   class weights, similarity and hardness of the annealing schedule (`force_hard`,
//!   `hard_after_anneal`, `hard_first_iterations`);
//! - E-step per block, through the backend's phases ([`crate::backend::phases`], the CPU
//!   ones in [`super::estep`], the CUDA ones in [`super::gpu`]): log-likelihoods against
//!   the K projections with scale, CTF and noise, responsibilities, back-projection of the
//!   particles with their class weights (symmetry copies included) and the per-shell
//!   residual power (on the GPU the class sums stay on the device and come down once, in
//!   `finish_e_step`); the rows it returns are [`super::state::Row`]s;
//! - M-step: FSC-filtered, masked reconstructions, noise model and class weights;
//! - conclude: class sizes (all-reduced counts), the class flow against the previous F-EM
//!   assignment, the RMS density change, and the convergence criteria
//!   ([`super::record`], with the record's fields and log line).
//!
//! The checkpoint's model and rows, and their conversion from and back into this problem,
//! are in [`super::checkpoint`].

use ndarray::Array3;

use crate::backend::cuda::Cuda;
use crate::backend::phases::{e_step_block, BlockRef};
use crate::backend::Cpu;
use crate::em::driver::{class_flow, switched_pct, Phase};
use crate::em::engine::{Conclusion, Context, Iteration, Problem};
use crate::em::responsibilities::EStepParams;
use crate::em::schedule::SimilaritySchedule;
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::project3d::Projector;
use crate::numerics::rotation::Mat3;
use crate::particles::{Particles, WorkGrid};

pub use super::checkpoint::{RowState, Shared};
use super::estep::VolumeModel;
use super::gpu;
use super::model::{self, ClassVolume, PAD};
use super::plan::Plan3d;
use super::record::convergence;
pub use super::record::Extra;
pub use super::state::{Results, Row};

/// What the E-step of one iteration uses.
pub struct Prepared<'a> {
    model: VolumeModel<'a>,
    params: EStepParams,
    log_prior: Vec<f64>,
}

/// The inputs of a run.
pub struct Inputs<'a> {
    pub plan: &'a Plan3d,
    pub grid: &'a WorkGrid,
    pub n_total: usize,
    pub syms: Vec<Mat3>,
    /// Solvent mask from a file (resampled to the working box), or None to generate it.
    pub solvent_mask: Option<Array3<f32>>,
    pub focus_mask: Option<Array3<f32>>,
    /// `init_mode: input` volumes (working box).
    pub initial_volumes: Option<Vec<Array3<f32>>>,
    /// Input scales of the local rows for `per_particle_scale: input`.
    pub input_scales: Option<Vec<f64>>,
    /// The GPU that runs the E-step phases and the scale fit, or None for the CPU.
    pub gpu: Option<&'a Cuda>,
}

/// 3D classification: inputs and the model as it evolves.
pub struct Classify3d<'a> {
    pub plan: &'a Plan3d,
    pub grid: &'a WorkGrid,
    pub n_total: usize,
    pub syms: Vec<Mat3>,
    pub(super) solvent_mask_input: Option<Array3<f32>>,
    focus_mask: Option<Array3<f32>>,
    pub(super) initial_volumes: Option<Vec<Array3<f32>>>,
    pub(super) input_scales: Option<Vec<f64>>,
    pub(super) gpu: Option<&'a Cuda>,
    layout: StatsLayout,
    sim: SimilaritySchedule,
    pub consensus: ClassVolume,
    pub mask: Array3<f32>,
    pub mask_generated: bool,
    /// Per-particle scales (local rows; fixed at start).
    pub scale: Vec<f64>,
    pub classes: Vec<ClassVolume>,
    pub sigma2: Vec<f64>,
    pub weights: Vec<f64>,
    pub results: Results,
    /// Classes of the previous F-EM iteration (local rows), once there was one.
    pub(super) prev_fem: Option<Vec<u32>>,
    /// Class flow between consecutive F-EM iterations: (iteration, K × K counts).
    pub flows: Vec<(usize, Vec<Vec<u64>>)>,
    /// The flow of the iteration just concluded, if any.
    pub flow_now: bool,
    assigned: Vec<u64>,
    rms_change: Option<f64>,
}

impl<'a> Classify3d<'a> {
    pub fn new(i: Inputs<'a>) -> Result<Self> {
        let plan = i.plan;
        let k = plan.num_classes;
        Ok(Classify3d {
            layout: model::layout(k, i.grid)?,
            sim: plan.similarity,
            plan,
            grid: i.grid,
            n_total: i.n_total,
            syms: i.syms,
            solvent_mask_input: i.solvent_mask,
            focus_mask: i.focus_mask,
            initial_volumes: i.initial_volumes,
            input_scales: i.input_scales,
            gpu: i.gpu,
            consensus: ClassVolume::empty(),
            mask: Array3::zeros((0, 0, 0)),
            mask_generated: false,
            scale: Vec::new(),
            classes: Vec::new(),
            sigma2: Vec::new(),
            weights: vec![1.0 / k as f64; k],
            results: Results::new(0, k),
            prev_fem: None,
            flows: Vec::new(),
            flow_now: false,
            assigned: vec![0; k],
            rms_change: None,
        })
    }
}

impl<'a> Problem for Classify3d<'a> {
    type Prepared = Prepared<'a>;
    type Row = Row;
    type Extra = Extra;
    type Shared = Shared;
    type RowState = RowState;

    fn layout(&self) -> &StatsLayout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        self.plan.num_classes
    }

    fn start(&mut self, ctx: &Context, resume: Option<(Shared, Vec<RowState>)>) -> Result<()> {
        self.start_model(ctx.source, ctx.comm)?;
        let (k, n) = (self.plan.num_classes, ctx.source.len());
        self.results = Results::new(n, k);
        match resume {
            Some((s, rows)) => self.restore_checkpoint(s, rows),
            None => {
                self.classes = self.initial_classes(ctx.source, ctx.comm)?;
                Ok(())
            }
        }
    }

    fn prepare(&mut self, it: &Iteration, _: &Context) -> Result<Prepared<'a>> {
        let k = self.plan.num_classes;
        self.assigned = vec![0; k];
        self.rms_change = None;
        let focus = self.focus_mask.as_ref().map(|f| (f, &self.consensus.vol));
        let eff = model::effective_volumes(&self.classes, &self.mask, focus);
        let tot: f64 = self.weights.iter().sum::<f64>().max(1e-300);
        Ok(Prepared {
            model: VolumeModel {
                grid: self.grid,
                projs: eff.iter().map(|v| Projector::new(v.view(), PAD)).collect(),
                sigma2: self.sigma2.clone(),
                syms: self.syms.clone(),
                device: Default::default(),
            },
            params: EStepParams::new(1.0, self.sim.similarity(it.t), self.sim.hard(it.t))?,
            log_prior: self
                .weights
                .iter()
                .map(|w| (w / tot).max(1e-3 / k as f64).ln())
                .collect(),
        })
    }

    fn e_step(
        &self,
        prep: &Prepared<'a>,
        it: &Iteration,
        block: &Particles,
        idx: &[usize],
        ids: &[usize],
        st: &mut Stats,
    ) -> Result<Vec<(usize, Row)>> {
        let k = self.plan.num_classes;
        let scale: Vec<f64> = ids.iter().map(|&l| self.scale[l]).collect();
        let b = BlockRef {
            particles: block,
            idx,
            scale: &scale,
        };
        let accumulate = it.phase != Phase::Assign;
        let (m, prior, params) = (&prep.model, &prep.log_prior, &prep.params);
        let (_, resp) = match self.gpu {
            // The class sums stay on the device until finish_e_step.
            Some(g) => gpu::e_step_block(g, m, &b, prior, params, accumulate, st)?,
            None => e_step_block(&Cpu, m, &b, prior, params, accumulate, st)?,
        };
        Ok(Row::of_block(&resp, idx, k))
    }

    /// On the GPU: brings the iteration's class sums down (once, 48·K·V bytes) into the
    /// statistics before the all-reduce.
    fn finish_e_step(&self, prep: &Prepared<'a>, st: &mut Stats) -> Result<()> {
        match self.gpu {
            Some(_) => gpu::flush(&prep.model, st),
            None => Ok(()),
        }
    }

    fn keep(&mut self, l: usize, row: &Row, _: &Iteration) -> Result<()> {
        self.assigned[row.class as usize] += 1;
        self.results.store(l, row);
        Ok(())
    }

    fn m_step(&mut self, running: &Stats, _: &Iteration) -> Result<()> {
        let new =
            model::reconstruct_classes(running, self.grid, &self.mask, self.plan.use_fsc_filter)?;
        self.sigma2 = model::noise_per_shell(running, &self.sigma2)?;
        self.weights = running.segment(model::WEIGHT)?.to_vec();
        self.rms_change = Some(model::rms_change(
            &self.classes,
            &new,
            &self.weights,
            &self.consensus.vol,
        ));
        self.classes = new;
        Ok(())
    }

    fn conclude(&mut self, it: &Iteration, ctx: &Context) -> Result<Conclusion<Extra>> {
        let (plan, k) = (self.plan, self.plan.num_classes);
        ctx.comm.all_reduce_sum_u64(&mut self.assigned);
        // F-EM convergence: class flow against the previous F-EM iteration.
        let mut switched = None;
        self.flow_now = false;
        if it.phase == Phase::Full {
            if let Some(prev) = &self.prev_fem {
                let f = class_flow(prev, &self.results.class, k, ctx.comm);
                switched = Some(switched_pct(&f));
                self.flows.push((it.t, f));
                self.flow_now = true;
            }
            self.prev_fem = Some(self.results.class.clone());
        }
        let rms = if it.phase == Phase::Full {
            self.rms_change
        } else {
            None
        };
        Ok(Conclusion {
            extra: Extra {
                class_similarity: self.sim.similarity(it.t),
                hard_classification: self.sim.hard(it.t),
                class_assignments: self.assigned.clone(),
                class_effective_size: self.weights.clone(),
                class_res_a: self.classes.iter().map(|c| c.res_a).collect(),
                switched_pct: switched,
                rms_density_change: rms,
            },
            // No stop during `hard_first_iterations`: the weighted passes are still to come.
            stop: convergence(plan, switched, rms).filter(|_| !self.sim.in_hard_first(it.t)),
        })
    }

    fn describe(&self, e: &Extra) -> Vec<String> {
        e.describe()
    }

    fn shared_state(&self) -> Shared {
        self.checkpoint_model()
    }

    fn row_states(&self) -> Vec<RowState> {
        self.checkpoint_rows()
    }
}
