//! The particle layer shared by the EM jobs (2D and 3D classification): what a particle is
//! once pre-processed, and where a rank's particles come from each iteration.
//!
//! - [`grid`]: the working Fourier grid (crop to the finest resolution used).
//! - [`preprocess`]: normalise, FFT, Fourier crop, re-centre; CTF parameters.
//! - [`block`]: a block of pre-processed particles (spectra, CTFs, half sets, known poses).
//! - [`source`]: a rank's particles, resident or streamed block by block, and the memory
//!   plan (`max_resident_gb`).

pub mod block;
pub mod grid;
pub mod preprocess;
pub mod source;

pub use block::{Needs, Particles};
pub use grid::WorkGrid;
pub use source::{MemoryPlan, ParticleSource, BLOCK_PARTICLES};
