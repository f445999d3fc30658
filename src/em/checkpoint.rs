//! The one checkpoint codec of the EM jobs: the state of a run between two iterations, for
//! `--resume` on any number of ranks.
//!
//! Two kinds of file, bincode, each written atomically (temporary file, rename) into the
//! output's staging folder:
//! - `checkpoint.bin` (rank 0): the job, its configuration (YAML without `output`), the rank
//!   count and particle count it was made with, the iteration to continue at, the driver's
//!   running statistics, the history (JSON, as records carry the problem's fields) and the
//!   problem's shared state (the model).
//! - `checkpoint.rankRRRR.iterTTT.bin` (each rank): its first global row and the state of
//!   each of its particles (e.g. the latest class probabilities). Named by iteration, so a
//!   kill between the rank files and `checkpoint.bin` leaves a consistent pair: every rank
//!   writes its file, then rank 0 `checkpoint.bin`, then the older rank files go.
//!
//! On resume every rank reads the rank files of the checkpoint's iteration and keeps the
//! rows it now owns: the particle partition may differ from the killed run's.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::comm::{agree, Comm};
use crate::error::{Error, Result};

use super::engine::{Problem, Record, Resume, Snapshot};

/// Format version of both files (3: classify3d's row states carry the log-likelihood; 4:
/// classify2d's noise gains are per coefficient, not per shell).
pub const VERSION: u32 = 4;
/// The shared checkpoint's file name inside the output (staging) folder.
pub const FILE: &str = "checkpoint.bin";

/// A rank's file for the checkpoint that continues at `next_iteration`.
pub fn rank_file(rank: usize, next_iteration: usize) -> String {
    format!("checkpoint.rank{rank:04}.iter{next_iteration:03}.bin")
}

#[derive(Serialize, Deserialize)]
struct SharedFile {
    version: u32,
    job: String,
    config_yaml: String,
    ranks: usize,
    n_total: usize,
    next_iteration: usize,
    running: Option<Vec<f64>>,
    history_json: String,
    shared: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct RankFile {
    version: u32,
    next_iteration: usize,
    first_row: usize,
    rows: usize,
    states: Vec<u8>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::Internal(format!("checkpoint encoding: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], path: &Path) -> Result<T> {
    bincode::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("not a readable emclass checkpoint: {e}")))
}

/// Where and as what a job keeps its checkpoints.
pub struct Keeper<'a> {
    pub dir: &'a Path,
    pub job: &'static str,
    /// The job's configuration without `output`: a resumed run must match it.
    pub config_yaml: &'a str,
    pub n_total: usize,
    /// This rank's global rows.
    pub rows: Range<usize>,
}

impl Keeper<'_> {
    /// Writes the checkpoint of `snap`: every rank its rows' states, then rank 0 the shared
    /// file, then each rank removes its older files (rank 0 also those of ranks beyond the
    /// current count, left by a run resumed on fewer ranks).
    pub fn write<P: Problem>(&self, comm: &dyn Comm, snap: &Snapshot<P>) -> Result<()> {
        let next = snap.next_iteration;
        let mine = (|| {
            let states = snap.problem.row_states();
            if states.len() != self.rows.len() {
                return Err(Error::Internal(format!(
                    "{} row states for {} rows",
                    states.len(),
                    self.rows.len()
                )));
            }
            let file = RankFile {
                version: VERSION,
                next_iteration: next,
                first_row: self.rows.start,
                rows: self.rows.len(),
                states: encode(&states)?,
            };
            crate::paths::write_atomic(
                &self.dir.join(rank_file(comm.rank(), next)),
                &encode(&file)?,
            )
        })();
        agree(comm, mine)?;
        let shared = if comm.is_root() {
            (|| {
                let f = SharedFile {
                    version: VERSION,
                    job: self.job.to_string(),
                    config_yaml: self.config_yaml.to_string(),
                    ranks: comm.size(),
                    n_total: self.n_total,
                    next_iteration: next,
                    running: snap.running.map(|r| r.as_slice().to_vec()),
                    history_json: serde_json::to_string(snap.history)
                        .map_err(|e| Error::Internal(format!("checkpoint history: {e}")))?,
                    shared: encode(&snap.problem.shared_state())?,
                };
                crate::paths::write_atomic(&self.dir.join(FILE), &encode(&f)?)
            })()
        } else {
            Ok(())
        };
        agree(comm, shared)?;
        for (rank, iter, path) in rank_files(self.dir) {
            let own = rank == comm.rank() || (comm.is_root() && rank >= comm.size());
            if own && iter < next {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Decodes the shared checkpoint `bytes` (read from `dir/checkpoint.bin` by rank 0 and
    /// sent to every rank) and reads this rank's row states from the rank files.
    pub fn read<P: Problem>(&self, bytes: &[u8]) -> Result<Resume<P>> {
        let path = self.dir.join(FILE);
        let f: SharedFile = decode(bytes, &path)?;
        if f.version != VERSION {
            return Err(Error::file(
                &path,
                format!(
                    "checkpoint version {} (this emclass reads {VERSION})",
                    f.version
                ),
            ));
        }
        if f.job != self.job {
            return Err(Error::Checkpoint(format!(
                "{} holds a {} checkpoint, not {}",
                self.dir.display(),
                f.job,
                self.job
            )));
        }
        if f.config_yaml != self.config_yaml {
            return Err(Error::file(
                self.dir,
                "the checkpoint was made with another configuration (apart from output); resume with the same config and --set values",
            ));
        }
        if f.n_total != self.n_total {
            return Err(Error::Checkpoint(format!(
                "the checkpoint in {} has {} particles, the input {}",
                self.dir.display(),
                f.n_total,
                self.n_total
            )));
        }
        let history: Vec<Record<P::Extra>> = serde_json::from_str(&f.history_json)
            .map_err(|e| Error::file(&path, format!("history: {e}")))?;
        let shared: P::Shared = decode(&f.shared, &path)?;
        let rows = self.read_rows::<P>(f.next_iteration, f.ranks)?;
        Ok(Resume {
            next_iteration: f.next_iteration,
            running: f.running,
            history,
            shared,
            rows,
        })
    }

    /// This rank's row states from the rank files of `ranks` ranks at `next`.
    fn read_rows<P: Problem>(&self, next: usize, ranks: usize) -> Result<Vec<P::RowState>> {
        let want = &self.rows;
        let mut out: Vec<Option<P::RowState>> = vec![None; want.len()];
        for r in 0..ranks {
            let path = self.dir.join(rank_file(r, next));
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let f: RankFile = decode(&bytes, &path)?;
            let theirs = f.first_row..f.first_row + f.rows;
            if f.version != VERSION || f.next_iteration != next {
                return Err(Error::file(&path, "belongs to another checkpoint"));
            }
            if theirs.end <= want.start || theirs.start >= want.end {
                continue;
            }
            let states: Vec<P::RowState> = decode(&f.states, &path)?;
            if states.len() != f.rows {
                return Err(Error::file(&path, "row count does not match its states"));
            }
            for g in theirs.start.max(want.start)..theirs.end.min(want.end) {
                out[g - want.start] = Some(states[g - theirs.start].clone());
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "no rank file of {} holds row {}",
                        self.dir.display(),
                        want.start + i
                    ))
                })
            })
            .collect()
    }
}

/// Every rank file in `dir`: (rank, iteration, path).
fn rank_files(dir: &Path) -> Vec<(usize, usize, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        let rest = name.strip_prefix("checkpoint.rank")?.strip_suffix(".bin")?;
        let (r, i) = rest.split_once(".iter")?;
        Some((r.parse().ok()?, i.parse().ok()?, e.path()))
    })
    .collect()
}

/// Removes every checkpoint file of `dir` (a finished run keeps none).
pub fn remove_all(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
    for (_, _, p) in rank_files(dir) {
        let _ = std::fs::remove_file(p);
    }
}
