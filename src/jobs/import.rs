//! `emclass import`: RELION STAR + stacks, CryoSPARC .cs + stacks, or a bare MRC stack →
//! particle dataset. Metadata is mapped by `formats::{relion, cs}`; the images are streamed
//! stack by stack in batches, so peak memory does not grow with the number of particles.
//! Every particle keeps its original image reference (`blob/path`, `blob/idx`) and gets a
//! stable `uid` derived from that reference (CryoSPARC particles keep their own). CryoSPARC's
//! per-class `alignments_class_N/class_posterior` fields become `alignments3D/class_probs`
//! (`formats::cs_classes`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::{s, Array3};

use crate::cli::{DtypeArg, ImportArgs};
use crate::dataset::{
    Column, ColumnData, DatasetAttrs, DatasetWriter, ImageDtype, ImageSpec, ParticleTable,
};
use crate::error::{Error, Result};
use crate::formats::mrc::MrcStack;
use crate::formats::{cs, cs_classes, relion, star};
use crate::jobs::output::check_writable;
use crate::paths::{abs_parent, resolve};
use crate::report::progress::Progress;

/// Images copied per write.
const BATCH: usize = 256;
/// Largest finite float16 magnitude.
const F16_MAX: f32 = 65504.0;

/// Where the metadata came from, for error messages: the file and the name of the field
/// that holds image references in it.
struct Source {
    file: PathBuf,
    image_field: &'static str,
}

/// Runs the import (on the calling rank).
pub fn run(args: &ImportArgs) -> Result<()> {
    check_writable(&args.out, args.overwrite)?;
    let (mut table, root, src) = read_metadata(args)?;
    let (paths, idx) = image_references(&table, &root, &src)?;
    let (first, box_px) = first_stack(&paths, &idx, &src)?;
    let psize_a = pixel_size(&table, &first, args, &src)?;
    add_derived_columns(&mut table, args, &paths, &idx, &src, psize_a, box_px)?;

    let spec_dtype = match args.dtype {
        DtypeArg::F32 => ImageDtype::F32,
        DtypeArg::F16 => ImageDtype::F16,
    };
    let spec = ImageSpec {
        box_px,
        psize_a,
        dtype: spec_dtype,
        gzip: args.gzip,
        chunk_particles: 64,
    };
    log::info!(
        "importing {} particles ({box_px}×{box_px} px, {psize_a} Å/px) from {} into {}",
        table.len(),
        src.file.display(),
        args.out.display()
    );
    let mut writer = DatasetWriter::create(&args.out, spec)?;
    let limit = match spec_dtype {
        ImageDtype::F16 => F16_MAX,
        ImageDtype::F32 => f32::MAX,
    };
    copy_images(&paths, &idx, &src, first, box_px, limit, &mut writer)?;
    let attrs = DatasetAttrs {
        blob_root: Some(root.to_string_lossy().into_owned()),
        source: format!("emclass import {}", src.file.display()),
    };
    writer.finish(table, &attrs)?;
    log::info!("wrote {}", args.out.display());
    Ok(())
}

/// Reads the particle metadata named by `--star`, `--cs` or `--mrcs`: the table, the folder
/// its image references are relative to, and where it came from.
fn read_metadata(args: &ImportArgs) -> Result<(ParticleTable, PathBuf, Source)> {
    if let Some(path) = &args.star {
        let parsed = star::read_star(path)?;
        let table = relion::star_to_table(&parsed, path)?;
        Ok((
            table,
            abs_parent(path)?,
            Source {
                file: path.clone(),
                image_field: "_rlnImageName",
            },
        ))
    } else if let Some(path) = &args.cs {
        let mut table = cs::read_cs(path)?;
        cs_classes::gather_class_probs(&mut table, path)?;
        let root = match &args.project_dir {
            Some(d) => std::fs::canonicalize(d).map_err(|e| Error::io(d, e))?,
            None => abs_parent(path)?,
        };
        Ok((
            table,
            root,
            Source {
                file: path.clone(),
                image_field: "blob/path",
            },
        ))
    } else if let Some(path) = &args.mrcs {
        let stack = MrcStack::open(path)?;
        let name = path
            .file_name()
            .ok_or_else(|| Error::file(path, "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let n = stack.len();
        let mut t = ParticleTable::new(vec![0; n]);
        t.set_str("blob/path", vec![name; n]);
        t.set_u32("blob/idx", (0..n as u32).collect());
        Ok((
            t,
            abs_parent(path)?,
            Source {
                file: path.clone(),
                image_field: "blob/idx",
            },
        ))
    } else {
        Err(Error::Usage(
            "import needs one of --star, --cs or --mrcs".into(),
        ))
    }
}

/// Every particle's image reference: its stack's path (resolved against `root`) and its
/// index in that stack. Refuses a table without references or without particles.
fn image_references(
    table: &ParticleTable,
    root: &Path,
    src: &Source,
) -> Result<(Vec<PathBuf>, Vec<f64>)> {
    for f in ["blob/path", "blob/idx"] {
        if !table.has(f) {
            return Err(Error::field(
                &src.file,
                f,
                "missing: particles must reference their images",
            ));
        }
    }
    if table.is_empty() {
        return Err(Error::file(&src.file, "no particles"));
    }
    let paths: Vec<PathBuf> = table
        .str("blob/path")
        .ok_or_else(|| Error::field(&src.file, "blob/path", "not a string field"))?
        .iter()
        .map(|p| resolve(root, p.trim_start_matches('>')))
        .collect();
    let idx = table
        .get("blob/idx")
        .and_then(|c| c.data.to_f64())
        .ok_or_else(|| Error::field(&src.file, "blob/idx", "not a numeric field"))?;
    Ok((paths, idx))
}

/// The first particle's stack and the box size it sets: every other stack must agree. The
/// first image must exist before its size is believed: an empty stack's header can declare
/// any nx, ny.
fn first_stack(paths: &[PathBuf], idx: &[f64], src: &Source) -> Result<(MrcStack, usize)> {
    let first = open_stack(&paths[0], src, 0)?;
    checked_index(idx[0], &first, 0, src)?;
    if first.nx() != first.ny() {
        return Err(Error::field(
            &src.file,
            src.image_field,
            format!(
                "particle row 1 is in stack {} of {}×{} px images; particle images must be square",
                first.path().display(),
                first.nx(),
                first.ny()
            ),
        ));
    }
    let box_px = first.nx();
    Ok((first, box_px))
}

/// Adds the columns the dataset derives at import: stable uids (CryoSPARC particles keep
/// their own), the pixel size and the image shape of every particle.
fn add_derived_columns(
    table: &mut ParticleTable,
    args: &ImportArgs,
    paths: &[PathBuf],
    idx: &[f64],
    src: &Source,
    psize_a: f32,
    box_px: usize,
) -> Result<()> {
    let n = table.len();
    // CryoSPARC particles keep their uids; the others get uids from their image references.
    if args.cs.is_none() {
        let uids = stable_uids(paths, idx, src)?;
        table
            .set_uids(uids)
            .map_err(|m| Error::file(&src.file, m))?;
    }
    table.set_f32("blob/psize_A", vec![psize_a; n]);
    table.set(
        "blob/shape",
        Column::new(ColumnData::U32([box_px as u32; 2].repeat(n)), 2),
    );
    Ok(())
}

fn open_stack(path: &Path, src: &Source, row: usize) -> Result<MrcStack> {
    MrcStack::open(path).map_err(|e| {
        Error::field(
            &src.file,
            src.image_field,
            format!("particle row {}: cannot read its image stack: {e}", row + 1),
        )
    })
}

/// Pixel size: `--pixel-size`, else the metadata's (which must be uniform), else the first
/// stack's header.
fn pixel_size(
    table: &ParticleTable,
    first: &MrcStack,
    args: &ImportArgs,
    src: &Source,
) -> Result<f32> {
    if let Some(p) = args.pixel_size {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::Usage(format!(
                "--pixel-size {p}: must be a positive number of Å"
            )));
        }
        return Ok(p);
    }
    if let Some(v) = table.f32("blob/psize_A") {
        let p = v[0];
        if let Some(bad) = v.iter().position(|&x| x != p) {
            return Err(Error::field(
                &src.file,
                "pixel size",
                format!("particles have different pixel sizes ({p} and {} Å at row {}); import them separately", v[bad], bad + 1),
            ));
        }
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::field(
                &src.file,
                "pixel size",
                format!("{p} is not a positive number of Å"),
            ));
        }
        return Ok(p);
    }
    let p = first.psize_a();
    if !(p.is_finite() && p > 0.0) {
        return Err(Error::field(
            first.path(),
            "voxel size",
            "the header has no pixel size; pass --pixel-size",
        ));
    }
    Ok(p)
}

/// A stable 64-bit identifier per particle from its image reference (absolute stack path
/// and index), so re-importing the same images gives the same uids.
fn stable_uids(paths: &[PathBuf], idx: &[f64], src: &Source) -> Result<Vec<u64>> {
    let mut seen = HashSet::with_capacity(paths.len());
    let mut out = Vec::with_capacity(paths.len());
    for (row, (p, &i)) in paths.iter().zip(idx).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a over the path bytes
        for b in p.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let uid = splitmix64(h ^ splitmix64(i as u64));
        if !seen.insert(uid) {
            return Err(Error::field(
                &src.file,
                src.image_field,
                format!(
                    "particle row {} repeats the image {}@{} of an earlier row",
                    row + 1,
                    i as u64 + 1,
                    p.display()
                ),
            ));
        }
        out.push(uid);
    }
    Ok(out)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Streams the images in table order: consecutive rows of the same stack with consecutive
/// indices are read with one call; batches of [`BATCH`] images go to the writer.
fn copy_images(
    paths: &[PathBuf],
    idx: &[f64],
    src: &Source,
    first: MrcStack,
    box_px: usize,
    limit: f32,
    writer: &mut DatasetWriter,
) -> Result<()> {
    let n = paths.len();
    let mut progress = Progress::new("import", n as u64);
    let mut stack = first;
    // At most BATCH images, no more than there are particles, and at most 256 MiB.
    let batch_rows = BATCH
        .min(n)
        .min((256 << 20) / box_px.saturating_mul(box_px).saturating_mul(4).max(1))
        .max(1);
    let mut batch = Array3::<f32>::zeros((batch_rows, box_px, box_px));
    let mut filled = 0;
    let mut row = 0;
    while row < n {
        if stack.path() != paths[row].as_path() {
            stack = open_stack(&paths[row], src, row)?;
        }
        if stack.nx() != box_px || stack.ny() != box_px {
            return Err(Error::field(
                &src.file,
                src.image_field,
                format!(
                    "particle row {} is in stack {} of {}×{} px images, but the first stack has {box_px}×{box_px}",
                    row + 1,
                    paths[row].display(),
                    stack.nx(),
                    stack.ny()
                ),
            ));
        }
        // The run of rows that continue in this stack with consecutive indices.
        let start_idx = checked_index(idx[row], &stack, row, src)?;
        let mut end = row + 1;
        while end < n
            && end - row < batch_rows - filled
            && paths[end] == paths[row]
            && idx[end] == idx[end - 1] + 1.0
        {
            end += 1;
        }
        let count = end - row;
        checked_index(idx[end - 1], &stack, end - 1, src)?;
        let images = stack.read(start_idx..start_idx + count)?;
        check_pixels(&images, &stack, start_idx, row, limit)?;
        batch
            .slice_mut(s![filled..filled + count, .., ..])
            .assign(&images);
        filled += count;
        if filled == batch_rows {
            writer.append_images(batch.view())?;
            filled = 0;
        }
        progress.inc(count as u64);
        row = end;
    }
    if filled > 0 {
        writer.append_images(batch.slice(s![..filled, .., ..]))?;
    }
    Ok(())
}

/// Refuses images (`start_idx..` of `stack`, particle rows `row..`) with NaN or infinite
/// pixels, or with pixels beyond `limit` in magnitude (the float16 range for `--dtype f16`).
fn check_pixels(
    images: &Array3<f32>,
    stack: &MrcStack,
    start_idx: usize,
    row: usize,
    limit: f32,
) -> Result<()> {
    if let Some(k) = images
        .outer_iter()
        .position(|im| im.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::field(
            stack.path(),
            "pixels",
            format!(
                "image {} (particle row {}) has NaN or infinite pixels",
                start_idx + k + 1,
                row + k + 1
            ),
        ));
    }
    if let Some(k) = images
        .outer_iter()
        .position(|im| im.iter().any(|v| v.abs() > limit))
    {
        return Err(Error::field(
            stack.path(),
            "pixels",
            format!(
                "image {} (particle row {}) has pixels beyond the float16 range (±{F16_MAX}); import with --dtype f32",
                start_idx + k + 1,
                row + k + 1
            ),
        ));
    }
    Ok(())
}

fn checked_index(i: f64, stack: &MrcStack, row: usize, src: &Source) -> Result<usize> {
    if i < 0.0 || i.fract() != 0.0 || i as usize >= stack.len() {
        return Err(Error::field(
            &src.file,
            src.image_field,
            format!(
                "particle row {} asks for image {} of {} which holds {} images",
                row + 1,
                i + 1.0,
                stack.path().display(),
                stack.len()
            ),
        ));
    }
    Ok(i as usize)
}
