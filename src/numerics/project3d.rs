//! Projection of 3D volumes by the central-slice theorem and back-projection of 2D slices
//! into a 3D Fourier volume (the numerics of 3D classification).
//!
//! Conventions (those of the simulator and RELION): a particle at pose A (the ZYZ matrix of
//! [`crate::numerics::rotation`]) is the projection along z of the rotated volume,
//! `P(x, y) = ∫ V(Aᵀ (x, y, z)) dz`, so its 2D spectrum is the 3D spectrum on the central
//! slice `F_P(kx, ky) = F_V(Aᵀ (kx, ky, 0))`. Volumes are `(z, y, x)` arrays with the origin
//! at `(n/2, n/2, n/2)`; 2D spectra are the half planes of `fft.rs` for images centred at
//! `(n/2, n/2)`.
//!
//! - **Oversampling**: the volume is zero-padded to `m = pad·n` before the 3D transform, so
//!   the slice is sampled on a grid `pad` times finer than the image's and trilinear
//!   interpolation loses little; `F_V(k)` of the original is `F_pad(pad·k)`.
//! - **Gridding correction**: trilinear interpolation in Fourier space multiplies the real
//!   space by `sinc²(x/m)` per axis; the projector divides the volume by it before the
//!   transform and the back-projector divides the reconstruction by it afterwards.
//! - Hermitian symmetry gives the `kx < 0` half: `F(−k) = conj F(k)`.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

use super::fft::{fftfreq, half_len, irfft2, irfft3, rfft2, rfft3, Complex32};
use super::rotation::Mat3;

/// `sinc²` gridding factor of trilinear interpolation at offset `d` voxels of an `m` grid.
fn sinc2(d: f64, m: usize) -> f64 {
    let x = std::f64::consts::PI * d / m as f64;
    if x.abs() < 1e-9 {
        1.0
    } else {
        (x.sin() / x).powi(2)
    }
}

/// Index, in the origin-at-0 (ifftshifted) layout of an `m` grid, of padded voxel `i`
/// (origin at `m/2`).
fn unshift(i: usize, m: usize) -> usize {
    (i + m - m / 2) % m
}

/// The trilinear gridding factor of padded voxel `(z, y, x)` (origin at `m/2`).
fn gridding(z: usize, y: usize, x: usize, m: usize) -> f64 {
    let c = (m / 2) as f64;
    sinc2(z as f64 - c, m) * sinc2(y as f64 - c, m) * sinc2(x as f64 - c, m)
}

/// `⌊x⌋` as an integer without a libm call (|x| is far below 2⁶²).
#[inline]
fn floor_i(x: f64) -> i64 {
    let i = x as i64;
    if (i as f64) > x {
        i - 1
    } else {
        i
    }
}

/// The trilinear neighbours of frequency `p = (x, y, z)` (padded units, `x ≥ 0`) inside the
/// half-space spectrum of an `m` grid: flat indices `(z·m + y)·(m/2+1) + x` and weights;
/// neighbours outside the grid get weight 0 (and index 0), so callers loop over all 8
/// without branching.
#[inline]
fn corners(p: [f64; 3], m: usize) -> ([usize; 8], [f64; 8]) {
    let (mi, h) = (m as i64, half_len(m) as i64);
    let (x0, y0, z0) = (floor_i(p[0]), floor_i(p[1]), floor_i(p[2]));
    let (fx, fy, fz) = (p[0] - x0 as f64, p[1] - y0 as f64, p[2] - z0 as f64);
    let mut idx = [0usize; 8];
    let mut w = [0.0f64; 8];
    let wx = [1.0 - fx, fx];
    let wy = [1.0 - fy, fy];
    let wz = [1.0 - fz, fz];
    for c in 0..8 {
        let (dx, dy, dz) = (c & 1, (c >> 1) & 1, (c >> 2) & 1);
        let (x, y, z) = (x0 + dx as i64, y0 + dy as i64, z0 + dz as i64);
        if x < h && y.abs() < mi / 2 && z.abs() < mi / 2 {
            // |y|, |z| < m/2: wrapping needs one conditional add, not a division.
            let (zw, yw) = (
                z + if z < 0 { mi } else { 0 },
                y + if y < 0 { mi } else { 0 },
            );
            idx[c] = ((zw * mi + yw) * h + x) as usize;
            w[c] = wx[dx] * wy[dy] * wz[dz];
        }
    }
    (idx, w)
}

/// `Aᵀ (fx, fy, 0)`: where the 2D frequency `(fx, fy)` of a slice at pose `a` lies in 3D.
fn slice_point(a: &Mat3, fx: f64, fy: f64) -> [f64; 3] {
    [
        a[0][0] * fx + a[1][0] * fy,
        a[0][1] * fx + a[1][1] * fy,
        a[0][2] * fx + a[1][2] * fy,
    ]
}

/// `(−1)^(kx+ky)`: moves the origin of a 2D spectrum between 0 and `(n/2, n/2)` (even n).
fn centre_sign(kx: i64, ky: i64) -> f32 {
    if (kx + ky).rem_euclid(2) == 0 {
        1.0
    } else {
        -1.0
    }
}

/// The oversampled 3D spectrum of a volume, ready for slicing.
pub struct Projector {
    n: usize,
    m: usize,
    spec: Array3<Complex32>,
}

impl Projector {
    /// From a real `(n, n, n)` volume (n even), oversampled `pad` times (≥ 1).
    pub fn new(vol: ArrayView3<f32>, pad: usize) -> Projector {
        let n = vol.dim().0;
        let m = n * pad.max(1);
        // Pad, gridding-correct and move the origin to voxel 0 (ifftshift) in one pass.
        let off = (m - n) / 2;
        let mut big = Array3::<f32>::zeros((m, m, m));
        for ((z, y, x), &v) in vol.indexed_iter() {
            let (zz, yy, xx) = (z + off, y + off, x + off);
            let g = gridding(zz, yy, xx, m);
            big[[unshift(zz, m), unshift(yy, m), unshift(xx, m)]] = (v as f64 / g) as f32;
        }
        Projector {
            n,
            m,
            spec: rfft3(big.view()),
        }
    }

    /// The oversampled half-space spectrum, flat: voxel `(z, y, x)` of the `m = pad·n` grid
    /// (origin at 0, `x ≤ m/2`) at `(z·m + y)·(m/2+1) + x` (what a device copy uploads).
    pub fn spectrum(&self) -> &[Complex32] {
        self.spec.as_slice().expect("standard layout")
    }

    /// The side `m = pad·n` of the oversampled grid.
    pub fn side(&self) -> usize {
        self.m
    }

    /// The central slice at pose `a`: the half-plane spectrum `(n, n/2+1)` of the projection
    /// of the volume (image centred at `(n/2, n/2)`), up to shell `k_max` (zero beyond).
    pub fn project(&self, a: &Mat3, k_max: usize) -> Array2<Complex32> {
        let n = self.n;
        let pad = (self.m / n) as f64;
        let k2 = (k_max * k_max) as i64;
        Array2::from_shape_fn((n, half_len(n)), |(i, j)| {
            let ky = fftfreq(i, n);
            let kx = j as i64;
            if kx * kx + ky * ky > k2 {
                return Complex32::new(0.0, 0.0);
            }
            // Aᵀ (kx, ky, 0) in padded-grid units.
            let (fx, fy) = (kx as f64 * pad, ky as f64 * pad);
            let p = slice_point(a, fx, fy);
            self.sample(p) * centre_sign(kx, ky)
        })
    }

    /// The central slices of several volumes (same size and padding) at one pose, sharing
    /// the interpolation weights: `out[v]` gets the `(n, n/2+1)` half plane (row-major) of
    /// volume `v`, zero beyond shell `k_max`.
    pub fn project_many(projs: &[&Projector], a: &Mat3, k_max: usize, out: &mut [Vec<Complex32>]) {
        let Some(first) = projs.first() else { return };
        let (n, m) = (first.n, first.m);
        let h = half_len(n);
        let pad = (m / n) as f64;
        let k2 = (k_max * k_max) as i64;
        for o in out.iter_mut() {
            o.clear();
            o.resize(n * h, Complex32::new(0.0, 0.0));
        }
        for i in 0..n {
            let ky = fftfreq(i, n);
            for j in 0..h {
                let kx = j as i64;
                if kx * kx + ky * ky > k2 {
                    continue;
                }
                let p = slice_point(a, kx as f64 * pad, ky as f64 * pad);
                let (p, conj) = if p[0] < 0.0 {
                    ([-p[0], -p[1], -p[2]], true)
                } else {
                    (p, false)
                };
                let sign = centre_sign(kx, ky);
                let (idx, w) = corners(p, m);
                for (pr, o) in projs.iter().zip(out.iter_mut()) {
                    let spec = pr.spec.as_slice().expect("standard layout");
                    let mut acc = Complex32::new(0.0, 0.0);
                    for c in 0..8 {
                        acc += spec[idx[c]] * w[c] as f32;
                    }
                    o[i * h + j] = if conj { acc.conj() } else { acc } * sign;
                }
            }
        }
    }

    /// Trilinear interpolation of the spectrum at frequency `p = (x, y, z)` (padded units).
    fn sample(&self, p: [f64; 3]) -> Complex32 {
        let (p, conj) = if p[0] < 0.0 {
            ([-p[0], -p[1], -p[2]], true)
        } else {
            (p, false)
        };
        let mut acc = Complex32::new(0.0, 0.0);
        let spec = self.spec.as_slice().expect("standard layout");
        let (idx, w) = corners(p, self.m);
        for c in 0..8 {
            acc += spec[idx[c]] * w[c] as f32;
        }
        if conj {
            acc.conj()
        } else {
            acc
        }
    }
}

/// A particle's slice zero-padded to the oversampled grid: the points of its half plane
/// inside the shell limit, `(fx, fy)` in padded units with the centring sign applied.
///
/// The image is zero-padded to `m = pad·n` before the transform (RELION's way): its slice
/// then samples the padded 3D grid at unit spacing; sampling only at `pad·k` would leave
/// radial gaps of `pad` voxels (no sample between the DC and radius `pad`) that the
/// normalised interpolation cannot fill.
pub struct PaddedSlice {
    pts: Vec<(f32, f32, Complex32, f32)>,
}

impl PaddedSlice {
    /// From the half-plane spectrum `y = C·X` `(n, n/2+1)` of an image centred at
    /// `(n/2, n/2)`, keeping shells up to `k_max` (image units); `c2(kx, ky)` gives the
    /// weight `C²` at a (fractional) frequency in the image's index units.
    pub fn new(
        y: ArrayView2<Complex32>,
        pad: usize,
        k_max: usize,
        c2: impl Fn(f64, f64) -> f64,
    ) -> PaddedSlice {
        let n = y.dim().0;
        let pad = pad.max(1);
        let m = n * pad;
        let img = irfft2(y, n);
        let off = (m - n) / 2;
        let mut big = Array2::<f32>::zeros((m, m));
        big.slice_mut(ndarray::s![off..off + n, off..off + n])
            .assign(&img);
        let ys = rfft2(big.view());
        let lim = (pad * k_max) as f64;
        let mut pts = Vec::with_capacity((std::f64::consts::PI * lim * lim / 2.0) as usize + m);
        for ((i, j), v) in ys.indexed_iter() {
            let ky = fftfreq(i, m);
            let kx = j as i64;
            let (fx, fy) = (kx as f64, ky as f64);
            if fx * fx + fy * fy > lim * lim || (kx == 0 && ky < 0) {
                continue;
            }
            let c = c2(fx / pad as f64, fy / pad as f64) as f32;
            pts.push((fx as f32, fy as f32, *v * centre_sign(kx, ky), c));
        }
        PaddedSlice { pts }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.pts.len()
    }
    /// The points `(fx, fy, value, C²)`, in padded units, in the order of the padded
    /// spectrum's rows and columns (the same positions for every slice of one grid).
    pub fn points(&self) -> &[(f32, f32, Complex32, f32)] {
        &self.pts
    }
    pub fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    /// The trilinear contributions of the slice at pose `a` to a padded half-space
    /// accumulator of side `m = pad·n` (appended to `out`): voxel index
    /// `(z·m + y)·(m/2+1) + x` and the weighted `(re, im, C²)`. Points on the `kx = 0` plane
    /// also contribute to their mirror `−k` with the conjugate value (Hermitian symmetry).
    pub fn contributions(&self, a: &Mat3, m: usize, out: &mut Vec<Contribution>) {
        let h = half_len(m);
        let mi = m as i64;
        for &(fx, fy, v, c2) in &self.pts {
            let p = slice_point(a, fx as f64, fy as f64);
            let (p, v) = if p[0] < 0.0 {
                ([-p[0], -p[1], -p[2]], v.conj())
            } else {
                (p, v)
            };
            let (idx, tw) = corners(p, m);
            for c in 0..8 {
                let t = tw[c] as f32;
                if t == 0.0 {
                    continue;
                }
                out.push(Contribution {
                    idx: idx[c] as u32,
                    re: v.re * t,
                    im: v.im * t,
                    c2: c2 * t,
                });
                if c % 2 == 0 && p[0] < 1.0 {
                    // A corner on the kx = 0 plane: its mirror −k gets the conjugate.
                    let i = idx[c];
                    let (z, y) = (i / (m * h), (i / h) % m);
                    let (zm, ym) = (
                        (mi - z as i64).rem_euclid(mi),
                        (mi - y as i64).rem_euclid(mi),
                    );
                    let mir = (zm as usize * m + ym as usize) * h;
                    if mir != i {
                        out.push(Contribution {
                            idx: mir as u32,
                            re: v.re * t,
                            im: -v.im * t,
                            c2: c2 * t,
                        });
                    }
                }
            }
        }
    }
}

/// One trilinear contribution of a slice point to an accumulator voxel.
#[derive(Clone, Copy, Debug)]
pub struct Contribution {
    pub idx: u32,
    pub re: f32,
    pub im: f32,
    pub c2: f32,
}

/// Adds contributions to an interleaved accumulator (`[re, im, den]` per voxel):
/// `num += w·v`, `den += w2·C²`.
#[inline]
pub fn scatter(contribs: &[Contribution], w: f64, w2: f64, acc: &mut [f64]) {
    for c in contribs {
        let i = 3 * c.idx as usize;
        acc[i] += w * c.re as f64;
        acc[i + 1] += w * c.im as f64;
        acc[i + 2] += w2 * c.c2 as f64;
    }
}

/// Voxels of the padded half-space accumulator of an `n` volume oversampled `pad` times.
pub fn accumulator_len(n: usize, pad: usize) -> usize {
    let m = n * pad.max(1);
    m * m * half_len(m)
}

/// The side `m` of a half-space accumulator of `len` voxels (`m·m·(m/2+1)`).
pub fn acc_side(len: usize) -> usize {
    let mut m = (len as f64).cbrt().round() as usize * 2;
    while m > 0 && m * m * half_len(m) > len {
        m -= 2;
    }
    while m * m * half_len(m) < len {
        m += 2;
    }
    assert_eq!(
        m * m * half_len(m),
        len,
        "accumulator size is not m·m·(m/2+1)"
    );
    m
}

/// Mean of the denominator per shell (volume shell units, `0..=n/2`) of an interleaved
/// padded accumulator (`[re, im, den]` per voxel).
pub fn shell_mean(acc: &[f64], n: usize, pad: usize) -> Vec<f64> {
    let m = acc_side(acc.len() / 3);
    let h = half_len(m);
    let pad = pad.max(1) as f64;
    let mut sum = vec![0.0; n / 2 + 2];
    let mut cnt = vec![0.0; n / 2 + 2];
    for z in 0..m {
        let kz = fftfreq(z, m) as f64;
        for y in 0..m {
            let ky = fftfreq(y, m) as f64;
            for x in 0..h {
                let r = ((kz * kz + ky * ky + (x * x) as f64).sqrt() / pad).round() as usize;
                if r < sum.len() {
                    sum[r] += acc[3 * ((z * m + y) * h + x) + 2];
                    cnt[r] += 1.0;
                }
            }
        }
    }
    sum.iter()
        .zip(&cnt)
        .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
        .collect()
}

/// The reconstruction `(n, n, n)` from an interleaved padded accumulator (`[re, im, den]`
/// per voxel): `num / (den + λ(k))` with `lambda(shell)` in the volume's shell units (voxels
/// beyond shell `n/2` are zero), then the gridding correction.
pub fn reconstruct(acc: &[f64], n: usize, lambda: impl Fn(usize) -> f64) -> Array3<f32> {
    let m = acc_side(acc.len() / 3);
    let h = half_len(m);
    let pad = (m / n) as f64;
    let spec = Array3::from_shape_fn((m, m, h), |(z, y, x)| {
        let (kz, ky) = (fftfreq(z, m) as f64, fftfreq(y, m) as f64);
        let r = ((kz * kz + ky * ky + (x * x) as f64).sqrt() / pad).round() as usize;
        let idx = (z * m + y) * h + x;
        let d = acc[3 * idx + 2] + lambda(r);
        if r <= n / 2 && d > 0.0 {
            Complex32::new((acc[3 * idx] / d) as f32, (acc[3 * idx + 1] / d) as f32)
        } else {
            Complex32::new(0.0, 0.0)
        }
    });
    let big = irfft3(spec.view(), m);
    let off = (m - n) / 2;
    Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        let (zz, yy, xx) = (z + off, y + off, x + off);
        let v = big[[unshift(zz, m), unshift(yy, m), unshift(xx, m)]] as f64;
        (v / gridding(zz, yy, xx, m)) as f32
    })
}

/// Accumulates CTF-weighted slices into an oversampled 3D Fourier volume:
/// `num(Aᵀk) += w·C(k)·X(k)` and `den(Aᵀk) += w·C(k)²`, spread trilinearly.
pub struct BackProjector {
    n: usize,
    pad: usize,
    acc: Vec<f64>,
}

impl BackProjector {
    /// An empty accumulator for `(n, n, n)` volumes oversampled `pad` times.
    pub fn new(n: usize, pad: usize) -> BackProjector {
        BackProjector {
            n,
            pad: pad.max(1),
            acc: vec![0.0; 3 * accumulator_len(n, pad)],
        }
    }

    /// Inserts the half-plane spectrum `y = C·X` of an image centred at `(n/2, n/2)` at pose
    /// `a` with weight `w`, up to shell `k_max`; `c2(kx, ky)` gives `C²` at a (fractional)
    /// frequency in the image's index units (see [`PaddedSlice`]).
    pub fn insert(
        &mut self,
        y: ArrayView2<Complex32>,
        c2: impl Fn(f64, f64) -> f64,
        a: &Mat3,
        w: f64,
        k_max: usize,
    ) {
        debug_assert_eq!(y.dim().0, self.n);
        let mut c = Vec::new();
        PaddedSlice::new(y, self.pad, k_max, c2).contributions(a, self.n * self.pad, &mut c);
        scatter(&c, w, w, &mut self.acc);
    }

    /// The reconstruction `(n, n, n)` (see [`reconstruct`]).
    pub fn reconstruct(&self, lambda: impl Fn(usize) -> f64) -> Array3<f32> {
        reconstruct(&self.acc, self.n, lambda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::fft::rfft2;
    use crate::numerics::rotation::euler_deg_to_matrix;

    /// A smooth asymmetric test volume: three Gaussian blobs.
    fn blobs(n: usize) -> (Array3<f32>, Vec<([f64; 3], f64)>) {
        let b = vec![
            ([0.0, 0.0, 0.0], 3.0),
            ([6.0, -2.0, 3.0], 2.0),
            ([-3.0, 5.0, -4.0], 2.5),
        ];
        let c = (n / 2) as f64;
        let vol = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            b.iter()
                .map(|(p, s)| {
                    let d2 = (x as f64 - c - p[0]).powi(2)
                        + (y as f64 - c - p[1]).powi(2)
                        + (z as f64 - c - p[2]).powi(2);
                    (-d2 / (2.0 * s * s)).exp()
                })
                .sum::<f64>() as f32
        });
        (vol, b)
    }

    /// The analytic projection of the blobs at pose A: P(x,y) = Σ 2πs²·g(A·p), image centre n/2.
    fn analytic(n: usize, b: &[([f64; 3], f64)], a: &Mat3) -> Array2<f32> {
        let c = (n / 2) as f64;
        Array2::from_shape_fn((n, n), |(y, x)| {
            b.iter()
                .map(|(p, s)| {
                    let q = [
                        a[0][0] * p[0] + a[0][1] * p[1] + a[0][2] * p[2],
                        a[1][0] * p[0] + a[1][1] * p[1] + a[1][2] * p[2],
                    ];
                    let d2 = (x as f64 - c - q[0]).powi(2) + (y as f64 - c - q[1]).powi(2);
                    (2.0 * std::f64::consts::PI).sqrt() * s * (-d2 / (2.0 * s * s)).exp()
                })
                .sum::<f64>() as f32
        })
    }

    fn rel_err(a: ArrayView2<Complex32>, b: ArrayView2<Complex32>, k_max: usize) -> f64 {
        let n = a.dim().0;
        let (mut e, mut p) = (0.0f64, 0.0f64);
        for ((i, j), va) in a.indexed_iter() {
            let ky = fftfreq(i, n);
            if (ky * ky + (j * j) as i64) as usize > k_max * k_max {
                continue;
            }
            e += (va - b[[i, j]]).norm_sqr() as f64;
            p += b[[i, j]].norm_sqr() as f64;
        }
        e / p
    }

    #[test]
    fn central_slice_matches_the_real_space_projection() {
        let n = 32;
        let (vol, b) = blobs(n);
        let proj = Projector::new(vol.view(), 2);
        for angles in [[0.0, 0.0, 0.0], [30.0, 50.0, -20.0], [200.0, 120.0, 75.0]] {
            let a = euler_deg_to_matrix(angles[0], angles[1], angles[2]);
            let slice = proj.project(&a, 12);
            let truth = rfft2(analytic(n, &b, &a).view());
            let e = rel_err(slice.view(), truth.view(), 12);
            assert!(e < 2e-3, "{angles:?}: relative error {e}");
        }
    }

    #[test]
    fn project_many_matches_project() {
        let n = 16;
        let (vol, _) = blobs(n);
        let other = vol.mapv(|v| v * v - 0.3);
        let (p1, p2) = (
            Projector::new(vol.view(), 2),
            Projector::new(other.view(), 2),
        );
        let a = euler_deg_to_matrix(40.0, 100.0, -70.0);
        let mut out = vec![Vec::new(), Vec::new()];
        Projector::project_many(&[&p1, &p2], &a, 6, &mut out);
        for (p, o) in [&p1, &p2].iter().zip(&out) {
            let single = p.project(&a, 6);
            for (x, y) in single.iter().zip(o) {
                assert!((x - y).norm() <= 1e-4 * (1.0 + x.norm()), "{x} vs {y}");
            }
        }
    }

    /// Exact slices of a volume from 3,000 quasi-uniform views reconstruct it: the spectrum
    /// inside shell 8 agrees to a relative squared error below 0.5%.
    #[test]
    fn back_projection_of_many_views_reconstructs_the_volume() {
        let n = 24;
        let (vol, _) = blobs(n);
        let proj = Projector::new(vol.view(), 2);
        let mut bp = BackProjector::new(n, 2);
        // Quasi-uniform directions (golden spiral) × a few in-plane angles.
        let count = 3000;
        for i in 0..count {
            let z = 1.0 - 2.0 * (i as f64 + 0.5) / count as f64;
            let tilt = z.acos().to_degrees();
            let rot = (i as f64 * 137.50776) % 360.0;
            let a = euler_deg_to_matrix(rot, tilt, (i * 37 % 360) as f64);
            let s = proj.project(&a, 11);
            bp.insert(s.view(), |_, _| 1.0, &a, 1.0, 11);
        }
        let rec = bp.reconstruct(|_| 1e-3);
        // Compare the spectra inside shell 8 (slices were inserted up to shell 11, so every
        // compared voxel has all its trilinear neighbours filled).
        let fa = rfft3(rec.view());
        let fb = rfft3(vol.view());
        let (mut e, mut p) = (0.0f64, 0.0f64);
        for ((z, y, x), va) in fa.indexed_iter() {
            let (kz, ky) = (fftfreq(z, n), fftfreq(y, n));
            if kz * kz + ky * ky + (x * x) as i64 > 64 {
                continue;
            }
            e += (va - fb[[z, y, x]]).norm_sqr() as f64;
            p += fb[[z, y, x]].norm_sqr() as f64;
        }
        // Measured: 0.0032 (pad 2, 3,000 views).
        assert!(e / p < 5e-3, "relative error {}", e / p);
    }

    /// The projector reproduces the simulator's hetero3d particles from its volumes and the
    /// poses/shifts it stores (`alignments3D/pose`, `alignments3D/shift`): the conventions of
    /// projection, pose and origin agree end to end (a flipped shift sign gives error 1.26).
    #[test]
    fn projections_of_simulated_volumes_match_the_simulated_particles() {
        use crate::numerics::image2d::shift_spectrum;
        use crate::numerics::rotation::pose_to_matrix;
        use crate::simulate::config::{SimMode, SimulateConfig};
        use crate::simulate::Simulation;
        let mut cfg = SimulateConfig::with_output("unused");
        cfg.mode = SimMode::Hetero3d;
        cfg.num_particles = 12;
        cfg.box_px = 48;
        cfg.ctf = false;
        cfg.junk_fraction = 0.0;
        cfg.duplicate_fraction = 0.0;
        let sim = Simulation::new(&cfg).unwrap();
        let n = cfg.box_px;
        let projectors: Vec<Projector> = sim
            .volumes()
            .iter()
            .map(|(_, v)| Projector::new(v.view(), 2))
            .collect();
        let t = sim.table();
        let state = t.get("gt/state").unwrap().data.to_f64().unwrap();
        let pose = t.f32("alignments3D/pose").unwrap();
        let shift = t.f32("alignments3D/shift").unwrap();
        let signals = sim.signals(0..cfg.num_particles);
        for i in 0..cfg.num_particles {
            let p = [
                pose[3 * i] as f64,
                pose[3 * i + 1] as f64,
                pose[3 * i + 2] as f64,
            ];
            let mut slice = projectors[state[i] as usize].project(&pose_to_matrix(p), n / 4);
            // The particle's centre is at box/2 − shift: move the centred projection there.
            let (sx, sy) = (shift[2 * i] as f64, shift[2 * i + 1] as f64);
            shift_spectrum(slice.view_mut(), n, -sy, -sx);
            let truth = rfft2(signals.index_axis(ndarray::Axis(0), i));
            let e = rel_err(slice.view(), truth.view(), n / 4);
            assert!(e < 2e-2, "particle {i}: relative error {e}");
        }
    }
}
