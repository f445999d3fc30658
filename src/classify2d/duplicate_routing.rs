//! Duplicate removal over ranks without gathering every pick on one rank. Duplicates can
//! only be picks of the same micrograph, so each micrograph has an owner rank (a hash of its
//! key, modulo the number of ranks): every rank sends each of its picks to the owner of its
//! micrograph (one all-to-all), each owner decides for the picks it received with
//! [`find_duplicates`], and sends every verdict back to the rank the pick came from (a
//! second all-to-all, one byte per pick).
//!
//! The result equals the serial [`find_duplicates`] over all picks on any number of ranks:
//! an owner sorts what it received by global row, so within a micrograph the picks keep the
//! input order that breaks score ties, and picks of different micrographs never interact.
//!
//! Traffic and memory: 57 bytes per pick each way out, one byte back; a rank holds its own
//! picks and those of the micrographs it owns (about N / ranks of each), never all N.

use crate::comm::Comm;

use super::duplicates::{find_duplicates, Pick};

/// A pick with its place in the input and, on simulated data, the truth about it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutedPick {
    /// Global row of the particle in the input (input order breaks score ties).
    pub row: u64,
    pub pick: Pick,
    pub truth: Option<PickTruth>,
}

/// The simulator's record of a pick (`uid`, `gt/is_duplicate`, `gt/duplicate_of`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PickTruth {
    pub uid: u64,
    pub is_duplicate: bool,
    pub duplicate_of: u64,
}

/// Simulated duplicate pairs against the removals, summed over the micrographs' owners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruthCounts {
    /// Particles marked as a duplicate of another.
    pub pairs: u64,
    /// Pairs that lost exactly one member.
    pub pairs_found: u64,
    /// Particles in no pair.
    pub other_particles: u64,
    /// Removed particles in no pair.
    pub false_removals: u64,
}

/// What the ranks decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decisions {
    /// For each of this rank's picks (in the order given): rejected as a duplicate?
    pub rejected: Vec<bool>,
    /// Picks removed over all ranks.
    pub removed: u64,
    /// Against the truth, when every pick of every rank carries it.
    pub truth: Option<TruthCounts>,
}

const RECORD: usize = 57;

/// The rank that decides for `micrograph` (a SplitMix64 mix, so that consecutive ids spread).
pub fn owner_of(micrograph: u64, ranks: usize) -> usize {
    let mut z = micrograph.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % ranks as u64) as usize
}

fn encode(p: &RoutedPick, out: &mut Vec<u8>) {
    let t = p.truth.unwrap_or(PickTruth {
        uid: 0,
        is_duplicate: false,
        duplicate_of: 0,
    });
    out.extend_from_slice(&p.row.to_le_bytes());
    out.extend_from_slice(&p.pick.micrograph.to_le_bytes());
    for v in [p.pick.x_a, p.pick.y_a, p.pick.score] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&t.uid.to_le_bytes());
    out.extend_from_slice(&t.duplicate_of.to_le_bytes());
    out.push(u8::from(p.truth.is_some()) | (u8::from(t.is_duplicate) << 1));
}

fn decode(c: &[u8]) -> RoutedPick {
    let u = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
    let f = |i: usize| f64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
    let flags = c[56];
    RoutedPick {
        row: u(0),
        pick: Pick {
            micrograph: u(8),
            x_a: f(16),
            y_a: f(24),
            score: f(32),
        },
        truth: (flags & 1 == 1).then(|| PickTruth {
            uid: u(40),
            is_duplicate: flags & 2 == 2,
            duplicate_of: u(48),
        }),
    }
}

/// Decides which of every rank's `picks` are duplicates closer than `min_separation_a` (Å);
/// collective (two all-to-alls and one all-reduce). Any rank may hold no picks.
pub fn remove_duplicates(
    comm: &dyn Comm,
    picks: &[RoutedPick],
    min_separation_a: f64,
) -> Decisions {
    let ranks = comm.size();
    // Out: each pick to its micrograph's owner, remembering where it went.
    let mut sent: Vec<Vec<usize>> = vec![Vec::new(); ranks];
    let mut out: Vec<Vec<u8>> = vec![Vec::new(); ranks];
    for (i, p) in picks.iter().enumerate() {
        let o = owner_of(p.pick.micrograph, ranks);
        sent[o].push(i);
        encode(p, &mut out[o]);
    }
    let received = comm.all_to_all_bytes(&out);
    drop(out);

    // Decide for the owned micrographs, in global row order.
    let mut owned: Vec<(RoutedPick, usize, usize)> = Vec::new(); // (pick, from rank, index)
    for (from, part) in received.iter().enumerate() {
        for (j, c) in part.chunks_exact(RECORD).enumerate() {
            owned.push((decode(c), from, j));
        }
    }
    drop(received);
    owned.sort_by_key(|(p, _, _)| p.row);
    let just: Vec<Pick> = owned.iter().map(|(p, _, _)| p.pick).collect();
    let rejected = find_duplicates(&just, min_separation_a);
    drop(just);
    let all_truth = owned.iter().all(|(p, _, _)| p.truth.is_some());
    let local = if all_truth {
        let t: Vec<PickTruth> = owned.iter().filter_map(|(p, _, _)| p.truth).collect();
        truth_counts(&t, &rejected)
    } else {
        TruthCounts::default()
    };

    // Back: one verdict byte per pick, in the order the sender sent them.
    let mut back: Vec<Vec<u8>> = received_sizes(&owned, ranks)
        .into_iter()
        .map(|n| vec![0u8; n])
        .collect();
    for ((_, from, j), &r) in owned.iter().zip(&rejected) {
        back[*from][*j] = u8::from(r);
    }
    let replies = comm.all_to_all_bytes(&back);
    let mut mine = vec![false; picks.len()];
    for (owner, idx) in sent.iter().enumerate() {
        for (k, &i) in idx.iter().enumerate() {
            mine[i] = replies[owner][k] == 1;
        }
    }

    let mut sums = [
        rejected.iter().filter(|&&r| r).count() as u64,
        u64::from(!all_truth),
        local.pairs,
        local.pairs_found,
        local.other_particles,
        local.false_removals,
    ];
    comm.all_reduce_sum_u64(&mut sums);
    Decisions {
        rejected: mine,
        removed: sums[0],
        truth: (sums[1] == 0).then_some(TruthCounts {
            pairs: sums[2],
            pairs_found: sums[3],
            other_particles: sums[4],
            false_removals: sums[5],
        }),
    }
}

/// How many picks this rank received from each rank.
fn received_sizes(owned: &[(RoutedPick, usize, usize)], ranks: usize) -> Vec<usize> {
    let mut n = vec![0usize; ranks];
    for (_, from, _) in owned {
        n[*from] += 1;
    }
    n
}

/// The truth counts of one owner's picks. A pair is seen when both members are here, which
/// holds for the simulator's duplicates (a second pick on the same micrograph).
fn truth_counts(t: &[PickTruth], rejected: &[bool]) -> TruthCounts {
    let row: std::collections::HashMap<u64, usize> =
        t.iter().enumerate().map(|(i, p)| (p.uid, i)).collect();
    let mut c = TruthCounts::default();
    let mut in_pair = vec![false; t.len()];
    for (i, p) in t.iter().enumerate() {
        if p.is_duplicate {
            c.pairs += 1;
            in_pair[i] = true;
            if let Some(&j) = row.get(&p.duplicate_of) {
                in_pair[j] = true;
                if rejected[i] != rejected[j] {
                    c.pairs_found += 1;
                }
            }
        }
    }
    c.other_particles = in_pair.iter().filter(|&&p| !p).count() as u64;
    c.false_removals = (0..t.len()).filter(|&i| rejected[i] && !in_pair[i]).count() as u64;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;

    fn routed(row: u64, micrograph: u64, x_a: f64, score: f64) -> RoutedPick {
        RoutedPick {
            row,
            pick: Pick {
                micrograph,
                x_a,
                y_a: 0.0,
                score,
            },
            truth: None,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut p = routed(7, u64::MAX, -1.5, f64::NAN);
        p.truth = Some(PickTruth {
            uid: 3,
            is_duplicate: true,
            duplicate_of: u64::MAX,
        });
        for q in [p, routed(0, 0, 2.0, 1.0)] {
            let mut b = Vec::new();
            encode(&q, &mut b);
            assert_eq!(b.len(), RECORD);
            let d = decode(&b);
            assert_eq!(
                (d.row, d.pick.micrograph, d.truth),
                (q.row, q.pick.micrograph, q.truth)
            );
            assert_eq!(d.pick.score.to_bits(), q.pick.score.to_bits());
        }
    }

    #[test]
    fn owners_spread_and_stay_in_range() {
        let mut n = [0usize; 3];
        for m in 0..3000u64 {
            n[owner_of(m, 3)] += 1;
        }
        assert!(n.iter().all(|&c| c > 900), "{n:?}");
        assert!((0..100).all(|m| owner_of(m, 1) == 0));
    }

    #[test]
    fn one_rank_equals_the_serial_search_in_any_input_order() {
        // Two micrographs, interleaved; ties broken by row, not by position in `picks`.
        let picks = vec![
            routed(3, 1, 10.0, 1.0),
            routed(0, 1, 0.0, 1.0),
            routed(1, 2, 0.0, 5.0),
            routed(2, 2, 5.0, 9.0),
        ];
        let d = remove_duplicates(&Single, &picks, 20.0);
        // Micrograph 1: rows 0 and 3 tie, row 0 kept. Micrograph 2: row 2 scores higher.
        assert_eq!(d.rejected, [true, false, true, false]);
        assert_eq!((d.removed, d.truth), (2, None));
        let none = remove_duplicates(&Single, &[], 20.0);
        assert!(none.rejected.is_empty() && none.removed == 0);
        assert_eq!(none.truth, Some(TruthCounts::default()));
    }

    #[test]
    fn truth_counts_pairs_found_and_false_removals() {
        let t = |uid, dup, of| PickTruth {
            uid,
            is_duplicate: dup,
            duplicate_of: of,
        };
        let truth = [
            t(1, false, 1),
            t(2, true, 1),
            t(3, false, 3),
            t(4, false, 4),
        ];
        let c = truth_counts(&truth, &[false, true, true, false]);
        assert_eq!(
            c,
            TruthCounts {
                pairs: 1,
                pairs_found: 1,
                other_particles: 2,
                false_removals: 1
            }
        );
    }
}
