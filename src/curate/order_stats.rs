//! Exact order statistics of values spread over ranks, without gathering them: the k-th
//! smallest key of a group is found by bisection of the key space, each step counting the
//! keys at or below the midpoint on every rank and summing the counts (one all-reduce of a
//! counter per query). 128 steps settle any `u128` key, 64 any `f64`. This gives curation
//! jobs the same quantiles, mixture starts and random draws on any number of ranks as on one.
//!
//! Cost: 128 all-reduces of `queries` counters, and 128 passes over the local keys.

use crate::comm::Comm;

/// For each query `(group, k)` (k ≥ 1), the k-th smallest key among every rank's `items`
/// of that group (`(group, key)`), or `None` when the groups hold fewer than k keys in all.
/// Collective: every rank passes the same queries.
pub fn kth_smallest(
    comm: &dyn Comm,
    items: &[(usize, u128)],
    queries: &[(usize, u64)],
) -> Vec<Option<u128>> {
    let q = queries.len();
    let mut total = vec![0u64; q];
    for (t, &(g, _)) in total.iter_mut().zip(queries) {
        *t = items.iter().filter(|(ig, _)| *ig == g).count() as u64;
    }
    comm.all_reduce_sum_u64(&mut total);
    // Invariant: the answer lies in [lo, hi].
    let mut lo = vec![0u128; q];
    let mut hi = vec![u128::MAX; q];
    let mut by_group: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    for (i, &(g, _)) in queries.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    for _ in 0..128 {
        if lo == hi {
            break;
        }
        let mid: Vec<u128> = lo.iter().zip(&hi).map(|(&l, &h)| l + (h - l) / 2).collect();
        let mut at_or_below = vec![0u64; q];
        for (g, key) in items {
            if let Some(qs) = by_group.get(g) {
                for &i in qs {
                    at_or_below[i] += u64::from(*key <= mid[i]);
                }
            }
        }
        comm.all_reduce_sum_u64(&mut at_or_below);
        for i in 0..q {
            if at_or_below[i] >= queries[i].1 {
                hi[i] = mid[i];
            } else {
                lo[i] = mid[i] + 1;
            }
        }
    }
    (0..q)
        .map(|i| (queries[i].1 >= 1 && queries[i].1 <= total[i]).then_some(lo[i]))
        .collect()
}

/// `f64` ↔ `u128` keys that sort as the numbers do (total order: -0 before +0, NaN last).
pub fn f64_key(v: f64) -> u128 {
    let b = v.to_bits();
    (if b >> 63 == 1 { !b } else { b | (1 << 63) }) as u128
}

/// The number of a key made by [`f64_key`].
pub fn key_f64(k: u128) -> f64 {
    let b = k as u64;
    f64::from_bits(if b >> 63 == 1 { b & !(1 << 63) } else { !b })
}

/// Exact quantiles of every rank's finite `values` (NaN ignored): for each fraction f the
/// value at 0-based sorted position `round((n − 1)·f)`, or `None` when there are no values.
/// Collective.
pub fn quantiles(comm: &dyn Comm, values: &[f64], fractions: &[f64]) -> Vec<Option<f64>> {
    let items: Vec<(usize, u128)> = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (0, f64_key(v)))
        .collect();
    let mut n = [items.len() as u64];
    comm.all_reduce_sum_u64(&mut n);
    if n[0] == 0 {
        return vec![None; fractions.len()];
    }
    let queries: Vec<(usize, u64)> = fractions
        .iter()
        .map(|f| {
            (
                0,
                ((n[0] - 1) as f64 * f.clamp(0.0, 1.0)).round() as u64 + 1,
            )
        })
        .collect();
    kth_smallest(comm, &items, &queries)
        .into_iter()
        .map(|k| k.map(key_f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;

    #[test]
    fn keys_sort_as_numbers() {
        let mut v = vec![
            3.5,
            -0.0,
            0.0,
            -1e300,
            1e-300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -2.0,
        ];
        let mut by_key = v.clone();
        by_key.sort_by_key(|&x| f64_key(x));
        v.sort_by(f64::total_cmp);
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            by_key.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        for x in v {
            assert_eq!(key_f64(f64_key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn kth_smallest_matches_sorting() {
        let items: Vec<(usize, u128)> = (0..1000u128)
            .map(|i| ((i % 3) as usize, (i * 7919) % 1009 + (u128::MAX / 2)))
            .collect();
        for g in 0..3 {
            let mut keys: Vec<u128> = items.iter().filter(|x| x.0 == g).map(|x| x.1).collect();
            keys.sort();
            let qs = [
                (g, 1),
                (g, 17),
                (g, keys.len() as u64),
                (g, keys.len() as u64 + 1),
            ];
            let got = kth_smallest(&Single, &items, &qs);
            assert_eq!(
                got,
                vec![Some(keys[0]), Some(keys[16]), keys.last().copied(), None]
            );
        }
        assert_eq!(kth_smallest(&Single, &[], &[(0, 1)]), vec![None]);
    }

    #[test]
    fn quantiles_are_exact() {
        let v: Vec<f64> = (0..101).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
        let q = quantiles(&Single, &v, &[0.0, 0.25, 0.5, 1.0]);
        assert_eq!(q, vec![Some(-50.0), Some(-25.0), Some(0.0), Some(50.0)]);
        assert_eq!(quantiles(&Single, &[f64::NAN], &[0.5]), vec![None]);
    }
}
