//! The HDF5 encoding of a [`ParticleTable`] and of a dataset's root attributes (format in
//! `docs/FORMAT.md`): `/uid` plus one HDF5 dataset per column at `/group/name`, shaped (N,)
//! for one value per row or (N, width), with a `units` attribute where the unit is known.
//! Also the temporary-file guard that makes every write atomic and single-writer.
//!
//! hdf5-metno notes (learned here, see the tests in `store.rs`):
//! - strings are variable-length UTF-8 (`VarLenUnicode`); it rejects strings holding a NUL
//!   byte, so those are reported as a field error instead of being truncated;
//! - the type of a stored column is found with `dtype().to_descriptor()`; reads of another
//!   type would be converted silently by HDF5, so the descriptor picks the column type;
//! - HDF5 error stacks are silenced by hdf5-metno itself on first use, so expected failures
//!   print nothing on stderr.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::H5Type;
use ndarray::{s, ArrayView1, ArrayView2};

use super::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};

/// Root dataset holding the particle uids (its length defines N).
pub(super) const UID: &str = "uid";
/// Root dataset holding the images (N, box, box) in files that hold their own images.
pub(super) const IMAGES: &str = "images";

/// Attaches the file and the object to an HDF5 error.
pub(super) trait H5Ctx<T> {
    fn ctx(self, path: &Path, what: &str) -> Result<T>;
}

impl<T> H5Ctx<T> for hdf5::Result<T> {
    fn ctx(self, path: &Path, what: &str) -> Result<T> {
        self.map_err(|e| Error::hdf5(path, what, e))
    }
}

/// The unit of a column, from its name (CryoSPARC's naming: a suffix `_A` means Å, ...).
/// `None` for dimensionless or unknown fields.
pub(super) fn unit_of(name: &str) -> Option<&'static str> {
    let (group, leaf) = match name.rsplit_once('/') {
        Some((g, l)) => (g, l),
        None => ("", name),
    };
    let unit = if leaf.ends_with("psize_A") {
        "angstrom/pixel"
    } else if leaf == "bfactor" {
        "angstrom^2"
    } else if leaf.ends_with("_A") {
        "angstrom"
    } else if leaf.ends_with("_rad") {
        "radian"
    } else if leaf.ends_with("_deg") {
        "degree"
    } else if leaf.ends_with("_px")
        || leaf == "shift"
        || leaf == "shape"
        || leaf.ends_with("_shape")
    {
        "pixel"
    } else if leaf.ends_with("_kv") {
        "kilovolt"
    } else if leaf.ends_with("_mm") {
        "millimetre"
    } else if leaf.ends_with("_frac") {
        "fraction of the micrograph side"
    } else if leaf == "pose" && group.starts_with("alignments") {
        "radian"
    } else {
        return None;
    };
    Some(unit)
}

/// Writes a scalar UTF-8 string attribute on `loc`.
pub(super) fn write_str_attr(loc: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    let v: VarLenUnicode = value
        .parse()
        .map_err(|e| hdf5::Error::from(format!("attribute {name}: {e}")))?;
    let attr = loc.new_attr::<VarLenUnicode>().shape(()).create(name)?;
    attr.as_writer().write_scalar(&v)
}

/// Writes a scalar numeric attribute on `loc`.
pub(super) fn write_num_attr<T: H5Type>(
    loc: &hdf5::Location,
    name: &str,
    value: T,
) -> hdf5::Result<()> {
    let attr = loc.new_attr::<T>().shape(()).create(name)?;
    attr.as_writer().write_scalar(&value)
}

fn has_attr(loc: &hdf5::Location, name: &str) -> hdf5::Result<bool> {
    Ok(loc.attr_names()?.iter().any(|n| n == name))
}

/// The attribute `name` of `loc` and its element type; `None` when absent.
fn attr_with_type(
    loc: &hdf5::Location,
    path: &Path,
    name: &str,
) -> Result<Option<(hdf5::Attribute, TypeDescriptor)>> {
    if !has_attr(loc, name).ctx(path, name)? {
        return Ok(None);
    }
    let attr = loc.attr(name).ctx(path, name)?;
    let desc = attr
        .dtype()
        .and_then(|t| t.to_descriptor())
        .ctx(path, name)?;
    Ok(Some((attr, desc)))
}

/// Reads a scalar string attribute (UTF-8 or ASCII, variable length); `None` when absent.
pub(super) fn read_str_attr(
    loc: &hdf5::Location,
    path: &Path,
    name: &str,
) -> Result<Option<String>> {
    let Some((attr, desc)) = attr_with_type(loc, path, name)? else {
        return Ok(None);
    };
    let s = match desc {
        TypeDescriptor::VarLenUnicode => attr
            .as_reader()
            .read_scalar::<VarLenUnicode>()
            .ctx(path, name)?
            .as_str()
            .to_string(),
        TypeDescriptor::VarLenAscii => attr
            .as_reader()
            .read_scalar::<VarLenAscii>()
            .ctx(path, name)?
            .as_str()
            .to_string(),
        other => {
            return Err(Error::field(
                path,
                name,
                format!("expected a variable-length string attribute, found {other}"),
            ))
        }
    };
    Ok(Some(s))
}

/// Reads a scalar numeric attribute converted to `T`; `None` when absent.
pub(super) fn read_num_attr<T: H5Type>(
    loc: &hdf5::Location,
    path: &Path,
    name: &str,
) -> Result<Option<T>> {
    let Some((attr, desc)) = attr_with_type(loc, path, name)? else {
        return Ok(None);
    };
    if !matches!(
        desc,
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Float(_)
    ) {
        return Err(Error::field(
            path,
            name,
            format!("expected a number, found {desc}"),
        ));
    }
    attr.as_reader()
        .read_scalar::<T>()
        .ctx(path, name)
        .map(Some)
}

/// Checks that a column name can be stored as an HDF5 path next to `/uid` and `/images`.
pub(super) fn check_column_name(path: &Path, name: &str) -> Result<()> {
    if name == UID || name == IMAGES {
        return Err(Error::field(
            path,
            name,
            "a column may not be named uid or images (reserved)",
        ));
    }
    if name.is_empty()
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::field(
            path,
            name,
            "invalid column name (empty component, leading or trailing /, . or ..)",
        ));
    }
    Ok(())
}

fn write_typed<T: H5Type>(
    file: &hdf5::File,
    name: &str,
    data: &[T],
    n: usize,
    width: usize,
) -> hdf5::Result<hdf5::Dataset> {
    if width == 1 {
        file.new_dataset_builder()
            .with_data(ArrayView1::from(data))
            .create(name)
    } else {
        let view = ArrayView2::from_shape((n, width), data)?;
        file.new_dataset_builder().with_data(view).create(name)
    }
}

/// Writes `/uid` and every column of `table` into `file`. `path` names the file in errors
/// (the final path, not the temporary one).
pub(super) fn write_table(file: &hdf5::File, path: &Path, table: &ParticleTable) -> Result<()> {
    let n = table.len();
    write_typed(file, UID, table.uid(), n, 1).ctx(path, UID)?;
    for (name, col) in table.columns() {
        check_column_name(path, name)?;
        if col.width == 0 || col.data.len() != n * col.width {
            return Err(Error::field(
                path,
                name,
                format!(
                    "{} values of width {} do not make {n} rows",
                    col.data.len(),
                    col.width
                ),
            ));
        }
        let w = col.width;
        let ds = match &col.data {
            ColumnData::F32(v) => write_typed(file, name, v, n, w),
            ColumnData::F64(v) => write_typed(file, name, v, n, w),
            ColumnData::I32(v) => write_typed(file, name, v, n, w),
            ColumnData::U32(v) => write_typed(file, name, v, n, w),
            ColumnData::U64(v) => write_typed(file, name, v, n, w),
            ColumnData::Str(v) => {
                let mut enc = Vec::with_capacity(v.len());
                for (i, s) in v.iter().enumerate() {
                    let e: VarLenUnicode = s.parse().map_err(|_| {
                        Error::field(
                            path,
                            name,
                            format!(
                                "row {} holds a NUL character, which HDF5 strings cannot store",
                                i / w
                            ),
                        )
                    })?;
                    enc.push(e);
                }
                write_typed(file, name, &enc, n, w)
            }
        }
        .ctx(path, name)?;
        if let Some(unit) = unit_of(name) {
            write_str_attr(&ds, "units", unit).ctx(path, name)?;
        }
    }
    Ok(())
}

/// Number of rows N, from the shape of `/uid`.
pub(super) fn uid_rows(file: &hdf5::File, path: &Path) -> Result<usize> {
    if !file.link_exists(UID) {
        return Err(Error::field(
            path,
            UID,
            "missing (every emclass dataset has a /uid dataset)",
        ));
    }
    let ds = file.dataset(UID).ctx(path, UID)?;
    let shape = ds.shape();
    if shape.len() != 1 {
        return Err(Error::field(
            path,
            UID,
            format!("expected one dimension, found shape {shape:?}"),
        ));
    }
    Ok(shape[0])
}

/// Paths (without the leading `/`) of every dataset in the file except `/uid` and `/images`.
pub(super) fn column_paths(
    group: &hdf5::Group,
    prefix: &str,
    path: &Path,
    out: &mut Vec<String>,
) -> Result<()> {
    let what = if prefix.is_empty() { "/" } else { prefix };
    for member in group.member_names().ctx(path, what)? {
        let full = if prefix.is_empty() {
            member.clone()
        } else {
            format!("{prefix}/{member}")
        };
        match group.loc_type_by_name(&member).ctx(path, &full)? {
            hdf5::LocationType::Group => {
                let sub = group.group(&member).ctx(path, &full)?;
                column_paths(&sub, &full, path, out)?;
            }
            hdf5::LocationType::Dataset
                if !(prefix.is_empty() && (member == UID || member == IMAGES)) =>
            {
                out.push(full);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Rows `rows` of a 1-D or 2-D dataset, row-major.
fn read_rows<T: H5Type>(
    ds: &hdf5::Dataset,
    rows: &Range<usize>,
    ndim: usize,
) -> hdf5::Result<Vec<T>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (a, b) = (rows.start, rows.end);
    Ok(if ndim == 1 {
        ds.read_slice_1d::<T, _>(s![a..b])?
            .into_raw_vec_and_offset()
            .0
    } else {
        ds.read_slice_2d::<T, _>(s![a..b, ..])?
            .into_raw_vec_and_offset()
            .0
    })
}

/// Reads rows `rows` of the column stored at `name` in a file of `n` particles.
fn read_column(
    file: &hdf5::File,
    path: &Path,
    name: &str,
    n: usize,
    rows: &Range<usize>,
) -> Result<Column> {
    let ds = file.dataset(name).ctx(path, name)?;
    let shape = ds.shape();
    let width = match shape.len() {
        1 => 1,
        2 => shape[1],
        _ => {
            return Err(Error::field(
                path,
                name,
                format!("expected shape (N,) or (N, width), found {shape:?}"),
            ))
        }
    };
    if shape[0] != n {
        return Err(Error::field(
            path,
            name,
            format!("has {} rows but /uid has {n}", shape[0]),
        ));
    }
    if width == 0 {
        return Err(Error::field(path, name, "has width 0"));
    }
    let nd = shape.len();
    let desc = ds.dtype().and_then(|t| t.to_descriptor()).ctx(path, name)?;
    let data = match desc {
        TypeDescriptor::Float(FloatSize::U4) => ColumnData::F32(read_rows(&ds, rows, nd).ctx(path, name)?),
        TypeDescriptor::Float(FloatSize::U8) => ColumnData::F64(read_rows(&ds, rows, nd).ctx(path, name)?),
        TypeDescriptor::Integer(IntSize::U4) => ColumnData::I32(read_rows(&ds, rows, nd).ctx(path, name)?),
        TypeDescriptor::Unsigned(IntSize::U4) => ColumnData::U32(read_rows(&ds, rows, nd).ctx(path, name)?),
        TypeDescriptor::Unsigned(IntSize::U8) => ColumnData::U64(read_rows(&ds, rows, nd).ctx(path, name)?),
        TypeDescriptor::VarLenUnicode => {
            let v: Vec<VarLenUnicode> = read_rows(&ds, rows, nd).ctx(path, name)?;
            ColumnData::Str(v.iter().map(|s| s.as_str().to_string()).collect())
        }
        TypeDescriptor::VarLenAscii => {
            let v: Vec<VarLenAscii> = read_rows(&ds, rows, nd).ctx(path, name)?;
            ColumnData::Str(v.iter().map(|s| s.as_str().to_string()).collect())
        }
        other => {
            return Err(Error::field(
                path,
                name,
                format!("unsupported element type {other} (expected f32, f64, i32, u32, u64 or a variable-length string)"),
            ))
        }
    };
    Ok(Column::new(data, width))
}

/// Reads `/uid` and every column, rows `rows` only (one hyperslab per column), from a file
/// of `n` particles.
pub(super) fn read_table(
    file: &hdf5::File,
    path: &Path,
    n: usize,
    rows: &Range<usize>,
) -> Result<ParticleTable> {
    let uid_ds = file.dataset(UID).ctx(path, UID)?;
    let desc = uid_ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .ctx(path, UID)?;
    if !matches!(
        desc,
        TypeDescriptor::Unsigned(_) | TypeDescriptor::Integer(_)
    ) {
        return Err(Error::field(
            path,
            UID,
            format!("expected unsigned integers, found {desc}"),
        ));
    }
    let uid: Vec<u64> = read_rows(&uid_ds, rows, 1).ctx(path, UID)?;
    let mut table = ParticleTable::new(uid);
    let mut names = Vec::new();
    column_paths(file, "", path, &mut names)?;
    for name in names {
        let col = read_column(file, path, &name, n, rows)?;
        table
            .try_set(&name, col)
            .map_err(|e| Error::field(path, &name, e))?;
    }
    Ok(table)
}

/// Paths of temporary files being written by this process (HDF5 would let a second handle
/// in the same process open a file that is being written, so this guards it).
static WRITING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn registry<R>(f: impl FnOnce(&mut HashSet<PathBuf>) -> R) -> R {
    let mut g = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(HashSet::new))
}

/// `<path>.tmp`.
pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Owns `<path>.tmp` while a dataset is being written: removes it when dropped, unless
/// [`TmpGuard::commit`] renamed it onto `path`. Only one writer may hold a given path: a
/// second one in this process, or in another process (detected through HDF5's file lock),
/// gets an error instead of truncating the first one's file.
pub(super) struct TmpGuard {
    path: PathBuf,
    tmp: PathBuf,
    key: PathBuf,
    done: bool,
}

impl TmpGuard {
    /// Claims `<path>.tmp` and creates it as a new HDF5 file.
    pub(super) fn create(path: &Path) -> Result<(TmpGuard, hdf5::File)> {
        let tmp = tmp_path(path);
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !folder.is_dir() {
            return Err(Error::file(
                path,
                format!("cannot write: folder {} does not exist", folder.display()),
            ));
        }
        let key = std::path::absolute(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let claimed = registry(|set| set.insert(key.clone()));
        if !claimed {
            return Err(Error::file(
                path,
                "is already being written by this process (only one writer per file)",
            ));
        }
        // From here on the guard owns the claim (and removes the temporary file on error).
        let mut guard = TmpGuard {
            path: path.to_path_buf(),
            tmp: tmp.clone(),
            key,
            done: false,
        };
        if tmp.exists() {
            // Either a live writer in another process (HDF5 holds a lock on it) or a file
            // left by a killed run, which is ours to replace.
            match hdf5::File::open_rw(&tmp) {
                Ok(f) => drop(f),
                Err(e) => {
                    let msg = e.to_string();
                    if msg.contains("errno = 11") || msg.contains("temporarily unavailable") {
                        guard.done = true; // not ours: leave it alone
                        return Err(Error::file(
                            &tmp,
                            "is being written by another process (only one writer per file)",
                        ));
                    }
                }
            }
            std::fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let file = match hdf5::File::create_excl(&tmp) {
            Ok(f) => f,
            Err(e) => {
                if tmp.exists() {
                    guard.done = true; // another process created it just now: not ours
                }
                return Err(Error::hdf5(&tmp, "create", e));
            }
        };
        Ok((guard, file))
    }

    /// Syncs the (closed) temporary file and renames it onto the final path.
    pub(super) fn commit(mut self) -> Result<()> {
        let f = std::fs::File::open(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
        registry(|set| set.remove(&self.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_cryosparc_suffixes() {
        assert_eq!(unit_of("ctf/df1_A"), Some("angstrom"));
        assert_eq!(unit_of("ctf/df_angle_rad"), Some("radian"));
        assert_eq!(unit_of("ctf/accel_kv"), Some("kilovolt"));
        assert_eq!(unit_of("ctf/cs_mm"), Some("millimetre"));
        assert_eq!(unit_of("alignments2D/shift"), Some("pixel"));
        assert_eq!(unit_of("alignments3D/pose"), Some("radian"));
        assert_eq!(unit_of("blob/psize_A"), Some("angstrom/pixel"));
        assert_eq!(unit_of("location/center_x_px"), Some("pixel"));
        assert_eq!(unit_of("blob/shape"), Some("pixel"));
        assert_eq!(unit_of("ctf/bfactor"), Some("angstrom^2"));
        assert_eq!(unit_of("alignments2D/class"), None);
        assert_eq!(unit_of("ctf/amp_contrast"), None);
    }

    #[test]
    fn tmp_path_appends_suffix() {
        assert_eq!(tmp_path(Path::new("a/b.h5")), PathBuf::from("a/b.h5.tmp"));
    }
}
