//! What the curation jobs (`subset`, `select2d`, `rebalance2d`) share: writing subsets of
//! the input's rows as datasets that reference the input images and carry every input field,
//! the per-subset counts (and, on simulated data, how many true particles each holds), and
//! the closing `summary.json` + `config.used.yaml` of the output folder.

use std::path::Path;

use serde_json::{json, Value};

use crate::dataset::store::write_referencing;
use crate::dataset::{Dataset, DatasetAttrs, ParticleTable};
use crate::error::{Error, Result};

/// One output subset: `<name>.h5` holding `rows` of the input, described by `label`.
#[derive(Clone, Debug)]
pub struct Subset {
    pub name: String,
    pub label: String,
    pub rows: Vec<usize>,
}

impl Subset {
    pub fn new(name: impl Into<String>, label: impl Into<String>, rows: Vec<usize>) -> Subset {
        Subset {
            name: name.into(),
            label: label.into(),
            rows,
        }
    }
}

/// Subsets `subset_00 .. subset_{m-1}` from a group index per particle (groups 0..m).
pub fn subsets_by_group(group: &[usize], labels: &[String]) -> Vec<Subset> {
    let mut rows = vec![Vec::new(); labels.len()];
    for (i, &g) in group.iter().enumerate() {
        rows[g].push(i);
    }
    rows.into_iter()
        .zip(labels)
        .enumerate()
        .map(|(g, (r, l))| Subset::new(format!("subset_{g:02}"), l.clone(), r))
        .collect()
}

/// The pair `selected` / `excluded` from a keep flag per particle.
pub fn selected_excluded(keep: &[bool], selected: &str, excluded: &str) -> Vec<Subset> {
    let (s, e): (Vec<usize>, Vec<usize>) = (0..keep.len()).partition(|&i| keep[i]);
    vec![
        Subset::new("selected", selected, s),
        Subset::new("excluded", excluded, e),
    ]
}

/// Writes each subset as `<dir>/<name>.h5` (rows of `table`, images referenced from
/// `input`), logs the counts and returns them for the summary. `table` is the input's table,
/// possibly with fields the job added.
pub fn write_subsets(
    dir: &Path,
    input: &Dataset,
    table: &ParticleTable,
    subsets: &[Subset],
    source: &str,
) -> Result<Value> {
    let attrs = DatasetAttrs {
        blob_root: input.attrs().blob_root.clone(),
        source: source.to_string(),
    };
    let junk = table.u32("gt/is_junk");
    let n = table.len().max(1);
    let mut out = Vec::new();
    for s in subsets {
        let file = format!("{}.h5", s.name);
        write_referencing(&dir.join(&file), &table.select(&s.rows), &attrs, input)?;
        log::info!(
            "{file}: {} particles ({:.1}%) — {}",
            s.rows.len(),
            100.0 * s.rows.len() as f64 / n as f64,
            s.label
        );
        let mut entry = json!({
            "file": file,
            "label": s.label,
            "num_particles": s.rows.len(),
        });
        if let Some(j) = junk {
            // Simulated data: how many of this subset's particles are real (not junk).
            entry["num_true_particles"] = json!(s.rows.iter().filter(|&&i| j[i] == 0).count());
        }
        out.push(entry);
    }
    Ok(Value::Array(out))
}

/// Number of non-junk particles in a simulated dataset (`gt/is_junk`), if it has the field.
pub fn true_particle_count(table: &ParticleTable) -> Option<usize> {
    table
        .u32("gt/is_junk")
        .map(|j| j.iter().filter(|&&x| x == 0).count())
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
    fn groups_and_pairs() {
        let s = subsets_by_group(&[1, 0, 1, 2], &["a".into(), "b".into(), "c".into()]);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].name.as_str(), s[0].rows.clone()),
            ("subset_00", vec![1])
        );
        assert_eq!(s[1].rows, vec![0, 2]);
        assert_eq!(s[2].rows, vec![3]);
        let p = selected_excluded(&[true, false, true], "kept", "dropped");
        assert_eq!(p[0].rows, vec![0, 2]);
        assert_eq!(p[1].rows, vec![1]);
        let e = selected_excluded(&[], "kept", "dropped");
        assert!(e[0].rows.is_empty() && e[1].rows.is_empty());
    }
}
