//! Diagnostic plots as PNG files (plotters, bitmap backend): histograms (ESS, best-class
//! probability) and line plots (the noise model: current sigma, current noise, initial sigma
//! against resolution), as the 2D classification seed describes.
//!
//! Text uses the vendored DejaVu Sans (`assets/fonts/`, licence next to it), registered with
//! plotters' `ab_glyph` backend as `"sans-serif"`, so plots need no system fonts or
//! fontconfig. Files are drawn into memory, written to `<path>.tmp` and renamed, so a reader
//! never sees a half-written PNG.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};

/// DejaVu Sans, vendored (Debian fonts-dejavu-core; licence in
/// `assets/fonts/DejaVuSans.LICENSE`).
static FONT_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name the vendored font is registered under.
pub(crate) const FONT_FAMILY: &str = "sans-serif";

/// Default plot size (width, height) in pixels.
pub const PLOT_SIZE_PX: (u32, u32) = (800, 600);

/// Series colours (matplotlib's tab10: blue, orange, green, red, purple, brown), so the
/// noise-model plot has current sigma blue, current noise orange, initial sigma green as in
/// CryoSPARC's.
pub(crate) const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the vendored font with plotters once per process.
pub(crate) fn ensure_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF)
            .unwrap_or_else(|_| panic!("the vendored DejaVuSans.ttf is a valid font"));
    });
}

/// Writes an RGB8 buffer `(w, h)` as a PNG: to `<path>.tmp`, then renamed to `path`.
pub(crate) fn write_png_atomic(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    image::save_buffer_with_format(
        &tmp,
        rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write PNG: {e}"))
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws with `draw` into an in-memory `size_px` RGB canvas and writes it to `path`.
pub(crate) fn render(
    path: &Path,
    size_px: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> DrawResult,
) -> Result<()> {
    let (w, h) = size_px;
    if w < 64 || h < 64 {
        return Err(Error::Internal(format!(
            "plot {}: size {w}×{h} px is too small (at least 64×64)",
            path.display()
        )));
    }
    ensure_font();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)
            .and_then(|_| root.present().map_err(|e| e.into()))
            .map_err(|e| Error::file(path, format!("cannot draw plot: {e}")))?;
    }
    write_png_atomic(path, &buf, w, h)
}

/// `(lo, hi)` of the finite values, widened so that `hi > lo`.
pub(crate) fn finite_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Histogram of the finite `values` in `bins` equal bins over their range, with red vertical
/// lines at `markers` (e.g. quartiles; empty for none), written as a `size_px` PNG to `path`.
pub fn histogram_png(
    path: &Path,
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
    markers: &[f64],
    size_px: (u32, u32),
) -> Result<()> {
    let (lo, hi) = finite_range(values.iter().copied().chain(markers.iter().copied()));
    let counts = bin_counts(values, lo, hi, bins);
    histogram_counts_overlay_png(
        path,
        title,
        x_label,
        (lo, hi),
        &counts,
        markers,
        &[],
        size_px,
    )
}

/// A probability density over x (per unit x) drawn over a histogram, with its legend name.
pub type Density<'a> = (&'a str, &'a dyn Fn(f64) -> f64);

/// Counts of the finite `values` in `bins` equal bins over `[lo, hi]` (bin b holds
/// `[lo + b·width, lo + (b+1)·width)`; values at or beyond the ends go to the end bins).
pub fn bin_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let bins = bins.max(1);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    counts
}

/// A histogram of counts already binned over `[lo, hi]` (e.g. summed over ranks), with red
/// lines at `markers` and `curves` (densities integrating to the fraction of the values they
/// describe, e.g. the weighted components of a fitted mixture) scaled to counts per bin.
#[allow(clippy::too_many_arguments)]
pub fn histogram_counts_overlay_png(
    path: &Path,
    title: &str,
    x_label: &str,
    (lo, hi): (f64, f64),
    counts: &[u64],
    markers: &[f64],
    curves: &[Density],
    size_px: (u32, u32),
) -> Result<()> {
    let width = (hi - lo) / counts.len().max(1) as f64;
    // Curves in counts per bin: n · width · density, sampled at 400 points.
    let n = counts.iter().sum::<u64>() as f64;
    let curve_pts: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|(_, f)| {
            (0..=400)
                .map(|i| lo + (hi - lo) * i as f64 / 400.0)
                .map(|x| (x, n * width * f(x)))
                .filter(|(_, y)| y.is_finite())
                .collect()
        })
        .collect();
    let named: Vec<(&str, Vec<(f64, f64)>)> = curves
        .iter()
        .zip(curve_pts)
        .map(|((name, _), pts)| (*name, pts))
        .collect();
    draw_histogram(
        path,
        title,
        x_label,
        (lo, hi),
        counts,
        markers,
        &named,
        size_px,
    )
}

/// A histogram of counts already binned in equal bins over `[lo, hi]`, as a `size_px` PNG.
pub fn histogram_counts_png(
    path: &Path,
    title: &str,
    x_label: &str,
    lo: f64,
    hi: f64,
    counts: &[u64],
    size_px: (u32, u32),
) -> Result<()> {
    draw_histogram(path, title, x_label, (lo, hi), counts, &[], &[], size_px)
}

/// Draws bars for `counts` (equal bins over `range`), red lines at `markers` and the named
/// curves (in counts per bin).
#[allow(clippy::too_many_arguments)]
fn draw_histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    (lo, hi): (f64, f64),
    counts: &[u64],
    markers: &[f64],
    curves: &[(&str, Vec<(f64, f64)>)],
    size_px: (u32, u32),
) -> Result<()> {
    let width = (hi - lo) / counts.len().max(1) as f64;
    let c_max = curves
        .iter()
        .flat_map(|c| &c.1)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    let y_max = (counts.iter().copied().max().unwrap_or(0) as f64)
        .max(c_max)
        .max(1.0)
        * 1.08;
    render(path, size_px, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(lo..hi, 0.0..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_label)
            .y_desc("count")
            .label_style((FONT_FAMILY, 14))
            .draw()?;
        chart.draw_series(counts.iter().enumerate().map(|(b, c)| {
            let x0 = lo + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, *c as f64)], COLOURS[0].filled())
        }))?;
        for m in markers.iter().filter(|m| m.is_finite()) {
            chart.draw_series(LineSeries::new(
                vec![(*m, 0.0), (*m, y_max)],
                COLOURS[3].stroke_width(2),
            ))?;
        }
        for (i, (name, pts)) in curves.iter().enumerate() {
            let colour = COLOURS[(i + 1) % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        if !curves.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT_FAMILY, 14))
                .draw()?;
        }
        Ok(())
    })
}

/// Line plot of named `series` of `(x, y)` points against shared axes, with a legend; with
/// `log_y` the y axis is logarithmic (points with `y ≤ 0` are left out). Written as a
/// `size_px` PNG to `path`. For the noise model, pass x as spatial frequency (1/Å) or shell
/// and say so in `x_label`.
pub fn lines_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
    log_y: bool,
    size_px: (u32, u32),
) -> Result<()> {
    // On a log axis, plot log10(y) and label ticks with 10^v.
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, s)| {
            s.iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .map(|(x, y)| (*x, ty(*y)))
                .collect()
        })
        .collect();
    let (x_lo, x_hi) = finite_range(pts.iter().flatten().map(|p| p.0));
    let (y_lo, y_hi) = finite_range(pts.iter().flatten().map(|p| p.1));
    let y_pad = 0.05 * (y_hi - y_lo);
    let (y_lo, y_hi) = (y_lo - y_pad, y_hi + y_pad);
    render(path, size_px, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT_FAMILY, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
        let y_fmt = |v: &f64| {
            if log_y {
                format!("{:.1e}", 10f64.powf(*v))
            } else {
                format!("{:.3}", v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .y_label_formatter(&y_fmt)
            .label_style((FONT_FAMILY, 14))
            .draw()?;
        for (i, ((name, _), p)) in series.iter().zip(&pts).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(p.iter().copied(), colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a PNG and returns its size and number of distinct colours.
    fn decode(path: &Path) -> ((u32, u32), usize) {
        let img = image::open(path).expect("valid PNG").to_rgb8();
        let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        colours.sort_unstable();
        colours.dedup();
        (img.dimensions(), colours.len())
    }

    #[test]
    fn histogram_is_a_png_of_the_requested_size_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ess.png");
        let values: Vec<f64> = (0..1000).map(|i| 1.0 + (i % 37) as f64 / 10.0).collect();
        histogram_png(
            &path,
            "ESS",
            "effective sample size",
            &values,
            30,
            &[1.5, 2.8],
            (640, 480),
        )
        .unwrap();
        let (size, n_colours) = decode(&path);
        assert_eq!(size, (640, 480));
        assert!(
            n_colours > 10,
            "{n_colours} colours: the plot is (nearly) blank"
        );
        assert!(!dir.path().join("ess.png.tmp").exists());
        // Degenerate input (no finite values, one bin) still gives a valid plot.
        histogram_png(&path, "empty", "x", &[f64::NAN], 1, &[], PLOT_SIZE_PX).unwrap();
        assert_eq!(decode(&path).0, PLOT_SIZE_PX);
    }

    #[test]
    fn lines_plot_linear_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<(f64, f64)> = (1..50)
            .map(|k| (k as f64 / 100.0, 1e4 / k as f64))
            .collect();
        let b: Vec<(f64, f64)> = (1..50)
            .map(|k| (k as f64 / 100.0, 5e3 / k as f64))
            .collect();
        let c: Vec<(f64, f64)> = (1..50).map(|k| (k as f64 / 100.0, 0.0)).collect();
        let series = [
            ("current sigma", a.as_slice()),
            ("current noise", b.as_slice()),
            ("initial sigma", c.as_slice()),
        ];
        for log_y in [false, true] {
            let path = dir.path().join(format!("noise_{log_y}.png"));
            lines_png(
                &path,
                "noise model",
                "1/Å",
                "σ²",
                &series,
                log_y,
                (700, 500),
            )
            .unwrap();
            let (size, n_colours) = decode(&path);
            assert_eq!(size, (700, 500));
            assert!(n_colours > 10, "{n_colours} colours");
        }
    }

    #[test]
    fn too_small_or_unwritable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = histogram_png(
            &dir.path().join("a.png"),
            "t",
            "x",
            &[1.0],
            5,
            &[],
            (10, 10),
        );
        assert!(e.is_err());
        let bad = dir.path().join("no_such_dir").join("a.png");
        assert!(histogram_png(&bad, "t", "x", &[1.0], 5, &[], PLOT_SIZE_PX).is_err());
    }
}
