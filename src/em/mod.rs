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
//! - [`engine`]: the iteration loop for any [`engine::Problem`] (classify2d and classify3d
//!   are the two problems): phases, batches, learning rate, blending, the one all-reduce,
//!   records, logging, convergence, callbacks, agreement across ranks; its opening comment
//!   walks through one iteration.
//! - [`checkpoint`]: the one checkpoint codec (shared state plus per-particle states keyed
//!   by global row, so a run resumes on any number of ranks).
//! - [`driver`]: phases, rows and learning rate of iteration t and the blending of
//!   statistics, used by the engine; class flow between assignments.
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
