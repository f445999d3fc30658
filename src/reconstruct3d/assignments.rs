//! The class assignments of a rank's particles, as 3D classification wrote them: the hard
//! class (`alignments3D/class`, 0-based) and the probability of every class
//! (`alignments3D/class_probs`, K values per particle), and from them each particle's weight
//! in the classes being reconstructed.
//!
//! `weighting: hard` needs the class field (the probabilities, when present, only tell the
//! number of classes); `weighting: soft` needs the probabilities (a particle's hard class is
//! then its most probable one when the class field is absent).

use std::ops::Range;
use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::particles::block::numeric_field;

use super::config::Weighting;

/// The hard class of each particle.
pub const CLASS_FIELD: &str = "alignments3D/class";
/// The probability of each class, K values per particle.
pub const PROBS_FIELD: &str = "alignments3D/class_probs";

/// Rows read per metadata read (the whole table of a rank is never held).
const READ_ROWS: usize = 65_536;

/// The assignments of a rank's rows (local row `l` = global row `rows.start + l`).
#[derive(Clone, Debug, PartialEq)]
pub struct Assignments {
    /// Hard class of each row.
    class: Vec<u32>,
    /// Class probabilities, `len × width` row-major, when read.
    probs: Option<Vec<f32>>,
    /// Values per row of [`PROBS_FIELD`] (0 when absent from the file).
    width: usize,
}

impl Assignments {
    /// Reads global rows `rows` of `path` block by block. Errors name the file and field:
    /// a missing field the weighting needs, a non-finite, negative or non-integer class, a
    /// negative probability, a class beyond the width of the probabilities.
    pub fn read(path: &Path, rows: Range<usize>, weighting: Weighting) -> Result<Self> {
        let head = Dataset::open_range(path, rows.start..rows.start)?;
        let has_class = head.table().get(CLASS_FIELD).is_some();
        let width = head.table().get(PROBS_FIELD).map_or(0, |c| c.width);
        drop(head);
        let need_class = weighting == Weighting::Hard || width == 0;
        let read_probs = weighting == Weighting::Soft;
        let mut class = Vec::with_capacity(rows.len());
        let mut probs = read_probs.then(|| Vec::with_capacity(rows.len() * width));
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + READ_ROWS).min(rows.end);
            let ds = Dataset::open_range(path, start..end)?;
            let p = match &mut probs {
                Some(all) => {
                    let why = "weighting: soft needs each particle's class probabilities (run classify3d first, or set weighting: hard)";
                    let v = numeric_field(&ds, PROBS_FIELD, width.max(1), why)?;
                    if let Some(i) = v.iter().position(|x| *x < 0.0) {
                        return Err(Error::field(
                            path,
                            PROBS_FIELD,
                            format!("particle {} has a negative probability", start + i / width),
                        ));
                    }
                    all.extend(v.iter().map(|x| *x as f32));
                    Some(v)
                }
                None => None,
            };
            if need_class || has_class {
                let why = "the class assignments of a 3D classification (run classify3d first)";
                let c = numeric_field(&ds, CLASS_FIELD, 1, why)?;
                for (i, v) in c.iter().enumerate() {
                    if *v < 0.0 || v.fract() != 0.0 || (width > 0 && *v >= width as f64) {
                        return Err(Error::field(
                            path,
                            CLASS_FIELD,
                            format!(
                                "particle {} has class {v}, not a class index{}",
                                start + i,
                                if width > 0 {
                                    format!(" below {width} (the width of {PROBS_FIELD})")
                                } else {
                                    String::new()
                                }
                            ),
                        ));
                    }
                }
                class.extend(c.iter().map(|v| *v as u32));
            } else if let Some(p) = p {
                class.extend(p.chunks_exact(width).map(argmax));
            }
            start = end;
        }
        Ok(Assignments {
            class,
            probs,
            width,
        })
    }

    /// The number of classes these rows show: the width of the probabilities, or one more
    /// than the largest class (0 without rows). The input's count is the maximum over ranks.
    pub fn local_classes(&self) -> usize {
        if self.width > 0 {
            self.width
        } else {
            self.class.iter().max().map_or(0, |c| *c as usize + 1)
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.class.len()
    }
    pub fn is_empty(&self) -> bool {
        self.class.is_empty()
    }

    /// Hard class of local row `l`.
    pub fn class(&self, l: usize) -> usize {
        self.class[l] as usize
    }

    /// The weights of local row `l` in the classes `selected` (input indices) into `out`:
    /// one-hot on its class (`hard`, 0 everywhere when its class is not selected) or its
    /// probabilities (`soft`).
    pub fn weights_into(
        &self,
        l: usize,
        weighting: Weighting,
        selected: &[usize],
        out: &mut [f64],
    ) {
        match (weighting, &self.probs) {
            (Weighting::Soft, Some(p)) => {
                let row = &p[l * self.width..(l + 1) * self.width];
                for (o, &c) in out.iter_mut().zip(selected) {
                    *o = row[c] as f64;
                }
            }
            _ => {
                let c = self.class(l);
                for (o, &s) in out.iter_mut().zip(selected) {
                    *o = if s == c { 1.0 } else { 0.0 };
                }
            }
        }
    }
}

/// Index of the largest value (the first of equals).
fn argmax(row: &[f64]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(class: Vec<u32>, probs: Option<Vec<f32>>, width: usize) -> Assignments {
        Assignments {
            class,
            probs,
            width,
        }
    }

    #[test]
    fn hard_and_soft_weights_of_the_selected_classes() {
        let a = fixed(vec![2, 0], Some(vec![0.1, 0.2, 0.7, 0.6, 0.3, 0.1]), 3);
        let mut w = [0.0; 2];
        a.weights_into(0, Weighting::Hard, &[2, 0], &mut w);
        assert_eq!(w, [1.0, 0.0]);
        a.weights_into(1, Weighting::Hard, &[1, 2], &mut w);
        assert_eq!(w, [0.0, 0.0]);
        a.weights_into(0, Weighting::Soft, &[2, 0], &mut w);
        assert!(
            (w[0] - 0.7).abs() < 1e-7 && (w[1] - 0.1).abs() < 1e-7,
            "{w:?}"
        );
        assert_eq!(a.local_classes(), 3);
        assert_eq!(fixed(vec![4, 1], None, 0).local_classes(), 5);
        assert_eq!(fixed(vec![], None, 0).local_classes(), 0);
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), 1);
    }
}
