//! Online-EM batch selection that does not depend on the number of ranks.
//!
//! Every rank computes the same global permutation of 0..N per epoch from the config seed
//! (ChaCha8, stream = epoch number), cuts it into batches of `batch_size`, and keeps only
//! the members it owns ([`local_part`]). Hence the same seed gives the same batches on 1,
//! 2 or 64 ranks.
//!
//! ```text
//!   B        = ⌊N / batch_size⌋                   batches per epoch
//!   epoch(b) = ⌊b / B⌋,  j = b mod B
//!   batch(b) = sorted( perm_epoch(b)[ j·batch_size .. (j+1)·batch_size ] )
//! ```
//!
//! Choice: the N mod batch_size particles left at the end of an epoch's permutation are not
//! used in that epoch (the next epoch is reshuffled, so nobody is left out for long) instead
//! of wrapping into the next epoch; wrapping could put the same particle twice in one batch.
//! A batch size above N is clamped to N (every batch is then all particles).

use std::ops::Range;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::invalid;
use crate::error::Result;

/// The global permutation of 0..n for `epoch`: ChaCha8 seeded with `seed`, stream `epoch`,
/// Fisher–Yates shuffle.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng);
    p
}

/// Batch b of an online-EM run over `n` particles, with the current epoch's permutation
/// cached.
#[derive(Clone, Debug)]
pub struct OnlineBatches {
    n: usize,
    batch_size: usize,
    seed: u64,
    cached: Option<(u64, Vec<usize>)>,
}

impl OnlineBatches {
    /// `n` ≥ 1 particles, `batch_size` ≥ 1 (clamped to n).
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if n == 0 {
            return Err(invalid(
                "particles",
                "online-EM needs at least one particle",
            ));
        }
        if batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        Ok(Self {
            n,
            batch_size: batch_size.min(n),
            seed,
            cached: None,
        })
    }
    /// The effective batch size (after clamping to N).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    /// B = ⌊N / batch_size⌋.
    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.batch_size
    }
    /// The epoch batch `b` belongs to.
    pub fn epoch_of(&self, b: usize) -> u64 {
        (b / self.batches_per_epoch()) as u64
    }
    /// The global particle indices of batch `b`, ascending, no duplicates.
    pub fn batch(&mut self, b: usize) -> Vec<usize> {
        let epoch = self.epoch_of(b);
        if self.cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.cached = Some((epoch, permutation(self.n, self.seed, epoch)));
        }
        let perm = &self.cached.as_ref().expect("just cached").1;
        let j = b % self.batches_per_epoch();
        let mut out = perm[j * self.batch_size..(j + 1) * self.batch_size].to_vec();
        out.sort_unstable();
        out
    }
}

/// The members of `batch` that lie in this rank's block `mine`, ascending.
pub fn local_part(batch: &[usize], mine: &Range<usize>) -> Vec<usize> {
    let mut out: Vec<usize> = batch.iter().copied().filter(|i| mine.contains(i)).collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::partition;

    #[test]
    fn permutation_is_seeded_and_a_permutation() {
        let a = permutation(1000, 42, 0);
        assert_eq!(a, permutation(1000, 42, 0));
        assert_ne!(a, permutation(1000, 43, 0));
        assert_ne!(a, permutation(1000, 42, 1));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn an_epoch_covers_every_particle_once_up_to_the_remainder() {
        let mut ob = OnlineBatches::new(103, 10, 5).unwrap();
        assert_eq!(ob.batches_per_epoch(), 10);
        let mut seen = vec![0u32; 103];
        for b in 0..10 {
            let batch = ob.batch(b);
            assert_eq!(batch.len(), 10);
            assert!(batch.windows(2).all(|w| w[0] < w[1]));
            batch.iter().for_each(|&i| seen[i] += 1);
        }
        assert_eq!(seen.iter().filter(|&&c| c == 1).count(), 100);
        assert!(seen.iter().all(|&c| c <= 1));
        // The next epoch is reshuffled.
        assert_eq!(ob.epoch_of(10), 1);
        let mut fresh = OnlineBatches::new(103, 10, 5).unwrap();
        assert_ne!(ob.batch(10), fresh.batch(0));
        // Pure in b: a fresh object (no cache) gives the same batch.
        assert_eq!(fresh.batch(13), ob.batch(13));
        assert_eq!(
            ob.batch(3),
            OnlineBatches::new(103, 10, 5).unwrap().batch(3)
        );
    }

    #[test]
    fn batch_does_not_depend_on_the_number_of_ranks() {
        let n = 257;
        let mut ob = OnlineBatches::new(n, 40, 11).unwrap();
        for b in [0, 3, 7, 20] {
            let batch = ob.batch(b);
            for size in [1, 2, 3, 64] {
                let mut union = Vec::new();
                for r in 0..size {
                    let mine = partition(n, size, r);
                    let local = local_part(&batch, &mine);
                    assert!(local.iter().all(|i| mine.contains(i)));
                    assert!(local.windows(2).all(|w| w[0] < w[1]));
                    union.extend(local);
                }
                assert_eq!(union, batch);
            }
        }
    }

    #[test]
    fn clamps_and_validates() {
        let mut ob = OnlineBatches::new(5, 100, 1).unwrap();
        assert_eq!(ob.batch_size(), 5);
        assert_eq!(ob.batch(0), vec![0, 1, 2, 3, 4]);
        assert_eq!(ob.batch(9), vec![0, 1, 2, 3, 4]);
        assert!(OnlineBatches::new(0, 1, 1).is_err());
        assert!(OnlineBatches::new(5, 0, 1).is_err());
        assert_eq!(local_part(&[9, 1, 5], &(0..6)), vec![1, 5]);
    }
}
