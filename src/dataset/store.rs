//! Reading and writing particle datasets in HDF5 (format described in `docs/FORMAT.md`).
//! STUB: signatures fixed, bodies to be written.

use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayView3};

use super::ParticleTable;
use crate::error::Result;

/// Precision of stored images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageDtype {
    F32,
    F16,
}

/// How images are stored in a dataset that holds its own images.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Image side in pixels (images are square, `box_px` × `box_px`).
    pub box_px: usize,
    /// Pixel size in Å.
    pub psize_a: f32,
    pub dtype: ImageDtype,
    /// gzip level 1-9, or None for no compression.
    pub gzip: Option<u8>,
    /// Particles per HDF5 chunk (chunks are whole images).
    pub chunk_particles: usize,
}

/// File-level attributes of a dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetAttrs {
    /// Absolute folder that relative `blob/path` values are relative to (the folder of the
    /// imported STAR/.cs), so exports can keep the original image references.
    pub blob_root: Option<String>,
    /// Free-text provenance (the command that made the file).
    pub source: String,
}

/// An open particle dataset: its metadata table (all rows or a rank's range) and where its
/// images live.
pub struct Dataset {
    path: PathBuf,
    table: ParticleTable,
    attrs: DatasetAttrs,
    box_px: usize,
    psize_a: f32,
    images_file: PathBuf,
}

impl Dataset {
    /// Opens a dataset and reads the metadata of all particles.
    pub fn open(_path: &Path) -> Result<Dataset> {
        todo!()
    }
    /// Opens a dataset reading only the metadata rows `rows` (an HDF5 hyperslab).
    pub fn open_range(_path: &Path, _rows: Range<usize>) -> Result<Dataset> {
        todo!()
    }
    /// Number of particles in the whole file (without reading the table).
    pub fn count(_path: &Path) -> Result<usize> {
        todo!()
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn table(&self) -> &ParticleTable {
        &self.table
    }
    pub fn attrs(&self) -> &DatasetAttrs {
        &self.attrs
    }
    pub fn box_px(&self) -> usize {
        self.box_px
    }
    pub fn psize_a(&self) -> f32 {
        self.psize_a
    }
    /// The file that holds the images (this file, or the one it references).
    pub fn images_file(&self) -> &Path {
        &self.images_file
    }
    /// Images of table rows `rows` (indices into `self.table()`), as f32 (n, box, box).
    /// Errors naming the file and particle on non-finite pixels.
    pub fn read_images(&self, _rows: Range<usize>) -> Result<Array3<f32>> {
        todo!()
    }
}

/// Streams a new dataset that holds its own images: create, append image batches, finish.
/// Everything goes to `<path>.tmp` until `finish` renames it; dropping without `finish`
/// removes the temporary file.
pub struct DatasetWriter {
    _path: PathBuf,
}

impl DatasetWriter {
    pub fn create(_path: &Path, _spec: ImageSpec) -> Result<DatasetWriter> {
        todo!()
    }
    /// Appends images (n, box, box).
    pub fn append_images(&mut self, _images: ArrayView3<f32>) -> Result<()> {
        todo!()
    }
    pub fn images_written(&self) -> usize {
        todo!()
    }
    /// Writes the table (which must have one row per image written; its `blob/image_row`
    /// column is set here to 0..n) and the attributes, then renames into place.
    pub fn finish(self, _table: ParticleTable, _attrs: &DatasetAttrs) -> Result<()> {
        todo!()
    }
}

/// Writes a dataset that references the images of `images_from` (a job output): `table`
/// must carry `blob/image_row` rows of that file. Atomic (temp then rename).
pub fn write_referencing(_path: &Path, _table: &ParticleTable, _attrs: &DatasetAttrs, _images_from: &Dataset) -> Result<()> {
    todo!()
}
