//! What the curation jobs (`subset`, `select2d`, `rebalance2d`) share, on any number of
//! ranks: each rank owns a contiguous block of the input's rows ([`Share`]) and reads it in
//! blocks of [`BLOCK`] rows, so a rank's memory is a few bytes per owned particle plus one
//! block; subsets of the rows are written as datasets that reference the input images and
//! carry every input field, each rank appending its rows in turn ([`write_groups`]); the
//! per-subset counts (and, on simulated data, how many true particles each holds) are summed
//! over ranks.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::comm::{partition, Comm};
use crate::dataset::{Dataset, DatasetAttrs, ParticleTable};
use crate::error::{Error, Result};
use crate::jobs::collective;
use crate::jobs::output::{check_writable, OutputDir};
use crate::jobs::turns::{shared_dir, write_in_turns};

/// Rows read at a time.
pub const BLOCK: usize = 8192;

/// This rank's block of the input's rows.
pub struct Share {
    pub input: PathBuf,
    /// Global rows owned by this rank.
    pub rows: Range<usize>,
    /// Rows in the whole input.
    pub total: usize,
}

impl Share {
    /// Counts the input's rows and takes this rank's block; collective.
    pub fn new(comm: &dyn Comm, input: &Path) -> Result<Share> {
        let total = collective(comm, Dataset::count(input))?;
        Ok(Share {
            input: input.to_path_buf(),
            rows: partition(total, comm.size(), comm.rank()),
            total,
        })
    }

    /// Calls `f(local_rows, block)` for consecutive blocks of this rank's rows (local rows
    /// count from 0 at the rank's first row). Not collective.
    pub fn for_each_block(
        &self,
        mut f: impl FnMut(Range<usize>, &Dataset) -> Result<()>,
    ) -> Result<()> {
        let mut start = self.rows.start;
        while start < self.rows.end {
            let end = (start + BLOCK).min(self.rows.end);
            let block = Dataset::open_range(&self.input, start..end)?;
            f(start - self.rows.start..end - self.rows.start, &block)?;
            start = end;
        }
        Ok(())
    }
}

/// The output folder of a curation job: created by rank 0 (refused before any work if it
/// exists, unless `overwrite`), its staging path on every rank.
pub fn create_output(
    comm: &dyn Comm,
    path: &Path,
    overwrite: bool,
) -> Result<(Option<OutputDir>, PathBuf)> {
    let out = if comm.is_root() {
        collective(
            comm,
            check_writable(path, overwrite)
                .and_then(|_| OutputDir::create(path, overwrite))
                .map(Some),
        )?
    } else {
        collective(comm, Ok(None))?
    };
    let staging = shared_dir(comm, out.as_ref().map(|o| o.path()))?;
    Ok((out, staging))
}

/// One output subset: `<name>.h5`, described by `label`.
#[derive(Clone, Debug)]
pub struct Subset {
    pub name: String,
    pub label: String,
}

impl Subset {
    pub fn new(name: impl Into<String>, label: impl Into<String>) -> Subset {
        Subset {
            name: name.into(),
            label: label.into(),
        }
    }
}

/// Subsets `subset_00 .. subset_{m-1}`, one per label.
pub fn numbered(labels: &[String]) -> Vec<Subset> {
    labels
        .iter()
        .enumerate()
        .map(|(g, l)| Subset::new(format!("subset_{g:02}"), l.clone()))
        .collect()
}

/// The pair `selected` (group 0) / `excluded` (group 1).
pub fn selected_excluded(selected: &str, excluded: &str) -> Vec<Subset> {
    vec![
        Subset::new("selected", selected),
        Subset::new("excluded", excluded),
    ]
}

/// Group of each particle from a keep flag: 0 (`selected`) or 1 (`excluded`).
pub fn keep_groups(keep: &[bool]) -> Vec<u32> {
    keep.iter().map(|&k| u32::from(!k)).collect()
}

/// Writes each subset `s` as `<staging>/<name>.h5` holding the rows whose `group` is `s`
/// (`group[i]` for local row i), in input order, with every input field plus what `decorate`
/// adds to a block's table (it gets the block's local rows; also called once with an empty
/// table and range for the schema). Each rank appends its rows in turn; collective. Returns
/// the per-subset counts for the summary and, on simulated data (`gt/is_junk`), the number
/// of true particles in the groups (the same on every rank; logged by rank 0).
pub fn write_groups(
    comm: &dyn Comm,
    staging: &Path,
    share: &Share,
    subsets: &[Subset],
    group: &[u32],
    decorate: &dyn Fn(&mut ParticleTable, Range<usize>),
    source: &str,
) -> Result<(Value, Option<u64>)> {
    let empty = collective(comm, Dataset::open_range(&share.input, 0..0))?;
    let attrs = DatasetAttrs {
        blob_root: empty.attrs().blob_root.clone(),
        source: source.to_string(),
    };
    let mut schema = empty.table().clone();
    decorate(&mut schema, 0..0);
    drop(empty);
    let paths: Vec<PathBuf> = subsets
        .iter()
        .map(|s| staging.join(format!("{}.h5", s.name)))
        .collect();
    // [rows of subset s, true particles of subset s, rows with truth]
    let m = subsets.len();
    let mut counts = vec![0u64; 2 * m + 1];
    write_in_turns(comm, &paths, &share.input, &schema, &attrs, |apps| {
        share.for_each_block(|local, block| {
            let mut t = block.table().clone();
            decorate(&mut t, local.clone());
            let junk = t.u32("gt/is_junk").map(|j| j.to_vec());
            let mut rows = vec![Vec::new(); m];
            for (i, &g) in group[local].iter().enumerate() {
                if let Some(r) = rows.get_mut(g as usize) {
                    r.push(i);
                }
            }
            for (s, r) in rows.iter().enumerate() {
                counts[s] += r.len() as u64;
                if let Some(j) = &junk {
                    counts[m + s] += r.iter().filter(|&&i| j[i] == 0).count() as u64;
                }
                apps[s].append(&t.select(r))?;
            }
            counts[2 * m] += junk.map_or(0, |j| j.len() as u64);
            Ok(())
        })
    })?;
    comm.all_reduce_sum_u64(&mut counts);
    let has_truth = counts[2 * m] as usize == share.total && share.total > 0;
    let n = share.total.max(1);
    let mut out = Vec::new();
    for (s, sub) in subsets.iter().enumerate() {
        let file = format!("{}.h5", sub.name);
        log::info!(
            "{file}: {} particles ({:.1}%) — {}",
            counts[s],
            100.0 * counts[s] as f64 / n as f64,
            sub.label
        );
        let mut entry = json!({
            "file": file,
            "label": sub.label,
            "num_particles": counts[s],
        });
        if has_truth {
            // Simulated data: how many of this subset's particles are real (not junk).
            entry["num_true_particles"] = json!(counts[m + s]);
        }
        out.push(entry);
    }
    let true_particles = has_truth.then(|| counts[m..2 * m].iter().sum());
    Ok((Value::Array(out), true_particles))
}

/// `<dir>/plots`, created if needed.
pub fn plots_dir(dir: &Path) -> Result<std::path::PathBuf> {
    let p = dir.join("plots");
    std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_groups() {
        let s = numbered(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].name.as_str(), s[2].label.as_str()),
            ("subset_00", "c")
        );
        let p = selected_excluded("kept", "dropped");
        assert_eq!(
            (p[0].name.as_str(), p[1].name.as_str()),
            ("selected", "excluded")
        );
        assert_eq!(keep_groups(&[true, false, true]), [0, 1, 0]);
        assert!(keep_groups(&[]).is_empty());
    }
}
