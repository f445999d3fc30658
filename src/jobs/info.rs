//! `emclass info`: a readable summary of a particle dataset — size, images, attributes and,
//! per field, its type, width and range (or number of distinct values for strings).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::dataset::{ColumnData, Dataset};
use crate::error::Result;

/// Prints the summary of the dataset at `path` on stdout.
pub fn run(path: &Path) -> Result<()> {
    let ds = Dataset::open(path)?;
    print!("{}", summary(&ds));
    Ok(())
}

/// The summary text.
pub fn summary(ds: &Dataset) -> String {
    let t = ds.table();
    let mut s = String::new();
    let _ = writeln!(s, "dataset   {}", ds.path().display());
    let _ = writeln!(s, "particles {}", t.len());
    let _ = writeln!(
        s,
        "images    {} × {} px at {} Å/px, {:?}, in {}",
        ds.box_px(),
        ds.box_px(),
        ds.psize_a(),
        ds.image_dtype(),
        ds.images_file().display()
    );
    if let Some(root) = &ds.attrs().blob_root {
        let _ = writeln!(s, "blob_root {root}");
    }
    if !ds.attrs().source.is_empty() {
        let _ = writeln!(s, "source    {}", ds.attrs().source);
    }
    let _ = writeln!(s, "{:<34} {:>6} {:>5}  summary", "field", "type", "width");
    for (name, col) in t.columns() {
        let desc = match &col.data {
            ColumnData::Str(v) => {
                let mut distinct: BTreeMap<&str, usize> = BTreeMap::new();
                for x in v {
                    *distinct.entry(x.as_str()).or_default() += 1;
                }
                let first = distinct.keys().next().copied().unwrap_or("");
                format!("{} distinct, e.g. {first:?}", distinct.len())
            }
            data => {
                let v = data.to_f64().unwrap_or_default();
                if v.is_empty() {
                    "empty".to_string()
                } else {
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                            (a.min(x), b.max(x))
                        });
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    format!("min {lo:.6} max {hi:.6} mean {mean:.6}")
                }
            }
        };
        let _ = writeln!(
            s,
            "{name:<34} {:>6} {:>5}  {desc}",
            col.data.type_name(),
            col.width
        );
    }
    for (field, what) in [("gt/view", "view"), ("gt/state", "state")] {
        if let Some(ColumnData::I32(labels)) = t.get(field).map(|c| &c.data) {
            let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
            for &v in labels {
                *counts.entry(v).or_default() += 1;
            }
            let parts: Vec<String> = counts
                .iter()
                .map(|(v, c)| {
                    if *v < 0 {
                        format!("junk {c}")
                    } else {
                        format!("{what} {v}: {c}")
                    }
                })
                .collect();
            let _ = writeln!(s, "ground truth: {}", parts.join(", "));
        }
    }
    s
}
