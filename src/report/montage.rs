//! Class-average montage PNG: the class images in a grid, each normalised on its own, with a
//! text label above each (particle count and FRC resolution, see [`class_label`]), an
//! optional corner label at the bottom right inside each image (classify2d: the median ESS of
//! the class's particles), and a scale bar on the left-most image of every other row (rows
//! 0, 2, 4, …), as the 2D classification seed describes.
//!
//! Layout (all in pixels): every class image is resized to `tile_px × tile_px`; cells are
//! `tile_px` wide and `LABEL_PX + tile_px` high (the label strip on top), separated and
//! surrounded by `PAD_PX` of dark background. Tile `t` sits in row `t / ncols`, column
//! `t % ncols`. Image row 0 is at the top (as the arrays are stored, like `mrcfile`'s and
//! RELION's display).
//!
//! Grey levels: each image is mapped linearly from `[μ − 3σ, μ + 3σ]` (its own mean and
//! standard deviation) to `[0, 255]` and clipped; a constant image is black.

use std::path::Path;

use image::{imageops, GrayImage, Luma, Rgb, RgbImage};
use ndarray::{ArrayView2, ArrayView3, Axis};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::plot::{ensure_font, write_png_atomic, FONT_FAMILY};

/// Background between and around tiles.
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
/// Height of the text strip above each tile.
pub const LABEL_PX: u32 = 20;
/// Gap between cells and around the montage.
pub const PAD_PX: u32 = 4;

/// How to lay out a montage.
#[derive(Clone, Debug)]
pub struct MontageStyle {
    /// Tiles per row (at least 1).
    pub ncols: usize,
    /// Side of each tile in pixels (images are resized to it).
    pub tile_px: u32,
    /// Pixel size of the input images (Å/pixel).
    pub psize_a: f64,
    /// Length of the scale bar (Å).
    pub scale_bar_a: f64,
}

/// The label under a class: particle count and, when known, the FRC resolution,
/// e.g. `"1234 ptcls  8.3 Å"`.
pub fn class_label(count: usize, frc_res_a: Option<f64>) -> String {
    match frc_res_a {
        Some(r) if r.is_finite() => format!("{count} ptcls  {r:.1} Å"),
        _ => format!("{count} ptcls"),
    }
}

/// Columns actually used and rows for `n` tiles.
fn grid(n: usize, style: &MontageStyle) -> (usize, usize) {
    let ncols = style.ncols.max(1).min(n.max(1));
    (ncols, n.div_ceil(ncols).max(1))
}

/// Size `(width, height)` of the montage of `n` tiles.
pub fn montage_size_px(n: usize, style: &MontageStyle) -> (u32, u32) {
    let (ncols, nrows) = grid(n, style);
    (
        PAD_PX + ncols as u32 * (style.tile_px + PAD_PX),
        PAD_PX + nrows as u32 * (style.tile_px + LABEL_PX + PAD_PX),
    )
}

/// Top-left corner of tile `t`'s image in the montage (its label strip is the `LABEL_PX`
/// above).
pub fn tile_origin_px(t: usize, n: usize, style: &MontageStyle) -> (u32, u32) {
    let (ncols, _) = grid(n, style);
    let (row, col) = ((t / ncols) as u32, (t % ncols) as u32);
    (
        PAD_PX + col * (style.tile_px + PAD_PX),
        PAD_PX + LABEL_PX + row * (style.tile_px + LABEL_PX + PAD_PX),
    )
}

/// The scale bar as `(x, y, width, height)` relative to its tile's top-left corner, for
/// images of `box_px` pixels: `scale_bar_a / psize_a` image pixels long (resized with the
/// tile, clamped to fit), near the bottom-left corner.
pub fn scale_bar_rect_px(box_px: usize, style: &MontageStyle) -> (u32, u32, u32, u32) {
    let t = style.tile_px;
    let margin = (t / 16).max(3);
    let thick = (t / 40).max(2);
    let len = (style.scale_bar_a / style.psize_a * t as f64 / box_px as f64).round();
    let len = (len.max(1.0) as u32).min(t.saturating_sub(2 * margin).max(1));
    (margin, t.saturating_sub(margin + thick), len, thick)
}

/// One image mapped to 8-bit grey levels (module comment).
fn to_gray(img: ArrayView2<f32>) -> GrayImage {
    let (ny, nx) = img.dim();
    let n = img.len().max(1) as f64;
    let mean = img.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = img.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt();
    let lo = mean - 3.0 * sd;
    GrayImage::from_fn(nx as u32, ny as u32, |x, y| {
        let v = img[[y as usize, x as usize]] as f64;
        let g = if sd > 0.0 && v.is_finite() {
            ((v - lo) / (6.0 * sd) * 255.0).round().clamp(0.0, 255.0)
        } else {
            0.0
        };
        Luma([g as u8])
    })
}

/// Writes the montage of `images` `(n, box, box)` with `labels` (one per image, above it)
/// and, if given, `corners` (one per image, at its bottom right) to `path` (via
/// `<path>.tmp`).
pub fn montage_png(
    path: &Path,
    images: ArrayView3<f32>,
    labels: &[String],
    corners: Option<&[String]>,
    style: &MontageStyle,
) -> Result<()> {
    let (n, ny, nx) = images.dim();
    if ny != nx || n == 0 || style.tile_px < 8 {
        return Err(Error::Input(format!(
            "montage {}: need at least one square image and tiles of at least 8 px \
             (got {n} images of {ny}×{nx}, tile {} px)",
            path.display(),
            style.tile_px
        )));
    }
    if labels.len() != n || corners.is_some_and(|c| c.len() != n) {
        return Err(Error::Internal(format!(
            "montage {}: {} labels and {} corner labels for {n} images",
            path.display(),
            labels.len(),
            corners.map_or(0, |c| c.len())
        )));
    }
    if !(style.psize_a > 0.0 && style.scale_bar_a > 0.0) {
        return Err(Error::Input(format!(
            "montage {}: pixel size {} Å and scale bar {} Å must be positive",
            path.display(),
            style.psize_a,
            style.scale_bar_a
        )));
    }
    let (w, h) = montage_size_px(n, style);
    let (ncols, _) = grid(n, style);
    let t = style.tile_px;
    let mut canvas = RgbImage::from_pixel(w, h, BACKGROUND);
    let bar = scale_bar_rect_px(nx, style);
    for (i, img) in images.axis_iter(Axis(0)).enumerate() {
        let gray = to_gray(img);
        let gray = if t as usize == nx {
            gray
        } else {
            imageops::resize(&gray, t, t, imageops::FilterType::Triangle)
        };
        let tile = RgbImage::from_fn(t, t, |x, y| {
            let g = gray.get_pixel(x, y).0[0];
            Rgb([g, g, g])
        });
        let (x0, y0) = tile_origin_px(i, n, style);
        imageops::replace(&mut canvas, &tile, x0 as i64, y0 as i64);
        if i % ncols == 0 && (i / ncols).is_multiple_of(2) {
            let (bx, by, bw, bh) = bar;
            for y in y0 + by..y0 + by + bh {
                for x in x0 + bx..x0 + bx + bw {
                    canvas.put_pixel(x, y, Rgb([255, 255, 255]));
                }
            }
        }
    }
    // Text: plotters (same vendored font as the plots) drawing onto the RGB buffer.
    ensure_font();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let font_px = (LABEL_PX as f64 * 0.7).round();
        let label_style = TextStyle::from((FONT_FAMILY, font_px).into_font()).color(&WHITE);
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
            for (i, label) in labels.iter().enumerate() {
                let (x0, y0) = tile_origin_px(i, n, style);
                let pos = (x0 as i32 + 2, (y0 - LABEL_PX) as i32 + 3);
                root.draw(&Text::new(label.clone(), pos, label_style.clone()))?;
                if let Some(c) = corners {
                    corner_text(&root, &c[i], (x0, y0), t)?;
                }
                if i % ncols == 0 && (i / ncols).is_multiple_of(2) {
                    // The bar's length, just above it.
                    let (bx, by, _, _) = bar;
                    let size = (t as f64 / 10.0).clamp(8.0, 14.0);
                    let s = TextStyle::from((FONT_FAMILY, size).into_font()).color(&WHITE);
                    let pos = ((x0 + bx) as i32, (y0 + by) as i32 - size as i32 - 2);
                    root.draw(&Text::new(format!("{} Å", style.scale_bar_a), pos, s))?;
                }
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| Error::file(path, format!("cannot draw montage labels: {e}")))?;
    }
    write_png_atomic(path, &buf, w, h)
}

/// `text` at the bottom right inside the tile whose image starts at `(x0, y0)`, white on a
/// dark box so it reads over any image.
fn corner_text<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    (x0, y0): (u32, u32),
    t: u32,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let size = (t as f64 / 9.0).clamp(8.0, 13.0);
    let style = TextStyle::from((FONT_FAMILY, size).into_font()).color(&WHITE);
    let (tw, th) = root.estimate_text_size(text, &style)?;
    let (x1, y1) = ((x0 + t) as i32 - 2, (y0 + t) as i32 - 2);
    let (xa, ya) = (x1 - tw as i32 - 2, y1 - th as i32 - 2);
    root.draw(&Rectangle::new(
        [(xa, ya), (x1, y1)],
        RGBColor(BACKGROUND.0[0], BACKGROUND.0[1], BACKGROUND.0[2]).filled(),
    ))?;
    root.draw(&Text::new(text.to_string(), (xa + 1, ya + 1), style))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn montage_size_labels_and_scale_bars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classes.png");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (n, box_px) = (7usize, 32usize);
        let images = Array3::from_shape_fn((n, box_px, box_px), |_| rng.gen_range(-1.0f32..1.0));
        let labels: Vec<String> = (0..n).map(|i| class_label(100 * i, Some(7.5))).collect();
        let style = MontageStyle {
            ncols: 3,
            tile_px: 96,
            psize_a: 2.0,
            scale_bar_a: 20.0,
        };
        let corners: Vec<String> = (0..n).map(|i| format!("ESS {i}.5")).collect();
        montage_png(&path, images.view(), &labels, Some(&corners), &style).unwrap();
        assert!(!dir.path().join("classes.png.tmp").exists());
        let img = image::open(&path).unwrap().to_rgb8();
        // 3 columns × 3 rows of 96-px tiles, 20-px labels, 4-px gaps.
        assert_eq!(montage_size_px(n, &style), (4 + 3 * 100, 4 + 3 * 120));
        assert_eq!(img.dimensions(), montage_size_px(n, &style));
        // Scale bar: 20 Å / 2 Å = 10 image px = 30 tile px (clear of the corner label), on tiles 0 and 6 (rows 0 and 2).
        let (bx, by, bw, bh) = scale_bar_rect_px(box_px, &style);
        assert_eq!(bw, 30);
        let white_bar = |t: usize| {
            let (x0, y0) = tile_origin_px(t, n, &style);
            (y0 + by..y0 + by + bh)
                .all(|y| (x0 + bx..x0 + bx + bw).all(|x| img.get_pixel(x, y).0 == [255; 3]))
        };
        assert!(white_bar(0) && white_bar(6), "scale bars on rows 0 and 2");
        assert!(!white_bar(3), "no scale bar on row 1");
        assert!(!white_bar(1), "only on the left-most tile");
        // Labels: some white text pixels in the strip above tile 0; the corner label's dark
        // box at the bottom right of the (random, mid-grey on average) image; the empty cell
        // stays background.
        let (x0, y0) = tile_origin_px(0, n, &style);
        assert_eq!(y0, 4 + 20);
        let corner = (y0 + 80..y0 + 93)
            .flat_map(|y| (x0 + 60..x0 + 93).map(move |x| (x, y)))
            .filter(|(x, y)| img.get_pixel(*x, *y).0 == BACKGROUND.0)
            .count();
        assert!(
            corner > 100,
            "{corner} background pixels in the corner label"
        );
        let text = (y0 - 20..y0)
            .flat_map(|y| (x0..x0 + 96).map(move |x| (x, y)))
            .filter(|(x, y)| img.get_pixel(*x, *y).0[0] > 128)
            .count();
        assert!(text > 20, "{text} bright pixels in the label strip");
        let (x8, y8) = tile_origin_px(8, 9, &style);
        assert_eq!(img.get_pixel(x8 + 48, y8 + 48).0, BACKGROUND.0);
    }

    #[test]
    fn normalisation_and_bad_input() {
        let a = ndarray::Array2::from_shape_fn((8, 8), |(i, _)| i as f32);
        let g = to_gray(a.view());
        assert!(
            g.get_pixel(0, 0).0[0] < g.get_pixel(0, 7).0[0],
            "row 7 is brighter"
        );
        let c = ndarray::Array2::<f32>::from_elem((8, 8), 5.0);
        assert!(to_gray(c.view()).pixels().all(|p| p.0[0] == 0));
        assert_eq!(class_label(12, None), "12 ptcls");
        assert_eq!(class_label(12, Some(8.04)), "12 ptcls  8.0 Å");
        let dir = tempfile::tempdir().unwrap();
        let style = MontageStyle {
            ncols: 2,
            tile_px: 32,
            psize_a: 1.0,
            scale_bar_a: 10.0,
        };
        let imgs = Array3::<f32>::zeros((2, 16, 16));
        let p = dir.path().join("m.png");
        assert!(montage_png(&p, imgs.view(), &["a".into()], None, &style).is_err());
        let wide = Array3::<f32>::zeros((2, 16, 12));
        assert!(montage_png(&p, wide.view(), &["a".into(), "b".into()], None, &style).is_err());
        montage_png(&p, imgs.view(), &["a".into(), "b".into()], None, &style).unwrap();
        assert_eq!(
            image::open(&p).unwrap().to_rgb8().dimensions(),
            (4 + 2 * 36, 4 + 56)
        );
    }
}
