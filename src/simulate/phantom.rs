//! The synthetic 3D object: an asymmetric, protein-like sum of isotropic Gaussian blobs
//! (a chain of 3-5 lobes, so that different viewing directions give clearly different
//! projections), optional removable domains for 3D heterogeneity, and exact rendering of its
//! projections and of its volume.
//!
//! Projection is analytic: a 3D Gaussian of mass m, centre c and width σ projects along z
//! to the 2D Gaussian of the same mass, width σ and centre (A·c)_xy. With RELION's matrix A
//! (a reference is projected by sampling its 3D frequency Aᵀ·(kx, ky, 0)), the image is
//! `p(r) = ∫ V(Aᵀ·(r, z)) dz`, so a volume point v lands at image point (A·v)_xy.
//! Coordinates are in Å from the object's origin, which sits at pixel (n/2, n/2) of an
//! n-pixel box (RELION's centre); x is the column index, y the row index, z the section.

use ndarray::Array3;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal, UnitSphere};

use super::rng::{stream, Purpose};
use crate::numerics::rotation::{euler_deg_to_matrix, Mat3};

/// One isotropic Gaussian: `mass · N(pos, σ² I)` in 3D.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blob {
    pub pos_a: [f64; 3],
    pub sigma_a: f64,
    pub mass: f64,
}

/// Shape parameters of the core (fractions of the radius).
#[derive(Clone, Debug)]
struct Shape {
    pub lobes: (usize, usize),
    pub step: (f64, f64),
    pub spread: f64,
    pub sigma: (f64, f64),
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            lobes: (4, 6),
            step: (0.45, 0.65),
            spread: 0.18,
            sigma: (0.04, 0.08),
        }
    }
}

/// The object: a core and `domains` that states can lack (see [`Phantom::state`]).
#[derive(Clone, Debug)]
pub struct Phantom {
    core: Vec<Blob>,
    domains: Vec<Vec<Blob>>,
}

fn norm3(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// `m · v`.
pub fn apply3(m: &Mat3, v: [f64; 3]) -> [f64; 3] {
    [dot3(m[0], v), dot3(m[1], v), dot3(m[2], v)]
}

fn unit(rng: &mut impl Rng) -> [f64; 3] {
    UnitSphere.sample(rng)
}

fn gauss3(rng: &mut impl Rng, s: f64) -> [f64; 3] {
    let mut g = || -> f64 { StandardNormal.sample(rng) };
    [g() * s, g() * s, g() * s]
}

impl Phantom {
    /// Generates the object for `seed`: `n_blobs` core blobs filling a sphere of
    /// `radius_a` (the farthest blob reaches it at 1.5 σ), blob widths at least
    /// `min_sigma_a`, and `n_domains` domains of `domain_fraction` of the full mass each,
    /// attached on the core's flattest sides.
    pub fn generate(
        seed: u64,
        candidate: u64,
        n_blobs: usize,
        radius_a: f64,
        min_sigma_a: f64,
        n_domains: usize,
        domain_fraction: f64,
    ) -> Phantom {
        let sh = Shape::default();
        let r = radius_a;
        let mut rng = stream(seed, Purpose::Phantom, candidate);
        // Lobes along a non-reversing random walk: an elongated, bent, asymmetric body.
        let n_lobes = rng.gen_range(sh.lobes.0..=sh.lobes.1).min(n_blobs);
        let mut centres = vec![[0.0f64; 3]];
        let mut dir = unit(&mut rng);
        for _ in 1..n_lobes {
            let mut u = unit(&mut rng);
            for _ in 0..32 {
                if dot3(u, dir) > -0.2 {
                    break;
                }
                u = unit(&mut rng);
            }
            dir = u;
            let c = centres[centres.len() - 1];
            let step = r * rng.gen_range(sh.step.0..sh.step.1);
            centres.push([c[0] + step * u[0], c[1] + step * u[1], c[2] + step * u[2]]);
        }
        let lobe_w: Vec<f64> = (0..n_lobes).map(|_| rng.gen_range(0.5..1.5)).collect();
        let wsum: f64 = lobe_w.iter().sum();
        let mut core = Vec::with_capacity(n_blobs);
        for i in 0..n_blobs {
            // Lobe of blob i: the first n_lobes blobs seed one lobe each, the rest follow the
            // lobe weights.
            let lobe = if i < n_lobes {
                i
            } else {
                let mut t = rng.gen_range(0.0..wsum);
                let mut k = 0;
                while k + 1 < n_lobes && t >= lobe_w[k] {
                    t -= lobe_w[k];
                    k += 1;
                }
                k
            };
            let off = gauss3(&mut rng, sh.spread * r);
            let c = centres[lobe];
            let sigma = (r * rng.gen_range(sh.sigma.0..sh.sigma.1)).max(min_sigma_a);
            let mass = (sigma / r).powi(3) * rng.gen_range(0.6..1.4);
            core.push(Blob {
                pos_a: [c[0] + off[0], c[1] + off[1], c[2] + off[2]],
                sigma_a: sigma,
                mass,
            });
        }
        // Centre on the centre of mass, then scale positions so the outermost blob reaches
        // the radius at 1.5 σ.
        let m: f64 = core.iter().map(|b| b.mass).sum();
        let com = (0..3)
            .map(|k| core.iter().map(|b| b.mass * b.pos_a[k]).sum::<f64>() / m)
            .collect::<Vec<_>>();
        for b in &mut core {
            for (p, c) in b.pos_a.iter_mut().zip(&com) {
                *p -= c;
            }
        }
        let f = core
            .iter()
            .filter(|b| norm3(b.pos_a) > 1e-9)
            .map(|b| ((r - 1.5 * b.sigma_a).max(0.1 * r)) / norm3(b.pos_a))
            .fold(f64::INFINITY, f64::min);
        let f = if f.is_finite() { f } else { 1.0 };
        for b in &mut core {
            for k in 0..3 {
                b.pos_a[k] *= f;
            }
        }

        // Domains: mass f·M0 each, where M0 = core + all domains.
        let core_mass: f64 = core.iter().map(|b| b.mass).sum();
        let full_mass = core_mass / (1.0 - n_domains as f64 * domain_fraction).max(1e-6);
        let mut domains: Vec<Vec<Blob>> = Vec::with_capacity(n_domains);
        let mut used_dirs: Vec<[f64; 3]> = Vec::new();
        for _ in 0..n_domains {
            // The candidate direction along which the core extends least, away from the other
            // domains.
            let mut best = ([0.0, 0.0, 1.0], f64::INFINITY);
            for _ in 0..256 {
                let u = unit(&mut rng);
                if used_dirs.iter().any(|d| dot3(*d, u) > 0.5) {
                    continue;
                }
                let extent = core
                    .iter()
                    .map(|b| dot3(b.pos_a, u) + b.sigma_a)
                    .fold(f64::MIN, f64::max);
                if extent < best.1 {
                    best = (u, extent);
                }
            }
            let (u, extent) = best;
            used_dirs.push(u);
            let dist = (extent + 0.1 * r).min(0.8 * r);
            let q = [u[0] * dist, u[1] * dist, u[2] * dist];
            let n = ((n_blobs as f64 * domain_fraction * 1.5).round() as usize).max(3);
            let mut blobs: Vec<Blob> = (0..n)
                .map(|_| {
                    let off = gauss3(&mut rng, 0.1 * r);
                    let sigma = (r * rng.gen_range(sh.sigma.0..sh.sigma.1)).max(min_sigma_a);
                    let mass = (sigma / r).powi(3) * rng.gen_range(0.6..1.4);
                    Blob {
                        pos_a: [q[0] + off[0], q[1] + off[1], q[2] + off[2]],
                        sigma_a: sigma,
                        mass,
                    }
                })
                .collect();
            let dm: f64 = blobs.iter().map(|b| b.mass).sum();
            let target = domain_fraction * full_mass;
            for b in &mut blobs {
                b.mass *= target / dm;
            }
            domains.push(blobs);
        }
        Phantom { core, domains }
    }

    /// The core blobs (the whole object in views2d).
    pub fn core(&self) -> &[Blob] {
        &self.core
    }

    /// The removable domains.
    #[cfg(test)]
    pub fn domains(&self) -> &[Vec<Blob>] {
        &self.domains
    }

    /// Blobs of state `s`: state 0 has the core and every domain; state s ≥ 1 lacks domain
    /// s − 1 (so with 2 states, the domain is present in state 0 and absent in state 1).
    pub fn state(&self, s: usize) -> Vec<Blob> {
        let mut v = self.core.clone();
        for (k, d) in self.domains.iter().enumerate() {
            if s == 0 || k + 1 != s {
                v.extend_from_slice(d);
            }
        }
        v
    }
}

/// Total mass of `blobs`.
#[cfg(test)]
pub fn mass(blobs: &[Blob]) -> f64 {
    blobs.iter().map(|b| b.mass).sum()
}

/// Adds the projection of `blobs` under RELION matrix `a` into the row-major `n × n` image
/// `out`, with the object origin at pixel `centre_px` = (x, y) and pixel size `psize_a`.
/// Pixel values are projected mass per pixel (each blob adds `mass / (2π σ_px²)` at its
/// peak). Each Gaussian is drawn out to 4.5 σ.
pub fn project_into(
    blobs: &[Blob],
    a: &Mat3,
    centre_px: [f64; 2],
    psize_a: f64,
    n: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), n * n);
    let mut gx = Vec::new();
    for b in blobs {
        let p = apply3(a, b.pos_a);
        let xc = centre_px[0] + p[0] / psize_a;
        let yc = centre_px[1] + p[1] / psize_a;
        let s = b.sigma_a / psize_a;
        let amp = b.mass / (2.0 * std::f64::consts::PI * s * s);
        let (x0, x1) = window(xc, 4.5 * s, n);
        let (y0, y1) = window(yc, 4.5 * s, n);
        if x0 >= x1 || y0 >= y1 {
            continue;
        }
        let inv = -0.5 / (s * s);
        gx.clear();
        gx.extend((x0..x1).map(|x| ((x as f64 - xc).powi(2) * inv).exp() as f32));
        for y in y0..y1 {
            let gy = (amp * ((y as f64 - yc).powi(2) * inv).exp()) as f32;
            let row = &mut out[y * n + x0..y * n + x1];
            for (o, g) in row.iter_mut().zip(&gx) {
                *o += gy * g;
            }
        }
    }
}

/// How alike the views of `blobs` look: the highest correlation between the projections of
/// two different viewing directions (rot, tilt in radians) after the best in-plane rotation
/// (psi in 4° steps). Computed on a coarse 64-pixel grid spanning 1.6 object diameters, which
/// is enough to rank objects.
pub fn max_cross_view_correlation(blobs: &[Blob], views: &[[f64; 2]], radius_a: f64) -> f64 {
    const N: usize = 64;
    let psize = 2.0 * radius_a * 1.6 / N as f64;
    let c = [(N / 2) as f64; 2];
    let project = |v: &[f64; 2], psi_deg: f64| -> Vec<f64> {
        let a = euler_deg_to_matrix(v[0].to_degrees(), v[1].to_degrees(), psi_deg);
        let mut img = vec![0.0f32; N * N];
        project_into(blobs, &a, c, psize, N, &mut img);
        // Mean 0, norm 1: a dot product is then the correlation.
        let m = img.iter().map(|&x| x as f64).sum::<f64>() / (N * N) as f64;
        let mut v: Vec<f64> = img.iter().map(|&x| x as f64 - m).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    };
    let refs: Vec<Vec<f64>> = views.iter().map(|v| project(v, 0.0)).collect();
    let mut worst = f64::MIN;
    for (j, v) in views.iter().enumerate() {
        for k in 0..90 {
            let img = project(v, 4.0 * k as f64);
            for (i, r) in refs.iter().enumerate() {
                if i != j {
                    worst = worst.max(r.iter().zip(&img).map(|(a, b)| a * b).sum());
                }
            }
        }
    }
    worst
}

/// Pixel range `[lo, hi)` within `[0, n)` covering `c ± half`.
fn window(c: f64, half: f64, n: usize) -> (usize, usize) {
    let lo = (c - half).floor().max(0.0);
    let hi = ((c + half).ceil() + 1.0).min(n as f64);
    if hi <= 0.0 || lo >= n as f64 {
        return (0, 0);
    }
    (lo as usize, hi.max(lo) as usize)
}

/// The density of `blobs` on an `n³` grid of voxel size `psize_a`, object origin at voxel
/// (n/2, n/2, n/2); values are mass per voxel (each blob adds `mass / ((2π)^{3/2} σ_px³)`
/// at its peak), so summing along z gives [`project_into`] with the identity matrix.
pub fn render_volume(blobs: &[Blob], n: usize, psize_a: f64) -> Array3<f32> {
    let mut vol = Array3::<f32>::zeros((n, n, n));
    let c = (n / 2) as f64;
    let data = vol.as_slice_mut().expect("fresh array is contiguous");
    for b in blobs {
        let s = b.sigma_a / psize_a;
        let amp = b.mass / ((2.0 * std::f64::consts::PI).powf(1.5) * s * s * s);
        let inv = -0.5 / (s * s);
        let ctr = [
            c + b.pos_a[0] / psize_a,
            c + b.pos_a[1] / psize_a,
            c + b.pos_a[2] / psize_a,
        ];
        let w: Vec<(usize, usize)> = ctr.iter().map(|&x| window(x, 4.5 * s, n)).collect();
        if w.iter().any(|(lo, hi)| lo >= hi) {
            continue;
        }
        let g = |k: usize| -> Vec<f32> {
            (w[k].0..w[k].1)
                .map(|i| ((i as f64 - ctr[k]).powi(2) * inv).exp() as f32)
                .collect()
        };
        let (gx, gy, gz) = (g(0), g(1), g(2));
        for (iz, z) in (w[2].0..w[2].1).enumerate() {
            for (iy, y) in (w[1].0..w[1].1).enumerate() {
                let f = amp as f32 * gz[iz] * gy[iy];
                let row = &mut data[(z * n + y) * n + w[0].0..(z * n + y) * n + w[0].1];
                for (o, gxv) in row.iter_mut().zip(&gx) {
                    *o += f * gxv;
                }
            }
        }
    }
    vol
}

#[cfg(test)]
mod tests {
    use super::*;

    const I3: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

    #[test]
    fn object_is_centred_fits_its_radius_and_is_deterministic() {
        let p = Phantom::generate(11, 0, 32, 60.0, 3.0, 0, 0.0);
        assert_eq!(p.core().len(), 32);
        let m = mass(p.core());
        for k in 0..3 {
            let c: f64 = p.core().iter().map(|b| b.mass * b.pos_a[k]).sum::<f64>() / m;
            assert!(c.abs() < 1e-9);
        }
        let reach = p
            .core()
            .iter()
            .map(|b| norm3(b.pos_a) + 1.5 * b.sigma_a)
            .fold(0.0, f64::max);
        assert!((reach - 60.0).abs() < 1e-6, "{reach}");
        assert!(p.core().iter().all(|b| b.sigma_a >= 3.0));
        assert_eq!(
            Phantom::generate(11, 0, 32, 60.0, 3.0, 0, 0.0).core(),
            p.core()
        );
        assert_ne!(
            Phantom::generate(12, 0, 32, 60.0, 3.0, 0, 0.0).core(),
            p.core()
        );
    }

    #[test]
    fn domains_carry_the_requested_mass() {
        let p = Phantom::generate(5, 0, 32, 60.0, 3.0, 2, 0.1);
        let full = mass(&p.state(0));
        for d in p.domains() {
            assert!((mass(d) / full - 0.1).abs() < 1e-9);
        }
        assert!((mass(&p.state(1)) / full - 0.9).abs() < 1e-9);
        assert_eq!(p.state(1).len() + p.domains()[0].len(), p.state(0).len());
        assert_eq!(p.state(2).len() + p.domains()[1].len(), p.state(0).len());
    }

    #[test]
    fn projection_conserves_mass_and_matches_the_volume() {
        let p = Phantom::generate(2, 0, 24, 40.0, 3.0, 0, 0.0);
        let (n, psize) = (96usize, 1.5);
        let mut img = vec![0.0f32; n * n];
        project_into(p.core(), &I3, [48.0, 48.0], psize, n, &mut img);
        let total: f64 = img.iter().map(|&v| v as f64).sum();
        assert!((total / mass(p.core()) - 1.0).abs() < 1e-3, "{total}");
        // Summing the volume along z gives the same image.
        let vol = render_volume(p.core(), n, psize);
        let proj = vol.sum_axis(ndarray::Axis(0));
        let err = proj
            .iter()
            .zip(&img)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let peak = img.iter().cloned().fold(0.0f32, f32::max);
        assert!(err < 1e-3 * peak, "{err} vs peak {peak}");
        // Another direction (tilt 90°) conserves the mass and gives a different image.
        let a = euler_deg_to_matrix(0.0, 90.0, 0.0);
        let mut side = vec![0.0f32; n * n];
        project_into(p.core(), &a, [48.0, 48.0], psize, n, &mut side);
        let t2: f64 = side.iter().map(|&v| v as f64).sum();
        assert!((t2 / mass(p.core()) - 1.0).abs() < 1e-3);
        assert!(
            side.iter()
                .zip(&img)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
                > 0.1 * peak
        );
    }

    #[test]
    fn blob_lands_where_the_relion_matrix_sends_it() {
        // One blob at (10, 0, 0) Å; A(rot = 90°) maps it to (A·c)_xy.
        let b = [Blob {
            pos_a: [10.0, 0.0, 0.0],
            sigma_a: 2.0,
            mass: 1.0,
        }];
        let a = euler_deg_to_matrix(90.0, 0.0, 0.0);
        let want = apply3(&a, b[0].pos_a);
        let n = 64;
        let mut img = vec![0.0f32; n * n];
        project_into(&b, &a, [32.0, 32.0], 1.0, n, &mut img);
        let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
        for y in 0..n {
            for x in 0..n {
                let v = img[y * n + x] as f64;
                sx += v * x as f64;
                sy += v * y as f64;
                s += v;
            }
        }
        assert!(
            (sx / s - (32.0 + want[0])).abs() < 1e-3 && (sy / s - (32.0 + want[1])).abs() < 1e-3
        );
    }
}
