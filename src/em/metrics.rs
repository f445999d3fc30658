//! Agreement between two labelings of the same particles: the adjusted Rand index (Hubert &
//! Arabie 1985) used to score classifications against ground truth, and the fraction of
//! particles whose labels agree after matching the labels of one run to the other's.

use std::collections::HashMap;

/// Contingency counts n_ij of labels `a` × labels `b` (as maps, labels need not be dense).
fn contingency(a: &[i64], b: &[i64]) -> HashMap<(i64, i64), u64> {
    let mut m = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *m.entry((x, y)).or_insert(0) += 1;
    }
    m
}

fn choose2(n: u64) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0
}

/// Adjusted Rand index between two labelings of equal length:
///
/// ```text
///   ARI = (Σ_ij C(n_ij,2) − E) / (½(Σ_i C(a_i,2) + Σ_j C(b_j,2)) − E),
///   E = Σ_i C(a_i,2) · Σ_j C(b_j,2) / C(n,2)
/// ```
///
/// 1 for identical partitions (up to renaming), about 0 for independent ones. Two trivial
/// partitions (everything in one group on both sides) give 1.
pub fn adjusted_rand_index(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len(), "ARI: labelings differ in length");
    adjusted_rand_index_of(&contingency(a, b))
}

/// The ARI from the contingency counts of label pairs `(a, b)` (which can be summed over
/// ranks, so the labels never need to be gathered in one place).
pub fn adjusted_rand_index_of(cont: &HashMap<(i64, i64), u64>) -> f64 {
    let n: u64 = cont.values().sum();
    let (mut ra, mut rb): (HashMap<i64, u64>, HashMap<i64, u64>) = (HashMap::new(), HashMap::new());
    for (&(x, y), &c) in cont {
        *ra.entry(x).or_insert(0) += c;
        *rb.entry(y).or_insert(0) += c;
    }
    let index: f64 = cont.values().map(|&c| choose2(c)).sum();
    let sa: f64 = ra.values().map(|&c| choose2(c)).sum();
    let sb: f64 = rb.values().map(|&c| choose2(c)).sum();
    let total = choose2(n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = sa * sb / total;
    let max = 0.5 * (sa + sb);
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Fraction of positions where `b`'s label, renamed by a one-to-one matching of `b`'s labels
/// onto `a`'s (greedy on the largest contingency counts first), equals `a`'s label.
pub fn matched_agreement(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len(), "agreement: labelings differ in length");
    if a.is_empty() {
        return 1.0;
    }
    let mut cells: Vec<((i64, i64), u64)> = contingency(a, b).into_iter().collect();
    cells.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let (mut used_a, mut used_b) = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    let mut agree = 0u64;
    for ((x, y), c) in cells {
        if used_a.contains(&x) || used_b.contains(&y) {
            continue;
        }
        used_a.insert(x);
        used_b.insert(y);
        agree += c;
    }
    agree as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_of_renamed_partition_is_one() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [5, 5, 3, 3, 9, 9];
        assert!((adjusted_rand_index(&a, &b) - 1.0).abs() < 1e-12);
        assert!((matched_agreement(&a, &b) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ari_matches_a_known_value() {
        // sklearn.metrics.adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((v - 0.5714285714285715).abs() < 1e-12, "{v}");
        // and ([0,0,0,1,1,1],[0,1,0,1,0,1]) = (2 − 2.4)/(6 − 2.4) = −1/9 (worse than chance)
        let v = adjusted_rand_index(&[0, 0, 0, 1, 1, 1], &[0, 1, 0, 1, 0, 1]);
        assert!((v + 1.0 / 9.0).abs() < 1e-12, "{v}");
    }

    #[test]
    fn agreement_counts_after_matching() {
        let a = [0, 0, 0, 1, 1, 2];
        let b = [1, 1, 2, 0, 0, 2];
        // b's 1 ↔ a's 0 (2), b's 0 ↔ a's 1 (2), b's 2 ↔ a's 2 (1): 5 of 6.
        assert!((matched_agreement(&a, &b) - 5.0 / 6.0).abs() < 1e-12);
    }
}
