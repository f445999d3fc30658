//! The alignment band and the pose grid of 2D classification, on the shared working grid
//! ([`crate::particles::grid::WorkGrid`]).
//!
//! - **Working grid**: particles are Fourier-cropped once to shells `0..=k_max` with
//!   `k_max = shell_at_resolution(max_res_A)`, a box of `n = cropped_box_px(box, k_max)`
//!   pixels of size `psize·box/n`. Frequencies keep their integer indices `(kx, ky)` of the
//!   input box, so a frequency in Å⁻¹ is `k / (box·psize)` and a shift of `s` input pixels
//!   is the phase `exp(−2πi k·s / box)`.
//! - **Band**: the half-plane coefficients used for alignment, shells `k_lo..=k_hi`,
//!   each complex coefficient of the full plane counted once (the `kx = 0, ky < 0` half of the
//!   first column is the mirror of `ky > 0` and is left out).
//! - **Poses**: in-plane angles `ψ_r = 2π r / R` with `R = max(8, ⌈2π·k_hi / 1.5⌉)` rounded up
//!   to a multiple of 4 (an arc of at most 1.5 Fourier pixels at the band edge), times shifts
//!   on the integer input-pixel grid inside a disc of radius `max_shift_px`. Pose index
//!   `j = r·T + t`.

pub use crate::particles::grid::WorkGrid;

/// Coarsest alignment limit of the first iteration, Å (raised as the classes improve).
pub const START_ALIGN_RES_A: f64 = 25.0;

/// The alignment shells of a run: the high-pass `k_lo` (`min_align_res_A`, else 1), the
/// finest limit `k_align` (`max_align_res_A`) and the first iteration's limit `k_start`
/// ([`START_ALIGN_RES_A`], at least two shells above `k_lo`, at most `k_align`).
pub fn align_shells(grid: &WorkGrid, align_res_a: f64, min_align_res_a: Option<f64>) -> [usize; 3] {
    let k_align = grid.shell_at(align_res_a);
    let k_lo = min_align_res_a
        .map(|r| grid.shell_at(r).max(1))
        .unwrap_or(1);
    let k_start = grid
        .shell_at(START_ALIGN_RES_A)
        .clamp((k_lo + 2).min(k_align), k_align);
    [k_lo, k_align, k_start]
}

/// The coefficients used for alignment.
#[derive(Clone, Debug)]
pub struct Band {
    pub k_lo: usize,
    pub k_hi: usize,
    /// Index into the working half plane of each band coefficient.
    pub idx: Vec<u32>,
    /// Shell of each band coefficient.
    pub shell: Vec<u16>,
}

impl Band {
    /// Shells `k_lo..=k_hi` of `grid` (k_lo ≥ 1: the DC term carries no alignment signal
    /// after normalisation).
    pub fn new(grid: &WorkGrid, k_lo: usize, k_hi: usize) -> Band {
        let k_lo = k_lo.max(1);
        let k_hi = k_hi.min(grid.k_max).max(k_lo);
        let mut idx = Vec::new();
        let mut shell = Vec::new();
        for c in 0..grid.len() {
            let s = grid.shell[c] as usize;
            if s < k_lo || s > k_hi || (grid.kx[c] == 0 && grid.ky[c] < 0) {
                continue;
            }
            idx.push(c as u32);
            shell.push(s as u16);
        }
        Band {
            k_lo,
            k_hi,
            idx,
            shell,
        }
    }
    pub fn len(&self) -> usize {
        self.idx.len()
    }
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }
}

/// In-plane angles × shifts searched in the E-step.
#[derive(Clone, Debug)]
pub struct PoseGrid {
    pub psi_rad: Vec<f64>,
    /// Shifts `(x, y)` in input pixels: the translation that centres the particle.
    pub shifts_px: Vec<[f64; 2]>,
}

impl PoseGrid {
    /// The grid for a band reaching shell `k_hi`, shifts within `max_shift_px`.
    pub fn new(k_hi: usize, max_shift_px: f64) -> PoseGrid {
        let r = (std::f64::consts::TAU * k_hi as f64 / 1.5).ceil() as usize;
        let r = r.max(8).div_ceil(4) * 4;
        let psi_rad = (0..r)
            .map(|i| std::f64::consts::TAU * i as f64 / r as f64)
            .collect();
        let m = max_shift_px.floor() as i64;
        let mut shifts_px = Vec::new();
        for y in -m..=m {
            for x in -m..=m {
                if ((x * x + y * y) as f64) <= max_shift_px * max_shift_px + 1e-9 {
                    shifts_px.push([x as f64, y as f64]);
                }
            }
        }
        PoseGrid { psi_rad, shifts_px }
    }
    pub fn n_rot(&self) -> usize {
        self.psi_rad.len()
    }
    pub fn n_shift(&self) -> usize {
        self.shifts_px.len()
    }
    /// R·T.
    pub fn len(&self) -> usize {
        self.n_rot() * self.n_shift()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (rotation, shift) of pose `j`.
    pub fn split(&self, j: usize) -> (usize, usize) {
        (j / self.n_shift(), j % self.n_shift())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_counts_each_coefficient_once() {
        let g = WorkGrid::new(64, 1.0, 2.0);
        let b = Band::new(&g, 1, 10);
        // Half of the ring 1..=10 of the full plane: about π·10.5²/2 − small.
        let full: usize = (0..g.len())
            .filter(|&c| (1..=10).contains(&(g.shell[c] as usize)))
            .count();
        assert!(
            b.len() < full && b.len() > 150 && b.len() < 180,
            "{}",
            b.len()
        );
        assert!(b
            .idx
            .iter()
            .all(|&c| !(g.kx[c as usize] == 0 && g.ky[c as usize] < 0)));
    }

    #[test]
    fn pose_grid_sizes() {
        let p = PoseGrid::new(16, 5.0);
        assert_eq!(p.n_rot() % 4, 0);
        assert!(p.n_rot() >= 67);
        assert_eq!(p.n_shift(), 81);
        assert_eq!(p.split(p.n_shift() + 2), (1, 2));
        assert_eq!(PoseGrid::new(1, 0.0).len(), 8);
    }
}
