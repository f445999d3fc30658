//! Numerical building blocks: FFT, CTF, rotations, 2D image operations, masks, FRC, and 3D
//! projection / back-projection by the central-slice theorem, and the principal components
//! (with k-means) of the PCA start.

pub mod ctf;
pub mod fft;
pub mod frc;
pub mod image2d;
pub mod mask;
pub mod pca;
pub mod project3d;
pub mod rotation;
pub mod symmetry;
pub mod volume;
