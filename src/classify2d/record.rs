//! The 2D problem's fields of the iteration record (summary.json, the log, the
//! checkpoint's history), and how a particle's result is seen by the engine's diagnostics.

use serde::{Deserialize, Serialize};

use crate::em::engine::Scored;

use super::results::ResultRow;

/// The problem's fields of the iteration record (summary.json, log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    #[serde(rename = "align_res_A")]
    pub align_res_a: f64,
    pub n_rotations: usize,
    pub n_shifts: usize,
    pub band_coefficients: usize,
    pub class_counts: Vec<f64>,
    #[serde(rename = "class_frc05_res_A")]
    pub class_frc05_res_a: Vec<f64>,
    /// Full passes after the first: particles whose best class changed, %.
    #[serde(default)]
    pub switched_pct: Option<f64>,
}

impl Extra {
    /// The record's log line.
    pub fn describe(&self) -> Vec<String> {
        vec![format!(
            "align {:.1} Å, {} angles × {} shifts, {} band coefficients{}",
            self.align_res_a,
            self.n_rotations,
            self.n_shifts,
            self.band_coefficients,
            self.switched_pct
                .map(|s| format!(", switched {s:.2}%"))
                .unwrap_or_default()
        )]
    }
}

impl Scored for ResultRow {
    fn ess(&self) -> f64 {
        self.ess as f64
    }
    fn best_prob(&self) -> f64 {
        self.prob as f64
    }
    fn best_class(&self) -> usize {
        self.class as usize
    }
}
