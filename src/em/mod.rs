//! The shared EM engine core used by `classify2d` and `classify3d`.
//!
//! What the engine owns (and the jobs therefore do not re-implement):
//! - [`responsibilities`]: posteriors over classes from a log-likelihood matrix with
//!   log-sum-exp, annealing (inverse temperature β), class-similarity blending towards
//!   uniform, force-hard (one-hot), per-particle ESS and best-class probability, quartiles
//!   for the per-iteration log, and marginalisation over poses (with the best pose per class
//!   for `force_max`).
//! - [`schedule`]: the ICUF noise (sigma²) annealing, the online-EM learning rate
//!   (initial value and half-life) and the class-similarity annealing with
//!   `hard_after_anneal`.
//! - [`batches`]: online-EM batches drawn from one seeded global permutation, so a batch
//!   never depends on the number of ranks; each rank keeps only the members it owns.
//! - [`stats`]: the sufficient statistics as one flat f64 buffer with named segments,
//!   reduced over ranks by exactly one all-reduce per iteration.
//!
//! How the jobs use it, per iteration t:
//! 1. `batches::OnlineBatches::batch(b)` (O-EM) or all particles (F-EM), then
//!    `batches::local_part(batch, my_range)` for the rank's own members.
//! 2. The job's model scores its particles against its classes (2D: class images × in-plane
//!    poses, using the ICUF-annealed sigma² from `schedule::IcufSchedule`; 3D: projected
//!    class volumes with per-particle scale) and gives a log-likelihood matrix; 2D first
//!    reduces its poses with `responsibilities::marginalize_poses`.
//! 3. `responsibilities::responsibilities` turns it into posteriors using the similarity
//!    and hardness of `schedule::SimilaritySchedule` (3D) or plain posteriors (2D).
//! 4. The job accumulates its numerators/denominators into a `stats::Stats`, calls
//!    `Stats::all_reduce` once, blends it into the running statistics with the learning
//!    rate of `schedule::LearningRate` (O-EM) and runs its deterministic M-step.
//!
//! The engine never names `mpi::` or a GPU library: ranks are reached through
//! [`crate::comm::Comm`] only.

pub mod batches;
pub mod binned;
pub mod checkpoint;
pub mod driver;
pub mod engine;
pub mod metrics;
pub mod responsibilities;
pub mod schedule;
pub mod stats;

use crate::error::Error;

/// An invalid argument given to the engine (a bug in the caller or a parameter that config
/// validation should have rejected): one line naming the quantity and what is wrong.
pub(crate) fn invalid(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Internal(format!("EM engine: {what}: {msg}"))
}
