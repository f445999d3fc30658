//! The rebalancing rule of Rebalance 2D Classes: how many particles each superclass may keep
//! ([`superclass_cap`]) and which particles those are ([`choose_kept`]).
//!
//! With `n` the size of the smallest non-empty superclass, a `Rebalance factor` f in `(0, 1]`
//! caps every superclass at `⌊n / f⌋` particles, so that afterwards the smallest superclass is
//! at least f times the largest (f = 1: all end at `n`); f = 0 keeps every particle.
//! `Override maximum superclass size` N (only when f ≠ 0) caps every superclass at N instead,
//! which is the factor `n / N`. Particles above the cap are dropped uniformly at random with
//! a seeded random key per particle (see [`choose_kept`]).

use crate::comm::Comm;

use super::order_stats::kth_smallest;

/// The most particles any superclass may keep, or `None` to keep everything.
///
/// - `factor` ≤ 0 (or not finite) → `None`, even with `max_superclass_size`: the seed applies
///   the override only "provided the Rebalance factor is not 0.0". A factor above 1 is read
///   as 1.
/// - `max_superclass_size = Some(N)` → `Some(N)`. N is a maximum size, so an N below the
///   smallest superclass caps that one too (all superclasses end at most at N). N = 0 would
///   drop every particle; configuration should reject it.
/// - Otherwise `Some(⌊n / factor⌋)` with `n` the smallest *non-empty* size in `sizes` (empty
///   superclasses are ignored); `None` when every superclass is empty or `sizes` is empty.
pub fn superclass_cap(
    sizes: &[usize],
    factor: f64,
    max_superclass_size: Option<usize>,
) -> Option<usize> {
    if !(factor.is_finite() && factor > 0.0) {
        return None;
    }
    let smallest = sizes.iter().copied().filter(|&s| s > 0).min()?;
    if let Some(n_max) = max_superclass_size {
        return Some(n_max);
    }
    let factor = factor.min(1.0);
    // The small epsilon keeps e.g. 3 / 0.3 = 9.999… from flooring to 9; casting saturates
    // for tiny factors.
    Some((smallest as f64 / factor + 1e-9).floor() as usize)
}

/// Which particles stay (`true`) after capping each superclass at `cap` particles:
/// a superclass with more than `cap` members keeps exactly `cap` of them, chosen uniformly at
/// random; smaller superclasses, and all particles when `cap` is `None`, are kept.
///
/// The particles may be spread over ranks: this rank's `superclass_of_particle[i]` is the
/// superclass of global row `first_row + i`. Each particle gets a random key from `seed`, its
/// superclass and its global row (SplitMix64), made unique by the row; superclass `s` keeps
/// the `cap` members with the smallest keys, found exactly over all ranks by
/// [`kth_smallest`]. The choice thus depends only on the membership, the rows
/// and the seed, never on the number of ranks. Labels at or above `n_superclasses` are
/// capped like any other superclass. Collective.
pub fn choose_kept(
    comm: &dyn Comm,
    superclass_of_particle: &[usize],
    first_row: u64,
    n_superclasses: usize,
    cap: Option<usize>,
    seed: u64,
) -> Vec<bool> {
    let Some(cap) = cap else {
        return vec![true; superclass_of_particle.len()];
    };
    let mut groups = [superclass_of_particle
        .iter()
        .map(|&s| s as f64 + 1.0)
        .fold(n_superclasses as f64, f64::max)];
    comm.all_reduce_max_f64(&mut groups);
    let mut sizes = vec![0u64; groups[0] as usize];
    superclass_of_particle.iter().for_each(|&s| sizes[s] += 1);
    comm.all_reduce_sum_u64(&mut sizes);
    let items: Vec<(usize, u128)> = superclass_of_particle
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, particle_key(seed, s, first_row + i as u64)))
        .collect();
    let over: Vec<(usize, u64)> = (0..sizes.len())
        .filter(|&s| sizes[s] > cap as u64)
        .map(|s| (s, cap as u64))
        .collect();
    let mut limit: Vec<Option<u128>> = vec![Some(u128::MAX); sizes.len()];
    for ((s, _), t) in over.iter().zip(kth_smallest(comm, &items, &over)) {
        // cap = 0 keeps nothing.
        limit[*s] = t;
    }
    items
        .iter()
        .map(|&(s, key)| limit[s].is_some_and(|t| key <= t))
        .collect()
}

/// A particle's random key: 64 random bits from (seed, superclass, row), then the row.
fn particle_key(seed: u64, superclass: usize, row: u64) -> u128 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let h = mix(mix(mix(seed) ^ superclass as u64) ^ row);
    ((h as u128) << 64) | row as u128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;

    const SIZES: [usize; 6] = [500, 200, 100, 100, 50, 50];

    /// Superclass labels with `sizes[s]` particles of superclass s, interleaved.
    fn membership(sizes: &[usize]) -> Vec<usize> {
        let mut left = sizes.to_vec();
        let mut out = Vec::new();
        while left.iter().any(|&n| n > 0) {
            for (s, n) in left.iter_mut().enumerate() {
                if *n > 0 {
                    out.push(s);
                    *n -= 1;
                }
            }
        }
        out
    }

    fn kept_sizes(labels: &[usize], kept: &[bool], n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        for (&s, &k) in labels.iter().zip(kept) {
            out[s] += k as usize;
        }
        out
    }

    #[test]
    fn caps_follow_the_factor_and_the_override() {
        assert_eq!(superclass_cap(&SIZES, 1.0, None), Some(50));
        assert_eq!(superclass_cap(&SIZES, 0.5, None), Some(100));
        assert_eq!(superclass_cap(&SIZES, 0.3, None), Some(166));
        assert_eq!(superclass_cap(&SIZES, 0.5, Some(150)), Some(150));
        assert_eq!(superclass_cap(&SIZES, 0.0, None), None);
        assert_eq!(superclass_cap(&SIZES, 0.0, Some(150)), None);
        assert_eq!(superclass_cap(&SIZES, f64::NAN, None), None);
        assert_eq!(superclass_cap(&SIZES, 2.0, None), Some(50));
        assert_eq!(superclass_cap(&[3, 7], 0.3, None), Some(10));
    }

    #[test]
    fn empty_superclasses_are_ignored() {
        assert_eq!(superclass_cap(&[0, 80, 40, 0], 1.0, None), Some(40));
        assert_eq!(superclass_cap(&[0, 0], 1.0, None), None);
        assert_eq!(superclass_cap(&[], 1.0, None), None);
    }

    #[test]
    fn chosen_counts_are_exact() {
        let labels = membership(&SIZES);
        for (factor, max, expect) in [
            (1.0, None, vec![50; 6]),
            (0.5, None, vec![100, 100, 100, 100, 50, 50]),
            (0.5, Some(150), vec![150, 150, 100, 100, 50, 50]),
            (0.0, Some(150), SIZES.to_vec()),
        ] {
            let cap = superclass_cap(&SIZES, factor, max);
            let kept = choose_kept(&Single, &labels, 0, 6, cap, 11);
            assert_eq!(
                kept_sizes(&labels, &kept, 6),
                expect,
                "factor {factor}, max {max:?}"
            );
        }
    }

    #[test]
    fn choice_is_seeded() {
        let labels = membership(&SIZES);
        let a = choose_kept(&Single, &labels, 0, 6, Some(50), 1);
        assert_eq!(a, choose_kept(&Single, &labels, 0, 6, Some(50), 1));
        assert_ne!(a, choose_kept(&Single, &labels, 0, 6, Some(50), 2));
    }

    #[test]
    fn a_superclass_draw_ignores_the_others() {
        // Superclass 0's members and stream are the same whether or not superclass 1 exists.
        let only0 = vec![0usize; 30];
        let mut both = vec![0usize; 30];
        both.extend([1usize; 10]);
        let a = choose_kept(&Single, &only0, 0, 1, Some(12), 5);
        let b = choose_kept(&Single, &both, 0, 2, Some(12), 5);
        assert_eq!(a[..], b[..30]);
        assert!(b[30..].iter().all(|&k| k));
    }

    #[test]
    fn single_superclass_and_edge_cases() {
        let labels = vec![0usize; 40];
        let cap = superclass_cap(&[40], 1.0, None);
        assert_eq!(cap, Some(40));
        assert!(choose_kept(&Single, &labels, 0, 1, cap, 0)
            .iter()
            .all(|&k| k));
        assert_eq!(
            choose_kept(&Single, &labels, 0, 1, Some(7), 0)
                .iter()
                .filter(|&&k| k)
                .count(),
            7
        );
        assert!(choose_kept(&Single, &[], 0, 3, Some(1), 0).is_empty());
        // A label beyond n_superclasses is still capped.
        let kept = choose_kept(&Single, &[4, 4, 4], 0, 2, Some(1), 0);
        assert_eq!(kept.iter().filter(|&&k| k).count(), 1);
    }
}
