//! CryoSPARC's per-class 3D fields ↔ emclass's one class-probability column.
//!
//! CryoSPARC's Heterogeneous Refinement and 3D Classification write, for each particle and
//! each class N = 0..K−1, a group `alignments_class_N/` of alignments3D fields; its
//! `alignments_class_N/class_posterior` (f4) is the probability that the particle belongs to
//! class N (`alignments3D/class` and `alignments3D/class_posterior` hold the best class and
//! its probability). emclass keeps all K probabilities in one column,
//! `alignments3D/class_probs` (f32 × K, as `emclass classify3d` writes it and `emclass
//! subset` with `mode: class_probability_3d` reads it).
//!
//! - [`gather_class_probs`] (import): the K `alignments_class_N/class_posterior` fields
//!   become column N of `alignments3D/class_probs` and are removed from the table. The
//!   classes must be numbered 0..K−1 without gaps (N in decimal without leading zeros, as
//!   CryoSPARC writes it; other names are ordinary fields). The other `alignments_class_N/`
//!   fields (pose, shift, class, error, ...) pass through unchanged under their own names.
//! - [`scatter_class_probs`] (export): the inverse; column N of `alignments3D/class_probs`
//!   becomes `alignments_class_N/class_posterior` and `alignments3D/class_probs` is left out
//!   of the `.cs` file. Together the two are exact: values and element type (f4, or f8 when
//!   any posterior was f8) are kept.

use std::path::Path;

use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};

/// Prefix of CryoSPARC's per-class groups (`alignments_class_0/`, `alignments_class_1/`, ...).
pub const CLASS_GROUP_PREFIX: &str = "alignments_class_";
/// The per-class field that holds the probability of the class.
pub const POSTERIOR_FIELD: &str = "class_posterior";
/// emclass's column of all K 3D class probabilities.
pub const CLASS_PROBS_3D: &str = "alignments3D/class_probs";

/// Probabilities may exceed [0, 1] by this much (rounding in the program that wrote them).
const SLACK: f64 = 1e-4;

/// `alignments_class_N/class_posterior`.
pub fn posterior_field(class: usize) -> String {
    format!("{CLASS_GROUP_PREFIX}{class}/{POSTERIOR_FIELD}")
}

/// N of a field named `alignments_class_N/class_posterior` (N decimal, no leading zeros).
fn posterior_class(name: &str) -> Option<usize> {
    let n = name
        .strip_prefix(CLASS_GROUP_PREFIX)?
        .strip_suffix(POSTERIOR_FIELD)?
        .strip_suffix('/')?;
    let canonical =
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    canonical.then(|| n.parse().ok()).flatten()
}

/// Replaces the fields `alignments_class_N/class_posterior` of a table read from the `.cs`
/// file `file` by the column `alignments3D/class_probs` (see the module documentation).
/// Errors, naming `file` and the field: a class missing from 0..K−1, a posterior that is
/// not one floating-point number per particle or is not a probability, and an
/// `alignments3D/class_probs` already in the file that disagrees with the posteriors.
pub fn gather_class_probs(table: &mut ParticleTable, file: &Path) -> Result<()> {
    let mut classes: Vec<(usize, String)> = table
        .names()
        .filter_map(|n| posterior_class(n).map(|k| (k, n.to_string())))
        .collect();
    if classes.is_empty() {
        return Ok(());
    }
    classes.sort_unstable();
    let k = classes.len();
    if let Some(gap) = (0..k).find(|&c| classes[c].0 != c) {
        return Err(Error::field(
            file,
            posterior_field(gap),
            format!(
                "missing, but {} exists (CryoSPARC numbers its {CLASS_GROUP_PREFIX}N groups 0..K-1)",
                classes[gap].1
            ),
        ));
    }
    let columns: Vec<&Column> = classes
        .iter()
        .map(|(_, name)| table.get(name).expect("listed from the table"))
        .collect();
    let any_f64 = columns.iter().any(|c| matches!(c.data, ColumnData::F64(_)));
    let n = table.len();
    let mut probs = vec![0.0f64; n * k];
    for (c, (col, (_, name))) in columns.iter().zip(&classes).enumerate() {
        let values = posterior_values(col, file, name, table.uid())?;
        for (i, v) in values.into_iter().enumerate() {
            probs[i * k + c] = v;
        }
    }
    let data = if any_f64 {
        ColumnData::F64(probs)
    } else {
        // Every posterior was f32 (or f16), so these conversions are exact.
        ColumnData::F32(probs.into_iter().map(|x| x as f32).collect())
    };
    let gathered = Column::new(data, k);
    if let Some(existing) = table.get(CLASS_PROBS_3D) {
        if *existing != gathered {
            return Err(Error::field(
                file,
                CLASS_PROBS_3D,
                format!(
                    "disagrees with the {k} {CLASS_GROUP_PREFIX}N/{POSTERIOR_FIELD} fields of the same file; keep one of them"
                ),
            ));
        }
    }
    for (_, name) in &classes {
        table.remove(name);
    }
    table.set(CLASS_PROBS_3D, gathered);
    Ok(())
}

/// The values of one per-class posterior column: one finite float in [0, 1] per particle.
fn posterior_values(col: &Column, file: &Path, name: &str, uid: &[u64]) -> Result<Vec<f64>> {
    if col.width != 1 {
        return Err(Error::field(
            file,
            name,
            format!("has {} values per particle, expected 1", col.width),
        ));
    }
    let values = match &col.data {
        ColumnData::F32(_) | ColumnData::F64(_) => col.data.to_f64().expect("numeric"),
        other => {
            return Err(Error::field(
                file,
                name,
                format!(
                    "holds {} values; a class posterior is a floating-point number",
                    other.type_name()
                ),
            ))
        }
    };
    if let Some(i) = values
        .iter()
        .position(|p| !(p.is_finite() && *p >= -SLACK && *p <= 1.0 + SLACK))
    {
        return Err(Error::field(
            file,
            name,
            format!(
                "particle row {} (uid {}) has {}, which is not a probability in [0, 1]",
                i + 1,
                uid[i],
                values[i]
            ),
        ));
    }
    Ok(values)
}

/// The inverse of [`gather_class_probs`], for writing a `.cs` file: column N of
/// `alignments3D/class_probs` becomes `alignments_class_N/class_posterior` (replacing a
/// field of that name) and `alignments3D/class_probs` is removed. A table without that
/// column is unchanged. `file` names the dataset in errors (a text column).
pub fn scatter_class_probs(table: &mut ParticleTable, file: &Path) -> Result<()> {
    let Some(col) = table.remove(CLASS_PROBS_3D) else {
        return Ok(());
    };
    let k = col.width;
    let per_class: Vec<ColumnData> = match &col.data {
        ColumnData::F32(v) => (0..k)
            .map(|c| ColumnData::F32(v.iter().skip(c).step_by(k).copied().collect()))
            .collect(),
        ColumnData::Str(_) => {
            return Err(Error::field(
                file,
                CLASS_PROBS_3D,
                "holds text; class probabilities are numbers",
            ))
        }
        other => {
            let v = other.to_f64().expect("numeric");
            (0..k)
                .map(|c| ColumnData::F64(v.iter().skip(c).step_by(k).copied().collect()))
                .collect()
        }
    };
    for (c, data) in per_class.into_iter().enumerate() {
        table.set(&posterior_field(c), Column::scalar(data));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "J12/particles.cs";

    /// A table as read from a CryoSPARC 3D classification `.cs` file with `k` classes.
    fn cryosparc_table(probs: &[&[f32]]) -> ParticleTable {
        let n = probs.len();
        let k = probs[0].len();
        let mut t = ParticleTable::new((0..n as u64).map(|u| 100 + u).collect());
        for c in 0..k {
            t.set_f32(
                &posterior_field(c),
                probs.iter().map(|row| row[c]).collect(),
            );
            t.set_u32(&format!("{CLASS_GROUP_PREFIX}{c}/class"), vec![c as u32; n]);
        }
        t.set_u32("alignments3D/class", vec![0; n]);
        t
    }

    #[test]
    fn posteriors_gather_in_class_order_and_scatter_back_exactly() {
        // Twelve classes, so that class 10 sorts after class 9, not after class 1.
        let rows: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..12).map(|c| ((i * 12 + c) as f32) / 1000.0).collect())
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let original = cryosparc_table(&refs);
        let mut t = original.clone();
        gather_class_probs(&mut t, Path::new(FILE)).unwrap();
        let col = t.get(CLASS_PROBS_3D).unwrap();
        assert_eq!(col.width, 12);
        let flat: Vec<f32> = rows.concat();
        assert_eq!(col.data, ColumnData::F32(flat));
        assert!(!t.has(&posterior_field(0)) && !t.has(&posterior_field(11)));
        // The other per-class fields pass through.
        assert_eq!(t.u32("alignments_class_10/class").unwrap(), &[10, 10, 10]);
        scatter_class_probs(&mut t, Path::new(FILE)).unwrap();
        assert_eq!(t, original);
    }

    #[test]
    fn f64_posteriors_stay_f64_and_tables_without_them_are_unchanged() {
        let mut t = ParticleTable::new(vec![1, 2]);
        t.set(
            &posterior_field(0),
            Column::scalar(ColumnData::F64(vec![0.25, 1.0 / 3.0])),
        );
        t.set(
            &posterior_field(1),
            Column::scalar(ColumnData::F64(vec![0.75, 2.0 / 3.0])),
        );
        let original = t.clone();
        gather_class_probs(&mut t, Path::new(FILE)).unwrap();
        assert_eq!(
            t.get(CLASS_PROBS_3D).unwrap().data,
            ColumnData::F64(vec![0.25, 0.75, 1.0 / 3.0, 2.0 / 3.0])
        );
        scatter_class_probs(&mut t, Path::new(FILE)).unwrap();
        assert_eq!(t, original);

        let mut plain = ParticleTable::new(vec![1]);
        plain.set_f32("alignments3D/class_posterior", vec![0.9]);
        plain.set_f32("alignments_class_01/class_posterior", vec![0.9]);
        let before = plain.clone();
        gather_class_probs(&mut plain, Path::new(FILE)).unwrap();
        scatter_class_probs(&mut plain, Path::new(FILE)).unwrap();
        assert_eq!(
            plain, before,
            "leading zeros are not CryoSPARC's class numbers"
        );
    }

    #[test]
    fn bad_posteriors_are_one_line_errors_naming_file_and_field() {
        let err = |t: &mut ParticleTable| {
            gather_class_probs(t, Path::new(FILE))
                .unwrap_err()
                .to_string()
        };
        let mut gap = cryosparc_table(&[&[0.5, 0.2, 0.3]]);
        gap.remove(&posterior_field(1));
        let e = err(&mut gap);
        assert!(
            e.starts_with("J12/particles.cs: alignments_class_1/class_posterior: missing")
                && e.contains("alignments_class_2/class_posterior exists"),
            "{e}"
        );
        let mut nan = cryosparc_table(&[&[0.5, 0.5], &[f32::NAN, 1.0]]);
        let e = err(&mut nan);
        assert!(
            e.starts_with("J12/particles.cs: alignments_class_0/class_posterior: particle row 2 (uid 101) has NaN"),
            "{e}"
        );
        let mut big = cryosparc_table(&[&[0.5, 1.5]]);
        assert!(err(&mut big).contains("1.5, which is not a probability"));
        let mut ints = cryosparc_table(&[&[0.5, 0.5]]);
        ints.set_u32(&posterior_field(1), vec![1]);
        assert!(err(&mut ints).contains("holds u32 values"));
        let mut wide = cryosparc_table(&[&[0.5, 0.5]]);
        wide.set(
            &posterior_field(0),
            Column::new(ColumnData::F32(vec![0.5, 0.5]), 2),
        );
        assert!(err(&mut wide).contains("has 2 values per particle"));
        let mut both = cryosparc_table(&[&[0.5, 0.5]]);
        both.set(
            CLASS_PROBS_3D,
            Column::new(ColumnData::F32(vec![0.4, 0.6]), 2),
        );
        let e = err(&mut both);
        assert!(
            e.starts_with("J12/particles.cs: alignments3D/class_probs: disagrees"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        // A class_probs equal to the posteriors is accepted.
        let mut same = cryosparc_table(&[&[0.5, 0.5]]);
        same.set(
            CLASS_PROBS_3D,
            Column::new(ColumnData::F32(vec![0.5, 0.5]), 2),
        );
        gather_class_probs(&mut same, Path::new(FILE)).unwrap();
    }
}
