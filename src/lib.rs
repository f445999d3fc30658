//! emclass: classification and curation of cryo-EM particle images (library).
//!
//! Layers (see DESIGN.md): `cli` → `jobs` → engines; `comm` (ranks), `dataset` and
//! `formats` (I/O), `numerics`, `report` (logs, progress, plots), `simulate`.

pub mod backend;
pub mod classify2d;
pub mod classify3d;
pub mod cli;
pub mod comm;
pub mod config;
pub mod curate;
pub mod dataset;
pub mod em;
pub mod error;
pub mod formats;
pub mod jobs;
pub mod numerics;
pub mod panic_guard;
pub mod particles;
pub mod paths;
pub mod reconstruct3d;
pub mod report;
pub mod simulate;

pub use error::{Error, Result};
