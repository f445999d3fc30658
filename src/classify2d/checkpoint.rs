//! The state of a 2D classification between two iterations: everything the next iteration
//! reads (class averages and their diagnostics, the running sufficient statistics, the noise
//! model, the alignment limit, the iteration index) plus the history for the summary. The
//! online-EM batches and the learning-rate and ICUF schedules are functions of the seed and
//! the iteration index, so they need no state; per-particle results are rewritten by the
//! final pass over all particles, so they need none either. The state is the same on every
//! rank, so rank 0 writes it and a resumed run may use another number of ranks.
//!
//! File: `checkpoint.bin` in the output's staging folder, bincode of [`Checkpoint`], written
//! to a temporary name and renamed (a kill leaves the previous checkpoint or the new one,
//! never half of one). Floats are stored bit for bit, so a resumed run computes exactly what
//! the uninterrupted run computes.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::engine::IterationRecord;
use super::model::ClassUpdate;
use crate::error::{Error, Result};

/// Format version of `checkpoint.bin`.
pub const VERSION: u32 = 1;
/// The checkpoint's file name inside the output (staging) folder.
pub const FILE: &str = "checkpoint.bin";

/// Everything needed to continue at iteration `next_iteration`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// The job's configuration (YAML, without `output`): a resumed run must match it.
    pub config_yaml: String,
    pub next_iteration: usize,
    /// Alignment limit (shell) for the next iteration.
    pub k_hi: usize,
    /// Class averages, `n × n` each, row-major.
    pub box_px: usize,
    pub images: Vec<Vec<f32>>,
    pub frc: Vec<Vec<f64>>,
    pub counts: Vec<f64>,
    pub noise_gain: Vec<Vec<f64>>,
    /// The running (online-blended) sufficient statistics, flat.
    pub running: Option<Vec<f64>>,
    pub sigma2_init: Vec<f64>,
    pub sigma2_current: Vec<f64>,
    pub history: Vec<IterationRecord>,
}

impl Checkpoint {
    /// The class averages and diagnostics as the engine holds them.
    pub fn classes(&self) -> Result<ClassUpdate> {
        let n = self.box_px;
        let images = self
            .images
            .iter()
            .map(|v| Array2::from_shape_vec((n, n), v.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Usage(format!("checkpoint: class image shape: {e}")))?;
        Ok(ClassUpdate {
            images,
            frc: self.frc.clone(),
            counts: self.counts.clone(),
            noise_gain: self.noise_gain.clone(),
        })
    }

    /// Serialised bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        bincode::serialize(self).map_err(|e| Error::Usage(format!("checkpoint: {e}")))
    }

    /// From bytes read from `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let c: Checkpoint = bincode::deserialize(bytes)
            .map_err(|e| Error::file(path, format!("not a readable emclass checkpoint: {e}")))?;
        if c.version != VERSION {
            return Err(Error::file(
                path,
                format!(
                    "checkpoint version {} (this emclass reads {VERSION})",
                    c.version
                ),
            ));
        }
        Ok(c)
    }

    /// Writes `dir/checkpoint.bin` atomically (temporary file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::paths::write_atomic(&dir.join(FILE), &self.to_bytes()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_for_bit_and_rejects_garbage() {
        let c = Checkpoint {
            version: VERSION,
            config_yaml: "num_classes: 2\n".into(),
            next_iteration: 3,
            k_hi: 7,
            box_px: 2,
            images: vec![vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5], vec![0.1; 4]],
            frc: vec![vec![1.0, f64::NAN]; 2],
            counts: vec![1.5, 2.5],
            noise_gain: vec![vec![0.25]; 2],
            running: Some(vec![0.1, 1e-300, -2.0]),
            sigma2_init: vec![1.0],
            sigma2_current: vec![0.9],
            history: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        c.write(dir.path()).unwrap();
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        let back = Checkpoint::from_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.to_bytes().unwrap(), c.to_bytes().unwrap());
        assert_eq!(back.classes().unwrap().images[0][[1, 0]], f32::MIN_POSITIVE);
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        let e = Checkpoint::from_bytes(&bytes[..10], Path::new("ck.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ck.bin") && e.contains("checkpoint"), "{e}");
    }
}
