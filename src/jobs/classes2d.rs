//! The 2D classification a curation job starts from: each particle's class
//! (`alignments2D/class`), the number of classes, the class averages (`classes.mrcs` of the
//! same `emclass classify2d` output, or a file the config names) and, on request, each
//! class's FRC = 0.5 resolution from that output's `summary.json`.

use std::path::{Path, PathBuf};

use ndarray::Array3;

use crate::curate::config::classes_file_for;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::formats::mrc::MrcStack;

/// The 2D class of every particle.
pub const CLASS_FIELD: &str = "alignments2D/class";

/// Class averages read from an MRC stack.
pub struct Averages {
    pub path: PathBuf,
    pub images: Array3<f32>,
    pub psize_a: f64,
}

/// A 2D classification as the curation jobs see it.
pub struct Classes2d {
    /// Class of each particle (0..k).
    pub class: Vec<usize>,
    /// Number of classes: the averages in the stack, or one more than the largest class.
    pub k: usize,
    /// Particles per class.
    pub sizes: Vec<usize>,
    pub averages: Option<Averages>,
}

/// Reads the classes of `input`. The averages come from `configured` (which must exist) or,
/// when that is `None`, from `classes.mrcs` next to the input; with `require_averages` a
/// missing stack is an error, otherwise the job goes on without averages.
pub fn load(
    input: &Dataset,
    configured: Option<&Path>,
    require_averages: bool,
    cfg_path: &Path,
) -> Result<Classes2d> {
    let file = input.path();
    let col = input.table().get(CLASS_FIELD).ok_or_else(|| {
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
        .ok_or_else(|| Error::field(file, CLASS_FIELD, "expected one class index per particle"))?;
    let mut class = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        if !(v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f64) {
            return Err(Error::field(
                file,
                CLASS_FIELD,
                format!(
                    "particle uid {} has the class {v}, not a class index",
                    input.table().uid()[i]
                ),
            ));
        }
        class.push(v as usize);
    }
    let path = classes_file_for(input.path(), configured);
    let averages = if configured.is_some() || path.exists() || require_averages {
        let stack = MrcStack::open(&path).map_err(|e| match (configured, e) {
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
                &path,
                "class averages must be a non-empty stack of square images",
            ));
        }
        let images = stack.read_all()?;
        Some(Averages {
            psize_a: stack.psize_a() as f64,
            path,
            images,
        })
    } else {
        log::info!(
            "no class averages next to the input ({}); none written",
            path.display()
        );
        None
    };
    let max_class = class.iter().copied().max().map_or(0, |m| m + 1);
    let k = match &averages {
        Some(a) => {
            let k = a.images.dim().0;
            if max_class > k {
                return Err(Error::field(
                    file,
                    CLASS_FIELD,
                    format!(
                        "has class {} but {} holds only {k} class averages: not the same classification",
                        max_class - 1,
                        a.path.display()
                    ),
                ));
            }
            k
        }
        None => max_class,
    };
    let mut sizes = vec![0usize; k];
    for &c in &class {
        sizes[c] += 1;
    }
    Ok(Classes2d {
        class,
        k,
        sizes,
        averages,
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
