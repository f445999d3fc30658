//! MRC2014 image stacks (`.mrcs`) and volumes (`.mrc`): reading a range of images without
//! touching the rest of the file, streaming a stack out image by image, and one-call volume
//! reads and writes.
//!
//! The 1024-byte header is read and written here rather than through the `mrc` crate: its
//! strict mode rejects files that RELION and mrcfile read (NVERSION 0, unusual labels), its
//! lenient mode accepts truncated files, and its errors carry no file name. What this module
//! checks is what the data needs: `MAP ` at byte 208, a supported mode, positive nx/ny,
//! nz ≥ 0, a non-negative extended header size (skipped), the default axis order, and a file
//! length equal to `1024 + nsymbt + nx·ny·nz·bytes`.
//!
//! Conventions:
//! - Arrays are indexed `[z][y][x]` (for a stack, `[image][row][column]`); x (MRC columns)
//!   varies fastest in the file.
//! - Modes read: 0 (int8, signed as MRC2014 and mrcfile say), 1 (int16), 2 (float32),
//!   6 (uint16), 12 (float16); all are returned as f32. Writing is always mode 2.
//! - Byte order from the machine stamp (bytes 212-213: `DD`/`DA` little, `0x11 0x11` big);
//!   without a stamp the order whose mode field makes sense is used. Files are written
//!   little-endian.
//! - Pixel size = cell length x / mx (as mrcfile's `voxel_size`); 0 when the header has no
//!   cell. Stacks are written as mrcfile's image stacks (ispg 0, mx = nx, my = ny, mz = 1,
//!   cell = (nx·apix, ny·apix, apix)) and volumes with ispg 1, m = n, cell = n·apix.
//!   A stack of K volumes of n sections is MRC2014's volume stack: ispg 401, nz = K·n,
//!   mz = n (sections per volume), cell z = n·apix, volume j in sections j·n..(j+1)·n
//!   (mrcfile reads it as a (K, n, ny, nx) array), with a second label saying so.
//!   f32 rounding of the cell can make f32(cell / m) one ulp off (mrcfile reads 1.2300001
//!   for 1.23 Å over 7 px, whatever the writer): the cell written is the f32 that makes
//!   f32(cell / m) exact whenever one exists (always for powers of two, most of the time
//!   otherwise), and the reader returns the shortest decimal consistent with the cell, so a
//!   pixel size written here or by mrcfile/RELION reads back as the value that was given.
//! - Header statistics are mrcfile's: dmin, dmax, dmean, rms = population standard deviation.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayView3};

use crate::error::{Error, Result};

/// Size of the fixed MRC header.
const HEADER_BYTES: u64 = 1024;
/// Bytes read from disk per request when converting to f32 (bounds peak memory).
const READ_CHUNK_BYTES: usize = 8 << 20;

/// Voxel encodings this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MrcMode {
    Int8,
    Int16,
    Float32,
    Uint16,
    Float16,
}

impl MrcMode {
    fn from_code(code: i32) -> Option<MrcMode> {
        Some(match code {
            0 => MrcMode::Int8,
            1 => MrcMode::Int16,
            2 => MrcMode::Float32,
            6 => MrcMode::Uint16,
            12 => MrcMode::Float16,
            _ => return None,
        })
    }
    /// The header's mode number.
    pub fn code(self) -> i32 {
        match self {
            MrcMode::Int8 => 0,
            MrcMode::Int16 => 1,
            MrcMode::Float32 => 2,
            MrcMode::Uint16 => 6,
            MrcMode::Float16 => 12,
        }
    }
    /// Bytes per voxel.
    pub fn bytes(self) -> usize {
        match self {
            MrcMode::Int8 => 1,
            MrcMode::Int16 | MrcMode::Uint16 | MrcMode::Float16 => 2,
            MrcMode::Float32 => 4,
        }
    }
}

/// A name for a mode number in error messages.
fn mode_name(code: i32) -> &'static str {
    match code {
        3 => "complex int16",
        4 => "complex float32",
        101 => "packed 4-bit",
        _ => "unknown",
    }
}

/// Header fields this module uses.
#[derive(Clone, Debug, PartialEq)]
pub struct MrcHeader {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
    pub mode: MrcMode,
    /// Sampling (mx, my, mz).
    pub sampling: [i32; 3],
    /// Cell lengths in Å.
    pub cell_a: [f32; 3],
    pub ispg: i32,
    /// Extended header bytes between the header and the data.
    pub nsymbt: usize,
    pub big_endian: bool,
    pub dmin: f32,
    pub dmax: f32,
    pub dmean: f32,
    pub rms: f32,
}

impl MrcHeader {
    /// Pixel size in Å along x (cell x / mx), 0 when unknown.
    pub fn psize_a(&self) -> f32 {
        if self.sampling[0] > 0 && self.cell_a[0] > 0.0 {
            psize_from_cell(self.cell_a[0], self.sampling[0] as usize)
        } else {
            0.0
        }
    }
}

/// Reads word `i` (byte offset `4 i`) of a header as i32 / f32.
struct Words<'a> {
    b: &'a [u8; 1024],
    big: bool,
}

impl Words<'_> {
    fn raw(&self, i: usize) -> [u8; 4] {
        [
            self.b[4 * i],
            self.b[4 * i + 1],
            self.b[4 * i + 2],
            self.b[4 * i + 3],
        ]
    }
    fn i32(&self, i: usize) -> i32 {
        if self.big {
            i32::from_be_bytes(self.raw(i))
        } else {
            i32::from_le_bytes(self.raw(i))
        }
    }
    fn f32(&self, i: usize) -> f32 {
        if self.big {
            f32::from_be_bytes(self.raw(i))
        } else {
            f32::from_le_bytes(self.raw(i))
        }
    }
}

/// Parses and checks a header (everything but the file length).
fn parse_header(path: &Path, b: &[u8; 1024]) -> Result<MrcHeader> {
    let map = &b[208..212];
    if map != b"MAP " && map != b"MAP\0" {
        return Err(Error::file(
            path,
            format!(
                "not an MRC2014 file: bytes 208-211 are {:?}, expected \"MAP \"",
                String::from_utf8_lossy(map)
            ),
        ));
    }
    let big = match (b[212], b[213]) {
        (0x44, 0x44) | (0x44, 0x41) => false,
        (0x11, 0x11) => true,
        _ => {
            // No usable machine stamp: take the byte order whose mode is plausible.
            let le = i32::from_le_bytes([b[12], b[13], b[14], b[15]]);
            !(0..=200).contains(&le)
        }
    };
    let w = Words { b, big };
    let (nx, ny, nz, mode_code) = (w.i32(0), w.i32(1), w.i32(2), w.i32(3));
    if nx < 1 || ny < 1 || nz < 0 {
        return Err(Error::file(
            path,
            format!(
                "header dimensions nx={nx} ny={ny} nz={nz} are invalid (need nx, ny ≥ 1, nz ≥ 0)"
            ),
        ));
    }
    let mode = MrcMode::from_code(mode_code).ok_or_else(|| {
        Error::file(
            path,
            format!(
                "MRC mode {mode_code} ({}) is not supported; supported modes are 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16)",
                mode_name(mode_code)
            ),
        )
    })?;
    let axes = (w.i32(16), w.i32(17), w.i32(18));
    if axes != (1, 2, 3) && axes != (0, 0, 0) {
        return Err(Error::file(
            path,
            format!(
                "axis order mapc/mapr/maps = {}/{}/{} is not supported (expected 1/2/3)",
                axes.0, axes.1, axes.2
            ),
        ));
    }
    let nsymbt = w.i32(23);
    if nsymbt < 0 {
        return Err(Error::file(
            path,
            format!("extended header size nsymbt = {nsymbt} is negative"),
        ));
    }
    Ok(MrcHeader {
        nx: nx as usize,
        ny: ny as usize,
        nz: nz as usize,
        mode,
        sampling: [w.i32(7), w.i32(8), w.i32(9)],
        cell_a: [w.f32(10), w.f32(11), w.f32(12)],
        ispg: w.i32(22),
        nsymbt: nsymbt as usize,
        big_endian: big,
        dmin: w.f32(19),
        dmax: w.f32(20),
        dmean: w.f32(21),
        rms: w.f32(54),
    })
}

/// An MRC file opened for reading images (or sections of a volume) by index.
#[derive(Debug)]
pub struct MrcStack {
    path: PathBuf,
    file: File,
    header: MrcHeader,
    data_offset: u64,
    psize_a: f32,
}

impl MrcStack {
    /// Opens `path`, checks its header and that its length matches the header.
    pub fn open(path: impl AsRef<Path>) -> Result<MrcStack> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if actual < HEADER_BYTES {
            return Err(Error::file(
                path,
                format!("file is {actual} bytes, shorter than the 1024-byte MRC header (truncated or not an MRC file)"),
            ));
        }
        let mut b = [0u8; 1024];
        read_at(&file, &mut b, 0).map_err(|e| Error::io(path, e))?;
        let header = parse_header(path, &b)?;
        let data_offset = HEADER_BYTES + header.nsymbt as u64;
        let data_bytes = (header.nx as u64)
            .checked_mul(header.ny as u64)
            .and_then(|v| v.checked_mul(header.nz as u64))
            .and_then(|v| v.checked_mul(header.mode.bytes() as u64));
        let expected = data_bytes
            .and_then(|d| d.checked_add(data_offset))
            .ok_or_else(|| {
                Error::file(
                    path,
                    "header dimensions overflow a 64-bit file size (not an MRC file?)",
                )
            })?;
        if actual != expected {
            let what = if actual < expected {
                "truncated"
            } else {
                "longer than its header says"
            };
            return Err(Error::file(
                path,
                format!(
                    "file is {what}: expected {expected} bytes (1024 header + {} extended + {}×{}×{} voxels × {} bytes, mode {}), found {actual} bytes",
                    header.nsymbt,
                    header.nx,
                    header.ny,
                    header.nz,
                    header.mode.bytes(),
                    header.mode.code()
                ),
            ));
        }
        let psize_a = header.psize_a();
        Ok(MrcStack {
            path: path.to_path_buf(),
            file,
            header,
            data_offset,
            psize_a,
        })
    }
    /// Image width (MRC nx, columns).
    pub fn nx(&self) -> usize {
        self.header.nx
    }
    /// Image height (MRC ny, rows).
    pub fn ny(&self) -> usize {
        self.header.ny
    }
    /// Number of images (MRC nz; sections for a volume).
    pub fn len(&self) -> usize {
        self.header.nz
    }
    pub fn is_empty(&self) -> bool {
        self.header.nz == 0
    }
    /// Pixel size in Å from the header (cell x / mx), 0 when the header has none.
    pub fn psize_a(&self) -> f32 {
        self.psize_a
    }
    pub fn header(&self) -> &MrcHeader {
        &self.header
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Images `range` as f32, shape (range.len(), ny, nx). Reads only those images' bytes.
    pub fn read(&self, range: Range<usize>) -> Result<Array3<f32>> {
        let h = &self.header;
        if range.start > range.end || range.end > h.nz {
            return Err(Error::file(
                &self.path,
                format!(
                    "images {}..{} requested but the file has {} images",
                    range.start, range.end, h.nz
                ),
            ));
        }
        let n = range.end - range.start;
        let per_image = h.nx * h.ny;
        let bpv = h.mode.bytes();
        let mut out = vec![0f32; n * per_image];
        let mut buf = vec![0u8; READ_CHUNK_BYTES.min(out.len() * bpv).max(bpv)];
        let chunk_voxels = buf.len() / bpv;
        let mut offset = self.data_offset + (range.start * per_image * bpv) as u64;
        for dst in out.chunks_mut(chunk_voxels) {
            let bytes = &mut buf[..dst.len() * bpv];
            read_at(&self.file, bytes, offset).map_err(|e| Error::io(&self.path, e))?;
            decode(h.mode, h.big_endian, bytes, dst);
            offset += bytes.len() as u64;
        }
        Array3::from_shape_vec((n, h.ny, h.nx), out)
            .map_err(|e| Error::file(&self.path, format!("internal shape error: {e}")))
    }
    /// All images (or all sections of a volume).
    pub fn read_all(&self) -> Result<Array3<f32>> {
        self.read(0..self.len())
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving a shared cursor.
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Converts raw voxels of `mode` to f32.
fn decode(mode: MrcMode, big: bool, src: &[u8], dst: &mut [f32]) {
    macro_rules! conv {
        ($n:expr, $f:expr) => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact($n)) {
                let a: [u8; $n] = s.try_into().expect("chunk size");
                *d = $f(a);
            }
        };
    }
    match (mode, big) {
        (MrcMode::Int8, _) => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s as i8 as f32;
            }
        }
        (MrcMode::Int16, false) => conv!(2, |a| i16::from_le_bytes(a) as f32),
        (MrcMode::Int16, true) => conv!(2, |a| i16::from_be_bytes(a) as f32),
        (MrcMode::Uint16, false) => conv!(2, |a| u16::from_le_bytes(a) as f32),
        (MrcMode::Uint16, true) => conv!(2, |a| u16::from_be_bytes(a) as f32),
        (MrcMode::Float16, false) => conv!(2, |a| half::f16::from_le_bytes(a).to_f32()),
        (MrcMode::Float16, true) => conv!(2, |a| half::f16::from_be_bytes(a).to_f32()),
        (MrcMode::Float32, false) => conv!(4, f32::from_le_bytes),
        (MrcMode::Float32, true) => conv!(4, f32::from_be_bytes),
    }
}

/// Reads a whole volume and its pixel size (Å, 0 when the header has none).
pub fn read_volume(path: impl AsRef<Path>) -> Result<(Array3<f32>, f32)> {
    let s = MrcStack::open(path)?;
    Ok((s.read_all()?, s.psize_a()))
}

/// Writes `images` (n, ny, nx) as a float32 image stack with pixel size `psize_a`.
pub fn write_stack(path: impl AsRef<Path>, images: ArrayView3<f32>, psize_a: f32) -> Result<()> {
    let (_, ny, nx) = images.dim();
    let mut w = MrcStackWriter::create(path, nx, ny, psize_a)?;
    w.append(images)?;
    w.finish()
}

/// Writes `volume` (nz, ny, nx) as a float32 map (ispg 1) with voxel size `psize_a`.
pub fn write_volume(path: impl AsRef<Path>, volume: ArrayView3<f32>, psize_a: f32) -> Result<()> {
    let (nz, ny, nx) = volume.dim();
    if nz == 0 {
        return Err(Error::file(
            path.as_ref(),
            "cannot write a volume with no sections",
        ));
    }
    let mut w = MrcStackWriter::create_with(path.as_ref(), nx, ny, psize_a, Layout::Volume)?;
    w.append(volume)?;
    w.finish()
}

/// Writes `volumes` (each (n, ny, nx), all the same shape) as one MRC2014 volume stack
/// (ispg 401, mz = n, nz = K·n; volume j is sections j·n..(j+1)·n) with voxel size
/// `psize_a`, and `label` (at most 80 ASCII bytes, cut there) as the header's second label.
pub fn write_volume_stack(
    path: impl AsRef<Path>,
    volumes: &[ArrayView3<f32>],
    psize_a: f32,
    label: &str,
) -> Result<()> {
    let path = path.as_ref();
    let Some(first) = volumes.first() else {
        return Err(Error::file(
            path,
            "cannot write a volume stack of no volumes",
        ));
    };
    let (nz, ny, nx) = first.dim();
    if nz == 0 || volumes.iter().any(|v| v.dim() != (nz, ny, nx)) {
        return Err(Error::file(
            path,
            format!("a volume stack needs volumes of one non-empty shape ({nz}×{ny}×{nx} first)"),
        ));
    }
    let mut w = MrcStackWriter::create_with(path, nx, ny, psize_a, Layout::VolumeStack(nz))?;
    w.label = label
        .bytes()
        .filter(|b| b.is_ascii() && *b >= b' ')
        .take(80)
        .collect();
    for v in volumes {
        w.append(v.view())?;
    }
    w.finish()
}

/// What a written file describes (decides ispg, mz and cell z).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Stack,
    Volume,
    /// Volumes of this many sections each.
    VolumeStack(usize),
}

/// Running min/max/mean/M2 (Chan et al.'s pairwise update, in f64).
#[derive(Clone, Copy, Debug)]
struct Stats {
    n: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }
    /// Adds a batch summarised by its own count, mean and M2.
    fn merge(&mut self, o: Stats) {
        if o.n == 0 {
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64;
        self.n = n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
    fn of(values: impl Iterator<Item = f32> + Clone) -> Stats {
        let mut s = Stats::new();
        let mut sum = 0.0;
        for v in values.clone() {
            let v = v as f64;
            s.n += 1;
            sum += v;
            s.min = s.min.min(v);
            s.max = s.max.max(v);
        }
        if s.n == 0 {
            return s;
        }
        s.mean = sum / s.n as f64;
        s.m2 = values.map(|v| (v as f64 - s.mean).powi(2)).sum();
        s
    }
}

/// Streams float32 images into an MRC stack: `create`, `append` any number of times,
/// `finish`. Data go to `<path>.tmp`; `finish` writes the final header and renames. Dropping
/// the writer without `finish` removes the temporary file.
#[derive(Debug)]
pub struct MrcStackWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    nx: usize,
    ny: usize,
    nz: usize,
    psize_a: f32,
    layout: Layout,
    stats: Stats,
    /// Second header label (empty: none).
    label: Vec<u8>,
}

impl MrcStackWriter {
    /// Starts a stack of `nx` × `ny` images with pixel size `psize_a` (Å).
    pub fn create(
        path: impl AsRef<Path>,
        nx: usize,
        ny: usize,
        psize_a: f32,
    ) -> Result<MrcStackWriter> {
        MrcStackWriter::create_with(path.as_ref(), nx, ny, psize_a, Layout::Stack)
    }

    fn create_with(
        path: &Path,
        nx: usize,
        ny: usize,
        psize_a: f32,
        layout: Layout,
    ) -> Result<MrcStackWriter> {
        if nx == 0 || ny == 0 || nx > i32::MAX as usize || ny > i32::MAX as usize {
            return Err(Error::file(path, format!("cannot write {nx}×{ny} images")));
        }
        if !(psize_a.is_finite() && psize_a >= 0.0) {
            return Err(Error::file(
                path,
                format!("pixel size {psize_a} Å is not a non-negative number"),
            ));
        }
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = MrcStackWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            nx,
            ny,
            nz: 0,
            psize_a,
            layout,
            stats: Stats::new(),
            label: Vec::new(),
        };
        // Placeholder header, rewritten by `finish`.
        w.write_bytes(&[0u8; 1024])?;
        Ok(w)
    }

    /// Number of images appended so far.
    pub fn len(&self) -> usize {
        self.nz
    }
    pub fn is_empty(&self) -> bool {
        self.nz == 0
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::file(&self.path, "writer already finished"))?;
        out.write_all(b).map_err(|e| Error::io(&self.tmp, e))
    }

    /// Appends `images` (n, ny, nx), in any memory layout.
    pub fn append(&mut self, images: ArrayView3<f32>) -> Result<()> {
        let (n, ny, nx) = images.dim();
        if ny != self.ny || nx != self.nx {
            return Err(Error::file(
                &self.path,
                format!(
                    "cannot append {ny}×{nx} images to a stack of {}×{} images",
                    self.ny, self.nx
                ),
            ));
        }
        if self.nz + n > i32::MAX as usize {
            return Err(Error::file(
                &self.path,
                "more than 2^31 - 1 images in one MRC file",
            ));
        }
        let mut buf = Vec::with_capacity(nx * ny * 4);
        for image in images.outer_iter() {
            buf.clear();
            for &v in image.iter() {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            self.write_bytes(&buf)?;
            self.stats.merge(Stats::of(image.iter().copied()));
        }
        self.nz += n;
        Ok(())
    }

    /// Writes the header, flushes, and renames `<path>.tmp` to `path`.
    pub fn finish(mut self) -> Result<()> {
        let header = self.header_bytes();
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::file(&self.path, "writer already finished"))?;
        let mut file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.tmp, e))?;
        file.write_all(&header)
            .map_err(|e| Error::io(&self.tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        // Renamed: nothing left for Drop to clean up.
        self.tmp = PathBuf::new();
        Ok(())
    }

    fn header_bytes(&self) -> [u8; 1024] {
        let (nx, ny, nz) = (self.nx, self.ny, self.nz);
        let apix = self.psize_a;
        let (ispg, mz, cell_z) = match self.layout {
            Layout::Stack => (0, 1, cell_length(1, apix)),
            Layout::Volume => (1, nz, cell_length(nz, apix)),
            Layout::VolumeStack(n) => (401, n, cell_length(n, apix)),
        };
        let s = &self.stats;
        // mrcfile's markers for "statistics not computed" when there are no voxels.
        let (dmin, dmax, dmean, rms) = if s.n == 0 {
            (0.0, -1.0, -2.0, -1.0)
        } else {
            (
                s.min as f32,
                s.max as f32,
                s.mean as f32,
                (s.m2 / s.n as f64).sqrt() as f32,
            )
        };
        let mut b = [0u8; 1024];
        let mut put_i = |i: usize, v: i32| b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        put_i(0, nx as i32);
        put_i(1, ny as i32);
        put_i(2, nz as i32);
        put_i(3, 2); // mode: float32
        put_i(7, nx as i32);
        put_i(8, ny as i32);
        put_i(9, mz as i32);
        put_i(16, 1);
        put_i(17, 2);
        put_i(18, 3);
        put_i(22, ispg);
        put_i(23, 0); // nsymbt
        put_i(27, 20140); // nversion (byte 108)
        put_i(55, if self.label.is_empty() { 1 } else { 2 }); // nlabl
        let mut put_f = |i: usize, v: f32| b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        put_f(10, cell_length(nx, apix));
        put_f(11, cell_length(ny, apix));
        put_f(12, cell_z);
        put_f(13, 90.0);
        put_f(14, 90.0);
        put_f(15, 90.0);
        put_f(19, dmin);
        put_f(20, dmax);
        put_f(21, dmean);
        put_f(54, rms);
        b[208..212].copy_from_slice(b"MAP ");
        b[212..216].copy_from_slice(&[0x44, 0x44, 0, 0]);
        let label = b"emclass";
        b[224..224 + label.len()].copy_from_slice(label);
        b[304..304 + self.label.len()].copy_from_slice(&self.label);
        b
    }
}

impl Drop for MrcStackWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.out.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `<path>.tmp` (the suffix appended to the whole file name).
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The f32 cell length for `n` samples of `apix` Å: one with f32(c / n) == apix (computed in
/// f64, as mrcfile's `voxel_size` does) when such a c exists, else the nearest one. (For n
/// not a power of two, consecutive f32 cell lengths can step over `apix`; then mrcfile reads
/// back a neighbour of `apix` one ulp away, and [`psize_from_cell`] still recovers `apix`
/// when it is the shortest decimal consistent with the cell.)
fn cell_length(n: usize, apix: f32) -> f32 {
    let c0 = (apix as f64 * n as f64) as f32;
    if n == 0 {
        return c0;
    }
    let err = |c: f32| (((c as f64) / (n as f64)) as f32 - apix).abs();
    let (mut best, mut best_err) = (c0, err(c0));
    let (mut up, mut down) = (c0, c0);
    for _ in 0..8 {
        if best_err == 0.0 {
            break;
        }
        up = up.next_up();
        down = down.next_down();
        for c in [up, down] {
            if err(c) < best_err {
                best = c;
                best_err = err(c);
            }
        }
    }
    best
}

/// The pixel size of a cell of length `cell` over `m` samples: among f32(cell / m) and its
/// nearest f32 neighbours, the one with the shortest decimal form whose [`cell_length`] is
/// `cell` (so a pixel size written here, or by mrcfile, reads back as the value given, even
/// when f32(cell / m) is one ulp off).
fn psize_from_cell(cell: f32, m: usize) -> f32 {
    let p0 = ((cell as f64) / (m as f64)) as f32;
    let digits = |p: f32| format!("{p}").len();
    let (mut best, mut best_len) = (p0, digits(p0));
    let (mut up, mut down) = (p0, p0);
    for _ in 0..4 {
        up = up.next_up();
        down = down.next_down();
        for p in [up, down] {
            // Our writer's cell, f32(p·m), or mrcfile's f32(decimal(p)·m) (it multiplies the
            // Python float the user gave, not its f32).
            let decimal: f64 = format!("{p}").parse().unwrap_or(p as f64);
            let consistent = cell_length(m, p) == cell
                || (p as f64 * m as f64) as f32 == cell
                || (decimal * m as f64) as f32 == cell;
            if consistent && digits(p) < best_len {
                best = p;
                best_len = digits(p);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array3};

    fn ramp(n: usize, ny: usize, nx: usize) -> Array3<f32> {
        Array3::from_shape_fn((n, ny, nx), |(z, y, x)| {
            (z * 1000 + y * 10 + x) as f32 * 0.5 - 3.0
        })
    }

    /// A hand-made header for files this module does not write.
    fn raw_header(nx: i32, ny: i32, nz: i32, mode: i32, big: bool) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        let put = |b: &mut Vec<u8>, i: usize, v: i32| {
            let bytes = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            b[4 * i..4 * i + 4].copy_from_slice(&bytes);
        };
        for (i, v) in [
            (0, nx),
            (1, ny),
            (2, nz),
            (3, mode),
            (7, nx),
            (8, ny),
            (9, 1),
            (16, 1),
            (17, 2),
            (18, 3),
        ] {
            put(&mut b, i, v);
        }
        let cell = 1.5f32 * nx as f32;
        let cb = if big {
            cell.to_be_bytes()
        } else {
            cell.to_le_bytes()
        };
        b[40..44].copy_from_slice(&cb);
        b[208..212].copy_from_slice(b"MAP ");
        b[212..214].copy_from_slice(if big { &[0x11, 0x11] } else { &[0x44, 0x44] });
        b
    }

    #[test]
    fn stack_round_trip_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mrcs");
        let data = ramp(5, 6, 7);
        let mut w = MrcStackWriter::create(&path, 7, 6, 1.23).unwrap();
        w.append(data.slice(s![0..2, .., ..])).unwrap();
        // A non-standard layout (transposed view) must be written in logical order.
        let t = data.slice(s![2..5, .., ..]).to_owned();
        let mut f = Array3::<f32>::zeros((3, 7, 6));
        f.assign(&t.view().permuted_axes([0, 2, 1]));
        w.append(f.view().permuted_axes([0, 2, 1])).unwrap();
        assert!(dir.path().join("a.mrcs.tmp").exists());
        w.finish().unwrap();
        assert!(!dir.path().join("a.mrcs.tmp").exists());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1024 + 5 * 6 * 7 * 4
        );

        let st = MrcStack::open(&path).unwrap();
        assert_eq!((st.nx(), st.ny(), st.len()), (7, 6, 5));
        assert_eq!(st.psize_a(), 1.23);
        assert_eq!(st.read_all().unwrap(), data);
        let h = st.header();
        assert_eq!(h.ispg, 0);
        assert_eq!(h.sampling, [7, 6, 1]);
        assert_eq!(h.dmin, data.iter().cloned().fold(f32::INFINITY, f32::min));
        assert_eq!(
            h.dmax,
            data.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        );
        let mean = data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64;
        let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / data.len() as f64;
        assert!((h.dmean as f64 - mean).abs() < 1e-3);
        assert!((h.rms as f64 - var.sqrt()).abs() < 1e-3);
    }

    #[test]
    fn partial_range_reads_only_those_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.mrcs");
        let data = ramp(9, 4, 3);
        write_stack(&path, data.view(), 2.0).unwrap();
        let st = MrcStack::open(&path).unwrap();
        assert_eq!(st.read(3..7).unwrap(), data.slice(s![3..7, .., ..]));
        assert_eq!(st.read(8..9).unwrap(), data.slice(s![8..9, .., ..]));
        assert_eq!(st.read(4..4).unwrap().dim(), (0, 4, 3));
        let err = st.read(5..10).unwrap_err().to_string();
        assert!(
            err.contains("b.mrcs") && err.contains("5..10") && err.contains("9 images"),
            "{err}"
        );
    }

    #[test]
    fn psize_is_exact_for_many_pixel_sizes() {
        let mut exact_in_f32 = 0;
        let mut total = 0;
        for &apix in &[
            0.1f32, 0.83, 1.0, 1.06, 1.23, 1.2345, 2.6, 3.3333, 4.25, 5.0e-3, 13.7,
        ] {
            for n in (1usize..600).chain([1024, 4096, 5760]) {
                let c = cell_length(n, apix);
                // What mrcfile's voxel_size computes: f32(cell / mx).
                let naive = ((c as f64) / n as f64) as f32;
                assert!(
                    (naive - apix).abs() <= 2.0 * (apix.next_up() - apix),
                    "n={n} apix={apix}"
                );
                exact_in_f32 += (naive == apix) as usize;
                total += 1;
                assert_eq!(psize_from_cell(c, n), apix, "n={n} apix={apix}");
                // Cells other writers compute (f32(apix·n) from the f32, or from the decimal
                // as mrcfile does) read back too.
                let dec: f64 = format!("{apix}").parse().unwrap();
                assert_eq!(
                    psize_from_cell((dec * n as f64) as f32, n),
                    apix,
                    "n={n} apix={apix}"
                );
                assert_eq!(
                    psize_from_cell((apix as f64 * n as f64) as f32, n),
                    apix,
                    "n={n} apix={apix}"
                );
            }
        }
        // Most sizes are exact even for readers that divide naively.
        assert!(exact_in_f32 * 10 > total * 8, "{exact_in_f32}/{total}");
    }

    #[test]
    fn volume_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.mrc");
        let vol = ramp(4, 4, 4);
        write_volume(&path, vol.view(), 0.9).unwrap();
        let (back, apix) = read_volume(&path).unwrap();
        assert_eq!(back, vol);
        assert_eq!(apix, 0.9);
        let st = MrcStack::open(&path).unwrap();
        assert_eq!(st.header().ispg, 1);
        assert_eq!(st.header().sampling, [4, 4, 4]);
        assert_eq!(st.header().cell_a[2], st.header().cell_a[0]);
    }

    #[test]
    fn volume_stack_holds_the_volumes_in_order_with_a_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.mrcs");
        let a = ramp(3, 4, 5);
        let b = a.mapv(|v| -2.0 * v);
        write_volume_stack(
            &path,
            &[a.view(), b.view()],
            1.5,
            "2 volumes: class_00, class_01",
        )
        .unwrap();
        let st = MrcStack::open(&path).unwrap();
        let h = st.header();
        assert_eq!((h.nx, h.ny, h.nz, h.ispg), (5, 4, 6, 401));
        assert_eq!(h.sampling, [5, 4, 3]);
        assert_eq!(st.psize_a(), 1.5);
        assert!((h.cell_a[2] - 4.5).abs() < 1e-6);
        assert_eq!(st.read(0..3).unwrap(), a);
        assert_eq!(st.read(3..6).unwrap(), b);
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(i32::from_le_bytes(raw[220..224].try_into().unwrap()), 2);
        assert!(raw[304..384].starts_with(b"2 volumes: class_00, class_01"));
        // Mismatched shapes or no volumes: an error naming the file, nothing left behind.
        let c = ramp(2, 4, 5);
        let e = write_volume_stack(&path, &[a.view(), c.view()], 1.5, "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("all.mrcs") && e.contains("one non-empty shape"),
            "{e}"
        );
        assert!(write_volume_stack(&path, &[], 1.5, "").is_err());
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn truncated_file_is_an_error_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.mrcs");
        write_stack(&path, ramp(3, 4, 4).view(), 1.0).unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let err = MrcStack::open(&path).unwrap_err().to_string();
        assert!(err.contains("t.mrcs"), "{err}");
        assert!(err.contains("truncated"), "{err}");
        assert!(
            err.contains(&format!("expected {} bytes", full.len())),
            "{err}"
        );
        assert!(
            err.contains(&format!("found {} bytes", full.len() - 10)),
            "{err}"
        );
        assert!(!err.contains('\n'));
        std::fs::write(&path, &full[..500]).unwrap();
        let err = MrcStack::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("500 bytes") && err.contains("1024-byte"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_mode_and_bad_map_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mrc");
        let mut bytes = raw_header(2, 2, 1, 4, false);
        bytes.extend_from_slice(&[0u8; 32]);
        std::fs::write(&path, &bytes).unwrap();
        let err = MrcStack::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("m.mrc") && err.contains("mode 4") && err.contains("not supported"),
            "{err}"
        );
        bytes[208..212].copy_from_slice(b"XXXX");
        std::fs::write(&path, &bytes).unwrap();
        let err = MrcStack::open(&path).unwrap_err().to_string();
        assert!(err.contains("MAP"), "{err}");
    }

    #[test]
    fn integer_and_half_modes_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let vals: Vec<i16> = (0..2 * 3 * 4).map(|i| (i as i16 - 10) * 1000).collect();
        // int16, little- and big-endian, with a 16-byte extended header that must be skipped.
        for big in [false, true] {
            let path = dir.path().join(format!("i16_{big}.mrcs"));
            let mut b = raw_header(4, 3, 2, 1, big);
            let ns = if big {
                16i32.to_be_bytes()
            } else {
                16i32.to_le_bytes()
            };
            b[92..96].copy_from_slice(&ns);
            b.extend_from_slice(&[7u8; 16]);
            for v in &vals {
                b.extend_from_slice(&if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                });
            }
            std::fs::write(&path, &b).unwrap();
            let st = MrcStack::open(&path).unwrap();
            assert_eq!(st.psize_a(), 1.5);
            let a = st.read(1..2).unwrap();
            assert_eq!(a.dim(), (1, 3, 4));
            // [z][y][x] with x fastest in the file.
            assert_eq!(a[[0, 0, 0]], vals[12] as f32);
            assert_eq!(a[[0, 1, 2]], vals[12 + 4 + 2] as f32);
            assert_eq!(a[[0, 2, 3]], vals[23] as f32);
        }
        // int8 (signed), uint16, float16.
        let path = dir.path().join("i8.mrcs");
        let mut b = raw_header(2, 1, 1, 0, false);
        b.extend_from_slice(&[0xff, 0x05]);
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            MrcStack::open(&path)
                .unwrap()
                .read_all()
                .unwrap()
                .as_slice()
                .unwrap(),
            &[-1.0, 5.0]
        );
        let path = dir.path().join("u16.mrcs");
        let mut b = raw_header(2, 1, 1, 6, false);
        b.extend_from_slice(&60000u16.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            MrcStack::open(&path)
                .unwrap()
                .read_all()
                .unwrap()
                .as_slice()
                .unwrap(),
            &[60000.0, 3.0]
        );
        let path = dir.path().join("f16.mrcs");
        let mut b = raw_header(2, 1, 1, 12, false);
        b.extend_from_slice(&half::f16::from_f32(-2.5).to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(0.125).to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            MrcStack::open(&path)
                .unwrap()
                .read_all()
                .unwrap()
                .as_slice()
                .unwrap(),
            &[-2.5, 0.125]
        );
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.mrcs");
        {
            let mut w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
            w.append(ramp(1, 2, 2).view()).unwrap();
            let err = w.append(ramp(1, 3, 2).view()).unwrap_err().to_string();
            assert!(err.contains("3×2"), "{err}");
        }
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn empty_stack_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.mrcs");
        MrcStackWriter::create(&path, 8, 8, 1.0)
            .unwrap()
            .finish()
            .unwrap();
        let st = MrcStack::open(&path).unwrap();
        assert_eq!((st.len(), st.nx(), st.psize_a()), (0, 8, 1.0));
        assert_eq!(st.read_all().unwrap().dim(), (0, 8, 8));
    }
}
