//! Drawing the images of planned picks: the exact projection of the object (or a junk
//! object), the CTF applied in Fourier space, the signal scaled to the requested SNR, and
//! white Gaussian noise of variance 1.
//!
//! SNR. `snr` is the variance of the noise-free, CTF-modulated particle image over the
//! pixels inside a centred circle of diameter `particle_diameter_A`, divided by the noise
//! variance (1), averaged over particles. One amplitude is used for every particle (as in a
//! microscope: the object is the same, the CTF changes), chosen before the run from 256
//! calibration particles drawn from the same distributions (classes, poses, shifts,
//! defocus) so that their mean masked signal variance is exactly `snr`. Individual
//! particles scatter around it with view and defocus. Junk is scaled image by image to a
//! variance drawn from the calibration particles' variances, so junk has the same power
//! distribution as real particles and intensity alone cannot separate them.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::config::{SimMode, SimulateConfig};
use super::phantom::{project_into, Blob, Phantom};
use super::plan::{categorical, Pick};
use super::rng::{stream, Purpose};
use crate::numerics::ctf::{Ctf, CtfParams};
use crate::numerics::fft::{half_len, Complex32, Fft2};
use crate::numerics::rotation::{euler_deg_to_matrix, Mat3};

/// Number of calibration particles for the signal amplitude.
const CALIBRATION_SAMPLES: usize = 256;

/// Everything needed to draw any pick's image; shared read-only by the worker threads.
pub struct Renderer {
    n: usize,
    psize_a: f64,
    seed: u64,
    mode: SimMode,
    /// Blob sets: `[core]` in views2d, one per state in hetero3d.
    objects: Vec<Vec<Blob>>,
    ctf: Option<CtfParams>,
    /// Indices of the pixels inside the SNR mask.
    mask: Vec<u32>,
    radius_a: f64,
    min_sigma_a: f64,
    /// Multiplies every real particle's CTF-modulated projection.
    amplitude: f64,
    /// Masked signal variances of the calibration particles (after scaling): the targets
    /// junk images are scaled to.
    junk_targets: Vec<f64>,
}

/// The RELION matrix of a pick's Euler angles (radians).
pub fn pick_matrix(p: &Pick) -> Mat3 {
    let d = |x: f32| (x as f64).to_degrees();
    euler_deg_to_matrix(d(p.euler_rad[0]), d(p.euler_rad[1]), d(p.euler_rad[2]))
}

impl Renderer {
    /// A renderer for `cfg` (validated) and its object, calibrated to `cfg.snr`.
    pub fn new(cfg: &SimulateConfig, phantom: &Phantom, views: &[[f64; 2]]) -> Renderer {
        let n = cfg.box_px;
        let psize_a = cfg.psize_a as f64;
        let radius_a = cfg.particle_diameter() / 2.0;
        let objects = match cfg.mode {
            SimMode::Views2d => vec![phantom.core().to_vec()],
            SimMode::Hetero3d => (0..cfg.num_states).map(|s| phantom.state(s)).collect(),
        };
        let ctf = cfg.ctf.then(|| CtfParams {
            accel_kv: cfg.accel_kv as f64,
            cs_mm: cfg.cs_mm as f64,
            amp_contrast: cfg.amp_contrast as f64,
            bfactor_a2: cfg.bfactor_a2 as f64,
            ..CtfParams::default()
        });
        let r_px = radius_a / psize_a;
        let c = (n / 2) as f64;
        let mask = (0..n * n)
            .filter(|&i| {
                let (y, x) = ((i / n) as f64 - c, (i % n) as f64 - c);
                x * x + y * y <= r_px * r_px
            })
            .map(|i| i as u32)
            .collect();
        let mut r = Renderer {
            n,
            psize_a,
            seed: cfg.seed,
            mode: cfg.mode,
            objects,
            ctf,
            mask,
            radius_a,
            min_sigma_a: min_sigma_a(psize_a),
            amplitude: 1.0,
            junk_targets: Vec::new(),
        };
        r.calibrate(cfg, views);
        r
    }

    /// The signal amplitude (multiplies the projection in mass-per-pixel units).
    pub fn amplitude(&self) -> f64 {
        self.amplitude
    }

    /// Mean masked signal variance of the calibration particles (= `snr` by construction).
    #[cfg(test)]
    pub fn calibrated_snr(&self) -> f64 {
        self.junk_targets.iter().sum::<f64>() / self.junk_targets.len().max(1) as f64
    }

    fn calibrate(&mut self, cfg: &SimulateConfig, views: &[[f64; 2]]) {
        let weights = cfg.class_weights();
        let tau = std::f64::consts::TAU;
        let mut vars = Vec::with_capacity(CALIBRATION_SAMPLES);
        let mut img = vec![0.0f32; self.n * self.n];
        for i in 0..CALIBRATION_SAMPLES {
            let mut rng = stream(self.seed, Purpose::Calibration, i as u64);
            let class = categorical(&weights, rng.gen()) as i32;
            let (rot, tilt) = match self.mode {
                SimMode::Views2d => (views[class as usize][0], views[class as usize][1]),
                SimMode::Hetero3d => (rng.gen_range(0.0..tau), rng.gen_range(-1.0f64..1.0).acos()),
            };
            let psi = rng.gen_range(0.0..tau);
            let rad = cfg.max_shift_px as f64 * rng.gen::<f64>().sqrt();
            let th = rng.gen_range(0.0..tau);
            let df = rng.gen_range(cfg.defocus_min_a as f64..=cfg.defocus_max_a as f64);
            let astig = rng.gen_range(0.0..=cfg.astigmatism_max_a as f64);
            let angle = rng.gen_range(0.0..std::f64::consts::PI);
            let pick = Pick {
                class,
                source: 0,
                mic: 0,
                pos_px: [0.0; 2],
                shift_px: [(rad * th.cos()) as f32, (rad * th.sin()) as f32],
                euler_rad: [rot as f32, tilt as f32, psi as f32],
                ctf: [
                    (df + astig / 2.0) as f32,
                    (df - astig / 2.0) as f32,
                    angle as f32,
                ],
                junk_seed: 0,
            };
            img.iter_mut().for_each(|v| *v = 0.0);
            self.draw_particle(&pick, &mut img);
            self.apply_ctf(&pick, &mut img);
            vars.push(self.masked_variance(&img));
        }
        let mean = vars.iter().sum::<f64>() / vars.len() as f64;
        let snr = cfg.snr as f64;
        self.amplitude = (snr / mean).sqrt();
        self.junk_targets = vars.iter().map(|v| v * snr / mean).collect();
    }

    /// Variance of `img` over the SNR mask.
    pub fn masked_variance(&self, img: &[f32]) -> f64 {
        let m = self.mask.len() as f64;
        let mean = self
            .mask
            .iter()
            .map(|&i| img[i as usize] as f64)
            .sum::<f64>()
            / m;
        self.mask
            .iter()
            .map(|&i| (img[i as usize] as f64 - mean).powi(2))
            .sum::<f64>()
            / m
    }

    /// Adds the (unscaled, CTF-free) projection of a real particle to `out`.
    fn draw_particle(&self, p: &Pick, out: &mut [f32]) {
        let obj = match self.mode {
            SimMode::Views2d => &self.objects[0],
            SimMode::Hetero3d => &self.objects[p.class as usize],
        };
        project_into(
            obj,
            &pick_matrix(p),
            self.centre(p),
            self.psize_a,
            self.n,
            out,
        );
    }

    /// Where the object origin lands in the box: box/2 − origin.
    fn centre(&self, p: &Pick) -> [f64; 2] {
        let c = (self.n / 2) as f64;
        [c - p.shift_px[0] as f64, c - p.shift_px[1] as f64]
    }

    /// Multiplies the image by the pick's CTF in Fourier space (no-op without CTF).
    fn apply_ctf(&self, p: &Pick, img: &mut [f32]) {
        self.apply_ctf_sized(p, img, self.n);
    }

    /// [`Renderer::apply_ctf`] on an `n × n` canvas of the same pixel size.
    fn apply_ctf_sized(&self, p: &Pick, img: &mut [f32], n: usize) {
        let Some(base) = self.ctf else { return };
        let params = CtfParams {
            df1_a: p.ctf[0] as f64,
            df2_a: p.ctf[1] as f64,
            df_angle_rad: p.ctf[2] as f64,
            ..base
        };
        let plan = Fft2::get(n, n);
        let mut spec = vec![Complex32::new(0.0, 0.0); n * half_len(n)];
        let mut ctf = vec![0.0f32; n * half_len(n)];
        plan.forward_slice(img, &mut spec);
        Ctf::new(&params).half_plane_into(n, n, self.psize_a, &mut ctf);
        for (s, c) in spec.iter_mut().zip(&ctf) {
            *s *= *c;
        }
        plan.inverse_slice(&spec, img);
    }

    /// The clean (noise-free) image of pick `p`: projection, CTF, scaling.
    pub fn signal_into(&self, p: &Pick, out: &mut [f32]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        if p.is_junk() {
            // Junk extends to (or past) the box edge: draw it and apply the CTF on a canvas
            // 1.5 times the size, faded out between the box edge and the canvas edge, then
            // crop, so that nothing wraps around and the fade stays outside the box.
            let n = self.n;
            let m = junk_canvas(n);
            let mut canvas = vec![0.0f32; m * m];
            self.draw_junk(p, &mut canvas, m);
            self.apply_ctf_sized(p, &mut canvas, m);
            let off = (m - n) / 2;
            for y in 0..n {
                let src = (y + off) * m + off;
                out[y * n..(y + 1) * n].copy_from_slice(&canvas[src..src + n]);
            }
            let v = self.masked_variance(out);
            let target = self.junk_targets[(p.junk_seed % self.junk_targets.len() as u64) as usize];
            let s = if v > 0.0 {
                (target / v).sqrt() as f32
            } else {
                0.0
            };
            out.iter_mut().for_each(|x| *x *= s);
        } else {
            self.draw_particle(p, out);
            self.apply_ctf(p, out);
            let a = self.amplitude as f32;
            out.iter_mut().for_each(|x| *x *= a);
        }
    }

    /// The image of pick `p` in row `row`: its signal plus unit white Gaussian noise drawn
    /// from the row's own stream.
    pub fn image_into(&self, row: usize, p: &Pick, out: &mut [f32]) {
        self.signal_into(p, out);
        let mut rng = stream(self.seed, Purpose::Noise, row as u64);
        add_unit_noise(&mut rng, out);
    }

    /// Draws the junk object of `p` (before CTF and scaling) on an `m × m` canvas
    /// ([`junk_canvas`]) centred like the box: a random aggregate of blobs (60%), a large
    /// contamination blob or two (20%), or a soft carbon/ice edge (20%), faded out between
    /// the box edge and the canvas edge so that the periodic FFT does not wrap it.
    fn draw_junk(&self, p: &Pick, out: &mut [f32], m: usize) {
        let r = self.radius_a;
        let mut rng = stream(self.seed, Purpose::Junk, p.junk_seed);
        let kind: f64 = rng.gen();
        let c = (m / 2) as f64;
        let centre = [c - p.shift_px[0] as f64, c - p.shift_px[1] as f64];
        if kind < 0.6 {
            let count = rng.gen_range(6..=50usize);
            let spread = r * rng.gen_range(0.3..0.9);
            let off = [
                rng.gen_range(-0.15..0.15) * r,
                rng.gen_range(-0.15..0.15) * r,
            ];
            let blobs: Vec<Blob> = (0..count)
                .map(|_| {
                    let mut g = || -> f64 { StandardNormal.sample(&mut rng) };
                    let pos = [off[0] + spread * g(), off[1] + spread * g(), spread * g()];
                    let sigma = (r * rng.gen_range(0.04..0.2)).max(self.min_sigma_a);
                    let mass = (sigma / r).powi(3) * rng.gen_range(0.5..1.5);
                    Blob {
                        pos_a: pos,
                        sigma_a: sigma,
                        mass,
                    }
                })
                .collect();
            project_into(&blobs, &pick_matrix(p), centre, self.psize_a, m, out);
        } else if kind < 0.8 {
            let count = rng.gen_range(1..=2usize);
            let half_a = 0.3 * self.n as f64 * self.psize_a;
            let blobs: Vec<Blob> = (0..count)
                .map(|_| Blob {
                    pos_a: [
                        rng.gen_range(-half_a..half_a),
                        rng.gen_range(-half_a..half_a),
                        0.0,
                    ],
                    sigma_a: r * rng.gen_range(0.25..0.6),
                    mass: rng.gen_range(0.5..1.5),
                })
                .collect();
            let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            project_into(&blobs, &identity, centre, self.psize_a, m, out);
        } else {
            // Soft step across a random line: s(d) = 1 / (1 + exp(−d / w)).
            let th = rng.gen_range(0.0..std::f64::consts::TAU);
            let (nx_, ny_) = (th.cos(), th.sin());
            let d0 = rng.gen_range(-0.3..0.3) * self.n as f64;
            let w = rng.gen_range(0.5..3.0);
            for y in 0..m {
                for x in 0..m {
                    let t = ((x as f64 - centre[0]) * nx_ + (y as f64 - centre[1]) * ny_ - d0) / w;
                    // 1 / (1 + e^−t), saturated where it is 0 or 1 to f32 precision.
                    out[y * m + x] = if t > 20.0 {
                        1.0
                    } else if t < -20.0 {
                        0.0
                    } else {
                        (1.0 / (1.0 + (-t).exp())) as f32
                    };
                }
            }
        }
        // Separable raised-cosine fade: 1 inside the box, 0 at the canvas edge.
        let fade = edge_fade(self.n, m);
        for (y, row) in out.chunks_exact_mut(m).enumerate() {
            for (v, fx) in row.iter_mut().zip(&fade) {
                *v *= fx * fade[y];
            }
        }
    }
}

/// Side of the canvas junk is drawn on for a box of `n` pixels: 1.5 n, even.
fn junk_canvas(n: usize) -> usize {
    (3 * n / 2 + 1) & !1
}

/// Fade profile along one axis of an `m`-pixel canvas holding an `n`-pixel box in its
/// centre: 1 over the box, a raised cosine down to 0 at the canvas edge.
fn edge_fade(n: usize, m: usize) -> Vec<f32> {
    let c = (m / 2) as f64;
    let (r0, r1) = (n as f64 / 2.0 + 1.0, c);
    (0..m)
        .map(|i| {
            let r = (i as f64 - c).abs();
            if r <= r0 {
                1.0
            } else if r >= r1 {
                0.0
            } else {
                (0.5 * (1.0 + (std::f64::consts::PI * (r - r0) / (r1 - r0)).cos())) as f32
            }
        })
        .collect()
}

/// Adds independent N(0, 1) samples (rand_distr's ziggurat) to `out`.
fn add_unit_noise(rng: &mut impl Rng, out: &mut [f32]) {
    for v in out.iter_mut() {
        let e: f32 = StandardNormal.sample(rng);
        *v += e;
    }
}

/// Smallest blob width drawn (Å): 1.2 pixels, so that every blob is well sampled.
pub fn min_sigma_a(psize_a: f64) -> f64 {
    1.2 * psize_a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_standard_normal() {
        let mut rng = stream(0, Purpose::Noise, 0);
        let mut v = vec![0.0f32; 1_000_001];
        add_unit_noise(&mut rng, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(
            mean.abs() < 0.005 && (var - 1.0).abs() < 0.005 && (kurt - 3.0).abs() < 0.03,
            "{mean} {var} {kurt}"
        );
        // Tail mass beyond 3σ: 0.27%.
        let tail = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
        assert!((tail - 0.0027).abs() < 0.0003, "{tail}");
        // Pairs are independent: correlation of neighbours ~ 0.
        let c = v.windows(2).map(|w| w[0] as f64 * w[1] as f64).sum::<f64>() / n;
        assert!(c.abs() < 0.005, "{c}");
    }
}
