//! CryoSPARC `.cs` files: reading them into a [`ParticleTable`] and writing a table back.
//!
//! A `.cs` file (as CryoSPARC and cryosparc-tools' `Dataset.save` write it) is an NPY file
//! (format 1.0; 2.0 and 3.0 are read too) holding a 1-D structured array. Each record
//! field is one dataset field, named with a `/` (`blob/path`, `ctf/df1_A`); vector fields
//! are subarrays (`alignments3D/pose` is `('<f4', (3,))`). Strings are fixed-length byte
//! strings `|S<n>`, UTF-8, padded with NULs. Records are packed (no alignment padding),
//! little-endian. Values keep CryoSPARC's units (Å, radians, fractional coordinates), which
//! are the units of the table's columns, so reading and writing is a mapping, not a
//! conversion.
//!
//! Reading (`read_cs`): `uid` becomes the table's uid (required); every other field becomes
//! a column of the same name, width = the number of elements of its subarray (shapes with
//! several axes are flattened row-major). Element types map as follows:
//! - `<f4` → F32, `<f2` → F32 (exact), `<f8` → F64;
//! - `<i4`, `<i2`, `|i1` → I32; `<u4`, `<u2`, `|u1`, `|b1` → U32 (bool as 0/1); `<u8` → U64;
//! - `<i8` → I32 when every value fits in an i32, else U64 when every value is ≥ 0, else an
//!   error (the table has no i64 column; both choices are lossless, and the first keeps small
//!   signed integers signed);
//! - `|S<n>` → Str (trailing NULs stripped, UTF-8); `<U<n>` → Str.
//!
//! Big-endian fields, complex, date/time, object (pickled) and nested record fields are
//! refused with a one-line error naming the file and the field. Unnamed `|V<n>` fields
//! (the padding numpy writes for non-packed dtypes) are skipped. Records are read in chunks
//! of a few MiB, so reading needs the table's memory plus one chunk. CryoSPARC's newer
//! compressed stream format (magic `\x95CSDAT`, `Dataset.save(..., format=CSDAT_FORMAT)`) is
//! recognised and refused with a message saying how to re-save it as NPY.
//!
//! Writing (`write_cs`): `uid` first, then every column in name order except the
//! emclass-internal [`IMAGE_ROW`](crate::dataset::IMAGE_ROW) (a row in emclass's own HDF5
//! file, meaningless to CryoSPARC). Ground truth (`gt/`) and other emclass-only columns are
//! kept: cryosparc-tools loads any field. Types: F32 `<f4`, F64 `<f8`, I32 `<i4`, U32 `<u4`,
//! U64 `<u8`, Str `|S<longest+1>` — like cryosparc-tools, every string gets a terminating
//! NUL, so an all-empty column is `|S1`. Width > 1 is a `(width,)` subarray. The header is
//! NPY 1.0 (2.0 if it does not fit in 64 KiB, 3.0 if a field name is not ASCII), padded with
//! spaces to a multiple of 64 bytes as the NPY spec asks. The file is written to
//! `<name>.tmp` and renamed when complete.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use npyz::{DType, Endianness, NpyHeader, TypeChar, TypeStr};

use crate::dataset::table::{Column, ColumnData, ParticleTable};
use crate::dataset::IMAGE_ROW;
use crate::error::{Error, Result};

/// Name of the required per-particle identifier field.
pub const UID_FIELD: &str = "uid";

/// Columns that `write_cs` leaves out because they only mean something inside emclass.
pub const EMCLASS_INTERNAL_FIELDS: &[&str] = &[IMAGE_ROW];

/// Bytes of records decoded or encoded at a time.
const CHUNK_BYTES: usize = 8 << 20;

/// Magic of the NPY format and of CryoSPARC's compressed stream format.
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
const CSDAT_MAGIC: &[u8; 6] = b"\x95CSDAT";

/// One field of a `.cs` file, as [`inspect_cs`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsField {
    /// Field name (`ctf/df1_A`).
    pub name: String,
    /// NumPy element type string (`<f4`, `|S47`).
    pub type_str: String,
    /// Elements per row (product of the subarray shape; 1 for a scalar field).
    pub width: usize,
}

/// The header of a `.cs` file: its number of rows and its fields, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsInfo {
    pub rows: u64,
    pub fields: Vec<CsField>,
}

/// Element types that a `.cs` field may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F2,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    U1,
    U2,
    U4,
    U8,
    Bool,
    /// Fixed-length byte string of this many bytes.
    Bytes(usize),
    /// Fixed-length UCS-4 string of this many code points.
    Ucs4(usize),
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::I1 | Elem::U1 | Elem::Bool => 1,
            Elem::F2 | Elem::I2 | Elem::U2 => 2,
            Elem::F4 | Elem::I4 | Elem::U4 => 4,
            Elem::F8 | Elem::I8 | Elem::U8 => 8,
            Elem::Bytes(n) => n,
            Elem::Ucs4(n) => 4 * n,
        }
    }
}

/// A field of the file's record: where it sits in a record and how to decode it.
#[derive(Clone, Debug)]
struct FieldLayout {
    name: String,
    type_str: String,
    offset: usize,
    elem: Elem,
    width: usize,
}

/// The parsed and checked header of a `.cs` file.
struct Layout {
    rows: u64,
    record_bytes: usize,
    /// Fields in file order, padding left out.
    fields: Vec<FieldLayout>,
}

/// Reads the `.cs` file at `path` into a table: `uid` from the `uid` field, every other
/// field as a column of the same name (see the module documentation for the type mapping).
pub fn read_cs(path: impl AsRef<Path>) -> Result<ParticleTable> {
    read_cs_inner(path.as_ref()).map_err(super::printable_error)
}

fn read_cs_inner(path: &Path) -> Result<ParticleTable> {
    let (layout, mut reader) = open_layout(path)?;
    let uid_at = layout
        .fields
        .iter()
        .position(|f| f.name == UID_FIELD)
        .ok_or_else(|| {
            Error::field(
                path,
                UID_FIELD,
                "missing (every .cs file needs a uid field)",
            )
        })?;
    let uid_field = &layout.fields[uid_at];
    if uid_field.width != 1 {
        return Err(Error::field(
            path,
            UID_FIELD,
            format!("has {} values per row, expected 1", uid_field.width),
        ));
    }
    if !matches!(uid_field.elem, Elem::U8 | Elem::I8 | Elem::U4 | Elem::I4) {
        return Err(Error::field(
            path,
            UID_FIELD,
            format!("type {} is not an integer type", uid_field.type_str),
        ));
    }

    for f in &layout.fields {
        check_canonical(path, f)?;
    }

    let rows = usize::try_from(layout.rows)
        .map_err(|_| Error::file(path, "too many records for this machine"))?;
    let mut accs: Vec<Acc> = layout
        .fields
        .iter()
        .map(|f| Acc::with_capacity(f.elem, rows * f.width))
        .collect();
    let chunk_rows = (CHUNK_BYTES / layout.record_bytes.max(1)).max(1);
    let mut buf = vec![0u8; chunk_rows.min(rows.max(1)) * layout.record_bytes];
    let mut done = 0usize;
    while done < rows {
        let n = chunk_rows.min(rows - done);
        let bytes = &mut buf[..n * layout.record_bytes];
        reader.read_exact(bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::file(
                    path,
                    format!("truncated: ended inside record {} of {rows}", done),
                )
            } else {
                Error::io(path, e)
            }
        })?;
        for (f, acc) in layout.fields.iter().zip(accs.iter_mut()) {
            decode_field(path, f, bytes, layout.record_bytes, done, acc)?;
        }
        done += n;
    }

    let mut uid_data = None;
    let mut columns = Vec::with_capacity(layout.fields.len());
    for (f, acc) in layout.fields.iter().zip(accs) {
        let data = acc.finish(path, &f.name)?;
        if f.name == UID_FIELD {
            uid_data = Some(data);
        } else {
            columns.push((f.name.clone(), Column::new(data, f.width)));
        }
    }
    let uid = match uid_data {
        Some(ColumnData::U64(v)) => v,
        Some(ColumnData::U32(v)) => v.into_iter().map(u64::from).collect(),
        Some(ColumnData::I32(v)) => v
            .into_iter()
            .enumerate()
            .map(|(row, x)| {
                u64::try_from(x).map_err(|_| {
                    Error::field(path, UID_FIELD, format!("row {row}: negative uid {x}"))
                })
            })
            .collect::<Result<Vec<u64>>>()?,
        _ => return Err(Error::field(path, UID_FIELD, "negative uid values")),
    };
    for (name, col) in &columns {
        check_finite(path, name, col)?;
        if let (true, ColumnData::Str(v)) = (name.ends_with("/path"), &col.data) {
            if let Some(row) = v.iter().position(|s| s.chars().any(char::is_control)) {
                return Err(Error::field(
                    path,
                    name,
                    format!("row {row}: {:?} holds a control character", v[row]),
                ));
            }
        }
    }
    let mut table = ParticleTable::new(uid);
    for (name, col) in columns {
        table
            .try_set(&name, col)
            .map_err(|msg| Error::field(path, &name, msg))?;
    }
    Ok(table)
}

/// What a CryoSPARC field holds, for [`CANONICAL_FIELDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Float,
}

/// Fields whose meaning emclass knows (docs/FORMAT.md), with the kind and the number of
/// values per row CryoSPARC writes them with. A `.cs` file holding one of them with another
/// kind or width is refused (the jobs index these fields by row, so a wrong width would
/// otherwise surface far from the file, or not at all).
const CANONICAL_FIELDS: &[(&str, Kind, usize)] = &[
    ("blob/path", Kind::Str, 1),
    ("blob/idx", Kind::Int, 1),
    ("blob/shape", Kind::Int, 2),
    ("blob/psize_A", Kind::Float, 1),
    ("blob/sign", Kind::Float, 1),
    ("ctf/accel_kv", Kind::Float, 1),
    ("ctf/cs_mm", Kind::Float, 1),
    ("ctf/amp_contrast", Kind::Float, 1),
    ("ctf/df1_A", Kind::Float, 1),
    ("ctf/df2_A", Kind::Float, 1),
    ("ctf/df_angle_rad", Kind::Float, 1),
    ("ctf/phase_shift_rad", Kind::Float, 1),
    ("ctf/bfactor", Kind::Float, 1),
    ("ctf/scale", Kind::Float, 1),
    ("ctf/exp_group_id", Kind::Int, 1),
    ("location/micrograph_uid", Kind::Int, 1),
    ("location/micrograph_path", Kind::Str, 1),
    ("location/micrograph_shape", Kind::Int, 2),
    ("location/micrograph_psize_A", Kind::Float, 1),
    ("location/center_x_frac", Kind::Float, 1),
    ("location/center_y_frac", Kind::Float, 1),
    ("alignments2D/class", Kind::Int, 1),
    ("alignments2D/pose", Kind::Float, 1),
    ("alignments2D/shift", Kind::Float, 2),
    ("alignments2D/psize_A", Kind::Float, 1),
    ("alignments3D/class", Kind::Int, 1),
    ("alignments3D/pose", Kind::Float, 3),
    ("alignments3D/shift", Kind::Float, 2),
    ("alignments3D/psize_A", Kind::Float, 1),
    ("blob/image_row", Kind::Int, 1),
];

/// Refuses a known field stored with the wrong kind or width (see [`CANONICAL_FIELDS`]).
fn check_canonical(path: &Path, f: &FieldLayout) -> Result<()> {
    let Some(&(_, kind, width)) = CANONICAL_FIELDS.iter().find(|(n, _, _)| *n == f.name) else {
        return Ok(());
    };
    let have = match f.elem {
        Elem::Bytes(_) | Elem::Ucs4(_) => Kind::Str,
        Elem::F2 | Elem::F4 | Elem::F8 => Kind::Float,
        _ => Kind::Int,
    };
    let what = |k: Kind| match k {
        Kind::Str => "a string",
        Kind::Int => "an integer",
        Kind::Float => "a floating-point number",
    };
    if have != kind {
        return Err(Error::field(
            path,
            &f.name,
            format!(
                "type {} is {}, but this field holds {}",
                f.type_str,
                what(have),
                what(kind)
            ),
        ));
    }
    if f.width != width {
        return Err(Error::field(
            path,
            &f.name,
            format!("has {} values per row, but this field has {width}", f.width),
        ));
    }
    Ok(())
}

/// Refuses NaN or infinite values in the known floating-point fields of `blob/`, `ctf/` and
/// `location/` (pixel sizes, CTF parameters, coordinates), which every job computes with.
fn check_finite(path: &Path, name: &str, col: &Column) -> Result<()> {
    let known = CANONICAL_FIELDS
        .iter()
        .any(|&(n, k, _)| n == name && k == Kind::Float && !n.starts_with("alignments"));
    if !known {
        return Ok(());
    }
    let bad = match &col.data {
        ColumnData::F32(v) => v
            .iter()
            .position(|x| !x.is_finite())
            .map(|i| (i, v[i] as f64)),
        ColumnData::F64(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
        _ => None,
    };
    match bad {
        Some((i, x)) => Err(Error::field(
            path,
            name,
            format!("row {}: {x} is not a finite number", i / col.width),
        )),
        None => Ok(()),
    }
}

/// Reads only the header of the `.cs` file at `path`: its row count and fields.
pub fn inspect_cs(path: impl AsRef<Path>) -> Result<CsInfo> {
    let (layout, _) = open_layout(path.as_ref()).map_err(super::printable_error)?;
    Ok(CsInfo {
        rows: layout.rows,
        fields: layout
            .fields
            .into_iter()
            .map(|f| CsField {
                name: f.name,
                type_str: f.type_str,
                width: f.width,
            })
            .collect(),
    })
}

/// Writes `table` to `path` as a `.cs` file that CryoSPARC and cryosparc-tools load:
/// `uid`, then every column except [`EMCLASS_INTERNAL_FIELDS`] (see the module documentation
/// for the types). Nothing is left at `path` unless the whole file was written.
pub fn write_cs(path: impl AsRef<Path>, table: &ParticleTable) -> Result<()> {
    let path = path.as_ref();
    let fields = plan_write(path, table)?;
    let tmp = tmp_path(path);
    let result = write_records(&tmp, table, &fields)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------
// Reading

/// Opens `path`, parses and checks its NPY header, and returns the layout and a reader
/// positioned at the first record.
fn open_layout(path: &Path) -> Result<(Layout, BufReader<File>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 10];
    let got = read_up_to(&mut reader, &mut magic).map_err(|e| Error::io(path, e))?;
    if got >= 6 && &magic[..6] == CSDAT_MAGIC {
        return Err(Error::file(
            path,
            "is in CryoSPARC's compressed stream format (CSDAT), which emclass does not read; \
             re-save it with cryosparc-tools `Dataset.load(p).save(q)` (default NPY format)",
        ));
    }
    if got < 10 || &magic[..6] != NPY_MAGIC {
        return Err(Error::file(
            path,
            "not a .cs file (no NPY magic at the start)",
        ));
    }
    let (major, minor) = (magic[6], magic[7]);
    let header_len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(Error::file(
                path,
                format!("unsupported NPY format version {major}.{minor}"),
            ))
        }
    };
    let mut header_bytes = magic.to_vec();
    let header_len = if header_len_bytes == 2 {
        u16::from_le_bytes([magic[8], magic[9]]) as u64
    } else {
        let mut rest = [0u8; 2];
        reader
            .read_exact(&mut rest)
            .map_err(|e| short_header(path, e))?;
        header_bytes.extend_from_slice(&rest);
        u32::from_le_bytes([magic[8], magic[9], rest[0], rest[1]]) as u64
    };
    let data_start = 6 + 2 + header_len_bytes + header_len;
    if data_start > file_len {
        return Err(Error::file(path, "truncated inside the NPY header"));
    }
    // The whole header goes through npyz, which parses the Python dict literal.
    let start = header_bytes.len();
    header_bytes.resize(data_start as usize, 0);
    reader
        .read_exact(&mut header_bytes[start..])
        .map_err(|e| short_header(path, e))?;
    precheck_header(path, &header_bytes[start..])?;
    let header = NpyHeader::from_reader(&header_bytes[..]).map_err(|e| {
        Error::file(
            path,
            format!("bad NPY header: {}", one_line(&e.to_string())),
        )
    })?;

    let layout = layout_from_header(path, &header)?;
    let data_len = file_len - data_start;
    let need = layout.rows.checked_mul(layout.record_bytes as u64);
    match need {
        Some(need) if need <= data_len => {
            if need < data_len {
                log::warn!(
                    "{}: {} bytes after the last of {} records ignored",
                    path.display(),
                    data_len - need,
                    layout.rows
                );
            }
        }
        _ => {
            return Err(Error::file(
                path,
                format!(
                    "truncated: the header says {} records of {} bytes, but only {data_len} bytes of data follow it",
                    layout.rows, layout.record_bytes
                ),
            ))
        }
    }
    Ok((layout, reader))
}

/// Deepest bracket nesting accepted in an NPY header (a `.cs` header nests 3 deep: the
/// dict, the descr list, a field tuple and its subarray shape).
const MAX_HEADER_DEPTH: usize = 16;

/// Checks of the header text that npyz's parser does not survive: brackets nested
/// thousands deep (its parser takes time exponential in the depth, and recursion that deep
/// would overflow the stack), and an array shape of several dimensions whose product
/// overflows (npyz multiplies the dimensions unchecked). A header that passes is handed to
/// npyz, which reports every other syntax error.
fn precheck_header(path: &Path, text: &[u8]) -> Result<()> {
    let mut depth = 0usize;
    let mut i = 0;
    // The last string literal seen at dict level (depth 1), and whether a ':' followed it.
    let mut key: Option<(usize, usize)> = None;
    let mut after_key_colon = false;
    while i < text.len() {
        let c = text[i];
        match c {
            b'\'' | b'"' => {
                let start = i + 1;
                i += 1;
                while i < text.len() && text[i] != c {
                    if text[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 {
                    key = Some((start, i.min(text.len())));
                    after_key_colon = false;
                }
            }
            b':' if depth == 1 => after_key_colon = key.is_some(),
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_HEADER_DEPTH {
                    return Err(Error::file(
                        path,
                        format!(
                            "bad NPY header: brackets nested more than {MAX_HEADER_DEPTH} deep at header byte {i}"
                        ),
                    ));
                }
                let is_shape = depth == 2
                    && after_key_colon
                    && key.is_some_and(|(a, b)| &text[a..b] == b"shape");
                if is_shape {
                    check_shape_text(path, text, i)?;
                }
                after_key_colon = false;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    key = None;
                }
            }
            b',' if depth == 1 => {
                key = None;
                after_key_colon = false;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The `'shape'` value opening at `text[open]`: a .cs file holds a 1-D array, so a shape of
/// any other number of dimensions is refused here, before npyz multiplies them.
fn check_shape_text(path: &Path, text: &[u8], open: usize) -> Result<()> {
    let Some(close) = text[open + 1..]
        .iter()
        .position(|&c| matches!(c, b')' | b']'))
        .map(|p| open + 1 + p)
    else {
        return Ok(()); // unclosed: npyz reports the syntax error
    };
    let inner = String::from_utf8_lossy(&text[open + 1..close]);
    if inner.contains(['(', '[', '{']) {
        return Ok(()); // not a plain tuple: npyz says what is wrong with it
    }
    let dims = inner.split(',').filter(|d| !d.trim().is_empty()).count();
    if dims != 1 {
        let shown: String = inner
            .split(',')
            .map(|d| d.trim())
            .collect::<Vec<_>>()
            .join(", ")
            .chars()
            .take(80)
            .flat_map(|c| {
                let esc: Vec<char> = if c.is_control() {
                    c.escape_debug().collect()
                } else {
                    vec![c]
                };
                esc
            })
            .collect();
        return Err(Error::file(
            path,
            format!(
                "holds an array of shape ({}); a .cs file holds a 1-D record array",
                shown.trim()
            ),
        ));
    }
    Ok(())
}

/// npyz's (pest's) multi-line syntax error as one line: "syntax error at header column C
/// (expected …)", without the echo of the header text and the caret under it.
fn one_line(msg: &str) -> String {
    if !msg.contains('\n') {
        return msg.to_string();
    }
    let first = msg.lines().next().unwrap_or("").trim_end();
    let at = msg
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|lc| lc.split_once(':'))
        .map(|(_, col)| format!(" at header column {col}"));
    let expected = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("= "))
        .map(|e| format!(" ({})", e.trim()));
    match (at, expected) {
        (None, None) => msg.split_whitespace().collect::<Vec<_>>().join(" "),
        (at, expected) => format!(
            "{}{}{}",
            first.trim_end_matches(':').trim_end(),
            at.unwrap_or_default(),
            expected.unwrap_or_default()
        ),
    }
}

fn short_header(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::file(path, "truncated inside the NPY header")
    } else {
        Error::io(path, e)
    }
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn layout_from_header(path: &Path, header: &NpyHeader) -> Result<Layout> {
    let rows = match header.shape() {
        [n] => *n,
        shape => {
            return Err(Error::file(
                path,
                format!("holds an array of shape {shape:?}; a .cs file holds a 1-D record array"),
            ))
        }
    };
    let record = match header.dtype() {
        DType::Record(fields) => fields,
        other => {
            return Err(Error::file(
                path,
                format!(
                    "holds a plain array of {}, not a record array",
                    other.descr()
                ),
            ))
        }
    };
    let mut fields = Vec::with_capacity(record.len());
    let mut offset = 0usize;
    let mut seen = BTreeSet::new();
    for f in &record {
        let (shape, base) = split_array(&f.dtype);
        let width = shape
            .iter()
            .try_fold(1usize, |a, &d| {
                usize::try_from(d).ok().and_then(|d| a.checked_mul(d))
            })
            .ok_or_else(|| Error::field(path, &f.name, "subarray too large"))?;
        let ty = match base {
            DType::Plain(ty) => ty,
            _ => {
                return Err(Error::field(
                    path,
                    &f.name,
                    "nested record fields are not supported",
                ))
            }
        };
        let type_str = ty.to_string();
        if f.name.is_empty() && ty.type_char() == TypeChar::RawData {
            // Padding numpy writes for a non-packed dtype.
            offset = elem_bytes(path, &f.name, ty)?
                .checked_mul(width)
                .and_then(|b| offset.checked_add(b))
                .ok_or_else(|| Error::file(path, "record too large"))?;
            continue;
        }
        if !seen.insert(f.name.clone()) {
            return Err(Error::field(path, &f.name, "appears twice in the header"));
        }
        let elem = elem_of(path, &f.name, ty)?;
        let bytes = elem
            .size()
            .checked_mul(width)
            .ok_or_else(|| Error::field(path, &f.name, "field too large"))?;
        if elem.size() == 0 {
            // numpy and cryosparc-tools never write these (an all-empty string field is
            // `|S1`); a header declaring one, possibly with a huge subarray, is corrupt.
            return Err(Error::field(
                path,
                &f.name,
                format!("type {type_str} holds zero bytes per value"),
            ));
        }
        if width == 0 {
            log::warn!(
                "{}: field {} holds no values (empty subarray); skipped",
                path.display(),
                f.name
            );
        } else {
            fields.push(FieldLayout {
                name: f.name.clone(),
                type_str,
                offset,
                elem,
                width,
            });
        }
        offset = offset
            .checked_add(bytes)
            .ok_or_else(|| Error::file(path, "record too large"))?;
    }
    Ok(Layout {
        rows,
        record_bytes: offset,
        fields,
    })
}

/// Splits a (possibly nested) subarray type into its shape and element type.
fn split_array(mut dtype: &DType) -> (Vec<u64>, &DType) {
    let mut shape = Vec::new();
    while let DType::Array(n, inner) = dtype {
        shape.push(*n);
        dtype = inner;
    }
    (shape, dtype)
}

fn elem_bytes(path: &Path, name: &str, ty: &TypeStr) -> Result<usize> {
    ty.num_bytes()
        .ok_or_else(|| Error::field(path, name, format!("type {ty} has no fixed size")))
}

/// The element type of a field, or a one-line error naming the field.
fn elem_of(path: &Path, name: &str, ty: &TypeStr) -> Result<Elem> {
    let unsupported =
        |why: &str| Error::field(path, name, format!("type {ty} is not supported ({why})"));
    if ty.endianness() == Endianness::Big && ty.num_bytes() != Some(1) {
        return Err(unsupported("big-endian; re-save the file little-endian"));
    }
    let size = ty.size_field();
    Ok(match (ty.type_char(), size) {
        (TypeChar::Float, 2) => Elem::F2,
        (TypeChar::Float, 4) => Elem::F4,
        (TypeChar::Float, 8) => Elem::F8,
        (TypeChar::Int, 1) => Elem::I1,
        (TypeChar::Int, 2) => Elem::I2,
        (TypeChar::Int, 4) => Elem::I4,
        (TypeChar::Int, 8) => Elem::I8,
        (TypeChar::Uint, 1) => Elem::U1,
        (TypeChar::Uint, 2) => Elem::U2,
        (TypeChar::Uint, 4) => Elem::U4,
        (TypeChar::Uint, 8) => Elem::U8,
        (TypeChar::Bool, 1) => Elem::Bool,
        (TypeChar::ByteStr, n) => {
            Elem::Bytes(usize::try_from(n).map_err(|_| unsupported("too long"))?)
        }
        (TypeChar::UnicodeStr, n) => Elem::Ucs4(
            usize::try_from(n)
                .ok()
                .filter(|n| n.checked_mul(4).is_some())
                .ok_or_else(|| unsupported("too long"))?,
        ),
        (TypeChar::Object, _) => return Err(unsupported("Python objects are stored pickled")),
        (TypeChar::Float, _) => return Err(unsupported("float width")),
        (TypeChar::Complex, _) => return Err(unsupported("complex")),
        (TypeChar::TimeDelta | TypeChar::DateTime, _) => return Err(unsupported("date/time")),
        (TypeChar::RawData, _) => return Err(unsupported("raw bytes")),
        _ => return Err(unsupported("unknown kind")),
    })
}

/// Values of one field decoded so far, in the widest type of its kind.
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Str(Vec<String>),
}

impl Acc {
    fn with_capacity(elem: Elem, n: usize) -> Acc {
        match elem {
            Elem::F2 | Elem::F4 => Acc::F32(Vec::with_capacity(n)),
            Elem::F8 => Acc::F64(Vec::with_capacity(n)),
            Elem::I1 | Elem::I2 | Elem::I4 => Acc::I32(Vec::with_capacity(n)),
            Elem::I8 => Acc::I64(Vec::with_capacity(n)),
            Elem::U1 | Elem::U2 | Elem::U4 | Elem::Bool => Acc::U32(Vec::with_capacity(n)),
            Elem::U8 => Acc::U64(Vec::with_capacity(n)),
            Elem::Bytes(_) | Elem::Ucs4(_) => Acc::Str(Vec::with_capacity(n)),
        }
    }

    /// The column data; `<i8` values become I32 if they all fit, else U64 if none is
    /// negative, else an error.
    fn finish(self, path: &Path, name: &str) -> Result<ColumnData> {
        Ok(match self {
            Acc::F32(v) => ColumnData::F32(v),
            Acc::F64(v) => ColumnData::F64(v),
            Acc::I32(v) => ColumnData::I32(v),
            Acc::U32(v) => ColumnData::U32(v),
            Acc::U64(v) => ColumnData::U64(v),
            Acc::Str(v) => ColumnData::Str(v),
            Acc::I64(v) => {
                if v.iter().all(|&x| i32::try_from(x).is_ok()) {
                    ColumnData::I32(v.into_iter().map(|x| x as i32).collect())
                } else if v.iter().all(|&x| x >= 0) {
                    ColumnData::U64(v.into_iter().map(|x| x as u64).collect())
                } else {
                    return Err(Error::field(
                        path,
                        name,
                        "<i8 values both negative and beyond the i32 range cannot be held (emclass has no i64 column)",
                    ));
                }
            }
        })
    }
}

/// Decodes field `f` of the `chunk` records (each `record_bytes` long; the first is record
/// `first_row` of the file) and appends the values to `acc`.
fn decode_field(
    path: &Path,
    f: &FieldLayout,
    chunk: &[u8],
    record_bytes: usize,
    first_row: usize,
    acc: &mut Acc,
) -> Result<()> {
    let esize = f.elem.size();
    let cells = chunk.chunks_exact(record_bytes).flat_map(|rec| {
        rec[f.offset..f.offset + esize * f.width]
            .chunks_exact(esize.max(1))
            .take(f.width)
    });
    fn le<const N: usize>(b: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&b[..N]);
        a
    }
    match (f.elem, acc) {
        (Elem::F2, Acc::F32(v)) => {
            v.extend(cells.map(|b| half::f16::from_le_bytes(le(b)).to_f32()))
        }
        (Elem::F4, Acc::F32(v)) => v.extend(cells.map(|b| f32::from_le_bytes(le(b)))),
        (Elem::F8, Acc::F64(v)) => v.extend(cells.map(|b| f64::from_le_bytes(le(b)))),
        (Elem::I1, Acc::I32(v)) => v.extend(cells.map(|b| b[0] as i8 as i32)),
        (Elem::I2, Acc::I32(v)) => v.extend(cells.map(|b| i16::from_le_bytes(le(b)) as i32)),
        (Elem::I4, Acc::I32(v)) => v.extend(cells.map(|b| i32::from_le_bytes(le(b)))),
        (Elem::I8, Acc::I64(v)) => v.extend(cells.map(|b| i64::from_le_bytes(le(b)))),
        (Elem::U1, Acc::U32(v)) => v.extend(cells.map(|b| b[0] as u32)),
        (Elem::Bool, Acc::U32(v)) => v.extend(cells.map(|b| (b[0] != 0) as u32)),
        (Elem::U2, Acc::U32(v)) => v.extend(cells.map(|b| u16::from_le_bytes(le(b)) as u32)),
        (Elem::U4, Acc::U32(v)) => v.extend(cells.map(|b| u32::from_le_bytes(le(b)))),
        (Elem::U8, Acc::U64(v)) => v.extend(cells.map(|b| u64::from_le_bytes(le(b)))),
        (Elem::Bytes(n), Acc::Str(v)) => {
            for rec in 0..chunk.len() / record_bytes {
                let base = rec * record_bytes + f.offset;
                for k in 0..f.width {
                    let raw = &chunk[base + k * n..base + (k + 1) * n];
                    let end = raw.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
                    let s = std::str::from_utf8(&raw[..end]).map_err(|_| {
                        Error::field(
                            path,
                            &f.name,
                            format!("row {}: string is not valid UTF-8", first_row + rec),
                        )
                    })?;
                    v.push(s.to_string());
                }
            }
        }
        (Elem::Ucs4(n), Acc::Str(v)) => {
            for rec in 0..chunk.len() / record_bytes {
                let base = rec * record_bytes + f.offset;
                for k in 0..f.width {
                    let raw = &chunk[base + 4 * k * n..base + 4 * (k + 1) * n];
                    let mut s = String::with_capacity(n);
                    for cp in raw.chunks_exact(4).map(|b| u32::from_le_bytes(le(b))) {
                        s.push(char::from_u32(cp).ok_or_else(|| {
                            Error::field(
                                path,
                                &f.name,
                                format!("row {}: invalid code point {cp:#x}", first_row + rec),
                            )
                        })?);
                    }
                    v.push(s.trim_end_matches('\0').to_string());
                }
            }
        }
        _ => unreachable!("accumulator made from the same element type"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Writing

/// A field to write: its column (None for uid), NPY element type and width.
struct WriteField<'a> {
    name: &'a str,
    data: Option<&'a ColumnData>,
    type_str: String,
    elem_bytes: usize,
    width: usize,
}

fn plan_write<'a>(path: &Path, table: &'a ParticleTable) -> Result<Vec<WriteField<'a>>> {
    let mut fields = vec![WriteField {
        name: UID_FIELD,
        data: None,
        type_str: "<u8".into(),
        elem_bytes: 8,
        width: 1,
    }];
    for (name, col) in table.columns() {
        if EMCLASS_INTERNAL_FIELDS.contains(&name) {
            continue;
        }
        if name == UID_FIELD {
            return Err(Error::field(
                path,
                name,
                "a column may not be named uid (the uid is written from the table's uids)",
            ));
        }
        if name.is_empty() {
            return Err(Error::field(path, name, "empty column name"));
        }
        let (type_str, elem_bytes) = match &col.data {
            ColumnData::F32(_) => ("<f4".to_string(), 4),
            ColumnData::F64(_) => ("<f8".to_string(), 8),
            ColumnData::I32(_) => ("<i4".to_string(), 4),
            ColumnData::U32(_) => ("<u4".to_string(), 4),
            ColumnData::U64(_) => ("<u8".to_string(), 8),
            ColumnData::Str(v) => {
                if let Some(row) = v.iter().position(|s| s.contains('\0')) {
                    return Err(Error::field(
                        path,
                        name,
                        format!(
                            "row {}: string contains a NUL byte, which .cs strings cannot hold",
                            row / col.width
                        ),
                    ));
                }
                // One byte more than the longest string: every string ends with a NUL, as
                // cryosparc-tools writes them.
                let n = v.iter().map(|s| s.len()).max().unwrap_or(0) + 1;
                (format!("|S{n}"), n)
            }
        };
        fields.push(WriteField {
            name,
            data: Some(&col.data),
            type_str,
            elem_bytes,
            width: col.width,
        });
    }
    Ok(fields)
}

/// The NPY header (magic, version, length, dict text padded to 64 bytes) for `fields`.
fn npy_header(fields: &[WriteField], rows: usize) -> Vec<u8> {
    let mut descr = String::from("[");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            descr.push_str(", ");
        }
        let name = f
            .name
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        if f.width == 1 {
            descr.push_str(&format!("('{name}', '{}')", f.type_str));
        } else {
            descr.push_str(&format!("('{name}', '{}', ({},))", f.type_str, f.width));
        }
    }
    descr.push(']');
    let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': ({rows},), }}");
    let utf8 = !dict.is_ascii();
    // Version 1.0 has a 2-byte header length; 2.0 a 4-byte one; 3.0 also allows UTF-8.
    let (version, len_bytes) = if utf8 {
        (3u8, 4usize)
    } else if 6 + 2 + 2 + dict.len() + 1 + 63 <= u16::MAX as usize {
        (1, 2)
    } else {
        (2, 4)
    };
    let prefix = 6 + 2 + len_bytes;
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let text_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version, 0]);
    if len_bytes == 2 {
        out.extend_from_slice(&(text_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

fn write_records(tmp: &Path, table: &ParticleTable, fields: &[WriteField]) -> Result<()> {
    let rows = table.len();
    let record_bytes: usize = fields.iter().map(|f| f.elem_bytes * f.width).sum();
    let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = BufWriter::new(file);
    w.write_all(&npy_header(fields, rows))
        .map_err(|e| Error::io(tmp, e))?;
    let chunk_rows = (CHUNK_BYTES / record_bytes.max(1)).max(1);
    let mut buf = Vec::with_capacity(chunk_rows.min(rows.max(1)) * record_bytes);
    let uid = table.uid();
    let mut start = 0;
    while start < rows {
        let end = (start + chunk_rows).min(rows);
        buf.clear();
        buf.resize((end - start) * record_bytes, 0);
        let mut offset = 0;
        for f in fields {
            let width = f.width;
            let mut put = |row: usize, k: usize, bytes: &[u8]| {
                let at = (row - start) * record_bytes + offset + k * f.elem_bytes;
                buf[at..at + bytes.len()].copy_from_slice(bytes);
            };
            match f.data {
                None => (start..end).for_each(|r| put(r, 0, &uid[r].to_le_bytes())),
                Some(ColumnData::F32(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, &v[i].to_le_bytes())),
                Some(ColumnData::F64(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, &v[i].to_le_bytes())),
                Some(ColumnData::I32(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, &v[i].to_le_bytes())),
                Some(ColumnData::U32(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, &v[i].to_le_bytes())),
                Some(ColumnData::U64(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, &v[i].to_le_bytes())),
                Some(ColumnData::Str(v)) => (start * width..end * width)
                    .for_each(|i| put(i / width, i % width, v[i].as_bytes())),
            }
            offset += f.elem_bytes * f.width;
        }
        w.write_all(&buf).map_err(|e| Error::io(tmp, e))?;
        start = end;
    }
    let file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    Ok(())
}

/// `<path>.tmp`, where the file is written before it is renamed to `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A table with every column type, scalar and vector, and an emclass-internal column.
    fn sample() -> ParticleTable {
        let mut t = ParticleTable::new(vec![u64::MAX, 0, 12345678901234567890]);
        t.set_str(
            "blob/path",
            s(&["J1/imported/stack_00.mrcs", "", "é/ü.mrcs"]),
        );
        t.set_u32("blob/idx", vec![0, 1, u32::MAX]);
        t.set(
            "blob/shape",
            Column::new(ColumnData::U32(vec![64, 64, 64, 64, 128, 128]), 2),
        );
        t.set_f32("ctf/df1_A", vec![15000.5, -1.0e-30, f32::MAX]);
        t.set(
            "alignments3D/pose",
            Column::new(
                ColumnData::F32((0..9).map(|i| i as f32 * 0.25 - 1.0).collect()),
                3,
            ),
        );
        t.set(
            "x/f64",
            Column::new(
                ColumnData::F64(vec![1.0 / 3.0, -2.5, 1e300, 0.0, f64::MIN_POSITIVE, -0.0]),
                2,
            ),
        );
        t.set(
            "x/i32",
            Column::scalar(ColumnData::I32(vec![i32::MIN, -1, i32::MAX])),
        );
        t.set(
            "location/micrograph_uid",
            Column::scalar(ColumnData::U64(vec![1, u64::MAX, 7])),
        );
        t.set(
            "x/strs",
            Column::new(ColumnData::Str(s(&["a", "bb", "", "ccc", "d", "e"])), 2),
        );
        t.set_str("x/empty", s(&["", "", ""]));
        t
    }

    #[test]
    fn round_trip_keeps_every_type_and_width() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("particles.cs");
        let mut t = sample();
        t.set(
            "blob/image_row",
            Column::scalar(ColumnData::U64(vec![5, 6, 7])),
        );
        write_cs(&p, &t).unwrap();
        assert!(!tmp_path(&p).exists());
        let back = read_cs(&p).unwrap();
        t.remove("blob/image_row");
        assert_eq!(back, t);
        assert_eq!(back.f32("alignments3D/pose").unwrap()[8], 1.0);
        assert_eq!(back.get("x/f64").unwrap().width, 2);

        let info = inspect_cs(&p).unwrap();
        assert_eq!(info.rows, 3);
        let find = |n: &str| info.fields.iter().find(|f| f.name == n).unwrap().clone();
        assert_eq!(info.fields[0].name, "uid");
        assert_eq!(find("blob/path").type_str, "|S26"); // 25 bytes + NUL
        assert_eq!(find("x/empty").type_str, "|S1");
        assert_eq!(find("alignments3D/pose").width, 3);
        assert_eq!(find("x/f64").type_str, "<f8");
        assert!(!info.fields.iter().any(|f| f.name == "blob/image_row"));
    }

    #[test]
    fn header_follows_the_npy_spec() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.cs");
        write_cs(&p, &sample()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(bytes[10 + hlen - 1], b'\n');
        let text = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            text.starts_with("{'descr': [('uid', '<u8'), ('alignments3D/pose', '<f4', (3,)), "),
            "{text}"
        );
        assert!(text.contains("'shape': (3,)"), "{text}");
        // 3 records: uid 8 + pose 12 + path 26 + idx 4 + shape 8 + df1 4 + muid 8 + f64 16 + i32 4
        // + empty 1 + strs 2*4.
        assert_eq!(
            bytes.len() - 10 - hlen,
            3 * (8 + 12 + 26 + 4 + 8 + 4 + 8 + 16 + 4 + 1 + 8)
        );
    }

    #[test]
    fn empty_table_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.cs");
        let mut t = ParticleTable::new(vec![]);
        t.set_str("blob/path", vec![]);
        t.set(
            "alignments2D/shift",
            Column::new(ColumnData::F32(vec![]), 2),
        );
        write_cs(&p, &t).unwrap();
        assert_eq!(read_cs(&p).unwrap(), t);
    }

    #[test]
    fn many_rows_span_several_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.cs");
        let n = 300_000; // 300k × 36 bytes > one 8 MiB chunk
        let mut t = ParticleTable::new((0..n as u64).map(|i| i * 3 + 1).collect());
        t.set_f32("ctf/df1_A", (0..n).map(|i| i as f32 * 0.5).collect());
        t.set(
            "alignments2D/shift",
            Column::new(
                ColumnData::F32((0..2 * n).map(|i| -(i as f32)).collect()),
                2,
            ),
        );
        t.set_str(
            "blob/path",
            (0..n).map(|i| format!("s{}", i % 1000)).collect(),
        );
        write_cs(&p, &t).unwrap();
        let back = read_cs(&p).unwrap();
        assert_eq!(back.uid()[n - 1], (n as u64 - 1) * 3 + 1);
        assert_eq!(back.str("blob/path").unwrap()[n - 1], "s999");
        assert_eq!(back, t);
    }

    /// Builds an NPY 1.0 file by hand from a header dict and record bytes.
    fn handmade(dict: &str, records: &[u8]) -> Vec<u8> {
        let mut text = dict.as_bytes().to_vec();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(b' ');
        }
        text.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(&text);
        out.extend_from_slice(records);
        out
    }

    #[test]
    fn reads_a_handmade_file_with_byte_strings_and_small_types() {
        let dict = "{'descr': [('uid', '<u8'), ('blob/path', '|S6'), ('ctf/df1_A', '<f4'), \
                    ('', '|V2'), ('x/small', '<i2'), ('x/flag', '|b1'), ('x/u2', '<u2', (2,)), \
                    ('x/i8', '<i8'), ('x/big', '<i8'), ('x/half', '<f2'), ('x/uni', '<U2')], \
                    'fortran_order': False, 'shape': (2,), }";
        let mut rec = Vec::new();
        for (uid, path, df, small, flag, big) in [
            (
                7u64,
                &b"ab\0\0\0\0"[..],
                12000.25f32,
                -3i16,
                1u8,
                1i64 << 40,
            ),
            (9, &b"stack1"[..], -0.5, 300, 0, 0),
        ] {
            rec.extend_from_slice(&uid.to_le_bytes());
            rec.extend_from_slice(path);
            rec.extend_from_slice(&df.to_le_bytes());
            rec.extend_from_slice(&[0xAA, 0xBB]); // padding
            rec.extend_from_slice(&small.to_le_bytes());
            rec.push(flag);
            rec.extend_from_slice(&7u16.to_le_bytes());
            rec.extend_from_slice(&65535u16.to_le_bytes());
            rec.extend_from_slice(&(small as i64).to_le_bytes());
            rec.extend_from_slice(&big.to_le_bytes());
            rec.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
            rec.extend_from_slice(&('é' as u32).to_le_bytes());
            rec.extend_from_slice(&0u32.to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hand.cs");
        std::fs::write(&p, handmade(dict, &rec)).unwrap();
        let t = read_cs(&p).unwrap();
        assert_eq!(t.uid(), &[7, 9]);
        assert_eq!(t.str("blob/path").unwrap(), &s(&["ab", "stack1"]));
        assert_eq!(t.f32("ctf/df1_A").unwrap(), &[12000.25, -0.5]);
        assert_eq!(
            t.get("x/small").unwrap().data,
            ColumnData::I32(vec![-3, 300])
        );
        assert_eq!(t.u32("x/flag").unwrap(), &[1, 0]);
        assert_eq!(t.u32("x/u2").unwrap(), &[7, 65535, 7, 65535]);
        assert_eq!(t.get("x/u2").unwrap().width, 2);
        assert_eq!(t.get("x/i8").unwrap().data, ColumnData::I32(vec![-3, 300]));
        assert_eq!(t.u64("x/big").unwrap(), &[1 << 40, 0]);
        assert_eq!(t.f32("x/half").unwrap(), &[1.5, 1.5]);
        assert_eq!(t.str("x/uni").unwrap(), &s(&["é", "é"]));
        assert!(!t.has(""));
    }

    fn write_bytes(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        (dir, p)
    }

    #[test]
    fn unknown_dtype_is_an_error_naming_the_field() {
        for (ty, why) in [
            ("<c8", "complex"),
            (">f4", "big-endian"),
            ("|O", "pickled"),
            ("<M8[s]", "date"),
        ] {
            let dict = format!("{{'descr': [('uid', '<u8'), ('x/odd', '{ty}')], 'fortran_order': False, 'shape': (0,), }}");
            let (_d, p) = write_bytes("odd.cs", &handmade(&dict, &[]));
            let msg = read_cs(&p).unwrap_err().to_string();
            assert!(
                msg.contains("odd.cs: x/odd: type") && msg.contains(why),
                "{ty}: {msg}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn missing_uid_is_an_error() {
        let dict = "{'descr': [('blob/idx', '<u4')], 'fortran_order': False, 'shape': (1,), }";
        let (_d, p) = write_bytes("nouid.cs", &handmade(dict, &5u32.to_le_bytes()));
        let msg = read_cs(&p).unwrap_err().to_string();
        assert!(msg.contains("nouid.cs: uid: missing"), "{msg}");
    }

    #[test]
    fn truncated_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.cs");
        write_cs(&p, &sample()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (_d, cut) = write_bytes("cut.cs", &bytes[..bytes.len() - 5]);
        let msg = read_cs(&cut).unwrap_err().to_string();
        assert!(
            msg.contains("cut.cs: truncated") && msg.contains("3 records"),
            "{msg}"
        );
        let (_d2, cut) = write_bytes("cuthead.cs", &bytes[..40]);
        let msg = read_cs(&cut).unwrap_err().to_string();
        assert!(
            msg.contains("cuthead.cs: truncated inside the NPY header"),
            "{msg}"
        );
    }

    #[test]
    fn other_bad_files_are_errors() {
        let (_d, p) = write_bytes("stream.cs", b"\x95CSDAT\x00\x00\x00\x00");
        assert!(read_cs(&p)
            .unwrap_err()
            .to_string()
            .contains("compressed stream format"));
        let (_d, p) = write_bytes("text.cs", b"hello world");
        assert!(read_cs(&p)
            .unwrap_err()
            .to_string()
            .contains("no NPY magic"));
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let (_d, p) = write_bytes("plain.cs", &handmade(dict, &[0; 4]));
        assert!(read_cs(&p)
            .unwrap_err()
            .to_string()
            .contains("not a record array"));
        let dict =
            "{'descr': [('uid', '<u8'), ('x/i8', '<i8')], 'fortran_order': False, 'shape': (2,), }";
        let mut rec = Vec::new();
        for (u, x) in [(1u64, -1i64), (2, 1 << 40)] {
            rec.extend_from_slice(&u.to_le_bytes());
            rec.extend_from_slice(&x.to_le_bytes());
        }
        let (_d, p) = write_bytes("i8.cs", &handmade(dict, &rec));
        let msg = read_cs(&p).unwrap_err().to_string();
        assert!(msg.contains("i8.cs: x/i8: <i8 values"), "{msg}");
        let dict = "{'descr': [('uid', '<u8'), ('blob/path', '|S2')], 'fortran_order': False, 'shape': (1,), }";
        let mut rec = 1u64.to_le_bytes().to_vec();
        rec.extend_from_slice(&[0xFF, 0xFE]);
        let (_d, p) = write_bytes("utf.cs", &handmade(dict, &rec));
        let msg = read_cs(&p).unwrap_err().to_string();
        assert!(
            msg.contains("utf.cs: blob/path: row 0: string is not valid UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.cs");
        let mut t = ParticleTable::new(vec![1]);
        t.set_str("blob/path", s(&["a\0b"]));
        let msg = write_cs(&p, &t).unwrap_err().to_string();
        assert!(
            msg.contains("bad.cs: blob/path: row 0: string contains a NUL"),
            "{msg}"
        );
        assert!(!p.exists() && !tmp_path(&p).exists());
        let mut t = ParticleTable::new(vec![1]);
        t.set_u32("uid", vec![1]);
        assert!(write_cs(&p, &t)
            .unwrap_err()
            .to_string()
            .contains("may not be named uid"));
        assert!(!p.exists() && !tmp_path(&p).exists());
    }
}
