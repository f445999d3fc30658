//! File formats of other programs: MRC stacks/volumes, RELION STAR, CryoSPARC .cs.

pub mod cs;
pub mod mrc;
pub mod relion;
pub mod star;
