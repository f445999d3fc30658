//! Where a rank's pre-processed particles come from each iteration: held in memory, or
//! streamed from the HDF5 file block by block when they do not fit in `max_resident_gb`.
//!
//! Either way the engine sees the same thing: [`ParticleSource::for_each_block`] hands it
//! the particles it asked for in blocks of at most [`BLOCK_PARTICLES`] consecutive local
//! rows, in row order, so the computation (and its summation order) is the same resident
//! or streamed. Streaming reads the next block on a second thread while the current one is
//! scored (read-ahead); at most three blocks exist at once (being scored, queued, being
//! read), so a rank's particle memory is bounded whatever its share of the dataset.
//!
//! A streamed block re-reads only its rows' metadata (`Dataset::open_range`), the CTF fields
//! and the images of the rows asked for (contiguous runs in one read each), then normalises,
//! transforms and crops them exactly as the resident load does.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use crate::dataset::Dataset;
use crate::em::batches::local_part;
use crate::error::{Error, Result};
use crate::numerics::ctf::Ctf;
use crate::numerics::fft::Complex32;

use super::block::{self, Needs, Particles};
use super::grid::WorkGrid;

/// Local rows per block (a multiple of the E-step's 16-particle GEMM batch).
pub const BLOCK_PARTICLES: usize = 1024;

/// Blocks alive at once when streaming: being scored, queued, being read.
pub const BLOCKS_IN_FLIGHT: usize = 3;

/// How the particles are held.
enum Store {
    Resident(Particles),
    Streamed {
        path: PathBuf,
        grid: WorkGrid,
        needs: Needs,
    },
}

/// A rank's particles (global rows `rows` of the file).
pub struct ParticleSource {
    rows: Range<usize>,
    store: Store,
}

/// The memory plan of one rank, logged at start.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Pre-processed bytes of one particle (spectrum on the working grid + CTF + pose).
    pub bytes_per_particle: usize,
    /// Bytes all of this rank's particles would take resident.
    pub resident_bytes: u64,
    /// The budget, bytes.
    pub budget_bytes: u64,
    /// True when the particles are streamed from the file each iteration.
    pub streamed: bool,
}

impl MemoryPlan {
    /// Resident when the rank's share fits in `max_resident_gb` (GiB; 0 always streams).
    pub fn new(n_local: usize, grid: &WorkGrid, needs: Needs, max_resident_gb: f64) -> Self {
        let bytes_per_particle = grid.len() * std::mem::size_of::<Complex32>()
            + if needs.ctf {
                std::mem::size_of::<Ctf>()
            } else {
                0
            }
            + if needs.poses {
                std::mem::size_of::<crate::numerics::rotation::Mat3>()
            } else {
                0
            }
            + 1;
        let resident_bytes = (n_local * bytes_per_particle) as u64;
        let budget_bytes = (max_resident_gb * (1u64 << 30) as f64) as u64;
        MemoryPlan {
            bytes_per_particle,
            resident_bytes,
            budget_bytes,
            streamed: max_resident_gb <= 0.0 || resident_bytes > budget_bytes,
        }
    }

    /// Bytes of particle data held at once.
    pub fn held_bytes(&self) -> u64 {
        if self.streamed {
            (BLOCKS_IN_FLIGHT * BLOCK_PARTICLES * self.bytes_per_particle) as u64
        } else {
            self.resident_bytes
        }
    }

    /// One line for the log.
    pub fn describe(&self, n_local: usize) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if self.streamed {
            format!(
                "streamed: {n_local} particles × {} B = {:.2} GiB pre-processed exceeds max_resident_gb {:.2}; read each iteration in blocks of {BLOCK_PARTICLES} with read-ahead ({:.0} MiB held)",
                self.bytes_per_particle,
                gib(self.resident_bytes),
                gib(self.budget_bytes),
                self.held_bytes() as f64 / (1u64 << 20) as f64
            )
        } else {
            format!(
                "resident: {n_local} particles × {} B = {:.2} GiB pre-processed (max_resident_gb {:.2})",
                self.bytes_per_particle,
                gib(self.resident_bytes),
                gib(self.budget_bytes)
            )
        }
    }
}

impl ParticleSource {
    /// Loads the rank's rows into memory (`ds` opened on `rows`).
    pub fn resident(
        ds: &Dataset,
        rows: Range<usize>,
        grid: &WorkGrid,
        needs: Needs,
    ) -> Result<Self> {
        let all: Vec<usize> = (0..rows.len()).collect();
        let parts = block::load(ds, rows.start, &all, grid, needs)?;
        Ok(ParticleSource {
            rows,
            store: Store::Resident(parts),
        })
    }

    /// Particles already in memory as the rank's rows `rows` (tests, benchmarks).
    pub fn in_memory(parts: Particles, rows: Range<usize>) -> Self {
        assert_eq!(parts.len(), rows.len(), "particles for rows");
        ParticleSource {
            rows,
            store: Store::Resident(parts),
        }
    }

    /// Streams the rows `rows` of `path` each time they are asked for. The caller has
    /// opened and checked the range once (fields, CTF, image references).
    pub fn streamed(path: &Path, rows: Range<usize>, grid: &WorkGrid, needs: Needs) -> Self {
        ParticleSource {
            rows,
            store: Store::Streamed {
                path: path.to_path_buf(),
                grid: grid.clone(),
                needs,
            },
        }
    }

    /// Checks the metadata, image references and the fields `needs` asks for of rows
    /// `rows` of `path`, a block of rows at a time, holding none of them afterwards.
    pub fn check_streamed(path: &Path, rows: Range<usize>, needs: Needs) -> Result<()> {
        const CHECK_ROWS: usize = 64 * BLOCK_PARTICLES;
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + CHECK_ROWS).min(rows.end);
            let ds = Dataset::open_range(path, start..end)?;
            block::check(&ds, needs)?;
            start = end;
        }
        Ok(())
    }

    /// Number of local particles.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Global row of local particle 0.
    pub fn first_row(&self) -> usize {
        self.rows.start
    }
    /// Local indices of the global rows in `global` that this rank owns (sorted).
    pub fn local(&self, global: &[usize]) -> Vec<usize> {
        local_part(global, &self.rows)
            .into_iter()
            .map(|g| g - self.rows.start)
            .collect()
    }

    /// Calls `f(idx, ids, block)` for consecutive groups of the sorted local rows `locals`
    /// (no group spans a [`BLOCK_PARTICLES`] boundary): `ids` are the group's local rows
    /// and `idx[j]` is the index of particle `ids[j]` in `block`. Stops at the first error.
    pub fn for_each_block(
        &self,
        locals: &[usize],
        mut f: impl FnMut(&[usize], &[usize], &Particles) -> Result<()>,
    ) -> Result<()> {
        let groups = groups(locals);
        match &self.store {
            Store::Resident(p) => {
                for g in groups {
                    f(g, g, p)?;
                }
                Ok(())
            }
            Store::Streamed { path, grid, needs } => {
                let first = self.rows.start;
                std::thread::scope(|scope| {
                    // Capacity 1: one block queued while one is scored and the next is read.
                    let (tx, rx) = sync_channel::<Result<Particles>>(1);
                    let to_read = &groups;
                    scope.spawn(move || {
                        for g in to_read {
                            let block = load_rows(path, first, g, grid, *needs);
                            let failed = block.is_err();
                            if tx.send(block).is_err() || failed {
                                break;
                            }
                        }
                    });
                    let mut idx = Vec::with_capacity(BLOCK_PARTICLES);
                    for g in &groups {
                        let block = rx.recv().map_err(|_| {
                            Error::file(path, "the particle reader thread stopped unexpectedly")
                        })??;
                        idx.clear();
                        idx.extend(0..g.len());
                        f(&idx, g, &block)?;
                    }
                    Ok(())
                })
            }
        }
    }
}

impl ParticleSource {
    /// [`Self::for_each_block`] over every local row, in segments of 64 blocks (so no list
    /// of all rows is built).
    pub fn for_each_all(
        &self,
        mut f: impl FnMut(&[usize], &[usize], &Particles) -> Result<()>,
    ) -> Result<()> {
        let n = self.len();
        let seg = 64 * BLOCK_PARTICLES;
        (0..n.div_ceil(seg)).try_for_each(|s| {
            let rows: Vec<usize> = (s * seg..((s + 1) * seg).min(n)).collect();
            self.for_each_block(&rows, &mut f)
        })
    }
}

/// Splits sorted local rows into runs within one block each.
fn groups(locals: &[usize]) -> Vec<&[usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=locals.len() {
        if i == locals.len() || locals[i] / BLOCK_PARTICLES != locals[start] / BLOCK_PARTICLES {
            if i > start {
                out.push(&locals[start..i]);
            }
            start = i;
        }
    }
    out
}

/// Reads and pre-processes local rows `ids` (sorted, within one block) of the rank whose
/// first global row is `first`.
fn load_rows(
    path: &Path,
    first: usize,
    ids: &[usize],
    grid: &WorkGrid,
    needs: Needs,
) -> Result<Particles> {
    let (lo, hi) = (ids[0], ids[ids.len() - 1] + 1);
    let ds = Dataset::open_range(path, first + lo..first + hi)?;
    let rows: Vec<usize> = ids.iter().map(|&i| i - lo).collect();
    block::load(&ds, first + lo, &rows, grid, needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_never_span_a_block() {
        let b = BLOCK_PARTICLES;
        let locals = vec![0, 1, b - 1, b, b + 5, 3 * b + 2];
        let g = groups(&locals);
        assert_eq!(
            g,
            vec![&[0, 1, b - 1][..], &[b, b + 5][..], &[3 * b + 2][..]]
        );
        assert!(groups(&[]).is_empty());
    }

    #[test]
    fn the_plan_streams_only_over_the_budget() {
        let grid = WorkGrid::new(64, 2.0, 6.0);
        let needs = Needs {
            ctf: true,
            poses: false,
        };
        let p = MemoryPlan::new(1000, &grid, needs, 1.0);
        assert!(!p.streamed, "{p:?}");
        assert_eq!(p.held_bytes(), p.resident_bytes);
        assert!(MemoryPlan::new(1000, &grid, needs, 0.0).streamed);
        let big = MemoryPlan::new(10_000_000, &grid, needs, 1.0);
        assert!(big.streamed);
        assert!(big.held_bytes() < 100 << 20, "{}", big.held_bytes());
        assert!(big.describe(10_000_000).contains("streamed"));
    }
}
