//! STAR files as RELION reads and writes them: data blocks (`data_name`) holding either one
//! table (`loop_`, labels `_rlnX #n`, one row per line) or key-value pairs (`_rlnX value`).
//! This module knows the syntax only; what the labels mean is in `relion.rs`.
//!
//! Reading: comments (`#` at the start of a token) and blank lines are skipped, fields are
//! separated by any run of spaces and tabs, values may be quoted with `'` or `"` (a quote
//! closes only when followed by whitespace or the end of the line). Each column is stored
//! column-wise and typed once: [`StarColumn::Num`] when every value in it is an unquoted
//! number, else [`StarColumn::Str`] (values as written). A loop is read in one pass that
//! types each column as it goes (a column that turns out to hold text after k numbers has
//! its first k values re-read as text), so a million-row file costs its text plus its
//! columns, never a string per cell of a numeric column. Errors name the file and the line; no row
//! is ever dropped (a row with the wrong number of fields is an error, and a blank line
//! inside a loop does not end it). A block holds one table: a second `loop_`, or key-value
//! pairs mixed with a loop, are errors (RELION writes neither).
//!
//! Writing (RELION 3.1 layout): `# version 30001`, `data_name`, `loop_`, `_label #n`, rows
//! with values right-aligned in 12 characters. Numbers are written in the shortest form that
//! parses back to the same f64 (`300`, `1.06`, `1.5e-7`), so values round-trip exactly.
//! Strings are quoted when they are empty or contain whitespace, or would otherwise read as
//! a comment, label or keyword. Files are written to `<path>.tmp` and renamed.
//!
//! Labels are stored without their leading underscore (`rlnImageName`); lookups accept
//! either form.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The values of one column.
#[derive(Clone, Debug, PartialEq)]
pub enum StarColumn {
    Num(Vec<f64>),
    Str(Vec<String>),
}

impl StarColumn {
    pub fn len(&self) -> usize {
        match self {
            StarColumn::Num(v) => v.len(),
            StarColumn::Str(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_num(&self) -> Option<&[f64]> {
        match self {
            StarColumn::Num(v) => Some(v),
            StarColumn::Str(_) => None,
        }
    }
    pub fn as_str(&self) -> Option<&[String]> {
        match self {
            StarColumn::Str(v) => Some(v),
            StarColumn::Num(_) => None,
        }
    }
    /// Value `i` as text (numbers formatted as the writer writes them).
    pub fn text(&self, i: usize) -> String {
        match self {
            StarColumn::Num(v) => {
                let mut s = String::new();
                format_num(v[i], &mut s);
                s
            }
            StarColumn::Str(v) => v[i].clone(),
        }
    }
}

/// One data block: a table (`loop_`) or key-value pairs (stored as a one-row table).
#[derive(Clone, Debug, PartialEq)]
pub struct StarBlock {
    /// Block name without `data_` (`particles`, `optics`, or empty).
    pub name: String,
    /// True for a `loop_` table, false for key-value pairs.
    pub is_loop: bool,
    labels: Vec<String>,
    /// Position of each label in `labels` (lookups stay O(1) in blocks of many labels).
    index: HashMap<String, usize>,
    columns: Vec<StarColumn>,
    nrows: usize,
    /// 1-based line of each row in the file it was read from (empty when built in memory).
    row_lines: Vec<usize>,
}

/// `label` without a leading underscore.
fn bare(label: &str) -> &str {
    label.strip_prefix('_').unwrap_or(label)
}

impl StarBlock {
    /// An empty table named `name` (without `data_`).
    pub fn new_loop(name: &str) -> StarBlock {
        StarBlock {
            name: name.to_string(),
            is_loop: true,
            labels: Vec::new(),
            index: HashMap::new(),
            columns: Vec::new(),
            nrows: 0,
            row_lines: Vec::new(),
        }
    }
    /// An empty key-value block; each pushed column must hold exactly one value.
    pub fn new_pairs(name: &str) -> StarBlock {
        StarBlock {
            is_loop: false,
            nrows: 1,
            ..StarBlock::new_loop(name)
        }
    }
    /// Number of rows (1 for a key-value block).
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Labels without their leading underscore, in file order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
    /// (label, column) pairs in file order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &StarColumn)> {
        self.labels
            .iter()
            .map(|s| s.as_str())
            .zip(self.columns.iter())
    }
    /// The column labelled `label` (`_rlnX` or `rlnX`).
    pub fn column(&self, label: &str) -> Option<&StarColumn> {
        self.index.get(bare(label)).map(|&i| &self.columns[i])
    }
    pub fn has(&self, label: &str) -> bool {
        self.column(label).is_some()
    }
    /// Adds a column at the end, or replaces the one with the same label. The first column of
    /// an empty table sets its row count; later ones must match it.
    pub fn set(&mut self, label: &str, col: StarColumn) -> std::result::Result<(), String> {
        let l = bare(label);
        if l.is_empty() || l.chars().any(char::is_whitespace) {
            return Err(format!("invalid STAR label {label:?}"));
        }
        if self.is_loop && self.columns.is_empty() {
            self.nrows = col.len();
        }
        if col.len() != self.nrows {
            return Err(format!(
                "column _{l} has {} values but data_{} has {} rows",
                col.len(),
                self.name,
                self.nrows
            ));
        }
        match self.index.get(l) {
            Some(&i) => self.columns[i] = col,
            None => {
                self.index.insert(l.to_string(), self.labels.len());
                self.labels.push(l.to_string());
                self.columns.push(col);
            }
        }
        Ok(())
    }
    /// Removes and returns a column.
    pub fn remove(&mut self, label: &str) -> Option<StarColumn> {
        let i = self.index.remove(bare(label))?;
        self.labels.remove(i);
        for (k, l) in self.labels.iter().enumerate().skip(i) {
            self.index.insert(l.clone(), k);
        }
        Some(self.columns.remove(i))
    }
    /// 1-based line number of row `row` in the file this block was read from.
    pub fn row_line(&self, row: usize) -> Option<usize> {
        self.row_lines.get(row).copied()
    }
    /// "line N" for error messages (or "row N", 1-based, when built in memory).
    pub fn row_place(&self, row: usize) -> String {
        match self.row_line(row) {
            Some(l) => format!("line {l}"),
            None => format!("row {}", row + 1),
        }
    }
}

/// A whole STAR file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StarFile {
    pub blocks: Vec<StarBlock>,
}

impl StarFile {
    /// The first block named `name` (with or without `data_`).
    pub fn block(&self, name: &str) -> Option<&StarBlock> {
        let n = name.strip_prefix("data_").unwrap_or(name);
        self.blocks.iter().find(|b| b.name == n)
    }
    pub fn block_mut(&mut self, name: &str) -> Option<&mut StarBlock> {
        let n = name.strip_prefix("data_").unwrap_or(name);
        self.blocks.iter_mut().find(|b| b.name == n)
    }
}

/// Reads and parses a STAR file.
pub fn read_star(path: impl AsRef<Path>) -> Result<StarFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        super::printable_error(not_utf8(path, e.as_bytes(), e.utf8_error().valid_up_to()))
    })?;
    parse_star(&text, path)
}

/// The error for STAR bytes that are not UTF-8 at byte `at`: names the line and, when the
/// bad bytes sit in a value of a table, the column's label (`_rlnImageName`).
fn not_utf8(path: &Path, bytes: &[u8], at: usize) -> Error {
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let msg = format!("line {line}: not UTF-8 text (STAR files are UTF-8)");
    // Parse the text with the bad bytes replaced (U+FFFD) to find the column they are in.
    let lossy = String::from_utf8_lossy(bytes);
    let label = parse_star(&lossy, path).ok().and_then(|star| {
        star.blocks.iter().find_map(|b| {
            let row = b.row_lines.binary_search(&line).ok()?;
            b.columns()
                .find(|(_, c)| matches!(c, StarColumn::Str(v) if v[row].contains('\u{fffd}')))
                .map(|(l, _)| format!("_{l}"))
        })
    });
    match label {
        Some(l) => Error::field(path, l, msg),
        None => Error::file(path, msg),
    }
}

/// One line of `text` (without its line break) and the byte offset where the next starts.
struct Line<'a> {
    text: &'a str,
    next: usize,
}

fn line_at(text: &str, start: usize) -> Line<'_> {
    let rest = &text[start..];
    let (body, next) = match rest.find('\n') {
        Some(i) => (&rest[..i], start + i + 1),
        None => (rest, text.len()),
    };
    Line {
        text: body.strip_suffix('\r').unwrap_or(body),
        next,
    }
}

/// A token and whether it was quoted.
type Tok<'a> = (&'a str, bool);

/// Splits one line into tokens, stopping at a comment.
fn tokenize<'a>(line: &'a str, out: &mut Vec<Tok<'a>>) -> std::result::Result<(), String> {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' || c == b'\t' {
            i += 1;
            continue;
        }
        if c == b'#' {
            break;
        }
        if c == b'\'' || c == b'"' {
            // A quote closes only when followed by whitespace or the end of the line.
            let mut j = i + 1;
            loop {
                if j >= b.len() {
                    return Err(format!("unterminated {} quote", c as char));
                }
                if b[j] == c && (j + 1 == b.len() || b[j + 1] == b' ' || b[j + 1] == b'\t') {
                    break;
                }
                j += 1;
            }
            out.push((&line[i + 1..j], true));
            i = j + 1;
        } else {
            let mut j = i;
            while j < b.len() && b[j] != b' ' && b[j] != b'\t' {
                j += 1;
            }
            out.push((&line[i..j], false));
            i = j;
        }
    }
    Ok(())
}

/// The value of an unquoted numeric token (decimal, exponent, inf, nan).
pub(crate) fn parse_num(tok: &str) -> Option<f64> {
    let first = *tok.as_bytes().first()?;
    let plausible = first.is_ascii_digit()
        || first == b'+'
        || first == b'-'
        || first == b'.'
        || matches!(first, b'n' | b'N' | b'i' | b'I');
    if plausible {
        tok.parse::<f64>().ok()
    } else {
        None
    }
}

/// True for a line that starts a new structural element (ends a loop body).
fn is_structural(trimmed: &str) -> bool {
    trimmed.starts_with('_') || starts_keyword(trimmed, "data_") || starts_keyword(trimmed, "loop_")
}

fn starts_keyword(s: &str, kw: &str) -> bool {
    s.len() >= kw.len() && s.as_bytes()[..kw.len()].eq_ignore_ascii_case(kw.as_bytes())
}

/// A block being read.
struct Pending {
    block: StarBlock,
    has_content: bool,
    /// Labels of a `loop_` whose rows have not started.
    loop_labels: Option<Vec<(String, usize)>>,
    /// The labels of `loop_labels`, for the duplicate check.
    loop_seen: HashSet<String>,
}

/// Parses STAR text; `path` is used in error messages only.
pub fn parse_star(text: &str, path: &Path) -> Result<StarFile> {
    parse_star_text(text, path).map_err(super::printable_error)
}

fn parse_star_text(text: &str, path: &Path) -> Result<StarFile> {
    // A UTF-8 byte order mark (some editors add one) is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |line: usize, msg: String| Error::file(path, format!("line {line}: {msg}"));
    let mut blocks = Vec::new();
    let mut cur: Option<Pending> = None;
    let mut toks: Vec<Tok> = Vec::new();
    let (mut pos, mut no) = (0usize, 0usize);

    // Closes a loop header with no rows as an empty table.
    fn close_empty_loop(p: &mut Pending) -> std::result::Result<(), String> {
        if let Some(labels) = p.loop_labels.take() {
            for (l, _) in labels {
                p.block.set(&l, StarColumn::Num(Vec::new()))?;
            }
        }
        Ok(())
    }

    while pos < text.len() {
        no += 1;
        let line = line_at(text, pos);
        let start = pos;
        pos = line.next;
        let trimmed = line.text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        tokenize(line.text, &mut toks).map_err(|m| err(no, m))?;
        if toks.is_empty() {
            continue;
        }
        let first = toks[0].0;
        if !toks[0].1 && starts_keyword(first, "data_") {
            if let Some(mut p) = cur.take() {
                close_empty_loop(&mut p).map_err(|m| err(no, m))?;
                blocks.push(p.block);
            }
            if toks.len() > 1 {
                return Err(err(no, format!("unexpected text after {first}")));
            }
            cur = Some(Pending {
                block: StarBlock::new_loop(&first[5..]),
                has_content: false,
                loop_labels: None,
                loop_seen: HashSet::new(),
            });
            continue;
        }
        let Some(p) = cur.as_mut() else {
            return Err(err(
                no,
                format!("{first:?} outside a data block (no data_ line before it)"),
            ));
        };
        if !toks[0].1 && starts_keyword(first, "loop_") {
            if p.has_content || p.loop_labels.is_some() {
                return Err(err(
                    no,
                    format!("second table in data_{}: one loop_ or one list of key-value pairs per block", p.block.name),
                ));
            }
            if toks.len() > 1 {
                return Err(err(no, "unexpected text after loop_".into()));
            }
            p.loop_labels = Some(Vec::new());
            continue;
        }
        if !toks[0].1 && first.starts_with('_') {
            let label = &first[1..];
            if label.is_empty() {
                return Err(err(no, "empty label \"_\"".into()));
            }
            if let Some(labels) = p.loop_labels.as_mut() {
                // A label of the loop header; anything after it must be a comment ("#3").
                if toks.len() > 1 {
                    return Err(err(
                        no,
                        format!("unexpected value {:?} after loop label {first}", toks[1].0),
                    ));
                }
                if !p.loop_seen.insert(label.to_string()) {
                    return Err(err(
                        no,
                        format!("label {first} appears twice in data_{}", p.block.name),
                    ));
                }
                labels.push((label.to_string(), no));
                continue;
            }
            // A key-value pair.
            if p.block.is_loop && p.has_content {
                return Err(err(
                    no,
                    format!(
                        "key-value item {first} after the loop of data_{} (label without loop_?)",
                        p.block.name
                    ),
                ));
            }
            if toks.len() != 2 {
                let what = if toks.len() < 2 {
                    "has no value"
                } else {
                    "has more than one value"
                };
                return Err(err(no, format!("key-value item {first} {what}")));
            }
            if !p.has_content {
                p.block = StarBlock {
                    row_lines: vec![no],
                    ..StarBlock::new_pairs(&p.block.name)
                };
                p.has_content = true;
            }
            if p.block.has(label) {
                return Err(err(
                    no,
                    format!("label {first} appears twice in data_{}", p.block.name),
                ));
            }
            let (v, quoted) = toks[1];
            let col = match (quoted, parse_num(v)) {
                (false, Some(x)) => StarColumn::Num(vec![x]),
                _ => StarColumn::Str(vec![v.to_string()]),
            };
            p.block.set(label, col).map_err(|m| err(no, m))?;
            continue;
        }
        // A data row.
        match p.loop_labels.take() {
            Some(labels) if !labels.is_empty() => {
                let (block, next_pos, next_no) =
                    read_loop(text, path, start, no, &p.block.name, &labels)?;
                p.block = block;
                p.has_content = true;
                pos = next_pos;
                no = next_no;
            }
            Some(_) => return Err(err(no, "loop_ without labels before its rows".into())),
            None => {
                let what = if p.block.is_loop && p.has_content {
                    "after the loop's rows were interrupted by a label or keyword"
                } else {
                    "outside a loop (values need a loop_ and labels, or a _label before them)"
                };
                return Err(err(no, format!("unexpected value {first:?} {what}")));
            }
        }
    }
    if let Some(mut p) = cur.take() {
        close_empty_loop(&mut p).map_err(|m| err(no, m))?;
        blocks.push(p.block);
    }
    Ok(StarFile { blocks })
}

/// A column being read: numbers while every value so far is one, else text. A column that
/// turns to text at row k keeps `missing = k` and gets its first k texts in a second look
/// at those rows (rare: only mixed columns pay for it).
enum Building {
    Num(Vec<f64>),
    Str { vals: Vec<String>, missing: usize },
}

/// Reads the rows of a loop starting at byte `start` (line `no`) in one pass, typing each
/// column as it goes. Returns the table and the byte offset / line count where it ended.
fn read_loop(
    text: &str,
    path: &Path,
    start: usize,
    no: usize,
    block_name: &str,
    labels: &[(String, usize)],
) -> Result<(StarBlock, usize, usize)> {
    let ncol = labels.len();
    let mut cols: Vec<Building> = (0..ncol).map(|_| Building::Num(Vec::new())).collect();
    let mut row_lines = Vec::new();
    let mut toks: Vec<Tok> = Vec::new();
    let (mut pos, mut line_no) = (start, no - 1);
    let mut end = None;
    while pos < text.len() {
        let line = line_at(text, pos);
        let trimmed = line.text.trim_start();
        if is_structural(trimmed) {
            end = Some((pos, line_no));
            break;
        }
        line_no += 1;
        pos = line.next;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        tokenize(line.text, &mut toks)
            .map_err(|m| Error::file(path, format!("line {line_no}: {m}")))?;
        if toks.is_empty() {
            continue;
        }
        if toks.len() != ncol {
            return Err(Error::file(
                path,
                format!(
                    "line {line_no}: row has {} fields but data_{block_name} has {ncol} labels (lines {}-{})",
                    toks.len(),
                    labels[0].1,
                    labels[ncol - 1].1
                ),
            ));
        }
        let row = row_lines.len();
        for (col, &(t, quoted)) in cols.iter_mut().zip(toks.iter()) {
            match col {
                Building::Num(v) => match parse_num(t).filter(|_| !quoted) {
                    Some(x) => v.push(x),
                    None => {
                        *col = Building::Str {
                            vals: vec![t.to_string()],
                            missing: row,
                        };
                    }
                },
                Building::Str { vals, .. } => vals.push(t.to_string()),
            }
        }
        row_lines.push(line_no);
    }
    let end = end.unwrap_or((text.len(), line_no));
    let nrows = row_lines.len();
    // Texts of the rows read before a column turned out to hold text.
    let rescan = cols
        .iter()
        .map(|c| match c {
            Building::Str { missing, .. } => *missing,
            Building::Num(_) => 0,
        })
        .max()
        .unwrap_or(0);
    if rescan > 0 {
        let mut prefix: Vec<Vec<String>> = cols
            .iter()
            .map(|c| match c {
                Building::Str { missing, .. } => Vec::with_capacity(*missing),
                Building::Num(_) => Vec::new(),
            })
            .collect();
        let (mut p, mut done) = (start, 0);
        while done < rescan {
            let line = line_at(text, p);
            p = line.next;
            let trimmed = line.text.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            tokenize(line.text, &mut toks)
                .map_err(|m| Error::file(path, format!("line {}: {m}", row_lines[done])))?;
            if toks.is_empty() {
                continue;
            }
            for ((c, pre), &(t, _)) in cols.iter().zip(prefix.iter_mut()).zip(toks.iter()) {
                if let Building::Str { missing, .. } = c {
                    if done < *missing {
                        pre.push(t.to_string());
                    }
                }
            }
            done += 1;
        }
        for (c, pre) in cols.iter_mut().zip(prefix) {
            if let Building::Str { vals, missing } = c {
                if *missing > 0 {
                    let mut all = pre;
                    all.append(vals);
                    *vals = all;
                    *missing = 0;
                }
            }
        }
    }
    let mut block = StarBlock::new_loop(block_name);
    for ((label, _), col) in labels.iter().zip(cols) {
        let col = match col {
            Building::Num(v) => StarColumn::Num(v),
            Building::Str { vals, .. } => StarColumn::Str(vals),
        };
        debug_assert_eq!(col.len(), nrows);
        block.set(label, col).map_err(|m| Error::file(path, m))?;
    }
    block.row_lines = row_lines;
    Ok((block, end.0, end.1))
}

/// Formats `v` so that it parses back to the same f64 (and so that f64 values converted
/// from f32 through their shortest decimal form stay short).
fn format_num(v: f64, out: &mut String) {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() || (1e-5..1e16).contains(&a) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

/// Whether a string value must be quoted to read back as itself.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars().any(char::is_whitespace)
        || s.starts_with(['#', '_', '\'', '"'])
        || starts_keyword(s, "data_")
        || starts_keyword(s, "loop_")
}

/// Whether quote `q` inside `s` would close a quoted string early (is followed by a space,
/// a tab or the end).
fn closes(s: &str, q: char) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == q as u8 && (i + 1 == b.len() || b[i + 1] == b' ' || b[i + 1] == b'\t'))
}

fn push_str_value(s: &str, out: &mut String) {
    if needs_quotes(s) {
        let q = if closes(s, '"') { '\'' } else { '"' };
        out.push(q);
        out.push_str(s);
        out.push(q);
    } else {
        out.push_str(s);
    }
}

/// Rows formatted per parallel task, and tasks per batch held in memory before writing.
const ROWS_PER_CHUNK: usize = 4096;
const CHUNKS_PER_BATCH: usize = 64;

/// Rows `r0..r1` of a table as text, values right-aligned in 12 characters.
fn format_rows(b: &StarBlock, r0: usize, r1: usize) -> String {
    let mut out = String::with_capacity((r1 - r0) * b.columns.len() * 13);
    let mut val = String::new();
    for r in r0..r1 {
        for c in &b.columns {
            val.clear();
            match c {
                StarColumn::Num(v) => format_num(v[r], &mut val),
                StarColumn::Str(v) => push_str_value(&v[r], &mut val),
            }
            let _ = write!(out, "{val:>12} ");
        }
        out.push('\n');
    }
    out
}

/// Writes `star` in RELION 3.1 layout to any writer.
pub fn write_star_to<W: Write>(w: &mut W, star: &StarFile) -> std::io::Result<()> {
    let mut val = String::new();
    for b in &star.blocks {
        write!(w, "\n# version 30001\n\ndata_{}\n\n", b.name)?;
        if b.is_loop {
            writeln!(w, "loop_ ")?;
            for (i, l) in b.labels.iter().enumerate() {
                writeln!(w, "_{l} #{} ", i + 1)?;
            }
            // Rows are formatted in parallel, a batch of chunks at a time, and written in order.
            let nchunks = b.nrows.div_ceil(ROWS_PER_CHUNK);
            for first in (0..nchunks).step_by(CHUNKS_PER_BATCH) {
                let last = (first + CHUNKS_PER_BATCH).min(nchunks);
                let texts: Vec<String> = (first..last)
                    .into_par_iter()
                    .map(|c| {
                        format_rows(
                            b,
                            c * ROWS_PER_CHUNK,
                            ((c + 1) * ROWS_PER_CHUNK).min(b.nrows),
                        )
                    })
                    .collect();
                for t in texts {
                    w.write_all(t.as_bytes())?;
                }
            }
            writeln!(w, " ")?;
        } else {
            for (l, c) in b.labels.iter().zip(&b.columns) {
                val.clear();
                match c {
                    StarColumn::Num(v) => format_num(v[0], &mut val),
                    StarColumn::Str(v) => push_str_value(&v[0], &mut val),
                }
                writeln!(w, "_{l:<40} {val}")?;
            }
            writeln!(w, " ")?;
        }
    }
    Ok(())
}

/// Writes `star` to `path` atomically (`<path>.tmp`, then rename).
pub fn write_star(path: impl AsRef<Path>, star: &StarFile) -> Result<()> {
    let path = path.as_ref();
    for b in &star.blocks {
        if b.name.chars().any(char::is_whitespace) {
            return Err(Error::file(
                path,
                format!("block name {:?} contains whitespace", b.name),
            ));
        }
        for (l, c) in b.labels.iter().zip(&b.columns) {
            if let StarColumn::Str(v) = c {
                let bad = |s: &&String| {
                    s.contains(['\n', '\r'])
                        || (needs_quotes(s) && closes(s, '"') && closes(s, '\''))
                };
                if let Some(s) = v.iter().find(bad) {
                    return Err(Error::field(
                        path,
                        format!("_{l}"),
                        format!("value {s:?} cannot be written to a STAR file (a line break, or both quote kinds before whitespace)"),
                    ));
                }
            }
        }
    }
    let tmp = {
        let mut s = path.as_os_str().to_os_string();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let result = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        write_star_to(&mut w, star)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StarFile> {
        parse_star(text, Path::new("test.star"))
    }

    const RELION31: &str = "
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnImagePixelSize #4
opticsGroup1            1   300.000000     1.060000
\"group two\"     2   200     0.5

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnClassNumber #3
000001@Particles/a.mrcs\t 10000.5   1 # trailing comment
000002@Particles/a'.mrcs   -2.5e+03\t\t2

'000003@Particles/b c.mrcs' 1e-7 3
";

    #[test]
    fn reads_relion31_blocks_loops_and_types() {
        let s = parse(RELION31).unwrap();
        assert_eq!(s.blocks.len(), 2);
        let o = s.block("optics").unwrap();
        assert!(o.is_loop);
        assert_eq!(o.nrows(), 2);
        assert_eq!(
            o.labels(),
            &[
                "rlnOpticsGroupName",
                "rlnOpticsGroup",
                "rlnVoltage",
                "rlnImagePixelSize"
            ]
        );
        assert_eq!(
            o.column("_rlnOpticsGroupName").unwrap().as_str().unwrap(),
            &["opticsGroup1", "group two"]
        );
        assert_eq!(
            o.column("rlnVoltage").unwrap().as_num().unwrap(),
            &[300.0, 200.0]
        );
        let p = s.block("data_particles").unwrap();
        assert_eq!(p.nrows(), 3);
        assert_eq!(
            p.column("rlnDefocusU").unwrap().as_num().unwrap(),
            &[10000.5, -2500.0, 1e-7]
        );
        assert_eq!(
            p.column("rlnClassNumber").unwrap().as_num().unwrap(),
            &[1.0, 2.0, 3.0]
        );
        let names = p.column("rlnImageName").unwrap().as_str().unwrap();
        // A quote inside a token is an ordinary character; a quoted value keeps its spaces.
        assert_eq!(names[1], "000002@Particles/a'.mrcs");
        assert_eq!(names[2], "000003@Particles/b c.mrcs");
        assert_eq!(p.row_line(0), Some(22));
        assert_eq!(p.row_line(2), Some(25));
    }

    #[test]
    fn wrong_field_count_names_file_and_line() {
        let text = "data_x\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.contains("test.star") && e.contains("line 6") && e.contains("1 fields"),
            "{e}"
        );
        let e = parse("data_x\nloop_\n_rlnA\n1\n1 2 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("3 fields"), "{e}");
    }

    #[test]
    fn structural_errors_have_line_numbers() {
        let e = parse("_rlnA 1\n").unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("outside a data block"),
            "{e}"
        );
        let e = parse("data_x\n1 2 3\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("outside a loop"), "{e}");
        let e = parse("data_x\nloop_\n_rlnA\n1\n_rlnB 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("after the loop"), "{e}");
        let e = parse("data_x\nloop_\n_rlnA\n1\nloop_\n_rlnB\n2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("second table"), "{e}");
        let e = parse("data_x\nloop_\n_rlnA\n_rlnA\n1 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("twice"), "{e}");
        let e = parse("data_x\n_rlnA\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("no value"), "{e}");
        let e = parse("data_x\nloop_\n_rlnA\n'abc\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("unterminated"), "{e}");
    }

    #[test]
    fn key_value_blocks_and_empty_loops() {
        let text = "data_general\n_rlnNrClasses   50\n_rlnTau2FudgeFactor\t2.5 # c\n_rlnName \"a b\"\n\ndata_empty\nloop_\n_rlnA #1\n\ndata_last\nloop_\n_rlnX\n7\n";
        let s = parse(text).unwrap();
        let g = s.block("general").unwrap();
        assert!(!g.is_loop);
        assert_eq!(g.nrows(), 1);
        assert_eq!(g.column("rlnNrClasses").unwrap().as_num().unwrap(), &[50.0]);
        assert_eq!(
            g.column("_rlnTau2FudgeFactor").unwrap().as_num().unwrap(),
            &[2.5]
        );
        assert_eq!(g.column("rlnName").unwrap().as_str().unwrap(), &["a b"]);
        let e = s.block("empty").unwrap();
        assert_eq!((e.nrows(), e.labels().len()), (0, 1));
        assert_eq!(
            s.block("last")
                .unwrap()
                .column("rlnX")
                .unwrap()
                .as_num()
                .unwrap(),
            &[7.0]
        );
    }

    #[test]
    fn mixed_column_keeps_original_text() {
        // The column turns to text at its third value, after a blank and a comment line.
        let s = parse(
            "data_\nloop_\n_rlnMicrographName\n_rlnX\n0001 1\n\n# c\n1.50 2\nmic.mrc 3\n'7' 4\n",
        )
        .unwrap();
        let b = s.block("").unwrap();
        assert_eq!(
            b.column("rlnMicrographName").unwrap().as_str().unwrap(),
            &["0001", "1.50", "mic.mrc", "7"]
        );
        assert_eq!(
            b.column("rlnX").unwrap().as_num().unwrap(),
            &[1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(b.row_line(3), Some(10));
        // A quoted number makes its column text (and CRLF line ends and a BOM are fine).
        let s = parse("\u{feff}data_\r\nloop_\r\n_rlnA\r\n1\r\n\"2\"\r\n").unwrap();
        assert_eq!(
            s.blocks[0].column("rlnA").unwrap().as_str().unwrap(),
            &["1", "2"]
        );
    }

    #[test]
    fn write_read_round_trip_is_exact() {
        let mut b = StarBlock::new_loop("particles");
        let f32s: Vec<f32> = vec![0.1, 1.06, 12345.678, -3.3e-8, 300.0, f32::MAX, 1e20, 7.0e-6];
        let nums: Vec<f64> = f32s
            .iter()
            .map(|x| format!("{x}").parse::<f64>().unwrap())
            .collect();
        let n = nums.len();
        b.set("_rlnDefocusU", StarColumn::Num(nums.clone()))
            .unwrap();
        b.set(
            "rlnExact",
            StarColumn::Num((0..n).map(|i| 0.1 + i as f64 / 3.0).collect()),
        )
        .unwrap();
        let strs: Vec<String> = [
            "a",
            "with space",
            "",
            "#hash",
            "_under",
            "it' \"q\" x",
            "data_x",
            "tab\tin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // strs[5] needs quotes and both of its quote kinds are followed by a space: not writable.
        b.set("rlnName", StarColumn::Str(strs.clone())).unwrap();
        let mut kv = StarBlock::new_pairs("general");
        kv.set("rlnNrClasses", StarColumn::Num(vec![50.0])).unwrap();
        let star = StarFile {
            blocks: vec![kv, b],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.star");
        let e = write_star(&path, &star).unwrap_err().to_string();
        assert!(e.contains("_rlnName"), "{e}");
        let mut star = star;
        let mut fixed = strs.clone();
        fixed[5] = "it' \"q\"x".into();
        star.blocks[1]
            .set("rlnName", StarColumn::Str(fixed.clone()))
            .unwrap();
        write_star(&path, &star).unwrap();
        assert!(!dir.path().join("out.star.tmp").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# version 30001\n\ndata_particles\n\nloop_ \n_rlnDefocusU #1 \n"),
            "{text}"
        );
        assert!(
            text.contains(" 300 ") && text.contains(" 0.1 ") && text.contains("1e20"),
            "{text}"
        );
        let back = read_star(&path).unwrap();
        let p = back.block("particles").unwrap();
        assert_eq!(
            p.column("rlnDefocusU").unwrap().as_num().unwrap(),
            &nums[..]
        );
        let back_f32: Vec<f32> = p
            .column("rlnDefocusU")
            .unwrap()
            .as_num()
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(back_f32, f32s);
        assert_eq!(p.column("rlnExact"), star.blocks[1].column("rlnExact"));
        assert_eq!(p.column("rlnName").unwrap().as_str().unwrap(), &fixed[..]);
        assert_eq!(
            back.block("general")
                .unwrap()
                .column("rlnNrClasses")
                .unwrap()
                .as_num()
                .unwrap(),
            &[50.0]
        );
    }

    #[test]
    fn set_checks_row_counts() {
        let mut b = StarBlock::new_loop("x");
        b.set("rlnA", StarColumn::Num(vec![1.0, 2.0])).unwrap();
        let e = b.set("rlnB", StarColumn::Num(vec![1.0])).unwrap_err();
        assert!(e.contains("has 1 values") && e.contains("2 rows"), "{e}");
        let mut kv = StarBlock::new_pairs("g");
        assert!(kv.set("rlnA", StarColumn::Num(vec![1.0, 2.0])).is_err());
    }

    #[test]
    fn many_rows_stay_columnar_and_complete() {
        let mut text = String::from("data_particles\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n");
        for i in 0..20000 {
            text.push_str(&format!("{:06}@s.mrcs {}.25\n", i + 1, i));
        }
        let s = parse(&text).unwrap();
        let b = s.block("particles").unwrap();
        assert_eq!(b.nrows(), 20000);
        assert_eq!(
            b.column("rlnDefocusU").unwrap().as_num().unwrap()[19999],
            19999.25
        );
        assert_eq!(
            b.column("rlnImageName").unwrap().as_str().unwrap()[19999],
            "020000@s.mrcs"
        );
    }
}
