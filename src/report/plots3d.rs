//! Diagnostic plots for 3D classification, as PNG files: the class-flow matrix (heatmap) and
//! class-flow diagram (bipartite graph) between two F-EM iterations, grouped bar charts (e.g.
//! assignments against effective size per class) and central slices through volumes (maps or
//! difference maps).
//!
//! Same conventions as [`crate::report::plot`]: plotters with the bitmap backend, the vendored
//! font ([`FONT_FAMILY`]), drawn into memory and written atomically (`<path>.tmp`, renamed).
//! Odd inputs (no classes, NaN, all-zero counts, K = 1) still give a valid PNG; inputs of the
//! wrong shape (a counts matrix that is not K×K, a volume that is not cubic) are a one-line
//! error naming the path.
//!
//! Class-flow convention: `counts[i][j]` is the number of particles that were in class `i` at
//! the previous iteration and are in class `j` now.

use std::ops::Range;
use std::path::Path;

use ndarray::{s, Array2, Array3};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::report::plot::{
    ensure_font, finite_range, render, write_png_atomic, COLOURS, FONT_FAMILY,
};

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Cells of the flow matrix whose current class is empty (no fraction to show).
const EMPTY_CELL: RGBColor = RGBColor(225, 225, 225);

/// Pixels of a volume slice that are not finite.
const NAN_PIXEL: [u8; 3] = [255, 0, 255];

/// Sequential colormap, white → dark blue (matplotlib's "Blues"), at `t ∈ [0, 1]`.
fn blues(t: f64) -> RGBColor {
    const STOPS: [[u8; 3]; 5] = [
        [247, 251, 255],
        [198, 219, 239],
        [107, 174, 214],
        [33, 113, 181],
        [8, 48, 107],
    ];
    let [r, g, b] = interpolate(&STOPS, t);
    RGBColor(r, g, b)
}

/// Diverging colormap, blue → white → red (matplotlib's "RdBu_r" with a white centre), at
/// `t ∈ [-1, 1]`; 0 is white.
fn diverging(t: f64) -> [u8; 3] {
    const STOPS: [[u8; 3]; 7] = [
        [5, 48, 97],
        [33, 102, 172],
        [146, 197, 222],
        [255, 255, 255],
        [244, 165, 130],
        [178, 24, 43],
        [103, 0, 31],
    ];
    interpolate(&STOPS, 0.5 * (t + 1.0))
}

/// Piecewise-linear colour through equally spaced `stops` at `t ∈ [0, 1]` (clamped; NaN → 0).
pub(crate) fn interpolate(stops: &[[u8; 3]], t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let (a, b) = (stops[i][c] as f64, stops[i + 1][c] as f64);
        *o = (a + f * (b - a)).round().clamp(0.0, 255.0) as u8;
    }
    out
}

/// Checks that `counts` is K×K and returns K.
fn check_square(path: &Path, what: &str, counts: &[Vec<u64>]) -> Result<usize> {
    let k = counts.len();
    if let Some((i, row)) = counts.iter().enumerate().find(|(_, r)| r.len() != k) {
        return Err(Error::Internal(format!(
            "plot {}: {what} counts must be a K×K matrix, but there are {k} rows and row {i} \
             has {} entries",
            path.display(),
            row.len()
        )));
    }
    Ok(k)
}

/// Row sums (previous class sizes) and column sums (current class sizes), saturating.
fn class_sizes(counts: &[Vec<u64>]) -> (Vec<u64>, Vec<u64>) {
    let k = counts.len();
    let prev = counts
        .iter()
        .map(|r| r.iter().fold(0u64, |a, c| a.saturating_add(*c)))
        .collect();
    let cur = (0..k)
        .map(|j| counts.iter().fold(0u64, |a, r| a.saturating_add(r[j])))
        .collect();
    (prev, cur)
}

/// Tick positions 0, s, 2s, … below `k` with `s` ∈ {1, 2, 5, 10, 20, 50, …} so that there are
/// at most 20 ticks.
fn class_ticks(k: usize) -> Vec<f64> {
    let mut step = 1usize;
    let mut mult = [2usize, 5, 10].into_iter().cycle();
    let mut base = 1usize;
    while k.div_ceil(step) > 20 {
        let m = mult.next().unwrap_or(10);
        step = base * m;
        if m == 10 {
            base *= 10;
        }
    }
    (0..k).step_by(step).map(|i| i as f64).collect()
}

/// An f64 axis over class indices (class `i` centred on `i`) with ticks only at `ticks`
/// (plotters' own f64 axis would put ticks between classes).
struct ClassAxis {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl ClassAxis {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        ClassAxis { range, ticks }
    }
}

impl Ranged for ClassAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let f = if span != 0.0 {
            (v - self.range.start) / span
        } else {
            0.5
        };
        let f = if f.is_finite() {
            f.clamp(-10.0, 10.0)
        } else {
            0.5
        };
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// `style` anchored at the centre of the text.
fn centred(style: TextStyle<'_>) -> TextStyle<'_> {
    style.pos(Pos::new(HPos::Center, VPos::Center))
}

/// The vendored font at `size` px.
fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, size).into_font())
}

/// Compact number for labels.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".to_string()
    } else if !(1e-2..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Size of the class-flow matrix PNG (width, height) in pixels.
pub const FLOW_MATRIX_SIZE_PX: (u32, u32) = (860, 740);

/// Class-flow matrix as a K×K heatmap: rows are the class at the previous iteration (0 at the
/// top), columns the class at the current iteration. The colour of cell `(i, j)` is the
/// fraction of current class `j`'s particles that came from previous class `i` (each column
/// normalised; a column with no particles is light grey), on a white → dark blue scale shown
/// by the colour bar on the right. With K ≤ 12 each cell also shows the raw count.
pub fn class_flow_matrix_png(path: &Path, counts: &[Vec<u64>], title: &str) -> Result<()> {
    let k = check_square(path, "class flow matrix", counts)?;
    let (_, col_tot) = class_sizes(counts);
    let fraction = |i: usize, j: usize| -> Option<f64> {
        (col_tot[j] > 0).then(|| counts[i][j] as f64 / col_tot[j] as f64)
    };
    let kf = k.max(1) as f64;
    let ticks = class_ticks(k);
    let (w, h) = FLOW_MATRIX_SIZE_PX;
    render(path, (w, h), |root| {
        root.fill(&WHITE)?;
        let (main, bar) = root.split_horizontally(w - 120);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, (FONT_FAMILY, 22))
            .margin(12)
            .x_label_area_size(55)
            .y_label_area_size(65)
            .build_cartesian_2d(
                ClassAxis::new(-0.5..kf - 0.5, ticks.clone()),
                ClassAxis::new(-(kf - 0.5)..0.5, ticks.iter().map(|t| -t).collect()),
            )?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("class at current iteration")
            .y_desc("class at previous iteration")
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_label_formatter(&|v| format!("{}", (-v).round() as i64))
            .label_style((FONT_FAMILY, 14))
            .draw()?;
        let cell = |i: usize, j: usize| {
            let (x, y) = (j as f64, -(i as f64));
            [(x - 0.5, y + 0.5), (x + 0.5, y - 0.5)]
        };
        chart.draw_series(
            (0..k)
                .flat_map(|i| (0..k).map(move |j| (i, j)))
                .map(|(i, j)| {
                    let colour = fraction(i, j).map_or(EMPTY_CELL, blues);
                    Rectangle::new(cell(i, j), colour.filled())
                }),
        )?;
        if k <= 40 {
            chart.draw_series(
                (0..k)
                    .flat_map(|i| (0..k).map(move |j| (i, j)))
                    .map(|(i, j)| Rectangle::new(cell(i, j), WHITE.stroke_width(1))),
            )?;
        }
        if k <= 12 {
            let (pw, ph) = chart.plotting_area().dim_in_pixel();
            let cell_px = pw.min(ph) as f64 / kf;
            let size = (cell_px / 4.0).clamp(9.0, 18.0);
            chart.draw_series(
                (0..k)
                    .flat_map(|i| (0..k).map(move |j| (i, j)))
                    .map(|(i, j)| {
                        let dark = fraction(i, j).is_some_and(|f| f > 0.55);
                        let style = centred(font(size)).color(if dark { &WHITE } else { &BLACK });
                        Text::new(counts[i][j].to_string(), (j as f64, -(i as f64)), style)
                    }),
            )?;
        }
        // Colour bar: fraction of the current class, 0 at the bottom, 1 at the top.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(52)
            .margin_bottom(67)
            .margin_right(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc("fraction of current class")
            .y_labels(6)
            .label_style((FONT_FAMILY, 13))
            .draw()?;
        let steps = 100;
        cb.draw_series((0..steps).map(|s| {
            let (a, b) = (s as f64 / steps as f64, (s + 1) as f64 / steps as f64);
            Rectangle::new([(0.0, a), (1.0, b)], blues(0.5 * (a + b)).filled())
        }))?;
        cb.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (1.0, 1.0)],
            BLACK.stroke_width(1),
        )))?;
        Ok(())
    })
}

/// Geometry of the class-flow diagram for K classes.
struct DiagramLayout {
    w: u32,
    h: u32,
    /// x of the left (previous) and right (current) node columns.
    x_left: i32,
    x_right: i32,
    /// y of node i (same on both sides).
    ys: Vec<i32>,
    /// Distance between neighbouring nodes.
    spacing: f64,
}

fn diagram_layout(k: usize) -> DiagramLayout {
    let (w, top, bottom_pad) = (900u32, 80.0, 45.0);
    let h = (top + bottom_pad + 32.0 * k as f64).clamp(420.0, 2400.0) as u32;
    let spacing = (h as f64 - top - bottom_pad) / k.max(1) as f64;
    let ys = (0..k)
        .map(|i| (top + (i as f64 + 0.5) * spacing).round() as i32)
        .collect();
    DiagramLayout {
        w,
        h,
        x_left: 250,
        x_right: w as i32 - 250,
        ys,
        spacing,
    }
}

/// Points on the cubic Bézier curve from `a` to `b` with horizontal tangents at both ends.
fn flow_curve(a: (i32, i32), b: (i32, i32)) -> Vec<(i32, i32)> {
    let n = 48;
    let xm = 0.5 * (a.0 + b.0) as f64;
    let p = [
        (a.0 as f64, a.1 as f64),
        (xm, a.1 as f64),
        (xm, b.1 as f64),
        (b.0 as f64, b.1 as f64),
    ];
    (0..=n)
        .map(|s| {
            let t = s as f64 / n as f64;
            let u = 1.0 - t;
            let c = [u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t];
            let x: f64 = (0..4).map(|q| c[q] * p[q].0).sum();
            let y: f64 = (0..4).map(|q| c[q] * p[q].1).sum();
            (x.round() as i32, y.round() as i32)
        })
        .collect()
}

/// Class-flow diagram: previous classes as nodes on the left, current classes on the right,
/// each labelled `"class i (n)"` with its size n (row sums on the left, column sums on the
/// right; node area grows with n). Every non-zero `counts[i][j]` (including `i = j`, the
/// particles that stayed) is an edge drawn as a smooth curve whose thickness, colour
/// (light → dark blue) and opacity grow with the count relative to the largest edge; the
/// largest edges are drawn last (on top).
pub fn class_flow_diagram_png(path: &Path, counts: &[Vec<u64>], title: &str) -> Result<()> {
    let k = check_square(path, "class flow diagram", counts)?;
    let (prev, cur) = class_sizes(counts);
    let lay = diagram_layout(k);
    let mut edges: Vec<(usize, usize, u64)> = (0..k)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .map(|(i, j)| (i, j, counts[i][j]))
        .filter(|e| e.2 > 0)
        .collect();
    edges.sort_by_key(|e| e.2);
    let max_edge = edges.last().map_or(0, |e| e.2);
    let max_size = prev.iter().chain(&cur).copied().max().unwrap_or(0);
    let max_width = (lay.spacing * 0.6).clamp(3.0, 18.0);
    render(path, (lay.w, lay.h), |root| {
        root.fill(&WHITE)?;
        let mid = lay.w as i32 / 2;
        root.draw(&Text::new(
            title.to_string(),
            (mid, 20),
            centred(font(22.0)),
        ))?;
        let header = centred(font(15.0)).color(&BLACK);
        root.draw(&Text::new(
            "previous iteration",
            (lay.x_left, 52),
            header.clone(),
        ))?;
        root.draw(&Text::new("current iteration", (lay.x_right, 52), header))?;
        for &(i, j, c) in &edges {
            let r = c as f64 / max_edge as f64;
            let width = (1.0 + r * (max_width - 1.0)).round() as u32;
            let colour = blues(0.45 + 0.55 * r);
            let alpha = 0.3 + 0.7 * r;
            root.draw(&PathElement::new(
                flow_curve((lay.x_left, lay.ys[i]), (lay.x_right, lay.ys[j])),
                colour.mix(alpha).stroke_width(width.max(1)),
            ))?;
        }
        let node_radius = |n: u64| {
            let f = if max_size > 0 {
                (n as f64 / max_size as f64).sqrt()
            } else {
                0.0
            };
            let r_max = (lay.spacing * 0.45).clamp(4.0, 12.0);
            (3.0 + f * (r_max - 3.0)).round() as i32
        };
        let node_colour = RGBColor(60, 60, 60);
        let label_size = (lay.spacing * 0.55).clamp(9.0, 14.0);
        for i in 0..k {
            let y = lay.ys[i];
            for (x, n, hpos, dx) in [
                (lay.x_left, prev[i], HPos::Right, -1),
                (lay.x_right, cur[i], HPos::Left, 1),
            ] {
                let r = node_radius(n);
                root.draw(&Circle::new((x, y), r, node_colour.filled()))?;
                let style = font(label_size)
                    .color(&BLACK)
                    .pos(Pos::new(hpos, VPos::Center));
                root.draw(&Text::new(
                    format!("class {i} ({n})"),
                    (x + dx * (r + 8), y),
                    style,
                ))?;
            }
        }
        let footer = if max_edge > 0 {
            format!(
                "edge thickness, colour and opacity grow with the particle count \
                 (largest edge: {max_edge})"
            )
        } else {
            "no particles".to_string()
        };
        root.draw(&Text::new(
            footer,
            (mid, lay.h as i32 - 20),
            centred(font(13.0)).color(&GREY_TEXT),
        ))?;
        Ok(())
    })
}

/// Grouped bar chart: one group per class index `0..K` (K = the longest series), one bar per
/// series within each group (colours as in the legend). Non-finite values are left out; the
/// y axis always includes 0.
pub fn grouped_bars_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[f64])],
) -> Result<()> {
    let k = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let n_series = series.len().max(1);
    let finite = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
    };
    let lo = finite().fold(0.0f64, f64::min);
    let hi = finite().fold(0.0f64, f64::max);
    let (lo, hi) = if hi - lo > 0.0 { (lo, hi) } else { (0.0, 1.0) };
    let pad = 0.08 * (hi - lo);
    let (y_lo, y_hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let kf = k.max(1) as f64;
    let ticks = class_ticks(k);
    let w = (200 + 9 * k * n_series).clamp(800, 2400) as u32;
    let group = 0.8;
    let bar_w = group / n_series as f64;
    render(path, (w, 600), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(ClassAxis::new(-0.5..kf - 0.5, ticks), y_lo..y_hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .label_style((FONT_FAMILY, 14))
            .draw()?;
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            let x_off = -0.5 * group + s as f64 * bar_w;
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(g, v)| {
                            let x0 = g as f64 + x_off + 0.05 * bar_w;
                            let x1 = g as f64 + x_off + 0.95 * bar_w;
                            Rectangle::new([(x0, 0.0), (x1, *v)], colour.filled())
                        }),
                )?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT_FAMILY, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    })
}

/// Smallest on-screen width of a volume slice in the slice grid.
pub const MIN_SLICE_PX: u32 = 128;
/// Gap around and between slices.
const SLICE_PAD: u32 = 10;
/// Height of the title strip and of the column-header strip.
const TITLE_PX: u32 = 36;
const HEADER_PX: u32 = 24;
/// Width of the colour bar next to each row and of the space for its limits.
const BAR_PX: u32 = 14;
const BAR_TEXT_PX: u32 = 80;
/// Font sizes of the row labels and the title.
const LABEL_FONT_PX: f64 = 14.0;
const TITLE_FONT_PX: f64 = 20.0;
/// Grey for secondary text.
const GREY_TEXT: RGBColor = RGBColor(90, 90, 90);

/// Geometry of the slice grid.
struct SliceLayout {
    w: u32,
    h: u32,
    label_w: u32,
    col_w: u32,
    /// Per row: (top y, upsampling factor, tile side in px).
    rows: Vec<(u32, u32, u32)>,
}

impl SliceLayout {
    /// The layout for `volumes` (cubic) under `title`: the label column fits the longest
    /// name (within limits), the image is wide enough for the title (within limits).
    fn for_volumes(title: &str, volumes: &[(String, Array3<f32>)]) -> Self {
        ensure_font();
        let label_w = volumes
            .iter()
            .filter_map(|(name, _)| font(LABEL_FONT_PX).font.box_size(name).ok())
            .map(|(w, _)| w + 12)
            .max()
            .unwrap_or(0)
            .clamp(70, 260);
        let title_w = font(TITLE_FONT_PX)
            .font
            .box_size(title)
            .map(|(w, _)| w + 2 * SLICE_PAD)
            .unwrap_or(0)
            .min(2000);
        let sides: Vec<usize> = volumes.iter().map(|(_, v)| v.dim().0).collect();
        Self::new(&sides, label_w, title_w.max(400))
    }

    fn new(sides: &[usize], label_w: u32, min_w: u32) -> Self {
        let mut rows = Vec::with_capacity(sides.len());
        let mut y = TITLE_PX + HEADER_PX;
        let mut col_w = MIN_SLICE_PX;
        for &n in sides {
            let n = n.max(1) as u32;
            let scale = MIN_SLICE_PX.div_ceil(n).max(1);
            let tile = n * scale;
            col_w = col_w.max(tile);
            rows.push((y, scale, tile));
            y += tile + SLICE_PAD;
        }
        let w = SLICE_PAD + label_w + 3 * (col_w + SLICE_PAD) + BAR_PX + BAR_TEXT_PX;
        SliceLayout {
            w: w.max(min_w),
            h: (y + SLICE_PAD).max(100),
            label_w,
            col_w,
            rows,
        }
    }

    /// Left x of column `c`'s cell.
    fn col_x(&self, c: u32) -> u32 {
        SLICE_PAD + self.label_w + c * (self.col_w + SLICE_PAD)
    }

    /// Top-left corner of the slice in row `r`, column `c`.
    fn tile_origin(&self, r: usize, c: u32) -> (u32, u32) {
        let (y, _, tile) = self.rows[r];
        (self.col_x(c) + (self.col_w - tile) / 2, y)
    }

    /// Left x of the colour bars.
    fn bar_x(&self) -> u32 {
        self.col_x(3)
    }
}

/// `text` shortened with "…" until it is at most `max_w` px wide in `style`.
fn fit_text(text: &str, style: &TextStyle, max_w: u32) -> String {
    let width = |s: &str| style.font.box_size(s).map(|(w, _)| w).unwrap_or(0);
    if width(text) <= max_w {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let s: String = chars.iter().collect::<String>() + "…";
        if width(&s) <= max_w {
            return s;
        }
    }
    String::new()
}

/// The three central slices (xy at z = n/2, xz at y = n/2, yz at x = n/2) of a cubic `(z, y,
/// x)` volume; image row 0 is the first y (xy) or z (xz, yz) index.
fn central_slices(v: &Array3<f32>) -> [Array2<f32>; 3] {
    let c = v.dim().0 / 2;
    [
        v.slice(s![c, .., ..]).to_owned(),
        v.slice(s![.., c, ..]).to_owned(),
        v.slice(s![.., .., c]).to_owned(),
    ]
}

/// Grid of central slices through `volumes`: one row per volume (labelled with its name and
/// side), columns xy (z = n/2), xz (y = n/2) and yz (x = n/2) of the `(z, y, x)` array. Each
/// slice is upsampled (nearest neighbour) by an integer factor to at least
/// [`MIN_SLICE_PX`] px. Grey levels span the row's finite range (its three slices); with
/// `symmetric` (difference maps) a blue–white–red colormap spans `±max|v|` over the row, 0
/// white. A colour bar with the limits is drawn at the end of each row; non-finite voxels
/// are magenta. Volumes may differ in size; each must be a non-empty cube.
pub fn volume_slices_png(
    path: &Path,
    title: &str,
    volumes: &[(String, Array3<f32>)],
    symmetric: bool,
) -> Result<()> {
    for (i, (name, v)) in volumes.iter().enumerate() {
        let (a, b, c) = v.dim();
        if a != b || b != c || a == 0 {
            return Err(Error::Internal(format!(
                "plot {}: volume {i} ({name:?}) is {a}×{b}×{c}; need a non-empty cube",
                path.display()
            )));
        }
    }
    let lay = SliceLayout::for_volumes(title, volumes);
    let (label_style, title_style) = (font(LABEL_FONT_PX), font(TITLE_FONT_PX));
    let label_w = lay.label_w;
    let (w, h) = (lay.w, lay.h);
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let mut put = |x: u32, y: u32, rgb: [u8; 3]| {
        if x < w && y < h {
            let o = (y as usize * w as usize + x as usize) * 3;
            buf[o..o + 3].copy_from_slice(&rgb);
        }
    };
    let mut limits = Vec::with_capacity(volumes.len());
    for (r, (_, v)) in volumes.iter().enumerate() {
        let slices = central_slices(v);
        let vals = || slices.iter().flat_map(|s| s.iter().map(|x| *x as f64));
        let (lo, hi) = if symmetric {
            let m = vals()
                .filter(|x| x.is_finite())
                .fold(0.0f64, |a, x| a.max(x.abs()));
            let m = if m > 0.0 && m.is_finite() { m } else { 1.0 };
            (-m, m)
        } else {
            finite_range(vals())
        };
        limits.push((lo, hi));
        let colour = |x: f64| -> [u8; 3] {
            if !x.is_finite() {
                NAN_PIXEL
            } else if symmetric {
                diverging(x / hi)
            } else {
                let g = ((x - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8;
                [g, g, g]
            }
        };
        let (_, scale, tile) = lay.rows[r];
        for (c, sl) in slices.iter().enumerate() {
            let (x0, y0) = lay.tile_origin(r, c as u32);
            // A thin grey frame, then the upsampled slice.
            for d in 0..tile + 2 {
                for (x, y) in [
                    (x0 - 1 + d, y0 - 1),
                    (x0 - 1 + d, y0 + tile),
                    (x0 - 1, y0 - 1 + d),
                    (x0 + tile, y0 - 1 + d),
                ] {
                    put(x, y, [160, 160, 160]);
                }
            }
            for py in 0..tile {
                for px in 0..tile {
                    let val = sl[[(py / scale) as usize, (px / scale) as usize]];
                    put(x0 + px, y0 + py, colour(val as f64));
                }
            }
        }
        // Colour bar: hi at the top, lo at the bottom.
        let bx = lay.bar_x();
        let (y0, _, tile) = lay.rows[r];
        for py in 0..tile {
            let x = hi - (py as f64 + 0.5) / tile as f64 * (hi - lo);
            for px in 0..BAR_PX {
                put(bx + px, y0 + py, colour(x));
            }
        }
    }
    let mut draw_text = || -> DrawResult {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.draw(&Text::new(
            fit_text(title, &title_style, w - 2 * SLICE_PAD),
            (w as i32 / 2, (TITLE_PX / 2) as i32 + 2),
            centred(title_style.clone()),
        ))?;
        if volumes.is_empty() {
            root.draw(&Text::new(
                "no volumes",
                (w as i32 / 2, (TITLE_PX + HEADER_PX) as i32),
                centred(label_style.clone()),
            ))?;
        } else {
            for (c, header) in ["xy (z = n/2)", "xz (y = n/2)", "yz (x = n/2)"]
                .into_iter()
                .enumerate()
            {
                let x = lay.col_x(c as u32) + lay.col_w / 2;
                root.draw(&Text::new(
                    header,
                    (x as i32, (TITLE_PX + HEADER_PX / 2) as i32),
                    centred(font(15.0)),
                ))?;
            }
        }
        let left = font(14.0).pos(Pos::new(HPos::Left, VPos::Center));
        let small = font(12.0).pos(Pos::new(HPos::Left, VPos::Center));
        for (r, (name, v)) in volumes.iter().enumerate() {
            let (y0, _, tile) = lay.rows[r];
            let yc = (y0 + tile / 2) as i32;
            root.draw(&Text::new(
                fit_text(name, &label_style, label_w - 8),
                (SLICE_PAD as i32, yc - 9),
                left.clone(),
            ))?;
            let n = v.dim().0;
            root.draw(&Text::new(
                format!("{n}³"),
                (SLICE_PAD as i32, yc + 9),
                small.clone().color(&GREY_TEXT),
            ))?;
            let (lo, hi) = limits[r];
            let tx = (lay.bar_x() + BAR_PX + 4) as i32;
            root.draw(&Text::new(fmt_num(hi), (tx, y0 as i32 + 6), small.clone()))?;
            root.draw(&Text::new(
                fmt_num(lo),
                (tx, (y0 + tile) as i32 - 6),
                small.clone(),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw_text().map_err(|e| Error::file(path, format!("cannot draw plot: {e}")))?;
    write_png_atomic(path, &buf, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG into an RGB image.
    fn decode(path: &Path) -> image::RgbImage {
        image::open(path).expect("valid PNG").to_rgb8()
    }

    /// Number of distinct colours in an image.
    fn n_colours(img: &image::RgbImage) -> usize {
        let mut c: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }

    fn flow_counts() -> Vec<Vec<u64>> {
        vec![
            vec![500, 20, 0, 3],
            vec![10, 300, 40, 0],
            vec![0, 0, 250, 60],
            vec![5, 0, 0, 0],
        ]
    }

    #[test]
    fn class_flow_matrix_is_a_png_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flow.png");
        class_flow_matrix_png(&path, &flow_counts(), "class flow, iteration 5").unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), FLOW_MATRIX_SIZE_PX);
        assert!(n_colours(&img) > 20, "{} colours", n_colours(&img));
        assert!(!dir.path().join("flow.png.tmp").exists());
        // Large K (no text in the cells) also works.
        let k = 30;
        let big: Vec<Vec<u64>> = (0..k)
            .map(|i| (0..k).map(|j| ((i * 7 + j * 3) % 11) as u64).collect())
            .collect();
        class_flow_matrix_png(&path, &big, "K = 30").unwrap();
        assert_eq!(decode(&path).dimensions(), FLOW_MATRIX_SIZE_PX);
    }

    #[test]
    fn class_flow_matrix_colour_is_column_normalised() {
        // Column 0: all from class 0 (fraction 1, darkest); column 1: half and half.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flow.png");
        let counts = vec![vec![1000, 1], vec![0, 1]];
        class_flow_matrix_png(&path, &counts, "t").unwrap();
        let img = decode(&path);
        // The darkest blue of the scale appears (cell (0, 0) has fraction 1 despite other
        // cells' counts); a fraction-0.5 blue appears too.
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(blues(1.0)));
        assert!(has(blues(0.5)));
    }

    #[test]
    fn class_flow_diagram_is_a_png_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diagram.png");
        class_flow_diagram_png(&path, &flow_counts(), "class flow").unwrap();
        let img = decode(&path);
        let lay = diagram_layout(4);
        assert_eq!(img.dimensions(), (lay.w, lay.h));
        assert!(n_colours(&img) > 20);
        assert!(!dir.path().join("diagram.png.tmp").exists());
    }

    #[test]
    fn class_flow_diagram_pixels_follow_the_edges() {
        // K = 3; only edges 0→1 and 1→0 pass through the midpoint between nodes 0 and 1
        // (Bézier curves meet at x = middle, y = mean of their ends).
        let dir = tempfile::tempdir().unwrap();
        let lay = diagram_layout(3);
        let xm = ((lay.x_left + lay.x_right) / 2) as u32;
        let ym = ((lay.ys[0] + lay.ys[1]) / 2) as u32;
        let draw = |c01: u64, name: &str| {
            let p = dir.path().join(name);
            let counts = vec![vec![100, c01, 0], vec![0, 80, 10], vec![0, 0, 50]];
            class_flow_diagram_png(&p, &counts, "t").unwrap();
            decode(&p)
        };
        let without = draw(0, "a.png");
        let with = draw(60, "b.png");
        let weak = draw(1, "c.png");
        assert_eq!(without.get_pixel(xm, ym).0, [255, 255, 255], "no edge 0→1");
        let p = with.get_pixel(xm, ym).0;
        assert!(p[2] > p[0] + 30, "edge 0→1 is blue there: {p:?}");
        assert_ne!(with.as_raw(), without.as_raw());
        assert_ne!(with.as_raw(), weak.as_raw());
        // A stronger edge is darker than a weak one at the same spot.
        let q = weak.get_pixel(xm, ym).0;
        let lum = |c: [u8; 3]| c.iter().map(|v| *v as u32).sum::<u32>();
        assert!(lum(p) < lum(q), "strong {p:?} vs weak {q:?}");
    }

    #[test]
    fn grouped_bars_is_a_png_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sizes.png");
        let a = [1000.0, 500.0, 250.0, 10.0];
        let b = [900.0, 520.0, f64::NAN, 0.0];
        grouped_bars_png(
            &path,
            "class sizes",
            "class",
            "particles",
            &[("assignments", &a), ("effective size", &b)],
        )
        .unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (800, 600));
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(COLOURS[0]) && has(COLOURS[1]));
        assert!(!dir.path().join("sizes.png.tmp").exists());
    }

    #[test]
    fn volume_slices_grey_and_symmetric() {
        let dir = tempfile::tempdir().unwrap();
        let blob = |n: usize, sign: f32| {
            Array3::from_shape_fn((n, n, n), |(z, y, x)| {
                let c = (n / 2) as f32;
                let r2 = (z as f32 - c).powi(2) + (y as f32 - c).powi(2) + (x as f32 - c).powi(2);
                sign * (-r2 / (n as f32)).exp()
            })
        };
        let vols = vec![
            ("class 0".to_string(), blob(32, 1.0)),
            ("class 1, a long name for a map".to_string(), blob(200, 1.0)),
        ];
        let path = dir.path().join("slices.png");
        volume_slices_png(&path, "maps", &vols, false).unwrap();
        let img = decode(&path);
        let (w, h) = img.dimensions();
        assert!(w >= 3 * 200 && h >= 128 + 200, "{w}×{h}");
        // Centre of the xy slice of row 0: the blob's maximum, white; the corner: dark.
        let lay = SliceLayout::for_volumes("maps", &vols);
        assert_eq!((lay.w, lay.h), (w, h));
        assert_eq!(lay.rows[0].1, 4, "32 px upsampled ×4 to 128");
        assert_eq!(lay.rows[1].1, 1);
        assert_eq!(lay.col_w, 200);
        // Centre of each slice of row 0: the blob's maximum, white; the corner: dark.
        for c in 0..3 {
            let (x0, y0) = lay.tile_origin(0, c);
            let centre = img.get_pixel(x0 + 64 + 2, y0 + 64 + 2).0;
            let corner = img.get_pixel(x0 + 1, y0 + 1).0;
            assert!(centre[0] > 200 && centre[0] == centre[2], "{centre:?}");
            assert!(corner[0] < 60 && corner[0] == corner[1], "{corner:?}");
        }
        // Difference maps: positive red, negative blue, zero-ish far away white-ish.
        let vols = vec![
            ("plus".to_string(), blob(24, 1.0)),
            ("minus".to_string(), blob(24, -2.0)),
        ];
        volume_slices_png(&path, "differences", &vols, true).unwrap();
        let img = decode(&path);
        let lay = SliceLayout::for_volumes("differences", &vols);
        assert_eq!(img.dimensions(), (lay.w, lay.h));
        let (x0, y0) = lay.tile_origin(0, 0);
        let p = img
            .get_pixel(x0 + lay.rows[0].2 / 2 + 2, y0 + lay.rows[0].2 / 2 + 2)
            .0;
        assert!(p[0] > p[2] + 50, "positive is red: {p:?}");
        let (x0, y0) = lay.tile_origin(1, 0);
        let p = img
            .get_pixel(x0 + lay.rows[1].2 / 2 + 2, y0 + lay.rows[1].2 / 2 + 2)
            .0;
        assert!(p[2] > p[0] + 50, "negative is blue: {p:?}");
    }

    #[test]
    fn bad_shapes_are_one_line_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let ragged = vec![vec![1, 2], vec![3]];
        let not_square = vec![vec![1, 2, 3], vec![4, 5, 6]];
        for counts in [&ragged, &not_square] {
            for e in [
                class_flow_matrix_png(&path, counts, "t").unwrap_err(),
                class_flow_diagram_png(&path, counts, "t").unwrap_err(),
            ] {
                let msg = e.to_string();
                assert!(msg.contains("bad.png") && !msg.contains('\n'), "{msg}");
            }
        }
        let vols = vec![
            ("ok".to_string(), Array3::<f32>::zeros((8, 8, 8))),
            ("flat".to_string(), Array3::<f32>::zeros((8, 8, 4))),
        ];
        let msg = volume_slices_png(&path, "t", &vols, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("bad.png") && msg.contains("flat") && !msg.contains('\n'));
        let empty = vec![("e".to_string(), Array3::<f32>::zeros((0, 0, 0)))];
        assert!(volume_slices_png(&path, "t", &empty, true).is_err());
        assert!(!path.exists());
        // Unwritable path.
        let bad = dir.path().join("no_such_dir").join("a.png");
        assert!(class_flow_matrix_png(&bad, &flow_counts(), "t").is_err());
        assert!(volume_slices_png(&bad, "t", &vols[..1], false).is_err());
    }

    #[test]
    fn degenerate_inputs_still_give_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let one = vec![vec![42u64]];
        let zeros = vec![vec![0u64; 3]; 3];
        let none: Vec<Vec<u64>> = Vec::new();
        for (i, counts) in [&one, &zeros, &none].into_iter().enumerate() {
            let a = p(&format!("m{i}.png"));
            class_flow_matrix_png(&a, counts, "degenerate").unwrap();
            assert_eq!(decode(&a).dimensions(), FLOW_MATRIX_SIZE_PX);
            let b = p(&format!("d{i}.png"));
            class_flow_diagram_png(&b, counts, "degenerate").unwrap();
            let lay = diagram_layout(counts.len());
            assert_eq!(decode(&b).dimensions(), (lay.w, lay.h));
        }
        // Huge counts do not overflow.
        let huge = vec![vec![u64::MAX, u64::MAX], vec![1, 0]];
        class_flow_matrix_png(&p("huge.png"), &huge, "huge").unwrap();
        class_flow_diagram_png(&p("huge_d.png"), &huge, "huge").unwrap();
        // Bars: no series, empty series, all NaN, all zero, negative.
        let nan = [f64::NAN, f64::INFINITY];
        let zero = [0.0, 0.0];
        let neg = [-3.0, 2.0];
        let cases: [&[(&str, &[f64])]; 5] = [
            &[],
            &[("empty", &[])],
            &[("nan", &nan)],
            &[("zero", &zero)],
            &[("neg", &neg), ("zero", &zero)],
        ];
        for (i, series) in cases.into_iter().enumerate() {
            let a = p(&format!("b{i}.png"));
            grouped_bars_png(&a, "bars", "class", "y", series).unwrap();
            assert_eq!(decode(&a).dimensions(), (800, 600));
        }
        // Slices: no volumes, constant, NaN, 1-voxel volume, symmetric all-zero.
        let mut nan_vol = Array3::<f32>::zeros((5, 5, 5));
        nan_vol.fill(f32::NAN);
        let vols = vec![
            (
                "constant".to_string(),
                Array3::<f32>::from_elem((4, 4, 4), 3.0),
            ),
            ("nan".to_string(), nan_vol),
            ("one voxel".to_string(), Array3::<f32>::ones((1, 1, 1))),
        ];
        for symmetric in [false, true] {
            let a = p(&format!("v{symmetric}.png"));
            volume_slices_png(&a, "odd", &vols, symmetric).unwrap();
            let (w, h) = decode(&a).dimensions();
            assert!(w >= 3 * MIN_SLICE_PX && h >= 3 * MIN_SLICE_PX, "{w}×{h}");
            volume_slices_png(&a, "none", &[], symmetric).unwrap();
            assert!(decode(&a).dimensions().0 >= 400);
        }
        let zero_vol = vec![("zero".to_string(), Array3::<f32>::zeros((6, 6, 6)))];
        volume_slices_png(&p("z.png"), "zero diff", &zero_vol, true).unwrap();
    }

    #[test]
    fn ticks_and_colormaps() {
        assert_eq!(class_ticks(0), Vec::<f64>::new());
        assert_eq!(class_ticks(3), vec![0.0, 1.0, 2.0]);
        assert_eq!(class_ticks(40).len(), 20);
        assert!(class_ticks(1000).len() <= 20);
        assert_eq!(diverging(0.0), [255, 255, 255]);
        assert_eq!(diverging(-1.0), [5, 48, 97]);
        assert_eq!(diverging(1.0), [103, 0, 31]);
        assert_eq!(diverging(f64::NAN), [5, 48, 97]);
        let b = blues(0.0);
        assert_eq!((b.0, b.1, b.2), (247, 251, 255));
    }
}
