//! Numerical building blocks: FFT, CTF, rotations.

pub mod ctf;
pub mod fft;
pub mod rotation;
