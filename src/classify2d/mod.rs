//! 2D classification (CryoSPARC's "2D Classification" job): EM over classes, in-plane
//! rotations and shifts with CTF and a per-shell noise model, online-EM on random batches
//! then full passes. See `docs/ALGORITHMS.md` for the formulas.
//!
//! - [`config`]: the job's parameters.
//! - [`grid`]: alignment band and pose grid (the working grid and the particles are
//!   [`crate::particles`], shared with 3D).
//! - [`results`]: per-particle results and their rank-local spill file.
//! - [`estep`]: templates and the batched GEMM scoring.
//! - [`model`]: sufficient statistics and class averages (M-step).
//! - [`checkpoint`], [`record`]: the model in a checkpoint; the iteration record.
//! - [`convergence`]: when the full passes stop (class flow between passes).
//! - [`engine`]: the problem run by the shared EM engine ([`crate::em::engine`]).
//! - [`accumulate`]: the E-step of a chunk of particles and its M-step contributions.
//! - [`gpu`]: the same phases on the CUDA backend.
//! - [`duplicates`]: duplicate-pick removal after classification.
//! - [`duplicate_routing`]: the same over ranks, picks routed to their micrograph's owner.

pub mod accumulate;
pub mod checkpoint;
pub mod config;
pub mod convergence;
pub mod duplicate_routing;
pub mod duplicates;
pub mod engine;
pub mod estep;
pub mod gpu;
pub mod grid;
pub mod model;
pub mod plan;
pub mod record;
pub mod results;
pub mod start;
