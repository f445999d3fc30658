//! The 2D classification a curation job starts from, on every rank: each particle's class
//! (`alignments2D/class`), the number of classes, the class averages (`classes.mrcs` of the
//! same `emclass classify2d` output, or a file the config names) and, on request, each
//! class's FRC = 0.5 resolution from that output's `summary.json`.

use std::path::{Path, PathBuf};

use ndarray::Array3;

use crate::comm::Comm;
use crate::curate::config::classes_file_for;
use crate::error::{Error, Result};
use crate::formats::mrc::{write_stack, MrcStack};
use crate::jobs::classify2d::class_montage;
use crate::jobs::collective;
use crate::jobs::selection::{plots_dir, Share};

/// The 2D class of every particle.
pub const CLASS_FIELD: &str = "alignments2D/class";

/// Class averages read from an MRC stack.
pub struct Averages {
    pub path: PathBuf,
    pub images: Array3<f32>,
    pub psize_a: f64,
}

/// A 2D classification as the curation jobs see it, on one rank of many.
pub struct Classes2d {
    /// Class of each of this rank's particles (0..k).
    pub class: Vec<u32>,
    /// Number of classes: the averages in the stack, or one more than the largest class.
    pub k: usize,
    /// Particles per class, over all ranks.
    pub sizes: Vec<usize>,
    /// The stack of averages, when there is one (every rank knows).
    pub averages_path: Option<PathBuf>,
    /// The averages themselves, read by rank 0 only (`None` elsewhere).
    pub averages: Option<Averages>,
}

/// The classes of this rank's particles, checked block by block.
fn read_classes(share: &Share) -> Result<Vec<u32>> {
    let file = &share.input;
    let mut class = Vec::with_capacity(share.rows.len());
    share.for_each_block(|_, block| {
        let table = block.table();
        let col = table.get(CLASS_FIELD).ok_or_else(|| {
            Error::field(
                file,
                CLASS_FIELD,
                "missing: this job needs a 2D classification (run emclass classify2d first)",
            )
        })?;
        let values = col
            .data
            .to_f64()
            .filter(|_| col.width == 1)
            .ok_or_else(|| {
                Error::field(file, CLASS_FIELD, "expected one class index per particle")
            })?;
        for (i, &v) in values.iter().enumerate() {
            if !(v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f64) {
                return Err(Error::field(
                    file,
                    CLASS_FIELD,
                    format!(
                        "particle uid {} has the class {v}, not a class index",
                        table.uid()[i]
                    ),
                ));
            }
            class.push(v as u32);
        }
        Ok(())
    })?;
    Ok(class)
}

/// Reads the classes of every rank's share of the input; collective. The averages come
/// from `configured` (which must exist) or, when that is `None`, from `classes.mrcs` next
/// to the input; with `require_averages` a missing stack is an error, otherwise the job goes
/// on without averages. Rank 0 reads the stack.
pub fn load(
    comm: &dyn Comm,
    share: &Share,
    configured: Option<&Path>,
    require_averages: bool,
    cfg_path: &Path,
) -> Result<Classes2d> {
    let class = collective(comm, read_classes(share))?;
    let mut max_class = [class.iter().map(|&c| c as f64 + 1.0).fold(0.0, f64::max)];
    comm.all_reduce_max_f64(&mut max_class);
    let max_class = max_class[0] as usize;
    let path = classes_file_for(&share.input, configured);
    let has_averages = configured.is_some() || path.exists() || require_averages;
    let averages = if comm.is_root() && has_averages {
        let read = read_averages(&path, configured, cfg_path).and_then(|a| {
            let k = a.images.dim().0;
            if max_class > k {
                return Err(Error::field(
                    &share.input,
                    CLASS_FIELD,
                    format!(
                        "has class {} but {} holds only {k} class averages: not the same classification",
                        max_class - 1,
                        a.path.display()
                    ),
                ));
            }
            Ok(a)
        });
        Some(collective(comm, read)?)
    } else {
        collective(comm, Ok(()))?;
        if comm.is_root() {
            log::info!(
                "no class averages next to the input ({}); none written",
                path.display()
            );
        }
        None
    };
    // Rank 0's class count (the stack's) on every rank.
    let k = averages.as_ref().map_or(max_class, |a| a.images.dim().0) as u64;
    let mut kb = k.to_le_bytes().to_vec();
    comm.broadcast_bytes(0, &mut kb);
    let k = u64::from_le_bytes(kb[..8].try_into().expect("8 bytes")) as usize;
    let mut sizes = vec![0u64; k];
    class.iter().for_each(|&c| sizes[c as usize] += 1);
    comm.all_reduce_sum_u64(&mut sizes);
    Ok(Classes2d {
        class,
        k,
        sizes: sizes.into_iter().map(|s| s as usize).collect(),
        averages_path: has_averages.then_some(path),
        averages,
    })
}

/// The class averages at `path`.
fn read_averages(path: &Path, configured: Option<&Path>, cfg_path: &Path) -> Result<Averages> {
    let stack = MrcStack::open(path).map_err(|e| match (configured, e) {
        (None, Error::Io { .. }) => Error::config(
            cfg_path,
            "classes_file",
            format!(
                "no class averages at {} (next to the input); name the classify2d classes.mrcs",
                path.display()
            ),
        ),
        (_, e) => e,
    })?;
    if stack.nx() != stack.ny() || stack.is_empty() {
        return Err(Error::file(
            path,
            "class averages must be a non-empty stack of square images",
        ));
    }
    let images = stack.read_all()?;
    Ok(Averages {
        psize_a: stack.psize_a() as f64,
        path: path.to_path_buf(),
        images,
    })
}

/// Each class's FRC = 0.5 resolution (Å) from `summary.json` next to the class averages
/// (`class_frc05_res_A`, written by `emclass classify2d`).
pub fn frc_resolutions(averages_path: &Path, k: usize) -> Result<Vec<f64>> {
    let summary = averages_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("summary.json");
    const FIELD: &str = "class_frc05_res_A";
    let text = std::fs::read_to_string(&summary).map_err(|e| Error::io(&summary, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&summary, format!("not valid JSON: {e}")))?;
    let res: Vec<f64> = json
        .get(FIELD)
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::field(&summary, FIELD, "missing (needed for max_frc_res_A)"))?
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::INFINITY))
        .collect();
    if res.len() != k {
        return Err(Error::field(
            &summary,
            FIELD,
            format!("has {} values for {k} classes", res.len()),
        ));
    }
    Ok(res)
}

/// Writes the averages of the classes `kept` (in that order) to `dir/classes_selected.mrcs`
/// (the class averages' pixel size) and their montage to `dir/plots/classes_selected.png`,
/// each tile labelled `label(class)`: the templates a selection job passes on. Writes
/// nothing when there are no averages or no kept class.
pub fn write_selected_averages(
    dir: &Path,
    classes: &Classes2d,
    kept: &[usize],
    label: impl Fn(usize) -> String,
) -> Result<()> {
    let Some(a) = &classes.averages else {
        return Ok(());
    };
    if kept.is_empty() {
        log::info!("no class kept: no classes_selected.mrcs written");
        return Ok(());
    }
    let imgs: Array3<f32> = a.images.select(ndarray::Axis(0), kept);
    write_stack(
        dir.join("classes_selected.mrcs"),
        imgs.view(),
        a.psize_a as f32,
    )?;
    let labels: Vec<String> = kept.iter().map(|&c| label(c)).collect();
    class_montage(
        &plots_dir(dir)?.join("classes_selected.png"),
        &imgs,
        &labels,
        None,
        a.psize_a,
        imgs.dim().1,
    )
}
