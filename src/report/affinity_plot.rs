//! The affinity-matrix plot of Rebalance 2D Classes (PNG): a K×K heatmap of the affinity
//! between class averages ([`crate::curate::affinity`]) on a fixed `[0, 1]` colour scale
//! (viridis: dark = unlike, yellow = alike) with a colour bar, rows and columns in a given
//! class order, and thin lines between consecutive superclass blocks. In the order of
//! [`crate::curate::cluster::sorted_order`] a well-clustered matrix shows one bright square
//! per superclass along the diagonal, as the seed describes.
//!
//! Layout: row 0 of the order at the top, column 0 at the left; tick labels are the original
//! class indices (every class when K ≤ 20, otherwise every s-th position with
//! s ∈ {2, 5, 10, 20, …}). Cells are rasterised pixel by pixel, so the cost does not grow
//! with K. Same conventions as [`crate::report::plot`]: the vendored font, drawn in memory,
//! written atomically; wrong shapes are a one-line error naming the path.

use std::path::Path;

use ndarray::ArrayView2;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::report::plot::{render, COLOURS, FONT_FAMILY};

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Size of the affinity-matrix PNG (width, height) in pixels.
pub const AFFINITY_PLOT_SIZE_PX: (u32, u32) = (860, 740);

/// Left and top edge of the matrix, and its side, in pixels.
const MATRIX_X0_PX: i32 = 90;
const MATRIX_Y0_PX: i32 = 55;
const MATRIX_SIDE_PX: i32 = 620;
/// Left edge and width of the colour bar, in pixels.
const BAR_X0_PX: i32 = 740;
const BAR_W_PX: i32 = 24;

/// Cells whose affinity is not finite.
const NAN_CELL: RGBColor = RGBColor(200, 200, 200);

/// Heatmap of `affinity` (K×K, values in `[0, 1]`; outside values are clamped, non-finite
/// ones grey) with rows and columns in `order` (a permutation of `0..K`: position p shows
/// class `order[p]`). With `labels` (superclass of each class, indexed by class), a line is
/// drawn between positions p−1 and p wherever `labels[order[p−1]] ≠ labels[order[p]]`.
/// Writes a PNG of [`AFFINITY_PLOT_SIZE_PX`] to `path`; K = 0 gives an empty frame.
///
/// Errors ([`Error::Internal`]) when the matrix is not square, `order` is not a permutation of
/// `0..K`, or `labels` does not have K entries; [`Error::File`]/[`Error::Io`] when drawing or
/// writing fails.
pub fn affinity_matrix_png(
    path: &Path,
    affinity: ArrayView2<f64>,
    order: &[usize],
    labels: Option<&[usize]>,
    title: &str,
) -> Result<()> {
    let k = check_inputs(path, affinity, order, labels)?;
    let boundaries: Vec<usize> = match labels {
        Some(l) => (1..k).filter(|&p| l[order[p - 1]] != l[order[p]]).collect(),
        None => Vec::new(),
    };
    render(path, AFFINITY_PLOT_SIZE_PX, |root| {
        root.fill(&WHITE)?;
        draw_title(root, title)?;
        draw_cells(root, affinity, order)?;
        draw_boundaries(root, k, &boundaries)?;
        draw_axes(root, order)?;
        draw_colour_bar(root)
    })
}

/// Checks shapes; returns K.
fn check_inputs(
    path: &Path,
    affinity: ArrayView2<f64>,
    order: &[usize],
    labels: Option<&[usize]>,
) -> Result<usize> {
    let (r, c) = affinity.dim();
    let internal = |msg: String| Error::Internal(format!("plot {}: {msg}", path.display()));
    if r != c {
        return Err(internal(format!(
            "the affinity matrix must be square (K×K), but it is {r}×{c}"
        )));
    }
    let mut seen = vec![false; r];
    let is_permutation = order.len() == r
        && order
            .iter()
            .all(|&i| i < r && !std::mem::replace(&mut seen[i], true));
    if !is_permutation {
        return Err(internal(format!(
            "the class order must be a permutation of 0..{r} ({} entries given)",
            order.len()
        )));
    }
    if let Some(l) = labels.filter(|l| l.len() != r) {
        return Err(internal(format!(
            "{} superclass labels given for {r} classes",
            l.len()
        )));
    }
    Ok(r)
}

/// Pixel offset of the boundary before position `p` of `k` along the matrix side.
fn edge_px(p: usize, k: usize) -> i32 {
    (p as f64 * MATRIX_SIDE_PX as f64 / k.max(1) as f64).round() as i32
}

/// Position (0..k) of the cell covering pixel offset `off` along the matrix side.
fn cell_at(off: i32, k: usize) -> usize {
    ((off as f64 + 0.5) * k as f64 / MATRIX_SIDE_PX as f64).floor() as usize
}

/// Sequential colormap viridis at `t ∈ [0, 1]` (clamped), by linear interpolation between
/// nine samples of matplotlib's table.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [[u8; 3]; 9] = [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ];
    let [r, g, b] = crate::report::plots3d::interpolate(&STOPS, t);
    RGBColor(r, g, b)
}

/// Colour of one affinity value.
fn cell_colour(a: f64) -> RGBColor {
    if a.is_finite() {
        viridis(a)
    } else {
        NAN_CELL
    }
}

/// The vendored font at `size` px, black, anchored at `pos`.
fn text_style(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, size).into_font())
        .color(&BLACK)
        .pos(Pos::new(h, v))
}

fn draw_title(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
) -> DrawResult {
    let x = MATRIX_X0_PX + MATRIX_SIDE_PX / 2;
    root.draw(&Text::new(
        title.to_string(),
        (x, 24),
        text_style(22.0, HPos::Center, VPos::Center),
    ))?;
    Ok(())
}

/// Rasterises the matrix: each pixel takes the colour of the cell it falls in.
fn draw_cells(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    affinity: ArrayView2<f64>,
    order: &[usize],
) -> DrawResult {
    let k = order.len();
    if k == 0 {
        return draw_frame(root);
    }
    for py in 0..MATRIX_SIDE_PX {
        let row = order[cell_at(py, k).min(k - 1)];
        for px in 0..MATRIX_SIDE_PX {
            let col = order[cell_at(px, k).min(k - 1)];
            let colour = cell_colour(affinity[[row, col]]);
            root.draw_pixel((MATRIX_X0_PX + px, MATRIX_Y0_PX + py), &colour)?;
        }
    }
    draw_frame(root)
}

/// Black outline of the matrix.
fn draw_frame(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>) -> DrawResult {
    let (x0, y0, s) = (MATRIX_X0_PX, MATRIX_Y0_PX, MATRIX_SIDE_PX);
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + s, y0 + s)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// Superclass boundaries: a vertical and a horizontal line before each position in
/// `boundaries`, across the whole matrix.
fn draw_boundaries(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    k: usize,
    boundaries: &[usize],
) -> DrawResult {
    let (x0, y0, s) = (MATRIX_X0_PX, MATRIX_Y0_PX, MATRIX_SIDE_PX);
    let width = if k <= 60 { 2 } else { 1 };
    let style = COLOURS[3].stroke_width(width);
    for &p in boundaries {
        let e = edge_px(p, k);
        root.draw(&PathElement::new(
            vec![(x0 + e, y0), (x0 + e, y0 + s - 1)],
            style,
        ))?;
        root.draw(&PathElement::new(
            vec![(x0, y0 + e), (x0 + s - 1, y0 + e)],
            style,
        ))?;
    }
    Ok(())
}

/// Tick positions 0, s, 2s, … below `k`, `s` ∈ {1, 2, 5, 10, 20, 50, …} the smallest giving
/// at most 20 ticks.
fn tick_positions(k: usize) -> Vec<usize> {
    let mut step = 1usize;
    for scale in (0..).map(|e| 10usize.saturating_pow(e)) {
        if let Some(&m) = [1usize, 2, 5]
            .iter()
            .find(|&&m| k.div_ceil(m.saturating_mul(scale)) <= 20)
        {
            step = m.saturating_mul(scale);
            break;
        }
    }
    (0..k).step_by(step.max(1)).collect()
}

/// Tick marks and labels (original class indices) on the left and bottom, and axis titles.
fn draw_axes(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    order: &[usize],
) -> DrawResult {
    let k = order.len();
    let (x0, y0, s) = (MATRIX_X0_PX, MATRIX_Y0_PX, MATRIX_SIDE_PX);
    let label_px = 13.0;
    for p in tick_positions(k) {
        let c = (edge_px(p, k) + edge_px(p + 1, k)) / 2;
        let text = order[p].to_string();
        root.draw(&PathElement::new(
            vec![(x0 - 5, y0 + c), (x0 - 1, y0 + c)],
            BLACK,
        ))?;
        root.draw(&Text::new(
            text.clone(),
            (x0 - 8, y0 + c),
            text_style(label_px, HPos::Right, VPos::Center),
        ))?;
        root.draw(&PathElement::new(
            vec![(x0 + c, y0 + s), (x0 + c, y0 + s + 4)],
            BLACK,
        ))?;
        root.draw(&Text::new(
            text,
            (x0 + c, y0 + s + 8),
            text_style(label_px, HPos::Center, VPos::Top),
        ))?;
    }
    root.draw(&Text::new(
        "class",
        (x0 + s / 2, y0 + s + 40),
        text_style(15.0, HPos::Center, VPos::Center),
    ))?;
    root.draw(&Text::new(
        "class",
        (22, y0 + s / 2),
        text_style(15.0, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
    ))?;
    Ok(())
}

/// The colour bar: affinity 0 at the bottom to 1 at the top, labelled every 0.2.
fn draw_colour_bar(root: &DrawingArea<BitMapBackend, plotters::coord::Shift>) -> DrawResult {
    let (y0, s) = (MATRIX_Y0_PX, MATRIX_SIDE_PX);
    let (bx, bw) = (BAR_X0_PX, BAR_W_PX);
    for py in 0..s {
        let t = 1.0 - (py as f64 + 0.5) / s as f64;
        root.draw(&PathElement::new(
            vec![(bx, y0 + py), (bx + bw - 1, y0 + py)],
            viridis(t),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bx - 1, y0 - 1), (bx + bw, y0 + s)],
        BLACK.stroke_width(1),
    ))?;
    for q in 0..=5 {
        let t = q as f64 / 5.0;
        let y = y0 + ((1.0 - t) * (s - 1) as f64).round() as i32;
        root.draw(&PathElement::new(
            vec![(bx + bw, y), (bx + bw + 4, y)],
            BLACK,
        ))?;
        root.draw(&Text::new(
            format!("{t:.1}"),
            (bx + bw + 8, y),
            text_style(13.0, HPos::Left, VPos::Center),
        ))?;
    }
    root.draw(&Text::new(
        "affinity",
        (bx + bw + 62, y0 + s / 2),
        text_style(15.0, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn block_affinity(k: usize, n_blocks: usize) -> (Array2<f64>, Vec<usize>) {
        let labels: Vec<usize> = (0..k).map(|i| (i * 7) % n_blocks.max(1)).collect();
        let a = Array2::from_shape_fn((k, k), |(i, j)| {
            if i == j {
                1.0
            } else if labels[i] == labels[j] {
                0.8
            } else {
                0.1 + 0.001 * ((i + j) % 50) as f64
            }
        });
        (a, labels)
    }

    fn sorted_by_label(labels: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by_key(|&i| (labels[i], i));
        order
    }

    #[test]
    fn writes_pngs_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        for (k, n_blocks) in [(1, 1), (6, 2), (100, 7)] {
            let (a, labels) = block_affinity(k, n_blocks);
            let order = sorted_by_label(&labels);
            let path = dir.path().join(format!("affinity_{k}.png"));
            affinity_matrix_png(&path, a.view(), &order, Some(&labels), "Affinity (sorted)")
                .unwrap();
            let (w, h) = image::image_dimensions(&path).unwrap();
            assert_eq!((w, h), AFFINITY_PLOT_SIZE_PX, "K = {k}");
            assert!(std::fs::metadata(&path).unwrap().len() > 1000);
            // The unsorted view, without superclass lines.
            let identity: Vec<usize> = (0..k).collect();
            let path = dir.path().join(format!("affinity_{k}_unsorted.png"));
            affinity_matrix_png(&path, a.view(), &identity, None, "Affinity").unwrap();
            assert!(path.exists());
        }
        assert!(!dir.path().join("affinity_6.png.tmp").exists());
    }

    #[test]
    fn odd_values_and_no_classes_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Array2::<f64>::eye(3);
        a[[0, 1]] = f64::NAN;
        a[[1, 2]] = 1.7;
        a[[2, 0]] = -0.3;
        let path = dir.path().join("odd.png");
        affinity_matrix_png(&path, a.view(), &[2, 0, 1], None, "odd").unwrap();
        let empty = Array2::<f64>::zeros((0, 0));
        let path = dir.path().join("empty.png");
        affinity_matrix_png(&path, empty.view(), &[], Some(&[]), "none").unwrap();
        assert!(path.exists());
    }

    #[test]
    fn cells_follow_the_order() {
        // Class 1 alone is bright against everything: in order [1, 0], the top-left cell is
        // the bright (1, 1) diagonal and the top-right cell (1, 0) is bright too.
        let dir = tempfile::tempdir().unwrap();
        let a = ndarray::arr2(&[[0.0, 1.0], [1.0, 1.0]]);
        let path = dir.path().join("order.png");
        affinity_matrix_png(&path, a.view(), &[1, 0], None, "").unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let at = |p: usize, q: usize| {
            let x = MATRIX_X0_PX + MATRIX_SIDE_PX / 4 + (q as i32) * MATRIX_SIDE_PX / 2;
            let y = MATRIX_Y0_PX + MATRIX_SIDE_PX / 4 + (p as i32) * MATRIX_SIDE_PX / 2;
            img.get_pixel(x as u32, y as u32).0
        };
        let bright = [viridis(1.0).0, viridis(1.0).1, viridis(1.0).2];
        let dark = [viridis(0.0).0, viridis(0.0).1, viridis(0.0).2];
        assert_eq!(at(0, 0), bright);
        assert_eq!(at(0, 1), bright);
        assert_eq!(at(1, 1), dark, "cell (0, 0) of the matrix, bottom right");
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let rect = Array2::<f64>::zeros((3, 4));
        let e = affinity_matrix_png(&path, rect.view(), &[0, 1, 2], None, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("square"), "{e}");
        let sq = Array2::<f64>::eye(3);
        for order in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
            assert!(affinity_matrix_png(&path, sq.view(), order, None, "").is_err());
        }
        assert!(affinity_matrix_png(&path, sq.view(), &[0, 1, 2], Some(&[0, 1]), "").is_err());
        assert!(!path.exists());
    }

    #[test]
    fn ticks_are_few_for_large_k() {
        assert_eq!(tick_positions(0), Vec::<usize>::new());
        assert_eq!(tick_positions(1), vec![0]);
        assert_eq!(tick_positions(20).len(), 20);
        assert_eq!(tick_positions(21), (0..21).step_by(2).collect::<Vec<_>>());
        assert_eq!(tick_positions(100), (0..100).step_by(5).collect::<Vec<_>>());
        assert!(tick_positions(5000).len() <= 20);
    }
}
