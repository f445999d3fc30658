//! What the user sees: log lines (rank-prefixed), progress with ETA, plots and montages (PNG).

pub mod affinity_plot;
pub mod logger;
pub mod montage;
pub mod plot;
pub mod plots3d;
pub mod progress;
