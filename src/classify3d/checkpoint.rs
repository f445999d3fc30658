//! The state of a 3D classification between two iterations, for `--resume`.
//!
//! Two parts, both bincode, both written atomically (temporary file, fsync, rename) into
//! the output's staging folder:
//! - `checkpoint.bin` (rank 0; the same on every rank): class volumes with their half maps
//!   and FSC, the noise model, class weights, the driver's running statistics, history and
//!   class flows, and the iteration to continue at.
//! - `checkpoint.rankRRRR.iterTTT.bin` (each rank): its particles' latest results and its
//!   previous F-EM assignment (for the class flow). Named by iteration, so a kill between
//!   the rank files and `checkpoint.bin` leaves a consistent pair: the job writes every rank
//!   file, then `checkpoint.bin`, then removes the older rank files.
//!
//! What is not stored is recomputed exactly on resume: the consensus, solvent mask, and
//! per-particle scales come from the particles as in the first run, and batches and
//! schedules are functions of the seed and iteration. A resumed run needs the same number
//! of ranks (the rank files hold each rank's rows).

use std::path::Path;

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::engine::{IterationRecord, Results};
use super::model::ClassVolume;
use crate::error::{Error, Result};

/// Format version of both files.
pub const VERSION: u32 = 1;
/// The shared checkpoint's file name inside the output (staging) folder.
pub const FILE: &str = "checkpoint.bin";

/// A rank's file for the checkpoint that continues at `next_iteration`.
pub fn rank_file(rank: usize, next_iteration: usize) -> String {
    format!("checkpoint.rank{rank:04}.iter{next_iteration:03}.bin")
}

/// Class volumes flattened: (volume and half maps per class, FSC per class, resolutions).
pub type FlatVolumes = (Vec<[Vec<f32>; 3]>, Vec<Vec<f64>>, Vec<f64>);

/// The state shared by every rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shared {
    pub version: u32,
    /// The job's configuration (YAML, without `output`): a resumed run must match it.
    pub config_yaml: String,
    pub ranks: usize,
    pub next_iteration: usize,
    /// Volume side, voxels.
    pub n: usize,
    /// Per class: volume, half maps A and B (flat, `n³` each), FSC, resolution.
    pub vols: Vec<[Vec<f32>; 3]>,
    pub fsc: Vec<Vec<f64>>,
    pub res_a: Vec<f64>,
    pub sigma2: Vec<f64>,
    pub weights: Vec<f64>,
    pub running: Option<Vec<f64>>,
    pub history: Vec<IterationRecord>,
    pub flows: Vec<(usize, Vec<Vec<u64>>)>,
}

/// One rank's part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankState {
    pub version: u32,
    pub rank: usize,
    pub next_iteration: usize,
    pub k: usize,
    pub probs: Vec<f32>,
    pub class: Vec<u32>,
    pub class_posterior: Vec<f32>,
    pub class_ess: Vec<f32>,
    pub prev_fem: Option<Vec<u32>>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::Usage(format!("checkpoint: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path) -> Result<T> {
    bincode::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("not a readable emclass checkpoint: {e}")))
}

fn check_version(v: u32, path: &Path) -> Result<()> {
    if v == VERSION {
        Ok(())
    } else {
        Err(Error::file(
            path,
            format!("checkpoint version {v} (this emclass reads {VERSION})"),
        ))
    }
}

impl Shared {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self)
    }
    /// From bytes read from `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Shared> {
        let s: Shared = decode(bytes, path)?;
        check_version(s.version, path)?;
        Ok(s)
    }
    /// Writes `dir/checkpoint.bin` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::paths::write_atomic(&dir.join(FILE), &self.to_bytes()?)
    }
    /// Flattens the class volumes.
    pub fn volumes_of(classes: &[ClassVolume]) -> FlatVolumes {
        let flat = |a: &Array3<f32>| a.iter().copied().collect::<Vec<f32>>();
        (
            classes
                .iter()
                .map(|c| [flat(&c.vol), flat(&c.halves[0]), flat(&c.halves[1])])
                .collect(),
            classes.iter().map(|c| c.fsc.clone()).collect(),
            classes.iter().map(|c| c.res_a).collect(),
        )
    }
    /// The class volumes as the engine holds them.
    pub fn classes(&self) -> Result<Vec<ClassVolume>> {
        let n = self.n;
        let shape = |v: &Vec<f32>| {
            Array3::from_shape_vec((n, n, n), v.clone())
                .map_err(|e| Error::Usage(format!("checkpoint: volume shape: {e}")))
        };
        self.vols
            .iter()
            .zip(&self.fsc)
            .zip(&self.res_a)
            .map(|((v, f), r)| {
                Ok(ClassVolume {
                    vol: shape(&v[0])?,
                    halves: [shape(&v[1])?, shape(&v[2])?],
                    fsc: f.clone(),
                    res_a: *r,
                })
            })
            .collect()
    }
}

impl RankState {
    /// This rank's results as a checkpoint part.
    pub fn of(
        rank: usize,
        next_iteration: usize,
        r: &Results,
        prev_fem: Option<&Vec<u32>>,
    ) -> Self {
        RankState {
            version: VERSION,
            rank,
            next_iteration,
            k: r.k,
            probs: r.probs.clone(),
            class: r.class.clone(),
            class_posterior: r.class_posterior.clone(),
            class_ess: r.class_ess.clone(),
            prev_fem: prev_fem.cloned(),
        }
    }
    /// The results held.
    pub fn results(&self) -> Results {
        Results {
            k: self.k,
            probs: self.probs.clone(),
            class: self.class.clone(),
            class_posterior: self.class_posterior.clone(),
            class_ess: self.class_ess.clone(),
        }
    }
    /// Writes `dir/checkpoint.rankRRRR.iterTTT.bin` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(rank_file(self.rank, self.next_iteration));
        crate::paths::write_atomic(&path, &encode(self)?)
    }
    /// Reads rank `rank`'s part of the checkpoint that continues at `next_iteration`.
    pub fn read(dir: &Path, rank: usize, next_iteration: usize) -> Result<RankState> {
        let path = dir.join(rank_file(rank, next_iteration));
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let s: RankState = decode(&bytes, &path)?;
        check_version(s.version, &path)?;
        if s.rank != rank || s.next_iteration != next_iteration {
            return Err(Error::file(&path, "belongs to another rank or iteration"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parts_round_trip_bit_for_bit() {
        let n = 2;
        let vol = Array3::from_shape_fn((n, n, n), |(a, b, c)| (a * 4 + b * 2 + c) as f32 * 0.1);
        let cls = vec![ClassVolume {
            vol: vol.clone(),
            fsc: vec![1.0, 0.5],
            halves: [vol.mapv(|v| -v), vol.mapv(|v| v + f32::MIN_POSITIVE)],
            res_a: 12.5,
        }];
        let (vols, fsc, res_a) = Shared::volumes_of(&cls);
        let s = Shared {
            version: VERSION,
            config_yaml: "num_classes: 1\n".into(),
            ranks: 2,
            next_iteration: 4,
            n,
            vols,
            fsc,
            res_a,
            sigma2: vec![1e-300, 2.0],
            weights: vec![3.0],
            running: Some(vec![0.25, -0.0]),
            history: Vec::new(),
            flows: vec![(3, vec![vec![5]])],
        };
        let dir = tempfile::tempdir().unwrap();
        s.write(dir.path()).unwrap();
        let back = Shared::from_bytes(
            &std::fs::read(dir.path().join(FILE)).unwrap(),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(back, s);
        let c = back.classes().unwrap();
        assert_eq!(c[0].halves[1], cls[0].halves[1]);
        let r = Results {
            k: 1,
            probs: vec![1.0, 1.0],
            class: vec![0, 0],
            class_posterior: vec![1.0, 0.9],
            class_ess: vec![1.0, 1.1],
        };
        let st = RankState::of(1, 4, &r, Some(&vec![0, 0]));
        st.write(dir.path()).unwrap();
        assert!(dir.path().join("checkpoint.rank0001.iter004.bin").exists());
        assert_eq!(RankState::read(dir.path(), 1, 4).unwrap(), st);
        assert!(RankState::read(dir.path(), 0, 4).is_err());
        let e = Shared::from_bytes(b"junk", Path::new("ck.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ck.bin"), "{e}");
    }
}
