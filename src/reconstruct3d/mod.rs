//! Reconstruction of 3D classes at the full box (CryoSPARC's "Heterogeneous Reconstruction
//! Only", the next step after 3D classification, whose volumes exist only at the crop of
//! `filter_res_A`): each class back-projected from its particles at their known poses, with
//! CTF, per-particle scale and symmetry, hard or probability-weighted, in two half sets by
//! global row parity (as classify3d splits them); then half maps, the full map, a solvent
//! mask, the half-map FSC and an FSC-weighted map.
//!
//! - [`config`]: the job's parameters.
//! - [`assignments`]: each particle's class and class probabilities, and its weights.
//! - [`sums`]: back-projection of a rank's particles and the one all-reduce.
//! - [`maps`]: the maps, mask and FSC curves of one class from its sums.

pub mod assignments;
pub mod config;
pub mod maps;
pub mod sums;
