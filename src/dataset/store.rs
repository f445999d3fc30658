//! Reading and writing particle datasets in HDF5 (the format is specified, versioned, in
//! `docs/FORMAT.md`; the column encoding lives in `h5table.rs`).
//!
//! - [`DatasetWriter`] streams a dataset that holds its own images: images are buffered one
//!   HDF5 chunk at a time and appended to a resizable `/images`, so memory does not grow
//!   with N beyond the metadata table; everything goes to `<path>.tmp`, renamed on `finish`.
//! - [`write_referencing`] writes a metadata-only dataset (a job output) whose
//!   `images_file` attribute points at the file that holds the images.
//! - [`Dataset`] opens either kind, reading all metadata rows or one row range (hyperslab
//!   reads, for one MPI rank's block), and reads images by table row, contiguous runs of
//!   image rows as single hyperslabs.

use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{f16, slice::HalfFloatSliceExt};
use hdf5::types::{FloatSize, TypeDescriptor};
use ndarray::{s, Array3, ArrayView3};

use super::h5table::{self, H5Ctx, TmpGuard, IMAGES};
use super::{Column, ColumnData, ParticleTable, IMAGE_ROW};
use crate::error::{Error, Result};
use crate::paths::{folder_of, relative_to};

/// Value of the root attribute `emclass_format` that marks an emclass particle dataset.
pub const FORMAT_NAME: &str = "emclass-particles";
/// Version of the format written by this build (root attribute `format_version`); files
/// of a newer version are refused.
pub const FORMAT_VERSION: u32 = 1;

/// Raw-data chunk cache per open file (bytes): holds a few image chunks, so reads of
/// neighbouring rows that are not chunk-aligned decompress each chunk once.
const CHUNK_CACHE_BYTES: usize = 64 << 20;
/// Hash slots of the chunk cache (a prime, as HDF5 recommends).
const CHUNK_CACHE_SLOTS: usize = 10007;
/// HDF5 chunks must be smaller than 4 GiB.
const MAX_CHUNK_BYTES: usize = (1 << 32) - 1;

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
    /// `/images` of `images_file`, kept open (it keeps its file open) for repeated reads.
    images: hdf5::Dataset,
    /// Stored as float16 (converted to f32 on read).
    images_f16: bool,
    /// Number of images in `images_file`.
    image_count: usize,
    /// The rows of the file that `table` holds.
    rows: Range<usize>,
}

/// Root attributes read from a dataset file.
struct Header {
    attrs: DatasetAttrs,
    box_px: usize,
    psize_a: f32,
    images_file: Option<String>,
}

/// Opens an existing HDF5 file read-only, with the chunk cache described above.
fn open_h5(path: &Path) -> Result<hdf5::File> {
    if !path.exists() {
        return Err(Error::file(path, "does not exist"));
    }
    hdf5::File::with_options()
        .with_fapl(|p| p.chunk_cache(CHUNK_CACHE_SLOTS, CHUNK_CACHE_BYTES, 0.75))
        .open(path)
        .map_err(|e| {
            let msg = e.to_string().replace('\n', " ");
            Error::file(path, format!("cannot open as an HDF5 file ({msg})"))
        })
}

/// Checks the format marker and version and reads the root attributes.
fn read_header(file: &hdf5::File, path: &Path) -> Result<Header> {
    match h5table::read_str_attr(file, path, "emclass_format")? {
        None => {
            return Err(Error::file(
                path,
                "not an emclass particle dataset (no emclass_format attribute; make one with `emclass import`)",
            ))
        }
        Some(f) if f != FORMAT_NAME => {
            return Err(Error::field(path, "emclass_format", format!("is {f:?}, expected {FORMAT_NAME:?}")));
        }
        Some(_) => {}
    }
    let version: u64 = h5table::read_num_attr(file, path, "format_version")?
        .ok_or_else(|| Error::field(path, "format_version", "missing root attribute"))?;
    if version > FORMAT_VERSION as u64 {
        return Err(Error::field(
            path,
            "format_version",
            format!("version {version} is newer than this emclass supports ({FORMAT_VERSION}); upgrade emclass"),
        ));
    }
    if version == 0 {
        return Err(Error::field(
            path,
            "format_version",
            "version 0 does not exist",
        ));
    }
    let box_px: u64 = h5table::read_num_attr(file, path, "box_px")?
        .ok_or_else(|| Error::field(path, "box_px", "missing root attribute"))?;
    if box_px == 0 {
        return Err(Error::field(path, "box_px", "must be at least 1"));
    }
    let psize_a: f32 = h5table::read_num_attr(file, path, "psize_A")?
        .ok_or_else(|| Error::field(path, "psize_A", "missing root attribute"))?;
    if !(psize_a.is_finite() && psize_a > 0.0) {
        return Err(Error::field(
            path,
            "psize_A",
            format!("must be a positive number of Å, found {psize_a}"),
        ));
    }
    let attrs = DatasetAttrs {
        blob_root: h5table::read_str_attr(file, path, "blob_root")?,
        source: h5table::read_str_attr(file, path, "source")?.unwrap_or_default(),
    };
    let images_file = h5table::read_str_attr(file, path, "images_file")?;
    Ok(Header {
        attrs,
        box_px: box_px as usize,
        psize_a,
        images_file,
    })
}

/// Writes the root attributes of a dataset.
pub(super) fn write_header(
    file: &hdf5::File,
    path: &Path,
    attrs: &DatasetAttrs,
    box_px: usize,
    psize_a: f32,
    images_file: Option<&str>,
) -> Result<()> {
    h5table::write_str_attr(file, "emclass_format", FORMAT_NAME).ctx(path, "emclass_format")?;
    h5table::write_num_attr(file, "format_version", FORMAT_VERSION).ctx(path, "format_version")?;
    h5table::write_num_attr(file, "box_px", box_px as u64).ctx(path, "box_px")?;
    h5table::write_num_attr(file, "psize_A", psize_a).ctx(path, "psize_A")?;
    if let Some(root) = &attrs.blob_root {
        h5table::write_str_attr(file, "blob_root", root).ctx(path, "blob_root")?;
    }
    h5table::write_str_attr(file, "source", &attrs.source).ctx(path, "source")?;
    if let Some(f) = images_file {
        h5table::write_str_attr(file, "images_file", f).ctx(path, "images_file")?;
    }
    Ok(())
}

/// Checks that `table` has a u64 `blob/image_row` column of width 1 whose values are rows
/// of an images dataset of `image_count` images (errors name `path`).
fn check_image_rows(
    path: &Path,
    table: &ParticleTable,
    image_count: usize,
    images_file: &Path,
) -> Result<()> {
    let col = table.get(IMAGE_ROW).ok_or_else(|| {
        Error::field(
            path,
            IMAGE_ROW,
            "missing (each particle needs its row in the images dataset)",
        )
    })?;
    let rows = match (&col.data, col.width) {
        (ColumnData::U64(v), 1) => v,
        _ => {
            return Err(Error::field(
                path,
                IMAGE_ROW,
                format!(
                    "expected one u64 per particle, found {} of width {}",
                    col.data.type_name(),
                    col.width
                ),
            ))
        }
    };
    if let Some(i) = rows.iter().position(|&r| r >= image_count as u64) {
        return Err(Error::field(
            path,
            IMAGE_ROW,
            format!(
                "row {i} (uid {}) points at image {} but {} holds {image_count} images",
                table.uid()[i],
                rows[i],
                images_file.display()
            ),
        ));
    }
    Ok(())
}

/// The first row of `images` (n, box, box) whose pixels are not all finite.
fn first_non_finite(images: &[f32], pixels: usize) -> Option<usize> {
    images
        .chunks_exact(pixels)
        .position(|im| im.iter().any(|x| !x.is_finite()))
}

impl Dataset {
    /// Opens a dataset and reads the metadata of all particles.
    pub fn open(path: &Path) -> Result<Dataset> {
        Self::open_impl(path, None)
    }
    /// Opens a dataset reading only the metadata rows `rows` (an HDF5 hyperslab).
    pub fn open_range(path: &Path, rows: Range<usize>) -> Result<Dataset> {
        Self::open_impl(path, Some(rows))
    }
    /// Number of particles in the whole file (without reading the table).
    pub fn count(path: &Path) -> Result<usize> {
        let file = open_h5(path)?;
        read_header(&file, path)?;
        h5table::uid_rows(&file, path)
    }

    fn open_impl(path: &Path, rows: Option<Range<usize>>) -> Result<Dataset> {
        let file = open_h5(path)?;
        let header = read_header(&file, path)?;
        let n = h5table::uid_rows(&file, path)?;
        let rows = rows.unwrap_or(0..n);
        if rows.start > rows.end || rows.end > n {
            return Err(Error::file(
                path,
                format!(
                    "rows {}..{} requested but the file holds {n} particles",
                    rows.start, rows.end
                ),
            ));
        }
        let table = h5table::read_table(&file, path, n, &rows)?;
        let (images_file, images) = match &header.images_file {
            None => {
                if !file.link_exists(IMAGES) {
                    return Err(Error::field(
                        path,
                        IMAGES,
                        "missing (and no images_file attribute names another file)",
                    ));
                }
                (path.to_path_buf(), file.dataset(IMAGES).ctx(path, IMAGES)?)
            }
            Some(rel) => {
                let p = Path::new(rel);
                let resolved = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    folder_of(path).join(p)
                };
                if !resolved.exists() {
                    return Err(Error::field(
                        path,
                        "images_file",
                        format!("{} does not exist", resolved.display()),
                    ));
                }
                let f = open_h5(&resolved)?;
                if !f.link_exists(IMAGES) {
                    return Err(Error::field(
                        &resolved,
                        IMAGES,
                        format!("missing (referenced by {})", path.display()),
                    ));
                }
                let ds = f.dataset(IMAGES).ctx(&resolved, IMAGES)?;
                (resolved, ds)
            }
        };
        let shape = images.shape();
        if shape.len() != 3 || shape[1] != header.box_px || shape[2] != header.box_px {
            return Err(Error::field(
                &images_file,
                IMAGES,
                format!(
                    "expected shape (N, {b}, {b}) for box_px {b} of {}, found {shape:?}",
                    path.display(),
                    b = header.box_px
                ),
            ));
        }
        let desc = images
            .dtype()
            .and_then(|t| t.to_descriptor())
            .ctx(&images_file, IMAGES)?;
        let images_f16 = match desc {
            TypeDescriptor::Float(FloatSize::U2) => true,
            TypeDescriptor::Float(_) => false,
            other => {
                return Err(Error::field(
                    &images_file,
                    IMAGES,
                    format!("expected float pixels, found {other}"),
                ))
            }
        };
        let image_count = shape[0];
        check_image_rows(path, &table, image_count, &images_file)?;
        Ok(Dataset {
            path: path.to_path_buf(),
            table,
            attrs: header.attrs,
            box_px: header.box_px,
            psize_a: header.psize_a,
            images_file,
            images,
            images_f16,
            image_count,
            rows,
        })
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
    /// Number of particles in the table (all rows of the file, or the range opened).
    pub fn len(&self) -> usize {
        self.table.len()
    }
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
    /// The rows of the file that the table holds (`0..N` after [`Dataset::open`]).
    pub fn file_rows(&self) -> Range<usize> {
        self.rows.clone()
    }
    /// Number of images in the images file (may exceed `len()` for a referencing dataset
    /// or a range).
    pub fn image_count(&self) -> usize {
        self.image_count
    }
    /// Precision the images are stored in.
    pub fn image_dtype(&self) -> ImageDtype {
        if self.images_f16 {
            ImageDtype::F16
        } else {
            ImageDtype::F32
        }
    }
    /// Images of table rows `rows` (indices into `self.table()`), as f32 (n, box, box).
    /// Errors naming the file and particle on non-finite pixels.
    pub fn read_images(&self, rows: Range<usize>) -> Result<Array3<f32>> {
        let n_table = self.table.len();
        if rows.start > rows.end || rows.end > n_table {
            return Err(Error::file(
                &self.path,
                format!(
                    "image rows {}..{} requested but the table holds {n_table} particles",
                    rows.start, rows.end
                ),
            ));
        }
        let image_rows = self
            .table
            .u64(IMAGE_ROW)
            .ok_or_else(|| Error::field(&self.path, IMAGE_ROW, "missing"))?;
        let b = self.box_px;
        let pixels = b * b;
        let n = rows.len();
        let mut out = Array3::<f32>::zeros((n, b, b));
        let dst = out.as_slice_mut().expect("a new array is contiguous");
        let mut i = rows.start;
        while i < rows.end {
            // A run of consecutive image rows is read as one hyperslab.
            let r0 = image_rows[i] as usize;
            let mut len = 1;
            while i + len < rows.end && image_rows[i + len] == (r0 + len) as u64 {
                len += 1;
            }
            let o = (i - rows.start) * pixels;
            let part = &mut dst[o..o + len * pixels];
            let sel = s![r0..r0 + len, .., ..];
            if self.images_f16 {
                let a = self
                    .images
                    .read_slice::<f16, _, ndarray::Ix3>(sel)
                    .ctx(&self.images_file, IMAGES)?;
                let src = a.as_slice().expect("a freshly read array is contiguous");
                src.convert_to_f32_slice(part);
            } else {
                let a = self
                    .images
                    .read_slice::<f32, _, ndarray::Ix3>(sel)
                    .ctx(&self.images_file, IMAGES)?;
                part.copy_from_slice(a.as_slice().expect("a freshly read array is contiguous"));
            }
            if let Some(k) = first_non_finite(part, pixels) {
                return Err(Error::field(
                    &self.images_file,
                    IMAGES,
                    format!(
                        "particle row {} (uid {}) has non-finite pixels",
                        r0 + k,
                        self.table.uid()[i + k]
                    ),
                ));
            }
            i += len;
        }
        Ok(out)
    }
}

/// Streams a new dataset that holds its own images: create, append image batches, finish.
/// Everything goes to `<path>.tmp` until `finish` renames it; dropping without `finish`
/// removes the temporary file.
pub struct DatasetWriter {
    // Field order matters: HDF5 handles drop (close) before the guard removes the file.
    images: Option<hdf5::Dataset>,
    file: Option<hdf5::File>,
    guard: TmpGuard,
    path: PathBuf,
    spec: ImageSpec,
    /// Images already in the file.
    flushed: usize,
    /// Images waiting to fill a chunk (at most `chunk_particles`), row-major.
    pending: Vec<f32>,
    /// Conversion buffer for float16 storage.
    half_buf: Vec<f16>,
}

impl DatasetWriter {
    pub fn create(path: &Path, spec: ImageSpec) -> Result<DatasetWriter> {
        if spec.box_px == 0 {
            return Err(Error::field(path, "box_px", "must be at least 1"));
        }
        if !(spec.psize_a.is_finite() && spec.psize_a > 0.0) {
            return Err(Error::field(
                path,
                "psize_A",
                format!("must be a positive number of Å, found {}", spec.psize_a),
            ));
        }
        if spec.chunk_particles == 0 {
            return Err(Error::field(
                path,
                IMAGES,
                "chunk_particles must be at least 1",
            ));
        }
        if let Some(level) = spec.gzip {
            if !(1..=9).contains(&level) {
                return Err(Error::field(
                    path,
                    IMAGES,
                    format!("gzip level must be 1-9, found {level}"),
                ));
            }
        }
        let bytes = match spec.dtype {
            ImageDtype::F32 => 4,
            ImageDtype::F16 => 2,
        };
        let chunk_bytes = spec
            .chunk_particles
            .saturating_mul(spec.box_px * spec.box_px * bytes);
        if chunk_bytes > MAX_CHUNK_BYTES {
            return Err(Error::field(
                path,
                IMAGES,
                format!("a chunk of {} images of {b}x{b} exceeds HDF5's 4 GiB chunk limit; lower chunk_particles", spec.chunk_particles, b = spec.box_px),
            ));
        }
        let (guard, file) = TmpGuard::create(path)?;
        let b = spec.box_px;
        let builder = file.new_dataset_builder();
        let builder = match spec.dtype {
            ImageDtype::F32 => builder.empty::<f32>(),
            ImageDtype::F16 => builder.empty::<f16>(),
        };
        let mut builder = builder
            .shape((0.., b, b))
            .chunk((spec.chunk_particles, b, b))
            // Every row is written before `finish`, so HDF5 need not pre-fill chunks.
            .fill_time(hdf5::dataset::FillTime::Never);
        if let Some(level) = spec.gzip {
            builder = builder.shuffle().deflate(level);
        }
        let images = builder.create(IMAGES).ctx(path, IMAGES)?;
        Ok(DatasetWriter {
            images: Some(images),
            file: Some(file),
            guard,
            path: path.to_path_buf(),
            pending: Vec::with_capacity(spec.chunk_particles.min(4096) * b * b),
            half_buf: Vec::new(),
            spec,
            flushed: 0,
        })
    }
    /// Appends images (n, box, box).
    pub fn append_images(&mut self, images: ArrayView3<f32>) -> Result<()> {
        let b = self.spec.box_px;
        let (n, ny, nx) = images.dim();
        if ny != b || nx != b {
            return Err(Error::field(
                &self.path,
                IMAGES,
                format!("images of {ny}x{nx} appended to a dataset of box {b}"),
            ));
        }
        let images = images.as_standard_layout();
        let data = images.as_slice().expect("standard layout is contiguous");
        let pixels = b * b;
        let first = self.images_written();
        if let Some(k) = first_non_finite(data, pixels) {
            return Err(Error::field(
                &self.path,
                IMAGES,
                format!("particle row {} has non-finite pixels", first + k),
            ));
        }
        if self.spec.dtype == ImageDtype::F16 {
            let max = f16::MAX.to_f32();
            if let Some(k) = data
                .chunks_exact(pixels)
                .position(|im| im.iter().any(|x| x.abs() > max))
            {
                return Err(Error::field(
                    &self.path,
                    IMAGES,
                    format!("particle row {} has pixels beyond the float16 range (±{max}); store images as f32", first + k),
                ));
            }
        }
        let chunk = self.spec.chunk_particles * pixels;
        let mut rest = data;
        while !rest.is_empty() {
            let take = (chunk - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == chunk {
                self.flush()?;
            }
        }
        debug_assert_eq!(n * pixels, data.len());
        Ok(())
    }
    pub fn images_written(&self) -> usize {
        self.flushed + self.pending.len() / (self.spec.box_px * self.spec.box_px)
    }
    /// Writes the pending images (a whole chunk, or the last partial one) to the file.
    fn flush(&mut self) -> Result<()> {
        let b = self.spec.box_px;
        let n = self.pending.len() / (b * b);
        if n == 0 {
            return Ok(());
        }
        let ds = self.images.as_ref().expect("images open until finish");
        let (a, z) = (self.flushed, self.flushed + n);
        ds.resize((z, b, b)).ctx(&self.path, IMAGES)?;
        let sel = s![a..z, .., ..];
        match self.spec.dtype {
            ImageDtype::F32 => {
                let v = ArrayView3::from_shape((n, b, b), &self.pending[..]).expect("whole images");
                ds.write_slice(v, sel).ctx(&self.path, IMAGES)?;
            }
            ImageDtype::F16 => {
                self.half_buf.resize(self.pending.len(), f16::ZERO);
                self.half_buf.convert_from_f32_slice(&self.pending);
                let v =
                    ArrayView3::from_shape((n, b, b), &self.half_buf[..]).expect("whole images");
                ds.write_slice(v, sel).ctx(&self.path, IMAGES)?;
            }
        }
        self.pending.clear();
        self.flushed = z;
        Ok(())
    }
    /// Writes the table (which must have one row per image written; its `blob/image_row`
    /// column is set here to 0..n) and the attributes, then renames into place.
    pub fn finish(mut self, mut table: ParticleTable, attrs: &DatasetAttrs) -> Result<()> {
        self.flush()?;
        let n = self.flushed;
        if table.len() != n {
            return Err(Error::file(
                &self.path,
                format!(
                    "the table has {} rows but {n} images were written; nothing was written",
                    table.len()
                ),
            ));
        }
        table
            .try_set(
                IMAGE_ROW,
                Column::scalar(ColumnData::U64((0..n as u64).collect())),
            )
            .map_err(|e| Error::field(&self.path, IMAGE_ROW, e))?;
        let file = self.file.take().expect("file open until finish");
        drop(self.images.take());
        h5table::write_table(&file, &self.path, &table)?;
        write_header(
            &file,
            &self.path,
            attrs,
            self.spec.box_px,
            self.spec.psize_a,
            None,
        )?;
        file.flush().ctx(&self.path, "flush")?;
        file.close().ctx(&self.path, "close")?;
        let DatasetWriter { guard, .. } = self;
        guard.commit()
    }
}

/// Writes a dataset that references the images of `images_from` (a job output): `table`
/// must carry `blob/image_row` rows of that file. Atomic (temp then rename).
pub fn write_referencing(
    path: &Path,
    table: &ParticleTable,
    attrs: &DatasetAttrs,
    images_from: &Dataset,
) -> Result<()> {
    check_image_rows(
        path,
        table,
        images_from.image_count,
        images_from.images_file(),
    )?;
    let rel = images_reference(path, images_from)?;
    let (guard, file) = TmpGuard::create(path)?;
    h5table::write_table(&file, path, table)?;
    write_header(
        &file,
        path,
        attrs,
        images_from.box_px,
        images_from.psize_a,
        Some(&rel),
    )?;
    file.flush().ctx(path, "flush")?;
    file.close().ctx(path, "close")?;
    guard.commit()
}

/// The `images_file` attribute of a dataset at `path` that references the images of
/// `images_from`: its images file relative to `path`'s folder. Refuses to overwrite that
/// images file.
pub(super) fn images_reference(path: &Path, images_from: &Dataset) -> Result<String> {
    let images_abs = images_from
        .images_file()
        .canonicalize()
        .map_err(|e| Error::io(images_from.images_file(), e))?;
    let folder = folder_of(path);
    let folder_abs = folder.canonicalize().map_err(|e| Error::io(&folder, e))?;
    if let Ok(p) = path.canonicalize() {
        if p == images_abs {
            return Err(Error::file(path, "would overwrite the file that holds the images it references; write to another path"));
        }
    }
    let rel = relative_to(&images_abs, &folder_abs);
    Ok(rel
        .to_str()
        .ok_or_else(|| {
            Error::field(
                path,
                "images_file",
                format!("{} is not valid UTF-8", rel.display()),
            )
        })?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn spec(
        box_px: usize,
        dtype: ImageDtype,
        gzip: Option<u8>,
        chunk_particles: usize,
    ) -> ImageSpec {
        ImageSpec {
            box_px,
            psize_a: 1.25,
            dtype,
            gzip,
            chunk_particles,
        }
    }

    /// Deterministic, non-trivial images (values span several orders of magnitude).
    fn images(n: usize, b: usize, seed: usize) -> Array3<f32> {
        Array3::from_shape_fn((n, b, b), |(i, y, x)| {
            let t = ((i + seed) * 131 + y * 17 + x * 7) as f32;
            (t * 0.013).sin() * 10f32.powi(((i + y) % 5) as i32 - 2)
        })
    }

    fn attrs() -> DatasetAttrs {
        DatasetAttrs {
            blob_root: Some("/data/Ångström/run".into()),
            source: "emclass import --star ü.star".into(),
        }
    }

    /// Writes `imgs` with a table of uids 100.. and one f32 column.
    fn write_simple(path: &Path, imgs: &Array3<f32>, sp: ImageSpec, batch: usize) -> ParticleTable {
        let n = imgs.dim().0;
        let mut w = DatasetWriter::create(path, sp).unwrap();
        let mut i = 0;
        while i < n {
            let j = (i + batch).min(n);
            w.append_images(imgs.slice(s![i..j, .., ..])).unwrap();
            i = j;
        }
        assert_eq!(w.images_written(), n);
        let mut t = ParticleTable::new((0..n as u64).map(|u| 100 + u).collect());
        t.set_f32("ctf/df1_A", (0..n).map(|i| 10000.0 + i as f32).collect());
        w.finish(t.clone(), &attrs()).unwrap();
        t
    }

    fn assert_nothing_left(path: &Path) {
        assert!(!path.exists(), "{} exists", path.display());
        let tmp = h5table::tmp_path(path);
        assert!(!tmp.exists(), "{} exists", tmp.display());
    }

    #[test]
    fn table_round_trips_every_column_type_and_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.h5");
        let n = 3;
        let mut t = ParticleTable::new(vec![7, 3, u64::MAX]);
        t.set_f32("ctf/df1_A", vec![12000.5, -1.0, f32::MAX]);
        t.set(
            "alignments2D/shift",
            Column::new(ColumnData::F64(vec![0.5, -0.25, 1e-300, 2.0, 3.0, 4.0]), 2),
        );
        t.set(
            "gt/triple",
            Column::new(
                ColumnData::I32(vec![-1, 0, 1, i32::MIN, i32::MAX, 5, 6, 7, 8]),
                3,
            ),
        );
        t.set_u32("alignments2D/class", vec![0, 4, u32::MAX]);
        t.set(
            "location/micrograph_uid",
            Column::new(ColumnData::U64(vec![1, 2, 3, 4, u64::MAX, 0]), 2),
        );
        t.set_str(
            "blob/path",
            vec![
                "J1/imported/stack_ü.mrcs".into(),
                "".into(),
                "日本/Å".into(),
            ],
        );
        t.set(
            "gt/names",
            Column::new(
                ColumnData::Str(vec![
                    "a".into(),
                    "".into(),
                    "ç".into(),
                    "d e".into(),
                    "".into(),
                    "f".into(),
                ]),
                2,
            ),
        );
        t.set(
            "deep/nested/group",
            Column::scalar(ColumnData::F32(vec![1.0, 2.0, 3.0])),
        );
        let mut w = DatasetWriter::create(&path, spec(4, ImageDtype::F32, None, 2)).unwrap();
        w.append_images(images(n, 4, 0).view()).unwrap();
        w.finish(t.clone(), &attrs()).unwrap();

        let d = Dataset::open(&path).unwrap();
        t.set(IMAGE_ROW, Column::scalar(ColumnData::U64(vec![0, 1, 2])));
        assert_eq!(d.table(), &t);
        assert_eq!(d.attrs(), &attrs());
        assert_eq!(d.box_px(), 4);
        assert_eq!(d.psize_a(), 1.25);
        assert_eq!(d.images_file(), path.as_path());
        assert_eq!(d.len(), 3);
        assert_eq!(Dataset::count(&path).unwrap(), 3);

        // The on-disk layout is the documented one.
        let f = hdf5::File::open(&path).unwrap();
        assert_eq!(f.dataset("ctf/df1_A").unwrap().shape(), vec![3]);
        assert_eq!(f.dataset("gt/triple").unwrap().shape(), vec![3, 3]);
        let units =
            h5table::read_str_attr(&f.dataset("ctf/df1_A").unwrap(), &path, "units").unwrap();
        assert_eq!(units.as_deref(), Some("angstrom"));
        let units =
            h5table::read_str_attr(&f.dataset("alignments2D/shift").unwrap(), &path, "units")
                .unwrap();
        assert_eq!(units.as_deref(), Some("pixel"));
        assert_eq!(
            h5table::read_str_attr(&f.dataset("alignments2D/class").unwrap(), &path, "units")
                .unwrap(),
            None
        );
        assert_eq!(
            h5table::read_str_attr(&f, &path, "emclass_format")
                .unwrap()
                .as_deref(),
            Some(FORMAT_NAME)
        );
        assert_eq!(
            h5table::read_num_attr::<u32>(&f, &path, "format_version").unwrap(),
            Some(1)
        );
        assert_eq!(
            h5table::read_str_attr(&f, &path, "images_file").unwrap(),
            None
        );
    }

    #[test]
    fn missing_blob_root_stays_none_and_empty_dataset_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.h5");
        let w = DatasetWriter::create(&path, spec(8, ImageDtype::F16, Some(4), 16)).unwrap();
        let mut t = ParticleTable::new(vec![]);
        t.set(
            "alignments2D/shift",
            Column::new(ColumnData::F32(vec![]), 2),
        );
        t.set_str("blob/path", vec![]);
        w.finish(t, &DatasetAttrs::default()).unwrap();
        let d = Dataset::open(&path).unwrap();
        assert_eq!(d.len(), 0);
        assert_eq!(d.attrs(), &DatasetAttrs::default());
        assert_eq!(d.table().get("alignments2D/shift").unwrap().width, 2);
        assert_eq!(d.read_images(0..0).unwrap().dim(), (0, 8, 8));
        assert_eq!(Dataset::count(&path).unwrap(), 0);
    }

    #[test]
    fn f32_images_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f32.h5");
        let imgs = images(10, 6, 1);
        write_simple(&path, &imgs, spec(6, ImageDtype::F32, None, 4), 3);
        let d = Dataset::open(&path).unwrap();
        assert_eq!(d.image_dtype(), ImageDtype::F32);
        assert_eq!(d.read_images(0..10).unwrap(), imgs);
        assert_eq!(d.read_images(3..5).unwrap(), imgs.slice(s![3..5, .., ..]));
    }

    #[test]
    fn f16_gzip_images_are_within_1e3_relative() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f16.h5");
        let imgs = images(9, 8, 2);
        write_simple(&path, &imgs, spec(8, ImageDtype::F16, Some(6), 4), 5);
        let f = hdf5::File::open(&path).unwrap();
        let ds = f.dataset("images").unwrap();
        assert_eq!(ds.chunk(), Some(vec![4, 8, 8]));
        assert!(
            ds.filters()
                .iter()
                .any(|f| matches!(f, hdf5::filters::Filter::Deflate(6))),
            "{:?}",
            ds.filters()
        );
        assert_eq!(ds.dtype().unwrap().size(), 2);
        drop((ds, f));
        let d = Dataset::open(&path).unwrap();
        assert_eq!(d.image_dtype(), ImageDtype::F16);
        let back = d.read_images(0..9).unwrap();
        for (a, b) in back.iter().zip(imgs.iter()) {
            // float16 has a 10-bit mantissa (relative 2^-11); values below its normal
            // range (6e-5) keep an absolute error of about 6e-8.
            assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn f32_gzip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gz.h5");
        let imgs = images(7, 5, 3);
        write_simple(&path, &imgs, spec(5, ImageDtype::F32, Some(1), 3), 7);
        assert_eq!(
            Dataset::open(&path).unwrap().read_images(0..7).unwrap(),
            imgs
        );
    }

    #[test]
    fn open_range_returns_exactly_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.h5");
        let imgs = images(25, 4, 4);
        write_simple(&path, &imgs, spec(4, ImageDtype::F32, None, 8), 6);
        let full = Dataset::open(&path).unwrap();
        let part = Dataset::open_range(&path, 7..19).unwrap();
        assert_eq!(part.table(), &full.table().slice(7, 19));
        assert_eq!(part.table().uid()[0], 107);
        assert_eq!(part.file_rows(), 7..19);
        assert_eq!(
            part.read_images(0..12).unwrap(),
            imgs.slice(s![7..19, .., ..])
        );
        assert_eq!(
            part.read_images(2..3).unwrap(),
            imgs.slice(s![9..10, .., ..])
        );
        assert_eq!(Dataset::open_range(&path, 25..25).unwrap().len(), 0);
        let e = Dataset::open_range(&path, 20..26)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("r.h5") && e.contains("20..26"), "{e}");
        let e = part.read_images(10..13).unwrap_err().to_string();
        assert!(e.contains("10..13"), "{e}");
    }

    #[test]
    fn referencing_dataset_reads_non_contiguous_rows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::create_dir(dir.path().join("job")).unwrap();
        let src = dir.path().join("in/particles.h5");
        let imgs = images(20, 4, 5);
        write_simple(&src, &imgs, spec(4, ImageDtype::F32, Some(3), 4), 20);
        let source = Dataset::open(&src).unwrap();
        let rows = [3usize, 4, 5, 10, 2, 2, 19];
        let mut t = source.table().select(&rows);
        t.set_u32("alignments2D/class", vec![1, 0, 1, 2, 0, 0, 1]);
        let out = dir.path().join("job/particles.h5");
        let out_attrs = DatasetAttrs {
            blob_root: None,
            source: "classify2d".into(),
        };
        write_referencing(&out, &t, &out_attrs, &source).unwrap();
        assert!(!h5table::tmp_path(&out).exists());

        let f = hdf5::File::open(&out).unwrap();
        assert!(!f.link_exists("images"));
        let rel = h5table::read_str_attr(&f, &out, "images_file").unwrap();
        assert_eq!(rel.as_deref(), Some("../in/particles.h5"));
        drop(f);

        let d = Dataset::open(&out).unwrap();
        assert_eq!(d.table(), &t);
        assert_eq!(d.attrs(), &out_attrs);
        assert_eq!(d.box_px(), 4);
        assert_eq!(d.psize_a(), 1.25);
        assert_eq!(
            d.images_file(),
            dir.path().join("job").join("../in/particles.h5")
        );
        let got = d.read_images(0..7).unwrap();
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(
                got.slice(s![k, .., ..]),
                imgs.slice(s![r, .., ..]),
                "row {k}"
            );
        }
        let got = d.read_images(2..5).unwrap();
        assert_eq!(got.slice(s![1, .., ..]), imgs.slice(s![10, .., ..]));

        // A range of a referencing dataset maps through the same column.
        let p = Dataset::open_range(&out, 3..6).unwrap();
        assert_eq!(
            p.read_images(0..3).unwrap().slice(s![0, .., ..]),
            imgs.slice(s![10, .., ..])
        );

        // The relative reference survives moving the whole project folder.
        let moved = tempfile::tempdir().unwrap();
        let proj = moved.path().join("proj");
        std::fs::rename(dir.path(), &proj).unwrap();
        let d = Dataset::open(&proj.join("job/particles.h5")).unwrap();
        assert_eq!(
            d.read_images(6..7).unwrap().slice(s![0, .., ..]),
            imgs.slice(s![19, .., ..])
        );
        std::fs::create_dir(dir.path()).unwrap(); // let the TempDir clean up
    }

    #[test]
    fn referencing_requires_valid_image_rows() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("s.h5");
        write_simple(&src, &images(3, 2, 0), spec(2, ImageDtype::F32, None, 2), 3);
        let source = Dataset::open(&src).unwrap();
        let out = dir.path().join("o.h5");
        let t = ParticleTable::new(vec![1, 2]);
        let e = write_referencing(&out, &t, &attrs(), &source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("o.h5") && e.contains(IMAGE_ROW), "{e}");
        let mut t = source.table().clone();
        t.set(IMAGE_ROW, Column::scalar(ColumnData::U64(vec![0, 1, 3])));
        let e = write_referencing(&out, &t, &attrs(), &source)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("points at image 3") && e.contains("uid 102"),
            "{e}"
        );
        assert_nothing_left(&out);
        // Overwriting the images file with a reference to itself is refused.
        let e = write_referencing(&src, source.table(), &attrs(), &source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("would overwrite"), "{e}");
        assert!(Dataset::open(&src).is_ok());
    }

    #[test]
    fn nan_image_is_rejected_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nan.h5");
        let mut w = DatasetWriter::create(&path, spec(4, ImageDtype::F32, None, 2)).unwrap();
        assert!(h5table::tmp_path(&path).exists());
        w.append_images(images(3, 4, 0).view()).unwrap();
        let mut bad = images(4, 4, 1);
        bad[[2, 1, 3]] = f32::NAN;
        let e = w.append_images(bad.view()).unwrap_err().to_string();
        assert!(
            e.contains("nan.h5") && e.contains("particle row 5") && e.contains("non-finite"),
            "{e}"
        );
        // Nothing of the rejected batch was taken.
        assert_eq!(w.images_written(), 3);
        bad[[2, 1, 3]] = f32::INFINITY;
        assert!(w.append_images(bad.view()).is_err());
        drop(w);
        assert_nothing_left(&path);
    }

    #[test]
    fn f16_overflow_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.h5");
        let mut w = DatasetWriter::create(&path, spec(2, ImageDtype::F16, None, 2)).unwrap();
        let mut big = images(2, 2, 0);
        big[[1, 0, 0]] = 1e6;
        let e = w.append_images(big.view()).unwrap_err().to_string();
        assert!(e.contains("particle row 1") && e.contains("float16"), "{e}");
    }

    #[test]
    fn dropping_a_writer_without_finish_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drop.h5");
        let mut w = DatasetWriter::create(&path, spec(4, ImageDtype::F16, Some(2), 2)).unwrap();
        w.append_images(images(5, 4, 0).view()).unwrap();
        drop(w);
        assert_nothing_left(&path);
        // The path can be written afterwards.
        write_simple(
            &path,
            &images(2, 4, 0),
            spec(4, ImageDtype::F32, None, 2),
            2,
        );
        assert_eq!(Dataset::count(&path).unwrap(), 2);
    }

    #[test]
    fn finish_with_wrong_row_count_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.h5");
        let mut w = DatasetWriter::create(&path, spec(4, ImageDtype::F32, None, 2)).unwrap();
        w.append_images(images(3, 4, 0).view()).unwrap();
        let e = w
            .finish(ParticleTable::new(vec![1, 2]), &attrs())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rows.h5") && e.contains("2 rows but 3 images"),
            "{e}"
        );
        assert_nothing_left(&path);
    }

    #[test]
    fn wrong_box_and_nul_strings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.h5");
        let mut w = DatasetWriter::create(&path, spec(4, ImageDtype::F32, None, 2)).unwrap();
        let e = w
            .append_images(images(1, 5, 0).view())
            .unwrap_err()
            .to_string();
        assert!(e.contains("5x5") && e.contains("box 4"), "{e}");
        w.append_images(images(1, 4, 0).view()).unwrap();
        let mut t = ParticleTable::new(vec![1]);
        t.set_str("blob/path", vec!["a\0b".into()]);
        let e = w.finish(t, &attrs()).unwrap_err().to_string();
        assert!(e.contains("blob/path") && e.contains("NUL"), "{e}");
        assert_nothing_left(&path);
        let e = DatasetWriter::create(&path, spec(4, ImageDtype::F32, Some(12), 2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("gzip"), "{e}");
        let e = DatasetWriter::create(
            &dir.path().join("no/such/x.h5"),
            spec(4, ImageDtype::F32, None, 2),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn one_writer_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.h5");
        let w = DatasetWriter::create(&path, spec(2, ImageDtype::F32, None, 2)).unwrap();
        let e = DatasetWriter::create(&path, spec(2, ImageDtype::F32, None, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already being written"), "{e}");
        w.finish(ParticleTable::new(vec![]), &attrs()).unwrap();
        assert_eq!(Dataset::count(&path).unwrap(), 0);

        // A temporary file locked by another writer (HDF5 uses flock, so an flock held on
        // another descriptor stands for another process) is left alone.
        let tmp = h5table::tmp_path(&path);
        std::fs::write(&tmp, b"partial").unwrap();
        let holder = std::fs::File::open(&tmp).unwrap();
        holder.lock().unwrap();
        let e = DatasetWriter::create(&path, spec(2, ImageDtype::F32, None, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another process"), "{e}");
        assert_eq!(std::fs::read(&tmp).unwrap(), b"partial");
        holder.unlock().unwrap();
        drop(holder);
        // Unlocked, it is a leftover of a killed run and is replaced.
        write_simple(
            &path,
            &images(1, 2, 0),
            spec(2, ImageDtype::F32, None, 2),
            1,
        );
        assert_eq!(Dataset::count(&path).unwrap(), 1);
        assert!(!tmp.exists());
    }

    #[test]
    fn thousand_particles_in_chunks_of_64() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.h5");
        let imgs = images(1000, 16, 6);
        let t = write_simple(&path, &imgs, spec(16, ImageDtype::F32, Some(4), 64), 37);
        assert_eq!(Dataset::count(&path).unwrap(), 1000);
        let f = hdf5::File::open(&path).unwrap();
        let ds = f.dataset("images").unwrap();
        assert_eq!(ds.shape(), vec![1000, 16, 16]);
        assert_eq!(ds.chunk(), Some(vec![64, 16, 16]));
        assert_eq!(ds.num_chunks(), Some(16));
        drop((ds, f));
        let d = Dataset::open(&path).unwrap();
        assert_eq!(d.table().uid(), t.uid());
        assert_eq!(d.table().u64(IMAGE_ROW).unwrap()[999], 999);
        assert_eq!(d.read_images(0..1000).unwrap(), imgs);
        assert_eq!(
            d.read_images(630..700).unwrap(),
            imgs.slice(s![630..700, .., ..])
        );
        let r = Dataset::open_range(&path, 500..1000).unwrap();
        assert_eq!(
            r.read_images(499..500).unwrap(),
            imgs.slice(s![999..1000, .., ..])
        );
    }

    #[test]
    fn non_finite_pixels_in_a_file_are_reported_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.h5");
        write_simple(
            &path,
            &images(6, 3, 0),
            spec(3, ImageDtype::F32, None, 4),
            6,
        );
        {
            let f = hdf5::File::open_rw(&path).unwrap();
            let ds = f.dataset("images").unwrap();
            let nan = ndarray::Array3::<f32>::from_elem((1, 3, 3), f32::NAN);
            ds.write_slice(nan.view(), s![4..5, .., ..]).unwrap();
        }
        let d = Dataset::open(&path).unwrap();
        assert!(d.read_images(0..4).is_ok());
        let e = d.read_images(2..6).unwrap_err().to_string();
        assert!(
            e.contains("bad.h5")
                && e.contains("images")
                && e.contains("particle row 4 (uid 104) has non-finite pixels"),
            "{e}"
        );
    }

    /// A valid file to corrupt in the tests below.
    fn corrupted(dir: &Path, name: &str, edit: impl FnOnce(&hdf5::File)) -> PathBuf {
        let path = dir.join(name);
        write_simple(
            &path,
            &images(4, 2, 0),
            spec(2, ImageDtype::F32, None, 2),
            4,
        );
        let f = hdf5::File::open_rw(&path).unwrap();
        edit(&f);
        f.close().unwrap();
        path
    }

    #[test]
    fn invalid_files_give_one_line_errors_naming_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let check = |path: &Path, want: &[&str]| {
            let e = Dataset::open(path)
                .err()
                .expect("open must fail")
                .to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(
                e.contains(path.file_name().unwrap().to_str().unwrap()),
                "{e}"
            );
            for w in want {
                assert!(e.contains(w), "{e} lacks {w}");
            }
        };
        let text = d.join("text.h5");
        std::fs::write(&text, "not hdf5 at all").unwrap();
        check(&text, &["cannot open as an HDF5 file"]);
        assert!(Dataset::count(&text).is_err());
        check(&d.join("missing.h5"), &["does not exist"]);

        let plain = d.join("plain.h5");
        hdf5::File::create(&plain).unwrap().close().unwrap();
        check(&plain, &["not an emclass particle dataset"]);

        let p = corrupted(d, "newer.h5", |f| {
            f.delete_attr("format_version").unwrap();
            h5table::write_num_attr(f, "format_version", 2u32).unwrap();
        });
        check(&p, &["format_version", "newer"]);
        let p = corrupted(d, "fmt.h5", |f| {
            f.delete_attr("emclass_format").unwrap();
            h5table::write_str_attr(f, "emclass_format", "other").unwrap();
        });
        check(&p, &["emclass_format"]);
        let p = corrupted(d, "nouid.h5", |f| f.unlink("uid").unwrap());
        check(&p, &["uid", "missing"]);
        assert!(Dataset::count(&p).unwrap_err().to_string().contains("uid"));
        let p = corrupted(d, "short.h5", |f| {
            f.new_dataset_builder()
                .with_data(&[1.0f32, 2.0, 3.0])
                .create("ctf/cs_mm")
                .unwrap();
        });
        check(&p, &["ctf/cs_mm", "has 3 rows but /uid has 4"]);
        let p = corrupted(d, "noimg.h5", |f| f.unlink("images").unwrap());
        check(&p, &["images", "missing"]);
        let p = corrupted(d, "norow.h5", |f| f.unlink("blob/image_row").unwrap());
        check(&p, &[IMAGE_ROW, "missing"]);
        let p = corrupted(d, "ref.h5", |f| {
            f.unlink("images").unwrap();
            h5table::write_str_attr(f, "images_file", "gone.h5").unwrap();
        });
        check(&p, &["images_file", "gone.h5", "does not exist"]);
        let p = corrupted(d, "i8.h5", |f| {
            f.new_dataset_builder()
                .with_data(&[1i8, 2, 3, 4])
                .create("gt/flag")
                .unwrap();
        });
        check(&p, &["gt/flag", "unsupported element type"]);
    }

    #[test]
    fn datasets_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Dataset>();
        fn send<T: Send>() {}
        send::<DatasetWriter>();
    }
}
