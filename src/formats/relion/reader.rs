//! Reading labels of a particle STAR file: finding the particle table, joining particles
//! to their `data_optics` rows, and [`Reader`], which reads a label from the particle or,
//! when the particle table lacks it, from the particle's optics group.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::as_int;
use crate::error::{Error, Result};
use crate::formats::star::{parse_num, StarBlock, StarColumn, StarFile};

/// Reads labels from the particle table, falling back to the particle's optics group.
pub(super) struct Reader<'a> {
    /// The STAR file's path, for error messages.
    pub(super) path: &'a Path,
    /// The particle table.
    pub(super) parts: &'a StarBlock,
    /// `data_optics`, when the file has one as a table.
    pub(super) optics: Option<&'a StarBlock>,
    /// Optics row of each particle (empty without optics).
    pub(super) orow: Vec<usize>,
    /// Labels mapped to table fields (not kept as extras).
    pub(super) used: HashSet<String>,
}

/// Numeric values of a column, or an error naming the first value that is not a number.
fn num_values(path: &Path, block: &StarBlock, label: &str, c: &StarColumn) -> Result<Vec<f64>> {
    match c {
        StarColumn::Num(v) => Ok(v.clone()),
        StarColumn::Str(v) => v
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_num(s).ok_or_else(|| {
                    Error::field(
                        path,
                        format!("_{label}"),
                        format!(
                            "{} of data_{}: {s:?} is not a number",
                            block.row_place(i),
                            block.name
                        ),
                    )
                })
            })
            .collect(),
    }
}

impl<'a> Reader<'a> {
    /// A reader of `parts`, joined to `optics` (when given) by `_rlnOpticsGroup`.
    pub(super) fn new(
        path: &'a Path,
        parts: &'a StarBlock,
        optics: Option<&'a StarBlock>,
    ) -> Result<Reader<'a>> {
        let orow = match optics {
            Some(o) => optics_rows(path, parts, o)?,
            None => Vec::new(),
        };
        Ok(Reader {
            path,
            parts,
            optics,
            orow,
            used: HashSet::new(),
        })
    }
    /// Number of particles.
    pub(super) fn rows(&self) -> usize {
        self.parts.nrows()
    }
    /// Whether the particles or their optics group have `label`.
    pub(super) fn has(&self, label: &str) -> bool {
        self.parts.has(label) || self.optics.is_some_and(|o| o.has(label))
    }
    /// Marks `label` as mapped without reading it.
    pub(super) fn consume(&mut self, label: &str) {
        self.used.insert(label.to_string());
    }
    /// Where the value of `label` for particle `row` was read from, for error messages.
    pub(super) fn place(&self, label: &str, row: usize) -> String {
        match self.optics {
            Some(o) if !self.parts.has(label) && !self.orow.is_empty() => {
                format!("{} of data_optics", o.row_place(self.orow[row]))
            }
            _ => format!("{} of data_{}", self.parts.row_place(row), self.parts.name),
        }
    }
    /// Per-particle numbers of `label`, if present. Every value must be finite in f32 (the
    /// type of the fields they map to): a mapped label holds a CTF parameter, a pixel size,
    /// a coordinate, an angle, an origin or an index, and `nan`, `inf` or a number beyond
    /// the f32 range in one of them is an error naming the label and the line.
    pub(super) fn num(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        self.consume(label);
        let v = if let Some(c) = self.parts.column(label) {
            num_values(self.path, self.parts, label, c)?
        } else if let Some(c) = self.optics.and_then(|o| o.column(label)) {
            let o = self.optics.expect("optics block");
            let v = num_values(self.path, o, label, c)?;
            self.orow.iter().map(|&r| v[r]).collect()
        } else {
            return Ok(None);
        };
        if let Some(i) = v.iter().position(|&x| !(x as f32).is_finite()) {
            return Err(Error::field(
                self.path,
                format!("_{label}"),
                format!(
                    "{}: {} is not a finite number in the f32 range",
                    self.place(label, i),
                    v[i]
                ),
            ));
        }
        Ok(Some(v))
    }
    /// Per-particle numbers of a label that must be present.
    pub(super) fn need(&mut self, label: &str, why: &str) -> Result<Vec<f64>> {
        self.num(label)?.ok_or_else(|| {
            Error::field(
                self.path,
                format!("_{label}"),
                format!("missing column ({why})"),
            )
        })
    }
    /// Per-particle texts of `label`, if present (numbers as written by the STAR writer).
    pub(super) fn strs(&mut self, label: &str) -> Result<Option<Vec<String>>> {
        self.consume(label);
        let texts = |c: &StarColumn| (0..c.len()).map(|i| c.text(i)).collect::<Vec<_>>();
        if let Some(c) = self.parts.column(label) {
            return Ok(Some(texts(c)));
        }
        if let Some(o) = self.optics {
            if let Some(c) = o.column(label) {
                let v = texts(c);
                return Ok(Some(self.orow.iter().map(|&r| v[r].clone()).collect()));
            }
        }
        Ok(None)
    }
    /// Integer values of `label` that are ≥ `min`.
    pub(super) fn ints(&mut self, label: &str, min: i64, max: i64) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.num(label)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(v.len());
        for (i, &x) in v.iter().enumerate() {
            match as_int(x) {
                Some(k) if (min..=max).contains(&k) => out.push(k),
                _ => {
                    return Err(Error::field(
                        self.path,
                        format!("_{label}"),
                        format!(
                            "{}: {x} is not an integer in {min}..={max}",
                            self.place(label, i)
                        ),
                    ))
                }
            }
        }
        Ok(Some(out))
    }
}

/// The particle table of a STAR file: `data_particles`, else the first other table (not
/// `data_optics`) with `_rlnImageName`.
pub(super) fn find_particles<'a>(star: &'a StarFile, path: &Path) -> Result<&'a StarBlock> {
    if let Some(b) = star.block("particles") {
        if !b.is_loop {
            return Err(Error::field(
                path,
                "data_particles",
                "is a list of key-value pairs, not a table (loop_)",
            ));
        }
        return Ok(b);
    }
    star.blocks
        .iter()
        .find(|b| b.is_loop && b.name != "optics" && b.has("rlnImageName"))
        .ok_or_else(|| {
            Error::field(
                path,
                "_rlnImageName",
                "no particle table (data_particles, or a loop_ with _rlnImageName)",
            )
        })
}

/// Joins particles to `data_optics` rows by `_rlnOpticsGroup`.
fn optics_rows(path: &Path, parts: &StarBlock, optics: &StarBlock) -> Result<Vec<usize>> {
    let label = "rlnOpticsGroup";
    let oc = optics
        .column(label)
        .ok_or_else(|| Error::field(path, "_rlnOpticsGroup", "missing in data_optics"))?;
    let mut by_id = HashMap::new();
    for (row, &v) in num_values(path, optics, label, oc)?.iter().enumerate() {
        let id = as_int(v).ok_or_else(|| {
            Error::field(
                path,
                "_rlnOpticsGroup",
                format!(
                    "{} of data_optics: {v} is not an integer",
                    optics.row_place(row)
                ),
            )
        })?;
        if by_id.insert(id, row).is_some() {
            return Err(Error::field(
                path,
                "_rlnOpticsGroup",
                format!(
                    "{} of data_optics: group {id} is defined twice",
                    optics.row_place(row)
                ),
            ));
        }
    }
    match parts.column(label) {
        Some(pc) => num_values(path, parts, label, pc)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                as_int(v)
                    .and_then(|id| by_id.get(&id).copied())
                    .ok_or_else(|| {
                        Error::field(
                            path,
                            "_rlnOpticsGroup",
                            format!(
                                "{} of data_{}: optics group {v} is not defined in data_optics",
                                parts.row_place(i),
                                parts.name
                            ),
                        )
                    })
            })
            .collect(),
        None if optics.nrows() == 1 => Ok(vec![0; parts.nrows()]),
        None => Err(Error::field(
            path,
            "_rlnOpticsGroup",
            format!(
                "missing in data_{} (needed to join data_optics, which has {} groups)",
                parts.name,
                optics.nrows()
            ),
        )),
    }
}
