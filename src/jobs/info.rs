//! `emclass info`: a readable summary of a particle dataset — size, images, attributes and,
//! per field, its type, width and range (or number of distinct values for strings).
//!
//! Identifier fields (`uid`, names ending in `_uid`, `gt/duplicate_of` and any other u64
//! field but `blob/image_row`) are summarised as identifiers, not numbers: how many distinct
//! values, how many rows hold the u64::MAX "none" sentinel, the first few distinct values in
//! hex and,
//! for fields other than `uid`, how many rows hold their own row's uid. A mean of 64-bit
//! hashes means nothing, and f64 cannot even show them exactly.

use std::collections::{BTreeMap, HashSet};
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
    let _ = writeln!(
        s,
        "{:<34} {:>6} {:>5}  {}",
        "uid",
        "u64",
        1,
        id_summary(t.uid(), None)
    );
    for (name, col) in t.columns() {
        let ids = match &col.data {
            ColumnData::U64(v) if is_id_field(name, &col.data) => Some(v.clone()),
            ColumnData::U32(v) if is_id_field(name, &col.data) => {
                Some(v.iter().map(|&x| u64::from(x)).collect())
            }
            _ => None,
        };
        let own = (col.width == 1).then(|| t.uid());
        let desc = match (&col.data, ids) {
            (_, Some(v)) => id_summary(&v, own),
            (data, None) => match data {
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
            },
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

/// Values a u64 identifier field holds for "none" (no duplicate, unknown micrograph).
const NONE_ID: u64 = u64::MAX;

/// Whether `name` holds identifiers rather than quantities: `uid`, `…_uid`, `…/uid`,
/// `gt/duplicate_of` (any integer type), or any other u64 field except `blob/image_row`
/// (a row index, whose range is what matters).
pub fn is_id_field(name: &str, data: &ColumnData) -> bool {
    let id_name = name == "uid"
        || name.ends_with("_uid")
        || name.ends_with("/uid")
        || name == "gt/duplicate_of";
    match data {
        ColumnData::U64(_) => id_name || name != "blob/image_row",
        ColumnData::U32(_) | ColumnData::I32(_) => id_name,
        _ => false,
    }
}

/// "N distinct (…), M none (u64::MAX), e.g. 0x…, 0x…, 0x…[; K own uid]" for identifier
/// values `v`; `own` (the table's uids, for a one-value-per-row field) adds how many rows
/// hold their own uid (for `gt/duplicate_of`: the rows that are not duplicates).
pub fn id_summary(v: &[u64], own: Option<&[u64]>) -> String {
    if v.is_empty() {
        return "empty".to_string();
    }
    let distinct: HashSet<u64> = v.iter().copied().collect();
    let none = v.iter().filter(|&&x| x == NONE_ID).count();
    let mut out = if distinct.len() == v.len() {
        format!("{} distinct (all different)", distinct.len())
    } else {
        format!(
            "{} distinct in {} values ({} repeats)",
            distinct.len(),
            v.len(),
            v.len() - distinct.len()
        )
    };
    if none > 0 {
        let _ = write!(out, ", {none} none (u64::MAX)");
    }
    // The first few distinct values, in row order.
    let mut shown = Vec::new();
    let mut seen = HashSet::new();
    for &x in v {
        if shown.len() == 3 {
            break;
        }
        if seen.insert(x) {
            shown.push(format!("{x:#018x}"));
        }
    }
    let _ = write!(out, ", e.g. {}", shown.join(", "));
    if distinct.len() > shown.len() {
        out.push_str(", …");
    }
    if let Some(uids) = own.filter(|u| u.len() == v.len() && !std::ptr::eq(*u, v)) {
        let same = uids.iter().zip(v).filter(|(a, b)| a == b).count();
        if same > 0 {
            let _ = write!(out, "; {same} rows hold their own uid");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_fields_are_counted_not_averaged() {
        assert!(is_id_field("uid", &ColumnData::U64(vec![])));
        assert!(is_id_field(
            "location/micrograph_uid",
            &ColumnData::U64(vec![])
        ));
        assert!(is_id_field("gt/duplicate_of", &ColumnData::U64(vec![])));
        assert!(is_id_field("x/some_u64", &ColumnData::U64(vec![])));
        assert!(is_id_field("x/exposure_uid", &ColumnData::U32(vec![])));
        assert!(!is_id_field("blob/image_row", &ColumnData::U64(vec![])));
        assert!(!is_id_field("ctf/exp_group_id", &ColumnData::U32(vec![])));
        assert!(!is_id_field("ctf/df1_A", &ColumnData::F32(vec![])));

        let uid = [0xdead_beef_0000_0001u64, 2, 3, 4, 5];
        let s = id_summary(&uid, None);
        assert_eq!(
            s,
            "5 distinct (all different), e.g. 0xdeadbeef00000001, 0x0000000000000002, \
             0x0000000000000003, …"
        );
        // Duplicate-of: rows 0, 2, 3 and 4 are originals (their own uid), row 1 a copy of
        // row 0; u64::MAX counted as "none".
        let of = [uid[0], uid[0], 3, 4, u64::MAX];
        let s = id_summary(&of, Some(&uid));
        assert!(
            s.starts_with("4 distinct in 5 values (1 repeats), 1 none (u64::MAX)"),
            "{s}"
        );
        assert!(s.ends_with("; 3 rows hold their own uid"), "{s}");
        // Examples are distinct values.
        assert!(
            s.contains("e.g. 0xdeadbeef00000001, 0x0000000000000003, 0x0000000000000004, …"),
            "{s}"
        );
        assert!(!s.contains("mean") && !s.contains("min"), "{s}");
        assert_eq!(id_summary(&[], None), "empty");
    }
}
