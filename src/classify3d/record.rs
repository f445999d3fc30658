//! A 3D classification's fields of the iteration record (summary.json, log): [`Extra`], its
//! log line, and the F-EM convergence criteria that end the run.

use serde::{Deserialize, Serialize};

use super::plan::Plan3d;

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

impl Extra {
    /// The record's log line.
    pub fn describe(&self) -> Vec<String> {
        let res: Vec<f64> = self
            .class_res_a
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect();
        vec![format!(
            "similarity {:.3}{}; assignments {:?}, FSC 0.143 {res:?} Å{}{}",
            self.class_similarity,
            if self.hard_classification {
                ", hard"
            } else {
                ""
            },
            self.class_assignments,
            self.switched_pct
                .map(|s| format!(", switched {s:.2}%"))
                .unwrap_or_default(),
            self.rms_density_change
                .map(|r| format!(", RMS change {r:.4}"))
                .unwrap_or_default()
        )]
    }
}

/// Why an F-EM iteration ends the run, if it does: fewer than `convergence_switch_pct` % of
/// the particles switched class (`switched`, None before the second F-EM iteration), or
/// else the RMS density change `rms` fell below `rms_density_change_threshold`.
pub fn convergence(plan: &Plan3d, switched: Option<f64>, rms: Option<f64>) -> Option<String> {
    let s = switched?;
    if s < plan.convergence_switch_pct {
        return Some(format!(
            "converged: {s:.2}% of particles switched class (< {}%)",
            plan.convergence_switch_pct
        ));
    }
    match (plan.rms_density_change_threshold, rms) {
        (Some(thr), Some(r)) if r < thr => {
            Some(format!("converged: RMS density change {r:.4} (< {thr})"))
        }
        _ => None,
    }
}
