//! The in-memory particle metadata table: one row per particle, columns named after
//! CryoSPARC's fields (`ctf/df1_A`, `alignments2D/class`, ...). Columns are typed and may be
//! several values wide (`alignments2D/shift` is 2 wide). Images are not held here: a table
//! is small (tens of bytes per particle) and the images stream from the dataset file.

use std::collections::BTreeMap;

/// The values of one column, row-major (`width` values per row).
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Str(Vec<String>),
}

impl ColumnData {
    /// Number of stored values (rows × width).
    pub fn len(&self) -> usize {
        match self {
            ColumnData::F32(v) => v.len(),
            ColumnData::F64(v) => v.len(),
            ColumnData::I32(v) => v.len(),
            ColumnData::U32(v) => v.len(),
            ColumnData::U64(v) => v.len(),
            ColumnData::Str(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Name of the element type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ColumnData::F32(_) => "f32",
            ColumnData::F64(_) => "f64",
            ColumnData::I32(_) => "i32",
            ColumnData::U32(_) => "u32",
            ColumnData::U64(_) => "u64",
            ColumnData::Str(_) => "string",
        }
    }
    /// Values of rows `rows` (each `width` wide), in that order.
    fn take(&self, rows: &[usize], width: usize) -> ColumnData {
        fn pick<T: Clone>(v: &[T], rows: &[usize], w: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(rows.len() * w);
            for &r in rows {
                out.extend_from_slice(&v[r * w..(r + 1) * w]);
            }
            out
        }
        match self {
            ColumnData::F32(v) => ColumnData::F32(pick(v, rows, width)),
            ColumnData::F64(v) => ColumnData::F64(pick(v, rows, width)),
            ColumnData::I32(v) => ColumnData::I32(pick(v, rows, width)),
            ColumnData::U32(v) => ColumnData::U32(pick(v, rows, width)),
            ColumnData::U64(v) => ColumnData::U64(pick(v, rows, width)),
            ColumnData::Str(v) => ColumnData::Str(pick(v, rows, width)),
        }
    }
    /// Appends `other` (same type) to `self`; false on a type mismatch.
    fn append(&mut self, other: &ColumnData) -> bool {
        match (self, other) {
            (ColumnData::F32(a), ColumnData::F32(b)) => a.extend_from_slice(b),
            (ColumnData::F64(a), ColumnData::F64(b)) => a.extend_from_slice(b),
            (ColumnData::I32(a), ColumnData::I32(b)) => a.extend_from_slice(b),
            (ColumnData::U32(a), ColumnData::U32(b)) => a.extend_from_slice(b),
            (ColumnData::U64(a), ColumnData::U64(b)) => a.extend_from_slice(b),
            (ColumnData::Str(a), ColumnData::Str(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }
    /// The values as f64 (numeric columns only).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            ColumnData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            ColumnData::F64(v) => v.clone(),
            ColumnData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            ColumnData::U32(v) => v.iter().map(|&x| x as f64).collect(),
            ColumnData::U64(v) => v.iter().map(|&x| x as f64).collect(),
            ColumnData::Str(_) => return None,
        })
    }
}

/// One named column: its values and how many values make one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub data: ColumnData,
    pub width: usize,
}

impl Column {
    pub fn new(data: ColumnData, width: usize) -> Self {
        Column { data, width }
    }
    /// A one-value-per-row column.
    pub fn scalar(data: ColumnData) -> Self {
        Column { data, width: 1 }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }
}

/// Per-particle metadata: a stable `uid` per row and named columns of equal row count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParticleTable {
    uid: Vec<u64>,
    columns: BTreeMap<String, Column>,
}

impl ParticleTable {
    /// A table of `uid.len()` rows and no columns.
    pub fn new(uid: Vec<u64>) -> Self {
        ParticleTable {
            uid,
            columns: BTreeMap::new(),
        }
    }
    /// Number of particles.
    pub fn len(&self) -> usize {
        self.uid.len()
    }
    pub fn is_empty(&self) -> bool {
        self.uid.is_empty()
    }
    /// The stable per-particle identifiers.
    pub fn uid(&self) -> &[u64] {
        &self.uid
    }
    /// Replaces the uids (same number of rows), e.g. with ones derived from image references.
    pub fn set_uids(&mut self, uid: Vec<u64>) -> std::result::Result<(), String> {
        if uid.len() != self.uid.len() {
            return Err(format!("{} uids for {} rows", uid.len(), self.uid.len()));
        }
        self.uid = uid;
        Ok(())
    }
    /// Adds or replaces a column. Panics only on a programming error (row count mismatch),
    /// which callers avoid by construction; use [`ParticleTable::try_set`] for user data.
    pub fn set(&mut self, name: &str, col: Column) {
        if let Err(e) = self.try_set(name, col) {
            panic!("{e}");
        }
    }
    /// Adds or replaces a column, checking its row count.
    pub fn try_set(&mut self, name: &str, col: Column) -> std::result::Result<(), String> {
        if col.width == 0 || col.data.len() != col.width * self.len() {
            return Err(format!(
                "column {name}: {} values of width {} do not make {} rows",
                col.data.len(),
                col.width,
                self.len()
            ));
        }
        self.columns.insert(name.to_string(), col);
        Ok(())
    }
    /// Shorthand for a scalar f32 column.
    pub fn set_f32(&mut self, name: &str, v: Vec<f32>) {
        self.set(name, Column::scalar(ColumnData::F32(v)));
    }
    /// Shorthand for a scalar u32 column.
    pub fn set_u32(&mut self, name: &str, v: Vec<u32>) {
        self.set(name, Column::scalar(ColumnData::U32(v)));
    }
    /// Shorthand for a scalar string column.
    pub fn set_str(&mut self, name: &str, v: Vec<String>) {
        self.set(name, Column::scalar(ColumnData::Str(v)));
    }
    pub fn remove(&mut self, name: &str) -> Option<Column> {
        self.columns.remove(name)
    }
    pub fn get(&self, name: &str) -> Option<&Column> {
        self.columns.get(name)
    }
    pub fn has(&self, name: &str) -> bool {
        self.columns.contains_key(name)
    }
    /// Column names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.keys().map(|s| s.as_str())
    }
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Column)> {
        self.columns.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// The values of an f32 column (any width), if present with that type.
    pub fn f32(&self, name: &str) -> Option<&[f32]> {
        match self.columns.get(name).map(|c| &c.data) {
            Some(ColumnData::F32(v)) => Some(v),
            _ => None,
        }
    }
    pub fn u32(&self, name: &str) -> Option<&[u32]> {
        match self.columns.get(name).map(|c| &c.data) {
            Some(ColumnData::U32(v)) => Some(v),
            _ => None,
        }
    }
    pub fn u64(&self, name: &str) -> Option<&[u64]> {
        match self.columns.get(name).map(|c| &c.data) {
            Some(ColumnData::U64(v)) => Some(v),
            _ => None,
        }
    }
    pub fn str(&self, name: &str) -> Option<&[String]> {
        match self.columns.get(name).map(|c| &c.data) {
            Some(ColumnData::Str(v)) => Some(v),
            _ => None,
        }
    }
    /// The rows `rows` (in that order) as a new table, uids included.
    pub fn select(&self, rows: &[usize]) -> ParticleTable {
        let uid = rows.iter().map(|&r| self.uid[r]).collect();
        let columns = self
            .columns
            .iter()
            .map(|(k, c)| (k.clone(), Column::new(c.data.take(rows, c.width), c.width)))
            .collect();
        ParticleTable { uid, columns }
    }
    /// Rows `start..end` as a new table.
    pub fn slice(&self, start: usize, end: usize) -> ParticleTable {
        let rows: Vec<usize> = (start..end).collect();
        self.select(&rows)
    }
    /// Appends the rows of `other`, which must have exactly the same columns (name, type,
    /// width). Used to concatenate per-chunk or per-rank pieces.
    pub fn append(&mut self, other: &ParticleTable) -> std::result::Result<(), String> {
        if self.columns.is_empty() && self.uid.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        if self.columns.len() != other.columns.len() {
            return Err("tables to append have different columns".into());
        }
        for (k, c) in &other.columns {
            let mine = self
                .columns
                .get(k)
                .ok_or_else(|| format!("column {k} missing from the table appended to"))?;
            if mine.width != c.width {
                return Err(format!("column {k}: width {} vs {}", mine.width, c.width));
            }
        }
        for (k, c) in &other.columns {
            let mine = self.columns.get_mut(k).expect("checked above");
            if !mine.data.append(&c.data) {
                return Err(format!(
                    "column {k}: type {} vs {}",
                    mine.data.type_name(),
                    c.data.type_name()
                ));
            }
        }
        self.uid.extend_from_slice(&other.uid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ParticleTable {
        let mut t = ParticleTable::new(vec![10, 11, 12]);
        t.set_f32("ctf/df1_A", vec![1.0, 2.0, 3.0]);
        t.set(
            "alignments2D/shift",
            Column::new(ColumnData::F32(vec![0., 1., 2., 3., 4., 5.]), 2),
        );
        t.set_str("blob/path", vec!["a".into(), "b".into(), "c".into()]);
        t
    }

    #[test]
    fn select_keeps_rows_and_widths() {
        let s = sample().select(&[2, 0]);
        assert_eq!(s.uid(), &[12, 10]);
        assert_eq!(s.f32("ctf/df1_A").unwrap(), &[3.0, 1.0]);
        assert_eq!(s.f32("alignments2D/shift").unwrap(), &[4., 5., 0., 1.]);
        assert_eq!(
            s.str("blob/path").unwrap(),
            &["c".to_string(), "a".to_string()]
        );
    }

    #[test]
    fn append_round_trips_slices() {
        let t = sample();
        let mut a = t.slice(0, 1);
        a.append(&t.slice(1, 3)).unwrap();
        assert_eq!(a, t);
    }

    #[test]
    fn try_set_rejects_wrong_row_count() {
        let mut t = sample();
        let err = t
            .try_set("x", Column::scalar(ColumnData::F32(vec![1.0])))
            .unwrap_err();
        assert!(err.contains("do not make 3 rows"), "{err}");
    }
}
