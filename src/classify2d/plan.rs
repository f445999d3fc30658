//! The classify2d configuration turned, once, with the dataset's particle count, into what
//! the run uses: the engine's iteration plan (online batches from the second batch of the
//! seeded permutation, η(t) = η(0)/(1 + t/h)), the ICUF schedule, the alignment limits and
//! pose grid extent, and when classification turns hard. The problem
//! ([`super::engine`]) reads only this; the YAML struct is validated before
//! (`Classify2dConfig::validate_for`) and the schedules are checked when built here.

use crate::em::engine::Plan;
use crate::em::schedule::{IcufSchedule, LearningRate};
use crate::error::Result;

use super::config::Classify2dConfig;

/// What a 2D classification run does.
#[derive(Clone, Debug)]
pub struct Plan2d {
    pub num_classes: usize,
    /// Seed of the initial classes and noise particles (the engine's plan has the batch seed).
    pub seed: u64,
    pub engine: Plan,
    pub icuf: IcufSchedule,
    /// Finest alignment resolution, and the high-pass (coarsest), Å.
    pub align_res_a: f64,
    pub min_align_res_a: Option<f64>,
    pub max_shift_px: f64,
    /// First iteration classified hard (`final_hard_classification`), or none.
    pub hard_from: Option<usize>,
    /// Stop the full passes when fewer particles than this switch class, %; none = never.
    pub convergence_switch_pct: Option<f64>,
    /// Back-project at the best pose only (`force_max`).
    pub force_max: bool,
}

impl Classify2dConfig {
    /// The plan for `n_total` particles (the configuration already validated).
    pub fn plan(&self, n_total: usize) -> Result<Plan2d> {
        let total = self.total_iterations();
        Ok(Plan2d {
            num_classes: self.num_classes,
            seed: self.seed,
            engine: Plan {
                n_total,
                batch_size: self.batch_size_per_class * self.num_classes,
                seed: self.seed,
                rate: LearningRate::new(
                    self.oem_learning_rate_init,
                    self.oem_learning_rate_halflife,
                )?,
                online: self.online_em_iterations,
                full_max: self.full_iterations,
                batch_offset: 1,
            },
            icuf: IcufSchedule::new(self.icuf, self.online_em_iterations)?,
            align_res_a: self.align_res_a(),
            min_align_res_a: self.min_align_res_a,
            max_shift_px: self.max_shift_px,
            hard_from: self
                .final_hard_classification
                .then(|| total.saturating_sub(1)),
            convergence_switch_pct: self.convergence_switch_pct,
            force_max: self.force_max,
        })
    }
}
