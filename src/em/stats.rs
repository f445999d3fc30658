//! Sufficient statistics of an EM iteration as one flat f64 buffer with named segments
//! (e.g. per-class Fourier numerators and denominators, noise power per shell, class
//! weights), so the M-step's whole communication is one all-reduce of that buffer
//! (RELION's `MlWsumModel::pack`, without the hand-written packing).
//!
//! ```text
//!   buffer = [ seg_0 | seg_1 | ... ],  offset(seg_i) = Σ_{j<i} len(seg_j)
//!   all_reduce:  S ← Σ_ranks S_rank          (element-wise, f64)
//!   online EM :  S ← (1 − η)·S + η·S_batch   (Stats::blend)
//! ```

use std::ops::Range;

use super::invalid;
use crate::comm::Comm;
use crate::error::Result;

/// Named segments and their lengths, in buffer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsLayout {
    names: Vec<String>,
    ranges: Vec<Range<usize>>,
    len: usize,
}

impl StatsLayout {
    /// Segments in order; names must be unique (lengths may be 0).
    pub fn new<S: AsRef<str>>(segments: &[(S, usize)]) -> Result<Self> {
        let mut names: Vec<String> = Vec::with_capacity(segments.len());
        let mut ranges = Vec::with_capacity(segments.len());
        let mut len = 0usize;
        for (name, n) in segments {
            let name = name.as_ref();
            if names.iter().any(|m| m == name) {
                return Err(invalid(
                    "stats layout",
                    format!("segment `{name}` appears twice"),
                ));
            }
            names.push(name.to_string());
            ranges.push(len..len + n);
            len += n;
        }
        Ok(Self { names, ranges, len })
    }
    /// Total number of f64 values.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The segment names in buffer order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
    /// Where segment `name` lies in the flat buffer.
    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.names
            .iter()
            .position(|m| m == name)
            .map(|i| self.ranges[i].clone())
            .ok_or_else(|| invalid("stats", format!("no segment named `{name}`")))
    }
}

/// One set of sufficient statistics laid out by a [`StatsLayout`].
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    layout: StatsLayout,
    buf: Vec<f64>,
}

impl Stats {
    /// All zeros.
    pub fn zeros(layout: &StatsLayout) -> Self {
        Self {
            layout: layout.clone(),
            buf: vec![0.0; layout.len()],
        }
    }
    /// Statistics with `layout` holding `buf` (e.g. from a checkpoint); the lengths must agree.
    pub fn from_slice(layout: &StatsLayout, buf: &[f64]) -> Result<Self> {
        if buf.len() != layout.len() {
            return Err(invalid(
                "statistics",
                format!(
                    "{} values do not fit a layout of {}",
                    buf.len(),
                    layout.len()
                ),
            ));
        }
        Ok(Self {
            layout: layout.clone(),
            buf: buf.to_vec(),
        })
    }
    pub fn layout(&self) -> &StatsLayout {
        &self.layout
    }
    /// Resets every value to 0 (keeps the allocation).
    pub fn clear(&mut self) {
        self.buf.iter_mut().for_each(|v| *v = 0.0);
    }
    fn same_layout(&self, other: &Stats) -> Result<()> {
        if self.layout != other.layout {
            return Err(invalid(
                "stats",
                "the two statistics have different layouts",
            ));
        }
        Ok(())
    }
    /// S ← S + other.
    pub fn add(&mut self, other: &Stats) -> Result<()> {
        self.same_layout(other)?;
        self.buf
            .iter_mut()
            .zip(&other.buf)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
    /// S ← a·S (online-EM decay).
    pub fn scale(&mut self, a: f64) {
        self.buf.iter_mut().for_each(|v| *v *= a);
    }
    /// S ← (1 − η)·S + η·batch, the online-EM update with learning rate η ∈ [0, 1].
    pub fn blend(&mut self, batch: &Stats, eta: f64) -> Result<()> {
        self.same_layout(batch)?;
        if !(0.0..=1.0).contains(&eta) {
            return Err(invalid("learning rate", format!("{eta} is not in [0, 1]")));
        }
        self.buf
            .iter_mut()
            .zip(&batch.buf)
            .for_each(|(s, b)| *s = (1.0 - eta) * *s + eta * b);
        Ok(())
    }
    /// Segment `name` (read).
    pub fn segment(&self, name: &str) -> Result<&[f64]> {
        let r = self.layout.range(name)?;
        Ok(&self.buf[r])
    }
    /// Segment `name` (accumulate into it).
    pub fn segment_mut(&mut self, name: &str) -> Result<&mut [f64]> {
        let r = self.layout.range(name)?;
        Ok(&mut self.buf[r])
    }
    /// The whole flat buffer.
    pub fn as_slice(&self) -> &[f64] {
        &self.buf
    }
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.buf
    }
    /// S ← Σ_ranks S: one all-reduce of the whole buffer; collective (every rank calls it).
    pub fn all_reduce(&mut self, comm: &dyn Comm) {
        comm.all_reduce_sum_f64(&mut self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::sync::{Arc, Barrier, Mutex};

    fn layout() -> StatsLayout {
        StatsLayout::new(&[("num", 6), ("den", 3), ("noise", 4), ("weights", 2)]).unwrap()
    }

    fn random(l: &StatsLayout, seed: u64) -> Stats {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Stats::zeros(l);
        s.as_mut_slice()
            .iter_mut()
            .for_each(|v| *v = rng.gen_range(-1.0..1.0));
        s
    }

    /// Ranks emulated by threads: a shared accumulator and a barrier, the MPI semantics
    /// of an all-reduce (every rank ends with the sum).
    struct ThreadComm {
        rank: usize,
        size: usize,
        acc: Arc<Mutex<Vec<f64>>>,
        barrier: Arc<Barrier>,
    }

    impl Comm for ThreadComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
            {
                let mut acc = self.acc.lock().unwrap();
                if acc.is_empty() {
                    acc.resize(buf.len(), 0.0);
                }
                acc.iter_mut().zip(buf.iter()).for_each(|(a, b)| *a += b);
            }
            self.barrier.wait();
            buf.copy_from_slice(&self.acc.lock().unwrap());
            self.barrier.wait();
            if self.rank == 0 {
                self.acc.lock().unwrap().clear();
            }
            self.barrier.wait();
        }
        fn all_reduce_sum_u64(&self, _buf: &mut [u64]) {
            unimplemented!("not used by Stats")
        }
        fn broadcast_bytes(&self, _root: usize, _buf: &mut Vec<u8>) {
            unimplemented!("not used by Stats")
        }
        fn gather_bytes(&self, _root: usize, _mine: &[u8]) -> Option<Vec<Vec<u8>>> {
            unimplemented!("not used by Stats")
        }
        fn all_reduce_max_f64(&self, _buf: &mut [f64]) {
            unimplemented!("not used by Stats")
        }
        fn all_to_all_bytes(&self, _send: &[Vec<u8>]) -> Vec<Vec<u8>> {
            unimplemented!("not used by Stats")
        }
        fn barrier(&self) {
            self.barrier.wait();
        }
    }

    #[test]
    fn layout_offsets_and_names() {
        let l = layout();
        assert_eq!(l.len(), 15);
        assert_eq!(l.range("num").unwrap(), 0..6);
        assert_eq!(l.range("noise").unwrap(), 9..13);
        assert_eq!(
            l.names().collect::<Vec<_>>(),
            ["num", "den", "noise", "weights"]
        );
        assert!(l.range("nope").is_err());
        assert!(StatsLayout::new(&[("a", 1), ("a", 2)]).is_err());
    }

    #[test]
    fn segments_add_scale_blend() {
        let l = layout();
        let mut s = Stats::zeros(&l);
        s.segment_mut("den")
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0]);
        s.segment_mut("weights").unwrap()[1] = 4.0;
        assert_eq!(s.as_slice()[6..9], [1.0, 2.0, 3.0]);
        assert_eq!(s.as_slice()[14], 4.0);
        let t = s.clone();
        s.add(&t).unwrap();
        assert_eq!(s.segment("den").unwrap(), &[2.0, 4.0, 6.0]);
        s.scale(0.5);
        assert_eq!(s, t);
        let mut b = Stats::zeros(&l);
        b.segment_mut("den")
            .unwrap()
            .copy_from_slice(&[5.0, 6.0, 7.0]);
        s.blend(&b, 0.25).unwrap();
        assert_eq!(s.segment("den").unwrap(), &[2.0, 3.0, 4.0]);
        assert!(s.blend(&b, 1.5).is_err());
        let other = Stats::zeros(&StatsLayout::new(&[("num", 15)]).unwrap());
        assert!(s.add(&other).is_err());
        s.clear();
        assert!(s.as_slice().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn single_all_reduce_is_identity() {
        let mut s = random(&layout(), 3);
        let before = s.clone();
        s.all_reduce(&Single);
        assert_eq!(s, before);
    }

    #[test]
    fn all_reduce_over_emulated_ranks_equals_the_serial_sum() {
        let l = layout();
        for size in [2, 3, 5] {
            let parts: Vec<Stats> = (0..size).map(|r| random(&l, 100 + r as u64)).collect();
            let mut serial = Stats::zeros(&l);
            parts.iter().for_each(|p| serial.add(p).unwrap());
            let acc = Arc::new(Mutex::new(Vec::new()));
            let barrier = Arc::new(Barrier::new(size));
            let handles: Vec<_> = parts
                .into_iter()
                .enumerate()
                .map(|(rank, mut s)| {
                    let comm = ThreadComm {
                        rank,
                        size,
                        acc: acc.clone(),
                        barrier: barrier.clone(),
                    };
                    std::thread::spawn(move || {
                        // Two iterations: the accumulator must reset between reductions.
                        s.all_reduce(&comm);
                        let first = s.clone();
                        s.clear();
                        s.segment_mut("weights").unwrap()[0] = 1.0;
                        s.all_reduce(&comm);
                        (first, s)
                    })
                })
                .collect();
            for h in handles {
                let (first, second) = h.join().unwrap();
                for (a, b) in first.as_slice().iter().zip(serial.as_slice()) {
                    assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
                }
                assert_eq!(second.segment("weights").unwrap(), &[size as f64, 0.0]);
            }
        }
    }
}
