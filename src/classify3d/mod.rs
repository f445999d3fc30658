//! 3D classification without alignment (CryoSPARC's "3D Classification" job): EM over
//! classes of 3D volumes at the particles' known poses, with CTF, per-particle scale, a
//! per-shell noise model, class similarity annealing (and the forum's `hard_after_anneal`),
//! FSC-filtered reconstructions, solvent and focus masks and symmetry; online EM on batches,
//! then full-batch EM until the class switches or the density change converge. See
//! `docs/ALGORITHMS.md` for the formulas.
//!
//! - [`config`]: the job's parameters.
//! - [`particles`]: a rank's pre-processed, re-centred particles with poses and CTFs.
//! - [`estep`]: log-likelihoods against projected class volumes; per-particle scales.
//! - [`model`]: statistics, back-projection, reconstruction with FSC filtering, masks.
//! - [`engine`]: the run (shares [`crate::em::driver`] with the other EM jobs).

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod estep;
pub mod model;
pub mod particles;
