//! What a 3D classification keeps in a checkpoint ([`crate::em::checkpoint`]): the model
//! ([`Shared`], the same on every rank) and each particle's latest result ([`RowState`]),
//! and their conversion from and back into the running [`Classify3d`]. The serde field
//! names are the checkpoint format: renaming one breaks the resumption of older runs.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::engine::Classify3d;
use super::model::ClassVolume;
use super::state::Row;

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
    pub log_likelihood: f32,
    pub prev_fem: u32,
}

impl Classify3d<'_> {
    /// Takes the classes, noise model, class weights, flows and the local rows' results
    /// (and previous F-EM classes) from a checkpoint; `self.results` is already sized.
    pub(super) fn restore_checkpoint(&mut self, s: Shared, rows: Vec<RowState>) -> Result<()> {
        let k = self.plan.num_classes;
        let g = self.grid.n;
        let vol = |v: &Vec<f32>| {
            Array3::from_shape_vec((g, g, g), v.clone())
                .map_err(|e| Error::Checkpoint(format!("class volume shape: {e}")))
        };
        self.classes = (0..s.vols.len())
            .map(|c| {
                Ok(ClassVolume {
                    vol: vol(&s.vols[c][0])?,
                    fsc: s.fsc[c].clone(),
                    halves: [vol(&s.vols[c][1])?, vol(&s.vols[c][2])?],
                    res_a: s.res_a[c],
                })
            })
            .collect::<Result<_>>()?;
        self.sigma2 = s.sigma2;
        self.weights = s.weights;
        self.flows = s.flows;
        let mut prev = Vec::with_capacity(rows.len());
        for (l, r) in rows.into_iter().enumerate() {
            if r.probs.len() != k {
                return Err(Error::Checkpoint(format!(
                    "row state of {} classes",
                    r.probs.len()
                )));
            }
            prev.push(r.prev_fem);
            let row = Row {
                probs: r.probs,
                class: r.class,
                posterior: r.posterior,
                ess: r.ess,
                log_likelihood: r.log_likelihood,
            };
            self.results.store(l, &row);
        }
        self.prev_fem = s.has_prev_fem.then_some(prev);
        Ok(())
    }

    /// The model for a checkpoint.
    pub(super) fn checkpoint_model(&self) -> Shared {
        let flat = |a: &Array3<f32>| a.iter().copied().collect::<Vec<f32>>();
        Shared {
            vols: self
                .classes
                .iter()
                .map(|c| [flat(&c.vol), flat(&c.halves[0]), flat(&c.halves[1])])
                .collect(),
            fsc: self.classes.iter().map(|c| c.fsc.clone()).collect(),
            res_a: self.classes.iter().map(|c| c.res_a).collect(),
            sigma2: self.sigma2.clone(),
            weights: self.weights.clone(),
            flows: self.flows.clone(),
            has_prev_fem: self.prev_fem.is_some(),
        }
    }

    /// The local rows for a checkpoint.
    pub(super) fn checkpoint_rows(&self) -> Vec<RowState> {
        let r = &self.results;
        let k = r.k;
        (0..r.class.len())
            .map(|l| RowState {
                probs: r.probs[l * k..(l + 1) * k].to_vec(),
                class: r.class[l],
                posterior: r.class_posterior[l],
                ess: r.class_ess[l],
                log_likelihood: r.log_likelihood[l],
                prev_fem: self.prev_fem.as_ref().map_or(0, |p| p[l]),
            })
            .collect()
    }
}
