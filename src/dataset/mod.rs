//! The particle dataset: an HDF5 file with one row per particle (see `docs/FORMAT.md`).
//! `table` is the in-memory metadata; `store` reads and writes the HDF5 file (hyperslab
//! reads of a particle range, streamed image writes, atomic temp-then-rename).

pub mod append;
mod h5table;
pub mod store;
pub mod table;

pub use append::{AppendTarget, TableAppender};
pub use store::{Dataset, DatasetAttrs, DatasetWriter, ImageDtype, ImageSpec};
pub use table::{Column, ColumnData, ParticleTable};

/// Column holding, for each particle, its row in the images dataset of the file that holds
/// the images (the file itself, or the file named by the `images_file` attribute).
pub const IMAGE_ROW: &str = "blob/image_row";
