//! The rebalancing rule of Rebalance 2D Classes: how many particles each superclass may keep
//! ([`superclass_cap`]) and which particles those are ([`choose_kept`]).
//!
//! With `n` the size of the smallest non-empty superclass, a `Rebalance factor` f in `(0, 1]`
//! caps every superclass at `⌊n / f⌋` particles, so that afterwards the smallest superclass is
//! at least f times the largest (f = 1: all end at `n`); f = 0 keeps every particle.
//! `Override maximum superclass size` N (only when f ≠ 0) caps every superclass at N instead,
//! which is the factor `n / N`. Particles above the cap are dropped uniformly at random with
//! a seeded generator, one independent stream per superclass.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
/// `superclass_of_particle[p]` is the superclass of particle `p`. Superclass `s` draws from
/// its own ChaCha8 stream (`seed`, stream `s`) over its members in increasing particle
/// order, so the result depends only on the membership and the seed. Labels at or above
/// `n_superclasses` are capped like any other superclass (their own streams).
pub fn choose_kept(
    superclass_of_particle: &[usize],
    n_superclasses: usize,
    cap: Option<usize>,
    seed: u64,
) -> Vec<bool> {
    let n_particles = superclass_of_particle.len();
    let Some(cap) = cap else {
        return vec![true; n_particles];
    };
    let members = members_of(superclass_of_particle, n_superclasses);
    let mut kept = vec![false; n_particles];
    for (s, group) in members.iter().enumerate() {
        for p in keep_in_group(group, cap, seed, s as u64) {
            kept[p] = true;
        }
    }
    kept
}

/// Particle indices of each superclass, ascending; at least `n_superclasses` groups.
fn members_of(superclass_of_particle: &[usize], n_superclasses: usize) -> Vec<Vec<usize>> {
    let n_groups = superclass_of_particle
        .iter()
        .map(|&s| s.saturating_add(1))
        .max()
        .unwrap_or(0)
        .max(n_superclasses);
    let mut members = vec![Vec::new(); n_groups];
    for (p, &s) in superclass_of_particle.iter().enumerate() {
        members[s].push(p);
    }
    members
}

/// The members of one superclass that stay: all of them if there are at most `cap`, else
/// `cap` drawn without replacement from stream `stream` of `seed`.
fn keep_in_group(group: &[usize], cap: usize, seed: u64, stream: u64) -> Vec<usize> {
    if group.len() <= cap {
        return group.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rand::seq::index::sample(&mut rng, group.len(), cap)
        .into_iter()
        .map(|i| group[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let kept = choose_kept(&labels, 6, cap, 11);
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
        let a = choose_kept(&labels, 6, Some(50), 1);
        assert_eq!(a, choose_kept(&labels, 6, Some(50), 1));
        assert_ne!(a, choose_kept(&labels, 6, Some(50), 2));
    }

    #[test]
    fn a_superclass_draw_ignores_the_others() {
        // Superclass 0's members and stream are the same whether or not superclass 1 exists.
        let only0 = vec![0usize; 30];
        let mut both = vec![0usize; 30];
        both.extend([1usize; 10]);
        let a = choose_kept(&only0, 1, Some(12), 5);
        let b = choose_kept(&both, 2, Some(12), 5);
        assert_eq!(a[..], b[..30]);
        assert!(b[30..].iter().all(|&k| k));
    }

    #[test]
    fn single_superclass_and_edge_cases() {
        let labels = vec![0usize; 40];
        let cap = superclass_cap(&[40], 1.0, None);
        assert_eq!(cap, Some(40));
        assert!(choose_kept(&labels, 1, cap, 0).iter().all(|&k| k));
        assert_eq!(
            choose_kept(&labels, 1, Some(7), 0)
                .iter()
                .filter(|&&k| k)
                .count(),
            7
        );
        assert!(choose_kept(&[], 3, Some(1), 0).is_empty());
        // A label beyond n_superclasses is still capped.
        let kept = choose_kept(&[4, 4, 4], 2, Some(1), 0);
        assert_eq!(kept.iter().filter(|&&k| k).count(), 1);
    }
}
