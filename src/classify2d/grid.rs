//! The working Fourier grid of 2D classification, the alignment band and the pose grid.
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

use crate::numerics::fft::{fftfreq, half_len};
use crate::numerics::image2d::{cropped_box_px, shell_at_resolution};

/// The cropped Fourier grid the particles and class averages live on.
#[derive(Clone, Debug)]
pub struct WorkGrid {
    /// Input box, pixels.
    pub box_in: usize,
    /// Input pixel size, Å.
    pub psize_in_a: f64,
    /// Working box, pixels.
    pub n: usize,
    /// Last shell kept (`max_res_A`).
    pub k_max: usize,
    /// Shell of every half-plane coefficient (`n × (n/2+1)`, row-major); `> k_max` outside.
    pub shell: Vec<u16>,
    /// Integer frequency indices of every coefficient.
    pub kx: Vec<i32>,
    pub ky: Vec<i32>,
}

impl WorkGrid {
    /// The grid keeping resolutions down to `max_res_a` of a `box_in` image.
    pub fn new(box_in: usize, psize_in_a: f64, max_res_a: f64) -> WorkGrid {
        let k_max = shell_at_resolution(max_res_a, box_in, psize_in_a);
        let n = cropped_box_px(box_in, k_max);
        let h = half_len(n);
        let mut shell = Vec::with_capacity(n * h);
        let (mut kx, mut ky) = (Vec::with_capacity(n * h), Vec::with_capacity(n * h));
        for i in 0..n {
            let y = fftfreq(i, n);
            for j in 0..h {
                let r = ((y * y + (j * j) as i64) as f64).sqrt().round() as usize;
                shell.push(r.min(u16::MAX as usize) as u16);
                kx.push(j as i32);
                ky.push(y as i32);
            }
        }
        WorkGrid {
            box_in,
            psize_in_a,
            n,
            k_max,
            shell,
            kx,
            ky,
        }
    }
    /// Half-plane columns, `n/2 + 1`.
    pub fn h(&self) -> usize {
        half_len(self.n)
    }
    /// Coefficients of the half plane.
    pub fn len(&self) -> usize {
        self.n * self.h()
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Shells `0..=k_max`.
    pub fn n_shells(&self) -> usize {
        self.k_max + 1
    }
    /// Pixel size of the working box, Å.
    pub fn psize_a(&self) -> f64 {
        self.psize_in_a * self.box_in as f64 / self.n as f64
    }
    /// Spatial frequency of coefficient `c` in Å⁻¹, `(kx, ky)`.
    pub fn freq_a(&self, c: usize) -> (f64, f64) {
        let s = 1.0 / (self.box_in as f64 * self.psize_in_a);
        (self.kx[c] as f64 * s, self.ky[c] as f64 * s)
    }
    /// Resolution of shell `k`, Å.
    pub fn shell_res_a(&self, k: usize) -> f64 {
        self.box_in as f64 * self.psize_in_a / k.max(1) as f64
    }
    /// Shell at resolution `res_a`, clamped to `k_max`.
    pub fn shell_at(&self, res_a: f64) -> usize {
        shell_at_resolution(res_a, self.box_in, self.psize_in_a).min(self.k_max)
    }
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
    fn working_grid_keeps_integer_frequencies() {
        let g = WorkGrid::new(128, 2.0, 6.0);
        assert_eq!(g.k_max, 42);
        assert_eq!(g.n, 86);
        assert!((g.psize_a() - 2.0 * 128.0 / 86.0).abs() < 1e-12);
        let c = 3 * g.h() + 5;
        assert_eq!((g.kx[c], g.ky[c]), (5, 3));
        let c = (g.n - 2) * g.h() + 1;
        assert_eq!((g.kx[c], g.ky[c]), (1, -2));
        let (fx, fy) = g.freq_a(c);
        assert!((fx - 1.0 / 256.0).abs() < 1e-12 && (fy + 2.0 / 256.0).abs() < 1e-12);
    }

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
