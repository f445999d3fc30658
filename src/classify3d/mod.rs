//! 3D classification without alignment (CryoSPARC's "3D Classification" job): EM over
//! classes of 3D volumes at the particles' known poses, with CTF, per-particle scale, a
//! per-shell noise model, class similarity annealing (and the forum's `hard_after_anneal`),
//! FSC-filtered reconstructions, solvent and focus masks and symmetry; online EM on batches,
//! then full-batch EM until the class switches or the density change converge. See
//! `docs/ALGORITHMS.md` for the formulas.
//!
//! - [`config`]: the job's parameters.
//! - [`particles`]: the input's per-particle scales (the particles themselves, re-centred,
//!   with poses and CTFs, come from the shared [`crate::particles`] layer).
//! - [`plan`]: the configuration turned into what the run uses.
//! - [`start`]: consensus, solvent mask, noise model, per-particle scales, initial classes.
//! - [`estep`]: log-likelihoods against projected class volumes; per-particle scales.
//! - [`gpu`]: the same E-step phases and scale fit on the GPU (CUDA backend).
//! - [`model`]: statistics, back-projection, reconstruction with FSC filtering, masks.
//! - [`engine`]: the problem run by the shared EM engine ([`crate::em::engine`]).
//! - [`state`]: per-particle results; [`checkpoint`]: the model and rows in a checkpoint;
//!   [`record`]: the fields of the iteration record and the convergence criteria.

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod estep;
pub mod gpu;
pub mod model;
pub mod particles;
pub mod plan;
pub mod record;
pub mod start;
pub mod state;
