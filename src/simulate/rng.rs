//! Random streams of the simulator. Every random quantity comes from a ChaCha8 stream keyed
//! by (seed, purpose) and numbered by an index (particle row, micrograph, ...), so a value
//! depends only on the seed and on what it is for — never on batch size, thread count or
//! the order in which particles are generated.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is used for (part of its key).
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub(crate) enum Purpose {
    /// The synthetic object (blobs, domains).
    Phantom = 1,
    /// The viewing directions of views2d.
    Views = 2,
    /// Which rows are duplicates / junk (one sequential stream).
    Layout = 3,
    /// Per micrograph: defocus, astigmatism, particle positions.
    Micrograph = 4,
    /// Per row: class, pose, shift, defocus offset, junk seed, duplicate offset.
    Particle = 5,
    /// Per row: the pixel noise.
    Noise = 6,
    /// Per calibration sample: SNR calibration draws.
    Calibration = 7,
    /// Per junk object (numbered by its junk seed).
    Junk = 8,
    Uid = 9,
    MicrographUid = 10,
}

/// The stream `index` of `purpose` for `seed`.
pub(crate) fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"emclass\0");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// SplitMix64's finaliser: a bijection of u64 that scrambles all bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random-looking identifier for `index`, unique among all indices of the same
/// (seed, purpose): `mix64(index ^ k)` with `k` derived from both is a bijection of `index`.
pub(crate) fn unique_id(seed: u64, purpose: Purpose, index: u64) -> u64 {
    let k = mix64(mix64(seed) ^ (purpose as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    mix64(index ^ k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: u64 = stream(1, Purpose::Noise, 5).gen();
        assert_eq!(a, stream(1, Purpose::Noise, 5).gen::<u64>());
        assert_ne!(a, stream(1, Purpose::Noise, 6).gen::<u64>());
        assert_ne!(a, stream(2, Purpose::Noise, 5).gen::<u64>());
        assert_ne!(a, stream(1, Purpose::Particle, 5).gen::<u64>());
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<u64> = (0..100_000)
            .map(|i| unique_id(3, Purpose::Uid, i))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 100_000);
        assert_ne!(unique_id(3, Purpose::Uid, 0), unique_id(4, Purpose::Uid, 0));
    }
}
