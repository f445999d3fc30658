//! The classify3d configuration turned, once, with the dataset's facts (its particle
//! count), into what the run uses: the engine's iteration plan, the class-similarity
//! schedule, the initialisation, scale, solvent-mask, reconstruction and convergence
//! settings. The problem ([`super::engine`]) reads only this; the YAML struct is parsed
//! and validated before (`Classify3dConfig::validate_for`), and the schedules are checked
//! when they are built here.

use crate::em::engine::Plan;
use crate::em::schedule::{LearningRate, SimilaritySchedule};
use crate::error::Result;

use super::config::{Classify3dConfig, InitMode, ScaleMode};

/// What a 3D classification run does.
#[derive(Clone, Debug)]
pub struct Plan3d {
    pub num_classes: usize,
    /// Seed of the random initial subsets (the engine's plan has the batch seed).
    pub seed: u64,
    pub engine: Plan,
    pub similarity: SimilaritySchedule,
    /// Random particles per initial class (at most N / K) and the initial low-pass, Å.
    pub init_particles_per_class: usize,
    pub init_lowpass_a: f64,
    /// `init_mode: pca`: the number of subset reconstructions and their particles each
    /// (B · per ≤ N); None for the other modes.
    pub init_pca: Option<(usize, usize)>,
    pub per_particle_scale: ScaleMode,
    /// Solvent mask generated from the consensus: threshold (fraction of the maximum),
    /// dilation and soft edge, Å.
    pub solvent_mask: (f64, f64, f64),
    pub use_fsc_filter: bool,
    /// Stop when fewer than this % of particles switch class between F-EM iterations.
    pub convergence_switch_pct: f64,
    /// … or when the RMS density change falls below this.
    pub rms_density_change_threshold: Option<f64>,
}

impl Classify3dConfig {
    /// The plan for `n_total` particles (the configuration already validated).
    pub fn plan(&self, n_total: usize) -> Result<Plan3d> {
        let online = self.oem_iterations_planned(n_total);
        let halflife = self.oem_learning_rate_halflife_pct / 100.0 * online as f64;
        let k = self.num_classes;
        Ok(Plan3d {
            num_classes: k,
            seed: self.seed,
            engine: Plan {
                n_total,
                batch_size: self.batch_total(n_total),
                seed: self.seed,
                rate: LearningRate::new(self.oem_learning_rate_init, halflife)?,
                online,
                full_max: self.fem_max_iterations,
                batch_offset: 0,
            },
            similarity: SimilaritySchedule::new(
                self.class_similarity,
                self.class_similarity_anneal_start,
                self.anneal_end(n_total),
                self.force_hard_classification,
                self.hard_after_anneal,
            )?
            .with_hard_first(self.hard_first_iterations),
            init_particles_per_class: self.init_particles_per_class.min(n_total / k).max(1),
            init_lowpass_a: self.init_lowpass_a,
            init_pca: (self.init_mode == InitMode::Pca).then(|| {
                let b = self
                    .init_pca_reconstructions
                    .unwrap_or((10 * k).max(20))
                    .min((n_total / 2).max(k))
                    .max(1);
                (b, self.init_particles_per_class.min(n_total / b).max(1))
            }),
            per_particle_scale: self.per_particle_scale,
            solvent_mask: (
                self.solvent_mask_threshold,
                self.solvent_mask_dilate_a,
                self.solvent_mask_soft_a,
            ),
            use_fsc_filter: self.use_fsc_filter,
            convergence_switch_pct: self.convergence_switch_pct,
            rms_density_change_threshold: self.rms_density_change_threshold,
        })
    }
}
