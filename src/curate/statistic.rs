//! The per-particle number a subset is cut on: the best-class probability of a 2D
//! classification, the summed probability of chosen 3D classes, or any numeric field of the
//! dataset. Missing fields, classes out of range and non-finite values are errors that name
//! the dataset file and the field, never a panic.

use std::path::Path;

use crate::dataset::{Column, ParticleTable};
use crate::error::{Error, Result};

/// 2D class probabilities, one row of K per particle (written by `emclass classify2d`).
pub const CLASS_PROBS_2D: &str = "alignments2D/class_probs";
/// The probability of the best 2D class (CryoSPARC's field; used when `class_probs` is absent).
pub const CLASS_POSTERIOR_2D: &str = "alignments2D/class_posterior";
/// 3D class probabilities, one row of K per particle (written by `emclass classify3d`).
pub const CLASS_PROBS_3D: &str = "alignments3D/class_probs";

/// Best-class probability per particle: the maximum of `alignments2D/class_probs`, or
/// `alignments2D/class_posterior` when only that is present (CryoSPARC's datasets).
pub fn best_class_probability_2d(table: &ParticleTable, file: &Path) -> Result<Vec<f64>> {
    if let Some(col) = table.get(CLASS_PROBS_2D) {
        let (p, k) = numeric(col, file, CLASS_PROBS_2D)?;
        check_probabilities(&p, file, CLASS_PROBS_2D, table)?;
        return Ok(p
            .chunks(k)
            .map(|row| row.iter().copied().fold(0.0, f64::max))
            .collect());
    }
    if let Some(col) = table.get(CLASS_POSTERIOR_2D) {
        let (p, _) = numeric(col, file, CLASS_POSTERIOR_2D)?;
        check_probabilities(&p, file, CLASS_POSTERIOR_2D, table)?;
        return Ok(p);
    }
    Err(Error::field(
        file,
        CLASS_PROBS_2D,
        missing_hint(
            table,
            "2D class probabilities",
            "alignments2D",
            "emclass classify2d",
        ),
    ))
}

/// Whether `field` is a class probability (`…/class_probs`, `…/class_posterior`): the
/// fields whose thresholds mean nothing when every value is 0 or 1.
pub fn is_probability_field(field: &str) -> bool {
    field.ends_with("/class_probs") || field.ends_with("/class_posterior")
}

/// `(values strictly between 0 and 1, all values)` of numeric `field` (0, 0 when it is
/// absent or not numeric): no fractional value means one-hot probabilities, as a hard
/// classification wrote them before issue 19, and a threshold then keeps all or nothing.
pub fn fractional_count(table: &ParticleTable, field: &str) -> (u64, u64) {
    let Some(v) = table.get(field).and_then(|c| c.data.to_f64()) else {
        return (0, 0);
    };
    let frac = v.iter().filter(|&&x| x > 0.0 && x < 1.0).count();
    (frac as u64, v.len() as u64)
}

/// Number of 3D classes in the dataset's `alignments3D/class_probs`.
pub fn num_classes_3d(table: &ParticleTable, file: &Path) -> Result<usize> {
    let col = table.get(CLASS_PROBS_3D).ok_or_else(|| {
        Error::field(
            file,
            CLASS_PROBS_3D,
            missing_hint(
                table,
                "3D class probabilities",
                "alignments3D",
                "emclass classify3d",
            ),
        )
    })?;
    Ok(col.width)
}

/// Summed probability of `classes` per particle, from `alignments3D/class_probs`.
/// `classes` must be distinct valid indexes (checked; `cfg`/`key` name the config entry).
pub fn summed_class_probability_3d(
    table: &ParticleTable,
    file: &Path,
    classes: &[usize],
    cfg: &Path,
    key: &str,
) -> Result<Vec<f64>> {
    let k = num_classes_3d(table, file)?;
    check_class_list(
        classes,
        k,
        cfg,
        key,
        &format!("{file:?} has {k} 3D classes"),
    )?;
    let col = table
        .get(CLASS_PROBS_3D)
        .expect("checked by num_classes_3d");
    let (p, _) = numeric(col, file, CLASS_PROBS_3D)?;
    check_probabilities(&p, file, CLASS_PROBS_3D, table)?;
    Ok(p.chunks(k)
        .map(|row| classes.iter().map(|&c| row[c]).sum::<f64>().min(1.0))
        .collect())
}

/// The values of numeric `field` (one per particle; for a multi-column field, column
/// `component`). Every value must be finite.
pub fn field_values(
    table: &ParticleTable,
    file: &Path,
    field: &str,
    component: Option<usize>,
) -> Result<Vec<f64>> {
    let col = table.get(field).ok_or_else(|| {
        let mut names: Vec<&str> = table
            .names()
            .filter(|n| {
                table
                    .get(n)
                    .and_then(|c| c.data.to_f64().map(|_| ()))
                    .is_some()
            })
            .collect();
        names.sort_unstable();
        Error::field(
            file,
            field,
            format!(
                "no such field in this dataset; numeric fields are: {}",
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    })?;
    let (v, w) = numeric(col, file, field)?;
    let values: Vec<f64> = match (w, component) {
        (1, None | Some(0)) => v,
        (w, Some(c)) if c < w => v.chunks(w).map(|row| row[c]).collect(),
        (w, Some(c)) => {
            return Err(Error::field(
                file,
                field,
                format!("has {w} values per particle; component {c} is out of range 0..{w}"),
            ))
        }
        (w, None) => {
            return Err(Error::field(
                file,
                field,
                format!(
                    "has {w} values per particle; choose one with `component: 0..{}`",
                    w - 1
                ),
            ))
        }
    };
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::field(
            file,
            field,
            format!(
                "particle uid {} has the non-finite value {}",
                table.uid()[i],
                values[i]
            ),
        ));
    }
    Ok(values)
}

/// Checks a list of class indexes: non-empty, distinct, each below `k`.
pub fn check_class_list(
    classes: &[usize],
    k: usize,
    cfg: &Path,
    key: &str,
    what: &str,
) -> Result<()> {
    if classes.is_empty() {
        return Err(Error::config(cfg, key, "give at least one class index"));
    }
    if let Some(c) = classes.iter().find(|&&c| c >= k) {
        return Err(Error::config(
            cfg,
            key,
            format!(
                "class {c} does not exist ({what}: indexes 0..{})",
                k.saturating_sub(1)
            ),
        ));
    }
    let mut seen = classes.to_vec();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::config(
            cfg,
            key,
            format!("class {} is listed twice", w[0]),
        ));
    }
    Ok(())
}

/// A numeric column's values as f64 and its width.
fn numeric(col: &Column, file: &Path, name: &str) -> Result<(Vec<f64>, usize)> {
    let v = col.data.to_f64().ok_or_else(|| {
        Error::field(
            file,
            name,
            format!(
                "holds {} values; a numeric field is needed",
                col.data.type_name()
            ),
        )
    })?;
    Ok((v, col.width))
}

/// Probabilities must be finite and within [0, 1] (with a little rounding slack).
fn check_probabilities(p: &[f64], file: &Path, name: &str, table: &ParticleTable) -> Result<()> {
    const SLACK: f64 = 1e-4;
    let w = p.len().checked_div(table.len()).unwrap_or(1).max(1);
    if let Some(i) = p
        .iter()
        .position(|x| !x.is_finite() || *x < -SLACK || *x > 1.0 + SLACK)
    {
        return Err(Error::field(
            file,
            name,
            format!(
                "particle uid {} has the probability {}, outside [0, 1]",
                table.uid()[i / w],
                p[i]
            ),
        ));
    }
    Ok(())
}

/// "missing: needs ...; this dataset has alignments3D fields but no alignments2D ones".
fn missing_hint(table: &ParticleTable, what: &str, group: &str, job: &str) -> String {
    let groups = ["alignments2D", "alignments3D"];
    let present: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| table.names().any(|n| n.starts_with(&format!("{g}/"))))
        .collect();
    let has = if present.is_empty() {
        "this dataset has no alignments2D or alignments3D fields".to_string()
    } else {
        format!("this dataset has only {} fields", present.join(" and "))
    };
    format!("missing: the {what} come from a {group} classification ({job}); {has}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ColumnData;

    fn table(probs_name: &str, probs: Vec<f32>, k: usize) -> ParticleTable {
        let n = probs.len() / k;
        let mut t = ParticleTable::new((0..n as u64).map(|u| 10 + u).collect());
        t.set(probs_name, Column::new(ColumnData::F32(probs), k));
        t
    }

    #[test]
    fn fractional_count_tells_one_hot_from_soft() {
        let hard = table(CLASS_PROBS_3D, vec![1.0, 0.0, 0.0, 1.0], 2);
        assert_eq!(fractional_count(&hard, CLASS_PROBS_3D), (0, 4));
        let soft = table(CLASS_PROBS_3D, vec![0.7, 0.3, 0.0, 1.0], 2);
        assert_eq!(fractional_count(&soft, CLASS_PROBS_3D), (2, 4));
        assert_eq!(fractional_count(&soft, CLASS_PROBS_2D), (0, 0));
        assert!(is_probability_field("alignments2D/class_posterior"));
        assert!(is_probability_field(CLASS_PROBS_3D));
        assert!(!is_probability_field("alignments3D/class_ess"));
    }

    #[test]
    fn best_2d_probability_is_the_row_maximum() {
        // The seed's worked example: 0.95/0.01/0.01/0.00 and 0.4/0.3/0.2/0.0.
        let t = table(
            CLASS_PROBS_2D,
            vec![0.95, 0.01, 0.01, 0.0, 0.4, 0.3, 0.2, 0.0],
            4,
        );
        let p = best_class_probability_2d(&t, Path::new("p.h5")).unwrap();
        assert!((p[0] - 0.95).abs() < 1e-6 && (p[1] - 0.4).abs() < 1e-6);
        // Only class_posterior (a CryoSPARC dataset): used as is.
        let t = table(CLASS_POSTERIOR_2D, vec![0.7, 0.2], 1);
        let p = best_class_probability_2d(&t, Path::new("p.h5")).unwrap();
        assert!((p[0] - 0.7).abs() < 1e-6);
    }

    #[test]
    fn summed_3d_probability_over_chosen_classes() {
        let t = table(
            CLASS_PROBS_3D,
            vec![0.1, 0.3, 0.2, 0.4, 0.0, 0.35, 0.3, 0.35],
            4,
        );
        let s =
            summed_class_probability_3d(&t, Path::new("p.h5"), &[1, 2], Path::new("c"), "classes")
                .unwrap();
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 0.65).abs() < 1e-6);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let t = table(CLASS_PROBS_2D, vec![0.5, 0.5], 2);
        let e = summed_class_probability_3d(&t, Path::new("p.h5"), &[0], Path::new("c"), "classes")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("alignments3D/class_probs") && e.contains("only alignments2D"),
            "{e}"
        );
        let t3 = table(CLASS_PROBS_3D, vec![0.5, 0.5], 2);
        let e = summed_class_probability_3d(
            &t3,
            Path::new("p.h5"),
            &[2],
            Path::new("c.yaml"),
            "classes",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("classes") && e.contains("class 2 does not exist"),
            "{e}"
        );
        let e = summed_class_probability_3d(
            &t3,
            Path::new("p.h5"),
            &[1, 1],
            Path::new("c.yaml"),
            "classes",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = best_class_probability_2d(&t3, Path::new("p.h5"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("alignments2D/class_probs") && e.contains("emclass classify2d"),
            "{e}"
        );
        let e = field_values(&t, Path::new("p.h5"), "ctf/df1_A", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ctf/df1_A") && e.contains("alignments2D/class_probs"),
            "{e}"
        );
        let e = field_values(&t, Path::new("p.h5"), CLASS_PROBS_2D, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("component"), "{e}");
        assert_eq!(
            field_values(&t, Path::new("p.h5"), CLASS_PROBS_2D, Some(1)).unwrap(),
            vec![0.5]
        );
        let bad = table(CLASS_PROBS_2D, vec![f32::NAN, 0.5], 2);
        let e = best_class_probability_2d(&bad, Path::new("p.h5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("uid 10") && e.contains("NaN"), "{e}");
        let mut s = ParticleTable::new(vec![1]);
        s.set_str("blob/path", vec!["x".into()]);
        let e = field_values(&s, Path::new("p.h5"), "blob/path", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("string") && e.contains("numeric"), "{e}");
    }
}
