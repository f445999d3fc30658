//! 2D classification (CryoSPARC's "2D Classification" job): EM over classes, in-plane
//! rotations and shifts with CTF and a per-shell noise model, online-EM on random batches
//! then full passes. See `docs/ALGORITHMS.md` for the formulas.
//!
//! - [`config`]: the job's parameters.
//! - [`grid`]: working Fourier grid, alignment band, pose grid.
//! - [`particles`]: pre-processing of particle images.
//! - [`source`]: a rank's particles, resident or streamed block by block.
//! - [`results`]: per-particle results and their rank-local spill file.
//! - [`estep`]: templates and the batched GEMM scoring.
//! - [`model`]: sufficient statistics and class averages (M-step).
//! - [`engine`]: the iteration driver (through `Comm`, never MPI directly).
//! - [`duplicates`]: duplicate-pick removal after classification.
//! - [`duplicate_routing`]: the same over ranks, picks routed to their micrograph's owner.
//! - [`checkpoint`]: the state between iterations, for `--resume`.

pub mod checkpoint;
pub mod config;
pub mod duplicate_routing;
pub mod duplicates;
pub mod engine;
pub mod estep;
pub mod grid;
pub mod model;
pub mod particles;
pub mod results;
pub mod source;
