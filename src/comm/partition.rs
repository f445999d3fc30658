//! Partitioning of particles over ranks: rank r owns one contiguous block, block sizes
//! differ by at most one, and the lower ranks get the larger blocks.

use std::ops::Range;

/// The block of `n` particles owned by `rank` of `size` ranks.
pub fn partition(n: usize, size: usize, rank: usize) -> Range<usize> {
    assert!(size > 0 && rank < size, "rank {rank} of {size}");
    let base = n / size;
    let extra = n % size;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tile_the_range() {
        for n in [0, 1, 2, 7, 100, 101] {
            for size in 1..6 {
                let mut next = 0;
                for r in 0..size {
                    let b = partition(n, size, r);
                    assert_eq!(b.start, next);
                    let want = n / size + usize::from(r < n % size);
                    assert_eq!(b.len(), want);
                    next = b.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
