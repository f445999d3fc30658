//! A referencing dataset (a job's `particles.h5`) written in turns by several processes,
//! so that per-particle results never have to be gathered into one rank's memory.
//!
//! Rank 0 [`create`](TableAppender::create)s `<path>.tmp` with the header and an empty,
//! growable, chunked HDF5 dataset per column (the schema comes from a table with no rows),
//! appends its rows block by block and closes the file; then each rank in turn
//! [`open`](TableAppender::open)s it, appends its rows and closes it; finally rank 0
//! [`commit`](AppendTarget::commit)s: it checks that every column has the same number of
//! rows, syncs and renames the file into place. Serial HDF5 never has two writers: the
//! turns are ordered by the caller (one collective per turn). Until the commit, nothing is
//! at `path`; if any turn fails, rank 0 drops the target and the temporary file goes.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use hdf5::H5Type;
use ndarray::{s, ArrayView1, ArrayView2};

use super::h5table::{self, tmp_path, H5Ctx, TmpGuard, UID};
use super::store::{images_reference, write_header};
use super::{ColumnData, Dataset, DatasetAttrs, ParticleTable};
use crate::error::{Error, Result};

/// Rows per HDF5 chunk of the metadata columns.
const CHUNK_ROWS: usize = 4096;

/// Rank 0's claim on the temporary file, committed once every rank has appended.
pub struct AppendTarget {
    path: PathBuf,
    guard: TmpGuard,
}

/// The open temporary file of one turn.
pub struct TableAppender {
    path: PathBuf,
    file: hdf5::File,
    rows: usize,
    /// Names and widths of the columns (without `uid`).
    columns: Vec<(String, usize)>,
}

impl TableAppender {
    /// Creates `<path>.tmp` referencing the images of `images_from`, with the columns of
    /// `schema` (its rows are not written).
    pub fn create(
        path: &Path,
        schema: &ParticleTable,
        attrs: &DatasetAttrs,
        images_from: &Dataset,
    ) -> Result<(AppendTarget, TableAppender)> {
        let rel = images_reference(path, images_from)?;
        let (guard, file) = TmpGuard::create(path)?;
        growable::<u64>(&file, UID, 1).ctx(path, UID)?;
        let mut columns = Vec::new();
        for (name, col) in schema.columns() {
            h5table::check_column_name(path, name)?;
            let w = col.width;
            let ds = match &col.data {
                ColumnData::F32(_) => growable::<f32>(&file, name, w),
                ColumnData::F64(_) => growable::<f64>(&file, name, w),
                ColumnData::I32(_) => growable::<i32>(&file, name, w),
                ColumnData::U32(_) => growable::<u32>(&file, name, w),
                ColumnData::U64(_) => growable::<u64>(&file, name, w),
                ColumnData::Str(_) => growable::<VarLenUnicode>(&file, name, w),
            }
            .ctx(path, name)?;
            if let Some(unit) = h5table::unit_of(name) {
                h5table::write_str_attr(&ds, "units", unit).ctx(path, name)?;
            }
            columns.push((name.to_string(), w));
        }
        write_header(
            &file,
            path,
            attrs,
            images_from.box_px(),
            images_from.psize_a(),
            Some(&rel),
        )?;
        Ok((
            AppendTarget {
                path: path.to_path_buf(),
                guard,
            },
            TableAppender {
                path: path.to_path_buf(),
                file,
                rows: 0,
                columns,
            },
        ))
    }

    /// Opens the temporary file that rank 0 created for `path`, to append more rows.
    pub fn open(path: &Path) -> Result<TableAppender> {
        let tmp = tmp_path(path);
        let file = hdf5::File::open_rw(&tmp).map_err(|e| Error::hdf5(&tmp, "open", e))?;
        let rows = h5table::uid_rows(&file, path)?;
        let columns = collect_columns(&file, path)?;
        Ok(TableAppender {
            path: path.to_path_buf(),
            file,
            rows,
            columns,
        })
    }

    /// Rows in the file so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends the rows of `t`, which must have exactly the file's columns.
    pub fn append(&mut self, t: &ParticleTable) -> Result<()> {
        let n = t.len();
        if n == 0 {
            return Ok(());
        }
        let names: Vec<&str> = t.names().collect();
        if names.len() != self.columns.len() {
            return Err(Error::file(
                &self.path,
                format!(
                    "rows with {} columns appended to a file of {}",
                    names.len(),
                    self.columns.len()
                ),
            ));
        }
        let (a, z) = (self.rows, self.rows + n);
        let uid = self.file.dataset(UID).ctx(&self.path, UID)?;
        put(&uid, t.uid(), a, z, 1).ctx(&self.path, UID)?;
        for (name, col) in t.columns() {
            let want = self.columns.iter().find(|(c, _)| c == name).map(|c| c.1);
            if want != Some(col.width) {
                return Err(Error::field(
                    &self.path,
                    name,
                    format!(
                        "not a column of width {} in the file being written (found {want:?})",
                        col.width
                    ),
                ));
            }
            let ds = self.file.dataset(name).ctx(&self.path, name)?;
            let w = col.width;
            match &col.data {
                ColumnData::F32(v) => put(&ds, v, a, z, w),
                ColumnData::F64(v) => put(&ds, v, a, z, w),
                ColumnData::I32(v) => put(&ds, v, a, z, w),
                ColumnData::U32(v) => put(&ds, v, a, z, w),
                ColumnData::U64(v) => put(&ds, v, a, z, w),
                ColumnData::Str(v) => {
                    let enc = v
                        .iter()
                        .map(|s| {
                            s.parse::<VarLenUnicode>().map_err(|_| {
                                Error::field(
                                    &self.path,
                                    name,
                                    "a value holds a NUL character, which HDF5 strings cannot store",
                                )
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    put(&ds, &enc, a, z, w)
                }
            }
            .ctx(&self.path, name)?;
        }
        self.rows = z;
        Ok(())
    }

    /// Flushes and closes the file (the next turn may open it); returns its row count.
    pub fn close(self) -> Result<usize> {
        self.file.flush().ctx(&self.path, "flush")?;
        self.file.close().ctx(&self.path, "close")?;
        Ok(self.rows)
    }
}

impl AppendTarget {
    /// Checks that the closed temporary file holds `expected_rows` rows in every column,
    /// then syncs and renames it onto the final path.
    pub fn commit(self, expected_rows: usize) -> Result<()> {
        let file = hdf5::File::open(tmp_path(&self.path))
            .map_err(|e| Error::hdf5(&self.path, "open", e))?;
        let mut columns = collect_columns(&file, &self.path)?;
        columns.push((UID.to_string(), 1));
        for (name, _) in &columns {
            let rows = file.dataset(name).ctx(&self.path, name)?.shape()[0];
            if rows != expected_rows {
                return Err(Error::field(
                    &self.path,
                    name,
                    format!("{rows} rows written, {expected_rows} expected"),
                ));
            }
        }
        file.close().ctx(&self.path, "close")?;
        self.guard.commit()
    }
}

/// An empty dataset of `width` values per row that grows along rows.
fn growable<T: H5Type>(file: &hdf5::File, name: &str, width: usize) -> hdf5::Result<hdf5::Dataset> {
    let b = file.new_dataset_builder().empty::<T>();
    if width == 1 {
        b.shape((0..,)).chunk((CHUNK_ROWS,)).create(name)
    } else {
        b.shape((0.., width))
            .chunk((CHUNK_ROWS, width))
            .create(name)
    }
}

/// Grows `ds` to `z` rows and writes rows `a..z`.
fn put<T: H5Type>(ds: &hdf5::Dataset, v: &[T], a: usize, z: usize, w: usize) -> hdf5::Result<()> {
    if w == 1 {
        ds.resize((z,))?;
        ds.write_slice(ArrayView1::from(v), s![a..z])
    } else {
        ds.resize((z, w))?;
        ds.write_slice(ArrayView2::from_shape((z - a, w), v)?, s![a..z, ..])
    }
}

/// Names and widths of the file's columns (every dataset but `/uid` and `/images`).
fn collect_columns(file: &hdf5::File, path: &Path) -> Result<Vec<(String, usize)>> {
    let mut names = Vec::new();
    h5table::column_paths(file, "", path, &mut names)?;
    names
        .into_iter()
        .map(|name| {
            let w = file
                .dataset(&name)
                .ctx(path, &name)?
                .shape()
                .get(1)
                .copied()
                .unwrap_or(1);
            Ok((name, w))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Column, DatasetWriter, ImageDtype, ImageSpec};
    use ndarray::Array3;

    fn source(dir: &Path, n: usize) -> Dataset {
        let p = dir.join("in.h5");
        let mut w = DatasetWriter::create(
            &p,
            ImageSpec {
                box_px: 4,
                psize_a: 2.0,
                dtype: ImageDtype::F32,
                gzip: None,
                chunk_particles: 8,
            },
        )
        .unwrap();
        w.append_images(Array3::<f32>::zeros((n, 4, 4)).view())
            .unwrap();
        let mut t = ParticleTable::new((0..n as u64).map(|u| 1000 + u).collect());
        t.set_f32("ctf/df1_A", (0..n).map(|i| i as f32).collect());
        t.set_str("blob/path", (0..n).map(|i| format!("mic{i}.mrc")).collect());
        w.finish(t, &DatasetAttrs::default()).unwrap();
        Dataset::open(&p).unwrap()
    }

    fn with_results(t: &ParticleTable) -> ParticleTable {
        let mut t = t.clone();
        let n = t.len();
        t.set(
            "alignments2D/class_probs",
            Column::new(ColumnData::F32((0..2 * n).map(|i| i as f32).collect()), 2),
        );
        t
    }

    #[test]
    fn turns_append_to_one_file_that_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let input = source(dir.path(), 10);
        let out = dir.path().join("out.h5");
        let all = with_results(input.table());
        let schema = with_results(&input.table().slice(0, 0));
        let (target, mut first) =
            TableAppender::create(&out, &schema, &DatasetAttrs::default(), &input).unwrap();
        first.append(&all.slice(0, 3)).unwrap();
        first.append(&all.slice(3, 4)).unwrap();
        assert_eq!(first.close().unwrap(), 4);
        assert!(!out.exists(), "nothing at the final path before the commit");
        let mut second = TableAppender::open(&out).unwrap();
        assert_eq!(second.rows(), 4);
        second.append(&all.slice(4, 10)).unwrap();
        second.close().unwrap();
        target.commit(10).unwrap();
        let back = Dataset::open(&out).unwrap();
        assert_eq!(back.table(), &all);
        assert_eq!(back.read_images(0..10).unwrap().dim(), (10, 4, 4));
    }

    #[test]
    fn a_short_or_mismatched_file_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let input = source(dir.path(), 6);
        let out = dir.path().join("out.h5");
        let all = with_results(input.table());
        let (target, mut a) = TableAppender::create(
            &out,
            &with_results(&input.table().slice(0, 0)),
            &DatasetAttrs::default(),
            &input,
        )
        .unwrap();
        let e = a
            .append(&input.table().slice(0, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("columns"), "{e}");
        a.append(&all.slice(0, 5)).unwrap();
        a.close().unwrap();
        let e = target.commit(6).unwrap_err().to_string();
        assert!(e.contains("5 rows written, 6 expected"), "{e}");
        assert!(!out.exists());
        assert!(!tmp_path(&out).exists(), "the temporary file is removed");
    }
}
