//! Cutting a per-particle statistic at thresholds. With thresholds t₀ < t₁ < … < t_{m−1}
//! a value v falls in interval i when t_{i−1} ≤ v < t_i (interval 0: v < t₀; interval m:
//! v ≥ t_{m−1}), so a value equal to a threshold belongs to the interval above it — the
//! seed's "probability of this value or greater" is kept. Fields are stored in f32, so a
//! value within [`TIE_TOLERANCE`] (relative) of a threshold counts as equal to it: a stored
//! 0.9f32 (0.899999976…) is kept at threshold 0.9.

use std::path::Path;

use crate::error::{Error, Result};

/// Relative distance below a threshold that still counts as equal to it (f32 rounding).
pub const TIE_TOLERANCE: f64 = 1e-6;

/// Checks a threshold list from the config: non-empty, finite, strictly increasing.
pub fn check_thresholds(thresholds: &[f64], cfg: &Path, key: &str) -> Result<()> {
    if thresholds.is_empty() {
        return Err(Error::config(cfg, key, "give at least one threshold"));
    }
    if let Some(t) = thresholds.iter().find(|t| !t.is_finite()) {
        return Err(Error::config(
            cfg,
            key,
            format!("{t} is not a finite number"),
        ));
    }
    if let Some(w) = thresholds.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::config(
            cfg,
            key,
            format!("thresholds must increase strictly ({} then {})", w[0], w[1]),
        ));
    }
    Ok(())
}

/// True when `v` is at or above threshold `t` (within [`TIE_TOLERANCE`]).
pub fn at_or_above(v: f64, t: f64) -> bool {
    v >= t - TIE_TOLERANCE * t.abs().max(1.0)
}

/// Interval index (0..=thresholds.len()) of each value; thresholds strictly increasing.
pub fn interval_of(values: &[f64], thresholds: &[f64]) -> Vec<usize> {
    values
        .iter()
        .map(|&v| {
            thresholds
                .iter()
                .take_while(|&&t| at_or_above(v, t))
                .count()
        })
        .collect()
}

/// Human-readable bounds of interval `i` for the summary and the log ("0.5 ≤ x < 0.9").
pub fn interval_label(i: usize, thresholds: &[f64]) -> String {
    match (i.checked_sub(1).map(|j| thresholds[j]), thresholds.get(i)) {
        (None, Some(hi)) => format!("x < {hi}"),
        (Some(lo), Some(hi)) => format!("{lo} <= x < {hi}"),
        (Some(lo), None) => format!("x >= {lo}"),
        (None, None) => "all".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_put_ties_above() {
        let t = [0.5, 0.9];
        let v = [0.1, 0.5, 0.7, 0.9, 0.95, 1.0, 0.9f32 as f64, 0.8999];
        assert_eq!(interval_of(&v, &t), vec![0, 1, 1, 2, 2, 2, 2, 1]);
        assert_eq!(interval_label(0, &t), "x < 0.5");
        assert_eq!(interval_label(1, &t), "0.5 <= x < 0.9");
        assert_eq!(interval_label(2, &t), "x >= 0.9");
        assert!(at_or_above(-2.0, -2.0) && !at_or_above(-2.001, -2.0));
        assert!(interval_of(&[], &t).is_empty());
    }

    #[test]
    fn thresholds_are_validated() {
        let p = Path::new("s.yaml");
        assert!(check_thresholds(&[0.9], p, "thresholds").is_ok());
        for (bad, needle) in [
            (vec![], "at least one"),
            (vec![0.5, 0.5], "increase strictly"),
            (vec![0.9, 0.5], "increase strictly"),
            (vec![f64::NAN], "finite"),
        ] {
            let e = check_thresholds(&bad, p, "thresholds")
                .unwrap_err()
                .to_string();
            assert!(e.contains("thresholds") && e.contains(needle), "{e}");
        }
    }
}
