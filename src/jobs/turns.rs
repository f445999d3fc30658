//! Writing a job's per-particle output from every rank's rows without gathering them: the
//! ranks take turns appending their rows to the same files (see
//! [`crate::dataset::append`]). The output folder must be on a file system every rank sees
//! (as a cluster's scratch or project space is); rank 0 names it.

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::comm::Comm;
use crate::dataset::{AppendTarget, Dataset, DatasetAttrs, ParticleTable, TableAppender};
use crate::em::metrics::adjusted_rand_index_of;
use crate::error::{Error, Result};

use super::collective;

/// Rank 0's `dir` (made absolute) on every rank.
pub fn shared_dir(comm: &dyn Comm, dir: Option<&Path>) -> Result<PathBuf> {
    let mine = match dir {
        Some(d) => std::path::absolute(d).map_err(|e| Error::io(d, e)),
        None => Ok(PathBuf::new()),
    };
    let mut bytes = match collective(comm, mine)? {
        p if comm.is_root() => p.as_os_str().as_bytes().to_vec(),
        _ => Vec::new(),
    };
    comm.broadcast_bytes(0, &mut bytes);
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Writes the datasets `paths` (referencing the images of `input`, with the columns of
/// `schema`): rank 0 creates them, then each rank in rank order opens them and `append`s its
/// rows (to `appenders[i]` for `paths[i]`), then rank 0 commits them. Returns the number of
/// rows of each file. A failure on any rank's turn ends every rank with an error and
/// leaves nothing at `paths`.
pub fn write_in_turns(
    comm: &dyn Comm,
    paths: &[PathBuf],
    input: &Path,
    schema: &ParticleTable,
    attrs: &DatasetAttrs,
    mut append: impl FnMut(&mut [TableAppender]) -> Result<()>,
) -> Result<Vec<usize>> {
    let mut targets: Vec<AppendTarget> = Vec::new();
    let mut written = vec![0u64; paths.len()];
    for turn in 0..comm.size() {
        let mine = if comm.rank() == turn {
            let mut my_turn = || -> Result<()> {
                let mut apps = Vec::with_capacity(paths.len());
                for p in paths {
                    if turn == 0 {
                        let images_from = Dataset::open_range(input, 0..0)?;
                        let (t, a) = TableAppender::create(p, schema, attrs, &images_from)?;
                        targets.push(t);
                        apps.push(a);
                    } else {
                        apps.push(TableAppender::open(p)?);
                    }
                }
                let before: Vec<usize> = apps.iter().map(|a| a.rows()).collect();
                append(&mut apps)?;
                for (i, a) in apps.into_iter().enumerate() {
                    written[i] = (a.close()? - before[i]) as u64;
                }
                Ok(())
            };
            my_turn()
        } else {
            Ok(())
        };
        collective(comm, mine)?;
    }
    comm.all_reduce_sum_u64(&mut written);
    let committed = if comm.is_root() {
        targets
            .into_iter()
            .zip(&written)
            .try_for_each(|(t, &n)| t.commit(n as usize))
    } else {
        Ok(())
    };
    collective(comm, committed)?;
    Ok(written.into_iter().map(|n| n as usize).collect())
}

/// The adjusted Rand index of every rank's (truth, class) pairs, from their contingency
/// counts gathered on rank 0 (a few bytes per (truth, class) cell, not per particle).
/// `None` on other ranks, or when no rank's input carries the truth.
pub fn gathered_ari(
    comm: &dyn Comm,
    pairs: &HashMap<(i64, i64), u64>,
    has_truth: bool,
) -> Option<f64> {
    let mut truth = [u64::from(has_truth)];
    comm.all_reduce_sum_u64(&mut truth);
    let mut mine = Vec::with_capacity(pairs.len() * 24);
    for (&(v, c), &n) in pairs {
        for x in [v as u64, c as u64, n] {
            mine.extend_from_slice(&x.to_le_bytes());
        }
    }
    let parts = comm.gather_bytes(0, &mine)?;
    let mut all: HashMap<(i64, i64), u64> = HashMap::new();
    for p in parts {
        for c in p.chunks_exact(24) {
            let x = |i: usize| u64::from_le_bytes(c[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            *all.entry((x(0) as i64, x(1) as i64)).or_insert(0) += x(2);
        }
    }
    (truth[0] > 0 && !all.is_empty()).then(|| adjusted_rand_index_of(&all))
}
