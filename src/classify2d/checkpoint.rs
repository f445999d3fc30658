//! The 2D model in a checkpoint (the engine's codec, [`crate::em::checkpoint`], writes it
//! with the running statistics and history): the class averages and their FRC, counts and
//! noise gains, the noise model and the alignment limit. The serde names are the
//! checkpoint format; each particle's row state is its class in the last full pass
//! ([`super::convergence`]).

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::engine::Classify2d;
use super::model::ClassUpdate;

/// The model in a checkpoint.
#[derive(Serialize, Deserialize)]
pub struct Shared {
    /// Alignment limit (shell) for the next iteration.
    pub k_hi: usize,
    /// Class averages, `n × n` each, row-major.
    pub box_px: usize,
    pub images: Vec<Vec<f32>>,
    pub frc: Vec<Vec<f64>>,
    pub counts: Vec<f64>,
    pub noise_gain: Vec<Vec<f64>>,
    pub sigma2_init: Vec<f64>,
    pub sigma2_current: Vec<f64>,
    /// Converged with `final_hard_classification`: the next pass is the last, hard.
    #[serde(default)]
    pub hard_next: bool,
}

impl Shared {
    /// The state of `p` after an iteration.
    pub fn of(p: &Classify2d) -> Shared {
        let c = &p.classes;
        Shared {
            k_hi: p.k_hi,
            box_px: p.grid.n,
            images: c
                .images
                .iter()
                .map(|a| a.iter().copied().collect())
                .collect(),
            frc: c.frc.clone(),
            counts: c.counts.clone(),
            noise_gain: c.noise_gain.clone(),
            sigma2_init: p.sigma2_init.clone(),
            sigma2_current: p.sigma2_current.clone(),
            hard_next: p.conv.hard_next,
        }
    }

    /// The classes, σ²_init and σ²_current.
    pub fn into_model(self) -> Result<(ClassUpdate, Vec<f64>, Vec<f64>)> {
        let n = self.box_px;
        let len = n * crate::numerics::fft::half_len(n);
        if let Some(g) = self.noise_gain.iter().find(|g| g.len() != len) {
            return Err(Error::Checkpoint(format!(
                "noise gain of {} values, expected {len} (box {n})",
                g.len()
            )));
        }
        let images = self
            .images
            .into_iter()
            .map(|v| Array2::from_shape_vec((n, n), v))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Checkpoint(format!("class image shape: {e}")))?;
        let classes = ClassUpdate {
            images,
            frc: self.frc,
            counts: self.counts,
            noise_gain: self.noise_gain,
        };
        Ok((classes, self.sigma2_init, self.sigma2_current))
    }
}
