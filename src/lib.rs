//! emclass: classification and curation of cryo-EM particle images (library).

pub mod dataset;
pub mod error;
pub mod formats;
pub mod numerics;
pub mod simulate;

pub use error::{Error, Result};
