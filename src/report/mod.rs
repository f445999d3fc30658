//! What the user sees: log lines (rank-prefixed), progress with ETA.

pub mod logger;
pub mod progress;
