//! `emclass export`: particle dataset → RELION 3.1 STAR, CryoSPARC .cs and/or one MRC stack.
//! Without `--mrcs` the STAR/.cs keep each particle's original image reference, rewritten
//! relative to the folder the file is written to; with `--mrcs` the images are streamed
//! into a new stack and the STAR/.cs point there. The .cs holds `alignments3D/class_probs`
//! in CryoSPARC's layout, one `alignments_class_N/class_posterior` per class
//! (`formats::cs_classes`). All outputs appear together or not at all.

use std::path::{Path, PathBuf};

use crate::cli::ExportArgs;
use crate::dataset::{Column, ColumnData, Dataset, ParticleTable};
use crate::error::{Error, Result};
use crate::formats::mrc::MrcStackWriter;
use crate::formats::{cs, cs_classes, relion, star};
use crate::jobs::staged::Staged;
use crate::paths::{abs_parent, relative_to, resolve};
use crate::report::progress::Progress;

/// Images streamed per read.
const BATCH: usize = 256;

/// Runs the export (on the calling rank).
pub fn run(args: &ExportArgs) -> Result<()> {
    if args.star.is_none() && args.cs.is_none() && args.mrcs.is_none() {
        return Err(Error::Usage(
            "export needs at least one of --star, --cs, --mrcs".into(),
        ));
    }
    let mut staged = Staged::default();
    let star_part = args
        .star
        .as_ref()
        .map(|p| staged.stage(p, args.overwrite))
        .transpose()?;
    let cs_part = args
        .cs
        .as_ref()
        .map(|p| staged.stage(p, args.overwrite))
        .transpose()?;
    let mrcs_part = args
        .mrcs
        .as_ref()
        .map(|p| staged.stage(p, args.overwrite))
        .transpose()?;
    let ds = Dataset::open(&args.input)?;
    let n = ds.len();
    log::info!("exporting {n} particles from {}", args.input.display());

    // Where each particle's image is, as an absolute (stack, 0-based index).
    let images: Vec<(PathBuf, u64)> = match (&args.mrcs, &mrcs_part) {
        (Some(target), Some(part)) => {
            write_stack(&ds, part)?;
            let abs = abs_parent(target)?.join(target.file_name().expect("staged file name"));
            (0..n as u64).map(|i| (abs.clone(), i)).collect()
        }
        _ => original_images(&ds, &args.input)?,
    };
    if let (Some(target), Some(part)) = (&args.star, &star_part) {
        let base = abs_parent(target)?;
        let names: Vec<String> = images
            .iter()
            .map(|(p, i)| relion::format_image_name(*i, &relative_to(p, &base).to_string_lossy()))
            .collect();
        let file = relion::table_to_star(ds.table(), &names)?;
        star::write_star(part, &file)?;
    }
    if let (Some(target), Some(part)) = (&args.cs, &cs_part) {
        let base = abs_parent(target)?;
        let mut table = with_image_refs(ds.table(), &images, &base);
        cs_classes::scatter_class_probs(&mut table, &args.input)?;
        cs::write_cs(part, &table)?;
    }
    staged.commit()?;
    for p in [&args.star, &args.cs, &args.mrcs].into_iter().flatten() {
        log::info!("wrote {}", p.display());
    }
    Ok(())
}

/// The original image references (`blob/path` relative to the dataset's `blob_root`).
fn original_images(ds: &Dataset, input: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let t = ds.table();
    let (Some(paths), Some(idx)) = (
        t.str("blob/path"),
        t.get("blob/idx").and_then(|c| c.data.to_f64()),
    ) else {
        return Err(Error::field(
            input,
            "blob/path",
            "the particles have no original image stack to refer to (simulated or generated data); add --mrcs to write one",
        ));
    };
    let root = match &ds.attrs().blob_root {
        Some(r) => PathBuf::from(r),
        None => abs_parent(input)?,
    };
    Ok(paths
        .iter()
        .zip(idx)
        .map(|(p, i)| (resolve(&root, p.trim_start_matches('>')), i as u64))
        .collect())
}

/// The table with `blob/path` (relative to `base`) and `blob/idx` set from `images`.
fn with_image_refs(table: &ParticleTable, images: &[(PathBuf, u64)], base: &Path) -> ParticleTable {
    let mut t = table.clone();
    t.set_str(
        "blob/path",
        images
            .iter()
            .map(|(p, _)| relative_to(p, base).to_string_lossy().into_owned())
            .collect(),
    );
    t.set(
        "blob/idx",
        Column::scalar(ColumnData::U32(
            images.iter().map(|(_, i)| *i as u32).collect(),
        )),
    );
    t
}

/// Streams every image of the dataset, in table order, into one MRC stack.
fn write_stack(ds: &Dataset, part: &Path) -> Result<()> {
    let n = ds.len();
    let mut w = MrcStackWriter::create(part, ds.box_px(), ds.box_px(), ds.psize_a())?;
    let mut progress = Progress::new("export images", n as u64);
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        let images = ds.read_images(start..end)?;
        w.append(images.view())?;
        progress.inc((end - start) as u64);
        start = end;
    }
    w.finish()
}
