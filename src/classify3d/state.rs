//! What a 3D classification keeps per particle: the result of one iteration ([`Row`]) and
//! the latest result of every local row ([`Results`]). What it keeps in a checkpoint is in
//! [`super::checkpoint`], its fields of the iteration record in [`super::record`].

use crate::em::engine::Scored;
use crate::em::responsibilities::Responsibilities;

/// Per-particle results of the last iteration that saw the particle (local rows).
#[derive(Clone, Debug)]
pub struct Results {
    pub k: usize,
    /// `len × K` class probabilities.
    pub probs: Vec<f32>,
    pub class: Vec<u32>,
    pub class_posterior: Vec<f32>,
    pub class_ess: Vec<f32>,
    pub log_likelihood: Vec<f32>,
}

impl Results {
    pub fn new(n: usize, k: usize) -> Results {
        Results {
            k,
            probs: vec![0.0; n * k],
            class: vec![0; n],
            class_posterior: vec![0.0; n],
            class_ess: vec![0.0; n],
            log_likelihood: vec![0.0; n],
        }
    }

    /// Keeps `row` as the result of local row `l`.
    pub fn store(&mut self, l: usize, row: &Row) {
        let k = self.k;
        self.class[l] = row.class;
        self.class_posterior[l] = row.posterior;
        self.class_ess[l] = row.ess;
        self.log_likelihood[l] = row.log_likelihood;
        self.probs[l * k..(l + 1) * k].copy_from_slice(&row.probs);
    }
}

/// One particle's result of an iteration.
pub struct Row {
    pub probs: Vec<f32>,
    pub class: u32,
    pub posterior: f32,
    pub ess: f32,
    /// ln Σ_k π_k exp(LL_ik): the particle's log-likelihood under the mixture, LL_ik the
    /// residual log-likelihood of `super::estep` (without the Gaussian normalisation, a
    /// constant of the iteration); RELION's `_rlnLogLikeliContribution`.
    pub log_likelihood: f32,
}

impl Row {
    /// The rows of a block's responsibilities over `k` classes, each with its particle's
    /// index `idx[j]`: the soft posterior, its best-class probability and ESS, also in a
    /// hard pass, where `class` is the hard assignment.
    pub fn of_block(resp: &Responsibilities, idx: &[usize], k: usize) -> Vec<(usize, Row)> {
        let probs = resp.posterior();
        (0..idx.len())
            .map(|j| {
                let row = Row {
                    probs: (0..k).map(|c| probs[[j, c]] as f32).collect(),
                    class: resp.best_class()[j] as u32,
                    posterior: resp.best_prob()[j] as f32,
                    ess: resp.ess()[j] as f32,
                    log_likelihood: resp.log_evidence()[j] as f32,
                };
                (idx[j], row)
            })
            .collect()
    }
}

impl Scored for Row {
    fn ess(&self) -> f64 {
        self.ess as f64
    }
    fn best_prob(&self) -> f64 {
        self.posterior as f64
    }
    fn best_class(&self) -> usize {
        self.class as usize
    }
}
