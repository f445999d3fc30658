//! Grouping 2D classes into superclasses from their affinity matrix
//! ([`crate::curate::affinity`]), and the class order of the "sorted" affinity plot.
//!
//! Conventions: the affinity is a K×K matrix in `[0, 1]`; the distance between classes is
//! `1 − a`, read from the symmetrised `(a_ij + a_ji)/2` (a non-finite affinity counts as 0).
//! Labels are `0..n_groups`, numbered in order of each group's smallest class index, so the
//! group holding class 0 is group 0. All ties are broken towards the lowest indices, so the
//! result depends only on the matrix.

use ndarray::ArrayView2;

/// Superclass label of each of the K classes by average-linkage agglomerative clustering on
/// the distance `1 − affinity`: starting from K singletons, the two clusters with the
/// smallest mean pairwise distance are merged (ties: the pair whose smallest members are
/// lowest, compared lexicographically) until `n_groups` clusters remain.
///
/// `n_groups` is clamped to `1..=K` (0 means one group; more groups than classes leaves every
/// class on its own). K = 0 gives an empty vector. Cost: O(K³) time, O(K²) memory.
///
/// # Panics
/// If `affinity` is not square (a programming error: it comes from
/// [`crate::curate::affinity::affinity_matrix`]).
pub fn agglomerative(affinity: ArrayView2<f64>, n_groups: usize) -> Vec<usize> {
    let k = check_square(affinity, "agglomerative");
    if k == 0 {
        return Vec::new();
    }
    let target = n_groups.clamp(1, k);
    // Cluster "slots": slot s is the cluster whose smallest member is s (merging b into a < b
    // keeps that true). `dist[a][b]` is the average-linkage distance between active slots.
    let mut dist: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| distance(affinity, i, j)).collect())
        .collect();
    let mut size = vec![1usize; k];
    let mut parent: Vec<usize> = (0..k).collect();
    let mut active: Vec<usize> = (0..k).collect();
    while active.len() > target {
        let (a, b) = closest_pair(&dist, &active);
        merge(&mut dist, &mut size, &active, a, b);
        parent[b] = a;
        active.retain(|&s| s != b);
    }
    labels_from_slots(&parent, &active)
}

/// Checks that the matrix is square and returns K.
fn check_square(affinity: ArrayView2<f64>, what: &str) -> usize {
    let (r, c) = affinity.dim();
    assert_eq!(
        r, c,
        "{what}: the affinity matrix must be square, got {r}×{c}"
    );
    r
}

/// `1 − (a_ij + a_ji)/2`, with a non-finite affinity read as 0 (distance 1).
fn distance(affinity: ArrayView2<f64>, i: usize, j: usize) -> f64 {
    let a = 0.5 * (affinity[[i, j]] + affinity[[j, i]]);
    if a.is_finite() {
        1.0 - a
    } else {
        1.0
    }
}

/// The active pair `a < b` with the smallest distance; the first in lexicographic order wins
/// ties (`active` is sorted).
fn closest_pair(dist: &[Vec<f64>], active: &[usize]) -> (usize, usize) {
    let mut best = (active[0], active[1], f64::INFINITY);
    for (p, &a) in active.iter().enumerate() {
        for &b in &active[p + 1..] {
            if dist[a][b] < best.2 {
                best = (a, b, dist[a][b]);
            }
        }
    }
    (best.0, best.1)
}

/// Merges slot `b` into slot `a` with the Lance–Williams update for average linkage:
/// `d(a∪b, c) = (|a|·d(a, c) + |b|·d(b, c)) / (|a| + |b|)`.
fn merge(dist: &mut [Vec<f64>], size: &mut [usize], active: &[usize], a: usize, b: usize) {
    let (na, nb) = (size[a] as f64, size[b] as f64);
    for &c in active.iter().filter(|&&c| c != a && c != b) {
        let d = (na * dist[a][c] + nb * dist[b][c]) / (na + nb);
        dist[a][c] = d;
        dist[c][a] = d;
    }
    size[a] += size[b];
}

/// Label of every class: the position of its root slot in the (sorted) active list.
fn labels_from_slots(parent: &[usize], active: &[usize]) -> Vec<usize> {
    (0..parent.len())
        .map(|mut s| {
            while parent[s] != s {
                s = parent[s];
            }
            active.binary_search(&s).unwrap_or(0)
        })
        .collect()
}

/// A permutation of the K classes for the sorted affinity plot: classes grouped by label
/// (groups in increasing label value), and within a group a greedy nearest-neighbour chain:
/// it starts at the member with the highest mean affinity to the rest of its group, then
/// repeatedly appends the unplaced member with the highest affinity to the last one placed.
/// Ties go to the lowest class index; affinities are symmetrised and non-finite ones read as
/// 0, as in [`agglomerative`].
///
/// # Panics
/// If `affinity` is not square or `labels` does not have one label per class.
pub fn sorted_order(affinity: ArrayView2<f64>, labels: &[usize]) -> Vec<usize> {
    let k = check_square(affinity, "sorted_order");
    assert_eq!(
        labels.len(),
        k,
        "sorted_order: {} labels for {k} classes",
        labels.len()
    );
    let mut group_ids: Vec<usize> = labels.to_vec();
    group_ids.sort_unstable();
    group_ids.dedup();
    let sim = |i: usize, j: usize| 1.0 - distance(affinity, i, j);
    let mut order = Vec::with_capacity(k);
    for g in group_ids {
        let members: Vec<usize> = (0..k).filter(|&i| labels[i] == g).collect();
        order.extend(chain(&members, &sim));
    }
    order
}

/// Greedy nearest-neighbour chain through `members` (sorted ascending) under `sim`.
fn chain(members: &[usize], sim: &impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mean_to_rest = |i: usize| -> f64 {
        members
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| sim(i, j))
            .sum::<f64>()
    };
    let Some(start) = argmax(members.iter().copied(), mean_to_rest) else {
        return Vec::new();
    };
    let mut left: Vec<usize> = members.iter().copied().filter(|&m| m != start).collect();
    let mut out = vec![start];
    let mut last = start;
    while let Some(next) = argmax(left.iter().copied(), |j| sim(last, j)) {
        out.push(next);
        left.retain(|&m| m != next);
        last = next;
    }
    out
}

/// The item with the largest score; the first one wins ties (so the lowest index, for
/// ascending input).
fn argmax(items: impl Iterator<Item = usize>, score: impl Fn(usize) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in items {
        let s = score(i);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// Affinity with 3 blocks: `block[i]` is the block of class i; within 0.75–0.95, across
    /// 0.05–0.25 (seeded noise, symmetric, diagonal 1).
    fn block_matrix(block: &[usize], seed: u64) -> Array2<f64> {
        let k = block.len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut a = Array2::<f64>::eye(k);
        for i in 0..k {
            for j in i + 1..k {
                let base = if block[i] == block[j] { 0.75 } else { 0.05 };
                let v = base + 0.2 * rng.gen::<f64>();
                a[[i, j]] = v;
                a[[j, i]] = v;
            }
        }
        a
    }

    #[test]
    fn three_shuffled_blocks_are_recovered() {
        let block = [2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 1, 0];
        let a = block_matrix(&block, 7);
        let labels = agglomerative(a.view(), 3);
        // Groups numbered by smallest member: class 0 (block 2) → 0, class 1 (block 0) → 1,
        // class 2 (block 1) → 2.
        let expect: Vec<usize> = block.iter().map(|&b| [1, 2, 0][b]).collect();
        assert_eq!(labels, expect);
    }

    #[test]
    fn as_many_groups_as_classes_or_one_group() {
        let a = block_matrix(&[0, 1, 0, 1, 2], 3);
        assert_eq!(agglomerative(a.view(), 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(agglomerative(a.view(), 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(agglomerative(a.view(), 1), vec![0; 5]);
        assert_eq!(agglomerative(a.view(), 0), vec![0; 5]);
        assert_eq!(agglomerative(Array2::<f64>::eye(1).view(), 1), vec![0]);
        assert!(agglomerative(Array2::<f64>::zeros((0, 0)).view(), 1).is_empty());
    }

    #[test]
    fn ties_break_towards_lowest_indices() {
        // All off-diagonal affinities equal: merges go (0,1), then ({0,1},2), …
        let mut a = Array2::<f64>::from_elem((5, 5), 0.5);
        a.diag_mut().fill(1.0);
        assert_eq!(agglomerative(a.view(), 4), vec![0, 0, 1, 2, 3]);
        assert_eq!(agglomerative(a.view(), 2), vec![0, 0, 0, 0, 1]);
        assert_eq!(sorted_order(a.view(), &[0; 5]), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn nan_affinity_counts_as_zero() {
        let mut a = block_matrix(&[0, 0, 1, 1], 1);
        a[[0, 2]] = f64::NAN;
        a[[2, 0]] = f64::NAN;
        assert_eq!(agglomerative(a.view(), 2), vec![0, 0, 1, 1]);
    }

    #[test]
    fn sorted_order_groups_by_label_and_chains_neighbours() {
        let block = [2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 1, 0];
        let a = block_matrix(&block, 7);
        let labels = agglomerative(a.view(), 3);
        let order = sorted_order(a.view(), &labels);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "a permutation");
        let seen: Vec<usize> = order.iter().map(|&c| labels[c]).collect();
        let mut grouped = seen.clone();
        grouped.sort_unstable();
        assert_eq!(seen, grouped, "groups in label order");
    }

    #[test]
    fn chain_follows_the_strongest_link() {
        // A path 3 – 0 – 2 – 1 of strong links. 0 and 2 tie for the highest mean affinity
        // (0 wins, lower index); 0's neighbours 2 and 3 tie (2 wins); then 2 → 1; then 3.
        let mut a = Array2::<f64>::from_elem((4, 4), 0.1);
        a.diag_mut().fill(1.0);
        for (i, j) in [(3, 0), (0, 2), (2, 1)] {
            a[[i, j]] = 0.9;
            a[[j, i]] = 0.9;
        }
        assert_eq!(sorted_order(a.view(), &[0; 4]), vec![0, 2, 1, 3]);
        assert_eq!(sorted_order(a.view(), &[1, 0, 1, 0]), vec![1, 3, 0, 2]);
    }
}
