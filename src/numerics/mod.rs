//! Numerical building blocks: FFT, CTF, rotations, 2D image operations, masks, FRC.

pub mod ctf;
pub mod fft;
pub mod frc;
pub mod image2d;
pub mod mask;
pub mod rotation;
