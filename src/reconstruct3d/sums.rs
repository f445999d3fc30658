//! The Fourier sums of the classes being reconstructed: every rank back-projects its own
//! particles (CTF-weighted, per-particle scale, symmetry copies, each into its half set's
//! accumulator, with 3D classification's [`crate::classify3d::model::backproject`]), and
//! the sums are all-reduced once (in pieces of at most 1 GiB), with each class's summed
//! weight and particle count packed into the same buffer.

use crate::classify3d::model::{self, ACC, PAD, WEIGHT};
use crate::comm::{agree, Comm};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::project3d::accumulator_len;
use crate::numerics::rotation::Mat3;
use crate::particles::{ParticleSource, WorkGrid};

use super::assignments::Assignments;
use super::config::Weighting;

/// Particles whose hard class is each selected class (f64 so it travels in the one buffer).
pub const COUNT: &str = "count";

/// The statistics of `k` classes on `grid`: two half-set accumulators per class (the layout
/// [`model::backproject`] fills), summed weights and counts.
pub fn layout(k: usize, grid: &WorkGrid) -> Result<StatsLayout> {
    let v = accumulator_len(grid.n, PAD);
    StatsLayout::new(&[(ACC, 3 * v * 2 * k), (WEIGHT, k), (COUNT, k)])
}

/// Bytes of the sums of `k` classes on `grid` (for the log and the memory check).
pub fn bytes(k: usize, grid: &WorkGrid) -> u64 {
    (3 * accumulator_len(grid.n, PAD) * 2 * k * 8) as u64
}

/// What is back-projected and how.
pub struct Sources<'a> {
    pub source: &'a ParticleSource,
    pub assignments: &'a Assignments,
    pub weighting: Weighting,
    /// Input class indices, in output order.
    pub selected: &'a [usize],
    /// Per-particle scale of each local row.
    pub scale: &'a [f64],
    pub syms: &'a [Mat3],
}

/// Back-projects the rank's particles into the sums of `s.selected` and sums them over
/// ranks (one all-reduce of the packed buffer); collective. A particle with no weight in any selected class is
/// not read into the sums.
pub fn accumulate(s: &Sources, grid: &WorkGrid, comm: &dyn Comm) -> Result<Stats> {
    let k = s.selected.len();
    let mut st = Stats::zeros(&layout(k, grid)?);
    let mut count = vec![0.0f64; k];
    let mut row = vec![0.0f64; k];
    let read = s.source.for_each_all(|idx, ids, block| {
        let (mut sel, mut scale, mut probs) = (Vec::new(), Vec::new(), Vec::new());
        for (&i, &l) in idx.iter().zip(ids) {
            if let Some(j) = s.selected.iter().position(|&c| c == s.assignments.class(l)) {
                count[j] += 1.0;
            }
            s.assignments
                .weights_into(l, s.weighting, s.selected, &mut row);
            if row.iter().any(|w| *w > 0.0) {
                sel.push(i);
                scale.push(s.scale[l]);
                probs.extend_from_slice(&row);
            }
        }
        model::backproject(&mut st, grid, block, &sel, &scale, &probs, s.syms)
    });
    agree(comm, read)?;
    st.segment_mut(COUNT)?.copy_from_slice(&count);
    all_reduce_in_pieces(st.as_mut_slice(), comm);
    Ok(st)
}

/// Values per piece of the all-reduce: 1 GiB of f64, far below MPI's `int` count limit.
const PIECE: usize = 1 << 27;

/// The sum over ranks of `buf`, in pieces of at most [`PIECE`] values: full-box sums of
/// several classes exceed 2³¹ values (box 256: 0.4·10⁹ per class), more than one MPI call
/// can count, and each piece needs only its own temporary copy.
fn all_reduce_in_pieces(buf: &mut [f64], comm: &dyn Comm) {
    for piece in buf.chunks_mut(PIECE) {
        comm.all_reduce_sum_f64(piece);
    }
}

/// The two half-set accumulators of output class `j`.
pub fn halves<'a>(st: &'a Stats, grid: &WorkGrid, j: usize) -> Result<[&'a [f64]; 2]> {
    let v = 3 * accumulator_len(grid.n, PAD);
    let acc = st.segment(ACC)?;
    Ok([
        &acc[v * 2 * j..v * (2 * j + 1)],
        &acc[v * (2 * j + 1)..v * (2 * j + 2)],
    ])
}
