//! The working Fourier grid shared by the classification jobs: particles are Fourier-cropped
//! once to shells `0..=k_max` with `k_max = shell_at_resolution(max_res_A)`, a box of
//! `n = cropped_box_px(box, k_max)` pixels of size `psize·box/n`. Frequencies keep their
//! integer indices `(kx, ky)` of the input box, so a frequency in Å⁻¹ is `k / (box·psize)`
//! and a shift of `s` input pixels is the phase `exp(−2πi k·s / box)`.

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
}
