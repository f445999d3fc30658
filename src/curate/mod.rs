//! Particle curation after classification: the statistics particles are cut on
//! (class probabilities, any field), thresholds, a 1D Gaussian mixture, and — for rebalancing
//! 2D classes — the affinity between class averages, their grouping into superclasses and the
//! rebalancing rule. Pure computation: the jobs in `jobs::{subset, select2d, rebalance2d}`
//! read the inputs and write the outputs.

pub mod affinity;
pub mod cluster;
pub mod config;
pub mod gmm;
pub mod order_stats;
pub mod rebalance;
pub mod statistic;
pub mod thresholds;
