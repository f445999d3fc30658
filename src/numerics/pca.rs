//! Principal components of a few long vectors (volumes) through their Gram matrix, and a
//! deterministic k-means of the component scores: the PCA start of 3D classification.
//!
//! For `B` vectors of length `D` (`B ≪ D`), centred on their mean, the `B × B` Gram matrix
//! `G = X Xᵀ` has the same non-zero eigenvalues as the covariance `Xᵀ X`; with `G u = λ u`
//! the score of vector `b` on component `c` is `√λ_c · u_c[b]`. The eigenvectors come from
//! the cyclic Jacobi method, exact to f64 rounding for the sizes used here (B ≤ a few
//! hundred), and deterministic, so every MPI rank gets the same answer from the same input.

/// Eigenvalues (descending) and eigenvectors (`vecs[c]` of length n) of a symmetric
/// `n × n` matrix `a` (row-major), by cyclic Jacobi rotations.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(
        a.len(),
        n * n,
        "symmetric_eigen: {} values for {n} × {n}",
        a.len()
    );
    let mut m = a.to_vec();
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation by θ that zeroes m[p][q]: t = tan θ from the smaller root.
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| m[b * n + b].total_cmp(&m[a * n + a]).then(a.cmp(&b)));
    let vals = order.iter().map(|&c| m[c * n + c]).collect();
    let vecs = order
        .iter()
        .map(|&c| (0..n).map(|k| v[k * n + c]).collect())
        .collect();
    (vals, vecs)
}

/// Scores of `vectors` (all of one length) on their first `n_comp` principal components,
/// `scores[b][c]`, and the fraction of the total variance each component explains.
pub fn principal_scores(vectors: &[&[f32]], n_comp: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let b = vectors.len();
    let d = vectors.first().map_or(0, |v| v.len());
    let mean: Vec<f64> = (0..d)
        .map(|j| vectors.iter().map(|v| v[j] as f64).sum::<f64>() / b.max(1) as f64)
        .collect();
    let mut gram = vec![0.0f64; b * b];
    for i in 0..b {
        for j in i..b {
            let g: f64 = (0..d)
                .map(|x| (vectors[i][x] as f64 - mean[x]) * (vectors[j][x] as f64 - mean[x]))
                .sum();
            gram[i * b + j] = g;
            gram[j * b + i] = g;
        }
    }
    let (vals, vecs) = symmetric_eigen(&gram, b);
    let total: f64 = vals
        .iter()
        .map(|v| v.max(0.0))
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let n_comp = n_comp.min(b);
    let scores = (0..b)
        .map(|i| {
            (0..n_comp)
                .map(|c| vals[c].max(0.0).sqrt() * vecs[c][i])
                .collect()
        })
        .collect();
    let explained = vals[..n_comp].iter().map(|v| v.max(0.0) / total).collect();
    (scores, explained)
}

/// Deterministic k-means of `points` into `k` clusters (k ≤ number of points): farthest-
/// point seeding from the point farthest from the centroid, then Lloyd iterations until
/// no point moves (at most 100). Returns the cluster of each point; every cluster is
/// non-empty.
pub fn kmeans(points: &[Vec<f64>], k: usize) -> Vec<usize> {
    let n = points.len();
    assert!(k >= 1 && k <= n, "kmeans: {k} clusters for {n} points");
    let dim = points[0].len();
    let d2 = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let centroid: Vec<f64> = (0..dim)
        .map(|j| points.iter().map(|p| p[j]).sum::<f64>() / n as f64)
        .collect();
    let farthest = |from: &dyn Fn(&[f64]) -> f64| {
        (0..n)
            .max_by(|&a, &b| {
                from(&points[a])
                    .total_cmp(&from(&points[b]))
                    .then(b.cmp(&a))
            })
            .expect("points")
    };
    let mut centres = vec![points[farthest(&|p| d2(p, &centroid))].clone()];
    while centres.len() < k {
        let c = farthest(&|p| {
            centres
                .iter()
                .map(|c| d2(p, c))
                .fold(f64::INFINITY, f64::min)
        });
        centres.push(points[c].clone());
    }
    let nearest = |p: &[f64], centres: &[Vec<f64>]| {
        (0..centres.len())
            .min_by(|&a, &b| {
                d2(p, &centres[a])
                    .total_cmp(&d2(p, &centres[b]))
                    .then(a.cmp(&b))
            })
            .expect("centres")
    };
    let mut label: Vec<usize> = points.iter().map(|p| nearest(p, &centres)).collect();
    for _ in 0..100 {
        for (c, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> = points
                .iter()
                .zip(&label)
                .filter(|(_, &l)| l == c)
                .map(|(p, _)| p)
                .collect();
            if !members.is_empty() {
                for (j, x) in centre.iter_mut().enumerate() {
                    *x = members.iter().map(|p| p[j]).sum::<f64>() / members.len() as f64;
                }
            }
        }
        let next: Vec<usize> = points.iter().map(|p| nearest(p, &centres)).collect();
        if next == label {
            break;
        }
        label = next;
    }
    // A cluster emptied by the updates takes the point farthest from its own centre.
    for c in 0..k {
        if !label.contains(&c) {
            let far = farthest(&|p| d2(p, &centres[nearest(p, &centres)]));
            label[far] = c;
        }
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, eigenvectors (1, 1)/√2 and (1, −1)/√2.
        let (vals, vecs) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!(
            (vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12,
            "{vals:?}"
        );
        assert!((vecs[0][0].abs() - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((vecs[0][0] - vecs[0][1]).abs() < 1e-12);
        assert!((vecs[1][0] + vecs[1][1]).abs() < 1e-12);
    }

    #[test]
    fn eigen_reconstructs_a_random_symmetric_matrix() {
        let n = 7;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let v = ((i * 31 + j * 17) % 11) as f64 - 5.0;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, n);
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|c| vals[c] * vecs[c][i] * vecs[c][j]).sum();
                assert!(
                    (r - a[i * n + j]).abs() < 1e-9,
                    "({i}, {j}): {r} vs {}",
                    a[i * n + j]
                );
            }
        }
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn pca_and_kmeans_separate_two_groups() {
        // Six vectors: three near +e0, three near −e0, with small orthogonal wobbles.
        let vs: Vec<Vec<f32>> = (0..6)
            .map(|b| {
                let sign = if b < 3 { 1.0 } else { -1.0 };
                (0..50)
                    .map(|x| match x {
                        0 => sign * 10.0,
                        _ => 0.1 * (((b * 7 + x * 3) % 5) as f32 - 2.0),
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let (scores, explained) = principal_scores(&refs, 2);
        assert!(explained[0] > 0.95, "{explained:?}");
        let label = kmeans(&scores, 2);
        assert!(label[0] == label[1] && label[1] == label[2], "{label:?}");
        assert!(label[3] == label[4] && label[4] == label[5] && label[0] != label[3]);
    }

    #[test]
    fn kmeans_gives_every_cluster_a_point() {
        let pts: Vec<Vec<f64>> = vec![vec![0.0], vec![0.0], vec![0.0], vec![1.0]];
        let label = kmeans(&pts, 3);
        for c in 0..3 {
            assert!(label.contains(&c), "{label:?}");
        }
    }
}
