//! Per-particle results of the final pass, and the rank-local spill file they go through
//! on their way to `particles.h5`: the engine hands each rank's rows over in local order,
//! they are appended to `<staging>/.results.rankNNNN.bin` and read back block by block
//! when the rank writes its rows of the output, so no rank ever holds every row.
//!
//! Record layout (little endian, `(7 + K)·4` bytes): class u32, class_posterior f32,
//! class_ess f32, psi_rad f32, shift x px f32, shift y px f32, log_likelihood f32, then K
//! class probabilities f32.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{Column, ColumnData, ParticleTable};
use crate::error::{Error, Result};

/// One particle's E-step result.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    /// Probability of each class.
    pub probs: Vec<f32>,
    /// Best class.
    pub class: u32,
    /// Its probability.
    pub prob: f32,
    /// Effective number of classes, 1/Σp².
    pub ess: f32,
    /// In-plane angle of the best pose, radians.
    pub psi: f32,
    /// Shift that centres the particle, input pixels, (x, y).
    pub shift: [f32; 2],
    /// ln p(X_i | model): the log of the mean over classes and poses of
    /// exp(−Σ_f |X_i ρ_t − C_i T_kr|² / σ²(f)), without the Gaussian normalisation (a
    /// constant of the run); RELION's `_rlnLogLikeliContribution`.
    pub log_likelihood: f32,
}

impl ResultRow {
    /// Bytes of one record with `k` classes.
    pub fn record_bytes(k: usize) -> usize {
        (7 + k) * 4
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.class.to_le_bytes());
        for v in [
            self.prob,
            self.ess,
            self.psi,
            self.shift[0],
            self.shift[1],
            self.log_likelihood,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.probs {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8], k: usize) -> ResultRow {
        let f = |i: usize| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        ResultRow {
            class: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            prob: f(1),
            ess: f(2),
            psi: f(3),
            shift: [f(4), f(5)],
            log_likelihood: f(6),
            probs: (0..k).map(|j| f(7 + j)).collect(),
        }
    }
}

/// Sets the `alignments2D/*` columns of `table` (one row per result, same order).
pub fn set_columns(table: &mut ParticleTable, rows: &[ResultRow], k: usize, psize_a: f64) {
    let n = rows.len();
    table.set_u32("alignments2D/class", rows.iter().map(|r| r.class).collect());
    table.set_f32(
        "alignments2D/class_posterior",
        rows.iter().map(|r| r.prob).collect(),
    );
    table.set_f32(
        "alignments2D/class_ess",
        rows.iter().map(|r| r.ess).collect(),
    );
    table.set_f32("alignments2D/pose", rows.iter().map(|r| r.psi).collect());
    table.set(
        "alignments2D/shift",
        Column::new(
            ColumnData::F32(rows.iter().flat_map(|r| r.shift).collect()),
            2,
        ),
    );
    table.set_f32(
        "alignments2D/log_likelihood",
        rows.iter().map(|r| r.log_likelihood).collect(),
    );
    table.set_f32("alignments2D/psize_A", vec![psize_a as f32; n]);
    table.set(
        "alignments2D/class_probs",
        Column::new(
            ColumnData::F32(rows.iter().flat_map(|r| r.probs.iter().copied()).collect()),
            k,
        ),
    );
}

/// The spill file of rank `rank` in the staging folder.
pub fn spill_path(staging: &Path, rank: usize) -> PathBuf {
    staging.join(format!(".results.rank{rank:04}.bin"))
}

/// Appends records to a new spill file.
pub struct SpillWriter {
    path: PathBuf,
    out: BufWriter<File>,
    k: usize,
    buf: Vec<u8>,
    rows: usize,
}

impl SpillWriter {
    pub fn create(path: &Path, k: usize) -> Result<SpillWriter> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(SpillWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, f),
            k,
            buf: Vec::with_capacity(ResultRow::record_bytes(k)),
            rows: 0,
        })
    }

    pub fn push(&mut self, row: &ResultRow) -> Result<()> {
        if row.probs.len() != self.k {
            return Err(Error::file(
                &self.path,
                format!(
                    "a result with {} class probabilities, expected {}",
                    row.probs.len(),
                    self.k
                ),
            ));
        }
        self.buf.clear();
        row.encode(&mut self.buf);
        self.out
            .write_all(&self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }

    /// Starts over: the rows written so far are dropped (a new pass over the particles).
    pub fn restart(&mut self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        let f = self.out.get_mut();
        f.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows = 0;
        Ok(())
    }

    /// Flushes and closes; returns the number of rows.
    pub fn finish(mut self) -> Result<usize> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.rows)
    }
}

/// Reads a spill file back in order.
pub struct SpillReader {
    path: PathBuf,
    input: BufReader<File>,
    k: usize,
}

impl SpillReader {
    pub fn open(path: &Path, k: usize) -> Result<SpillReader> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(SpillReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, f),
            k,
        })
    }

    /// The next `n` rows (an error if fewer are left).
    pub fn read(&mut self, n: usize) -> Result<Vec<ResultRow>> {
        let rec = ResultRow::record_bytes(self.k);
        let mut bytes = vec![0u8; n * rec];
        self.input
            .read_exact(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes
            .chunks_exact(rec)
            .map(|b| ResultRow::decode(b, self.k))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u32) -> ResultRow {
        ResultRow {
            probs: vec![0.25 * i as f32, 1.0 - 0.25 * i as f32, f32::MIN_POSITIVE],
            class: i,
            prob: 0.5 + i as f32,
            ess: 1.5,
            psi: -3.1,
            shift: [0.5, -2.25],
            log_likelihood: -1234.5 - i as f32,
        }
    }

    #[test]
    fn rows_round_trip_through_the_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = spill_path(dir.path(), 3);
        assert!(p.ends_with(".results.rank0003.bin"));
        let mut w = SpillWriter::create(&p, 3).unwrap();
        for i in 0..5 {
            w.push(&row(i)).unwrap();
        }
        assert!(w
            .push(&ResultRow {
                probs: vec![1.0],
                ..row(0)
            })
            .is_err());
        w.restart().unwrap();
        for i in 0..5 {
            w.push(&row(i)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 5);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 5 * 40);
        let mut r = SpillReader::open(&p, 3).unwrap();
        assert_eq!(r.read(2).unwrap(), vec![row(0), row(1)]);
        assert_eq!(r.read(3).unwrap(), vec![row(2), row(3), row(4)]);
        let e = r.read(1).unwrap_err().to_string();
        assert!(e.contains(".results.rank0003.bin"), "{e}");
    }

    #[test]
    fn columns_hold_every_field() {
        let mut t = ParticleTable::new(vec![7, 8]);
        set_columns(&mut t, &[row(1), row(2)], 3, 1.5);
        assert_eq!(t.u32("alignments2D/class").unwrap(), &[1, 2]);
        assert_eq!(
            t.f32("alignments2D/shift").unwrap(),
            &[0.5, -2.25, 0.5, -2.25]
        );
        assert_eq!(t.get("alignments2D/class_probs").unwrap().width, 3);
        assert_eq!(t.f32("alignments2D/psize_A").unwrap(), &[1.5, 1.5]);
        assert_eq!(
            t.f32("alignments2D/log_likelihood").unwrap(),
            &[-1235.5, -1236.5]
        );
    }
}
