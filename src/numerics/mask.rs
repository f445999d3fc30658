//! Soft circular masks for real-space images (2D class averages are masked with one at every
//! iteration, as the 2D classification seed describes).
//!
//! Convention: the mask is centred at pixel `(box/2, box/2)` (row, column), the same origin
//! as the rest of the crate (RELION's, and the real-space centre that [`crate::numerics::fft`]
//! puts at frequency phase zero after `fftshift`). With `r` the distance in pixels from the
//! centre, `r_in = d_in_a / (2·psize_a)` and `r_out = d_out_a / (2·psize_a)`:
//! ```text
//! m(r) = 1                                         r ≤ r_in
//!        ½ · (1 + cos(π · (r − r_in) / (r_out − r_in)))   r_in < r < r_out   (raised cosine)
//!        0                                         r ≥ r_out
//! ```
//! `d_out_a == d_in_a` gives a hard edge (1 for `r ≤ r_in`, 0 outside).

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};

/// The soft circular mask `(box_px, box_px)` of inner diameter `d_in_a` and outer diameter
/// `d_out_a` (Å) at pixel size `psize_a` (Å/pixel). Errors when a diameter or the pixel size is
/// not positive and finite, or when `d_out_a < d_in_a`.
pub fn soft_circular_mask(
    box_px: usize,
    psize_a: f64,
    d_in_a: f64,
    d_out_a: f64,
) -> Result<Array2<f32>> {
    let ok = |v: f64| v.is_finite() && v > 0.0;
    if !ok(psize_a) || !ok(d_in_a) || !ok(d_out_a) {
        return Err(Error::Plan(format!(
            "soft circular mask: pixel size {psize_a} Å and diameters {d_in_a} Å, {d_out_a} Å \
             must be positive"
        )));
    }
    if d_out_a < d_in_a {
        return Err(Error::Plan(format!(
            "soft circular mask: outer diameter {d_out_a} Å is smaller than the inner \
             diameter {d_in_a} Å; set the outer diameter to at least the inner one"
        )));
    }
    let r_in_px = d_in_a / (2.0 * psize_a);
    let r_out_px = d_out_a / (2.0 * psize_a);
    let c = (box_px / 2) as f64;
    Ok(Array2::from_shape_fn((box_px, box_px), |(i, j)| {
        let r_px = ((i as f64 - c).powi(2) + (j as f64 - c).powi(2)).sqrt();
        mask_value(r_px, r_in_px, r_out_px) as f32
    }))
}

/// The raised-cosine profile of the module comment at radius `r_px`.
fn mask_value(r_px: f64, r_in_px: f64, r_out_px: f64) -> f64 {
    if r_px <= r_in_px {
        1.0
    } else if r_px >= r_out_px {
        0.0
    } else {
        0.5 * (1.0 + (std::f64::consts::PI * (r_px - r_in_px) / (r_out_px - r_in_px)).cos())
    }
}

/// Multiplies `image` in place by `mask` (same shape): the background goes to 0.
pub fn apply_mask(mut image: ArrayViewMut2<f32>, mask: ArrayView2<f32>) {
    assert_eq!(image.dim(), mask.dim(), "apply_mask: shapes differ");
    image.zip_mut_with(&mask, |v, m| *v *= *m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_one_inside_zero_outside_and_half_midway() {
        // box 64, 2 Å/px, inner 40 Å (r_in = 10 px), outer 60 Å (r_out = 15 px).
        let m = soft_circular_mask(64, 2.0, 40.0, 60.0).unwrap();
        assert_eq!(m[[32, 32]], 1.0, "centre");
        assert_eq!(m[[32, 42]], 1.0, "r = 10 px is inside");
        assert_eq!(m[[32, 47]], 0.0, "r = 15 px is outside");
        assert_eq!(m[[0, 0]], 0.0, "corner");
        // r = 12.5 px, halfway through the edge: ½(1 + cos(π/2)) = 0.5.
        let mid = mask_value(12.5, 10.0, 15.0);
        assert!((mid - 0.5).abs() < 1e-12);
        // Monotone along a radius, and symmetric about the centre.
        for j in 32..63 {
            assert!(m[[32, j + 1]] <= m[[32, j]]);
            assert_eq!(m[[32, j]], m[[32, 64 - j]]);
            assert_eq!(m[[32, j]], m[[j, 32]]);
        }
        // At r = 13 px: ½(1 + cos(0.6π)).
        let expect = 0.5 * (1.0 + (0.6 * std::f64::consts::PI).cos());
        assert!((m[[32, 45]] as f64 - expect).abs() < 1e-6);
    }

    #[test]
    fn hard_edge_and_bad_parameters() {
        let m = soft_circular_mask(32, 1.0, 10.0, 10.0).unwrap();
        assert_eq!(m[[16, 21]], 1.0);
        assert_eq!(m[[16, 22]], 0.0);
        assert!(soft_circular_mask(32, 1.0, 20.0, 10.0).is_err());
        assert!(soft_circular_mask(32, 0.0, 10.0, 20.0).is_err());
        assert!(soft_circular_mask(32, 1.0, f64::NAN, 20.0).is_err());
    }

    #[test]
    fn apply_mask_zeroes_the_background() {
        let m = soft_circular_mask(32, 1.0, 8.0, 12.0).unwrap();
        let mut img = Array2::<f32>::from_elem((32, 32), 2.0);
        apply_mask(img.view_mut(), m.view());
        assert_eq!(img[[16, 16]], 2.0);
        assert_eq!(img[[0, 0]], 0.0);
        assert!(img[[16, 21]] > 0.0 && img[[16, 21]] < 2.0);
    }
}
