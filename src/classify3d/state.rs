//! What a 3D classification keeps per particle and in a checkpoint, and its fields of the
//! iteration record.

use serde::{Deserialize, Serialize};

use crate::em::engine::Scored;

/// Per-particle results of the last iteration that saw the particle (local rows).
#[derive(Clone, Debug)]
pub struct Results {
    pub k: usize,
    /// `len × K` class probabilities.
    pub probs: Vec<f32>,
    pub class: Vec<u32>,
    pub class_posterior: Vec<f32>,
    pub class_ess: Vec<f32>,
}

impl Results {
    pub fn new(n: usize, k: usize) -> Results {
        Results {
            k,
            probs: vec![0.0; n * k],
            class: vec![0; n],
            class_posterior: vec![0.0; n],
            class_ess: vec![0.0; n],
        }
    }
}

/// One particle's result of an iteration.
pub struct Row {
    pub probs: Vec<f32>,
    pub class: u32,
    pub posterior: f32,
    pub ess: f32,
}

impl Scored for Row {
    fn ess(&self) -> f64 {
        self.ess as f64
    }
    fn best_prob(&self) -> f64 {
        self.posterior as f64
    }
}

/// The problem's fields of the iteration record (summary.json, log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    pub class_similarity: f64,
    pub hard_classification: bool,
    /// Particles whose most likely class is k (this iteration's particles).
    pub class_assignments: Vec<u64>,
    /// Σ_i p_ik of the running statistics.
    pub class_effective_size: Vec<f64>,
    #[serde(rename = "class_fsc0143_res_A")]
    pub class_res_a: Vec<f64>,
    /// % of particles that changed class since the previous F-EM iteration.
    pub switched_pct: Option<f64>,
    /// Size-weighted RMS change of the class volumes (relative to the consensus RMS).
    pub rms_density_change: Option<f64>,
}

/// The model in a checkpoint.
#[derive(Serialize, Deserialize)]
pub struct Shared {
    /// Per class: volume, half maps A and B (flat, `n³` each), FSC, resolution.
    pub vols: Vec<[Vec<f32>; 3]>,
    pub fsc: Vec<Vec<f64>>,
    pub res_a: Vec<f64>,
    pub sigma2: Vec<f64>,
    pub weights: Vec<f64>,
    pub flows: Vec<(usize, Vec<Vec<u64>>)>,
    pub has_prev_fem: bool,
}

/// One particle in a checkpoint: its latest result and previous F-EM class.
#[derive(Clone, Serialize, Deserialize)]
pub struct RowState {
    pub probs: Vec<f32>,
    pub class: u32,
    pub posterior: f32,
    pub ess: f32,
    pub prev_fem: u32,
}
