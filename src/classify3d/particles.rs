//! What 3D classification reads per particle beyond the shared particle layer
//! ([`crate::particles`], which loads the spectra re-centred by their known shifts, with
//! their known poses, CTFs and half sets): the input's per-particle scales.

use std::ops::Range;
use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::particles::block::numeric_field;

/// Per-particle scale (CryoSPARC's name).
pub const SCALE_FIELD: &str = "alignments3D/alpha";

/// Rows read per metadata read (the whole table of a rank is never held).
const READ_ROWS: usize = 65_536;

/// The input's per-particle scales (`alignments3D/alpha`) of global rows `rows`, for
/// `per_particle_scale: input`.
pub fn input_scales(path: &Path, rows: Range<usize>) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + READ_ROWS).min(rows.end);
        let ds = Dataset::open_range(path, start..end)?;
        let v = numeric_field(&ds, SCALE_FIELD, 1, "per_particle_scale: input needs it")?;
        if let Some(i) = v.iter().position(|x| *x <= 0.0) {
            return Err(Error::field(
                ds.path(),
                SCALE_FIELD,
                format!("particle {} has a non-positive scale {}", start + i, v[i]),
            ));
        }
        out.extend(v);
        start = end;
    }
    Ok(out)
}
