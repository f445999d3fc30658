//! The contrast transfer function (CTF) in RELION's convention, evaluated on the half-plane
//! Fourier grid of [`crate::numerics::fft`] (or on the full, uncentred grid).
//!
//! Formula (RELION `ctf.h`, `CTF::getCTF`, rewritten with positive defocus):
//! ```text
//! λ      = 12.2643247 / sqrt(V · (1 + 0.978466e-6 · V))     Å, V in volts (relativistic)
//! Δf(θ)  = (df1 + df2)/2 + (df1 − df2)/2 · cos(2(θ − θ_ast))  Å, positive = underfocus,
//!          θ = atan2(ky, kx), θ_ast = DefocusAngle (angle between the x axis and df1 = U)
//! χ(k)   = π λ Δf(θ) k² − (π/2) Cs λ³ k⁴ + φ                 Cs in Å (mm · 1e7), φ = phase shift
//! CTF(k) = scale · (√(1 − A²) sin χ + A cos χ) · exp(−B k² / 4)
//!        = scale · sin(χ + atan(A / √(1 − A²)))          · exp(−B k² / 4)
//! ```
//! with `k` in Å⁻¹ and A the amplitude contrast. This is RELION's: it computes
//! `deltaf = −Δf(θ)`, `argument = K1·deltaf·k² + K2·k⁴ − K5 − K3` with `K1 = πλ`,
//! `K2 = (π/2)·Cs·λ³`, `K3 = atan(A/√(1−A²))`, `K5 = φ`, and returns `−sin(argument)`, which
//! is the line above. Consequences of the sign: `CTF(0) = +A` (not −A) for φ = 0, and the CTF
//! is positive at low frequency, so a positive density (protein white, RELION's particle
//! contrast) stays positive in CTF-modulated projections. Zeros without Cs and astigmatism:
//! `π λ Δf k² + K3 = nπ`.
//!
//! Grid: half-plane element `[i, j]` of a `(ny, nx)` image with pixel size `p` is at
//! `kx = j / (nx·p)`, `ky = fftfreq(i, ny) / (ny·p)`, as RELION's `getFftwImage`.

use ndarray::Array2;

use super::fft::{fftfreq, half_len};

/// Parameters of one particle's CTF (field names and units of `ctf/*` in the dataset).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CtfParams {
    /// Acceleration voltage, kV (`ctf/accel_kv`).
    pub accel_kv: f64,
    /// Spherical aberration, mm (`ctf/cs_mm`).
    pub cs_mm: f64,
    /// Amplitude contrast A, 0 ≤ A < 1 (`ctf/amp_contrast`).
    pub amp_contrast: f64,
    /// Defocus along U (RELION DefocusU), Å, positive = underfocus (`ctf/df1_A`).
    pub df1_a: f64,
    /// Defocus along V (RELION DefocusV), Å (`ctf/df2_A`).
    pub df2_a: f64,
    /// Astigmatism angle (RELION DefocusAngle) in radians, from the x axis to U
    /// (`ctf/df_angle_rad`).
    pub df_angle_rad: f64,
    /// Phase-plate phase shift φ, radians (`ctf/phase_shift_rad`).
    pub phase_shift_rad: f64,
    /// B-factor of the envelope `exp(−B k²/4)`, Å² (`ctf/bfactor`); 0 for none.
    pub bfactor_a2: f64,
    /// Overall scale (`ctf/scale`), normally 1.
    pub scale: f64,
}

impl Default for CtfParams {
    /// 300 kV, Cs 2.7 mm, A = 0.1, 1.5 µm defocus, no astigmatism, no phase shift, no B.
    fn default() -> Self {
        CtfParams {
            accel_kv: 300.0,
            cs_mm: 2.7,
            amp_contrast: 0.1,
            df1_a: 15000.0,
            df2_a: 15000.0,
            df_angle_rad: 0.0,
            phase_shift_rad: 0.0,
            bfactor_a2: 0.0,
            scale: 1.0,
        }
    }
}

/// Relativistic electron wavelength in Å for an acceleration voltage in kV (RELION's formula).
pub fn electron_wavelength_a(accel_kv: f64) -> f64 {
    let v = accel_kv * 1e3;
    12.2643247 / (v * (1.0 + v * 0.978466e-6)).sqrt()
}

/// The constants of one CTF, precomputed so that evaluating a grid costs one `sin` (and one
/// `exp` with a B-factor) per element.
#[derive(Clone, Copy, Debug)]
pub struct Ctf {
    /// π λ
    k1: f64,
    /// (π/2) Cs λ³
    k2: f64,
    /// φ + atan(A/√(1−A²))
    phase: f64,
    /// −B/4
    k4: f64,
    df_mean: f64,
    df_dev: f64,
    cos2a: f64,
    sin2a: f64,
    scale: f64,
}

impl Ctf {
    /// Precomputes the constants of `p`. `amp_contrast` is clamped into [0, 1).
    pub fn new(p: &CtfParams) -> Ctf {
        let lambda = electron_wavelength_a(p.accel_kv);
        let a = p.amp_contrast.clamp(0.0, 1.0 - 1e-9);
        let (sin2a, cos2a) = (2.0 * p.df_angle_rad).sin_cos();
        Ctf {
            k1: std::f64::consts::PI * lambda,
            k2: std::f64::consts::FRAC_PI_2 * p.cs_mm * 1e7 * lambda.powi(3),
            phase: p.phase_shift_rad + (a / (1.0 - a * a).sqrt()).atan(),
            k4: -p.bfactor_a2 / 4.0,
            df_mean: 0.5 * (p.df1_a + p.df2_a),
            df_dev: 0.5 * (p.df1_a - p.df2_a),
            cos2a,
            sin2a,
            scale: p.scale,
        }
    }

    /// The precomputed constants in the order a GPU kernel reads them (`ctf_eval` in
    /// `backend/cuda/kernels/common.cuh`): πλ, (π/2)·Cs·λ³, phase, −B/4, mean defocus, half
    /// the defocus difference, cos 2α, sin 2α, scale.
    pub fn coefficients(&self) -> [f64; 9] {
        [
            self.k1,
            self.k2,
            self.phase,
            self.k4,
            self.df_mean,
            self.df_dev,
            self.cos2a,
            self.sin2a,
            self.scale,
        ]
    }

    /// The CTF at spatial frequency `(kx, ky)` in Å⁻¹.
    pub fn eval(&self, kx: f64, ky: f64) -> f64 {
        let (chi, k2) = self.chi(kx, ky);
        self.scale * chi.sin() * self.envelope(k2)
    }

    /// The CTF at `(kx, ky)` as stored in grids: χ in f64, its sine in f32. Rounding χ to
    /// f32 costs at most |χ|·6e-8 rad (1e-5 at Nyquist of 2 Å pixels and 3 µm defocus); the
    /// f32 sine is about twice as fast, which matters in per-particle CTF grids.
    pub fn eval_f32(&self, kx: f64, ky: f64) -> f32 {
        let (chi, k2) = self.chi(kx, ky);
        (chi as f32).sin() * (self.scale * self.envelope(k2)) as f32
    }

    /// χ(k) and k².
    #[inline]
    fn chi(&self, kx: f64, ky: f64) -> (f64, f64) {
        let k2 = kx * kx + ky * ky;
        // cos(2(θ − θa)) = cos2θ cos2θa + sin2θ sin2θa, with cos2θ = (kx² − ky²)/k² and
        // sin2θ = 2 kx ky / k²: no atan2 needed, and the k² cancels against χ's k².
        let df_k2 = self.df_mean * k2
            + self.df_dev * ((kx * kx - ky * ky) * self.cos2a + 2.0 * kx * ky * self.sin2a);
        (self.k1 * df_k2 - self.k2 * k2 * k2 + self.phase, k2)
    }

    /// The B-factor envelope `exp(−B k²/4)`.
    #[inline]
    fn envelope(&self, k2: f64) -> f64 {
        if self.k4 != 0.0 {
            (self.k4 * k2).exp()
        } else {
            1.0
        }
    }

    /// Writes the CTF of a `(ny, nx)` image with pixel size `psize_a` on its half-plane grid
    /// (row-major, `ny · (nx/2+1)` values) into `out`.
    pub fn half_plane_into(&self, ny: usize, nx: usize, psize_a: f64, out: &mut [f32]) {
        let nh = half_len(nx);
        assert_eq!(out.len(), ny * nh, "ctf half plane: output size");
        let (sx, sy) = (1.0 / (nx as f64 * psize_a), 1.0 / (ny as f64 * psize_a));
        for i in 0..ny {
            let ky = fftfreq(i, ny) as f64 * sy;
            for j in 0..nh {
                out[i * nh + j] = self.eval_f32(j as f64 * sx, ky);
            }
        }
    }
}

/// The CTF of a `box_px` × `box_px` image on the half-plane grid `(box, box/2+1)` of
/// [`crate::numerics::fft::rfft2`].
pub fn ctf_2d(box_px: usize, psize_a: f64, params: &CtfParams) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((box_px, half_len(box_px)));
    Ctf::new(params).half_plane_into(
        box_px,
        box_px,
        psize_a,
        out.as_slice_mut().expect("fresh array is contiguous"),
    );
    out
}

/// The CTF on the full `(box, box)` grid in FFT order (origin at `[0, 0]`; centre it with
/// [`crate::numerics::fft::fftshift2`]).
pub fn ctf_2d_full(box_px: usize, psize_a: f64, params: &CtfParams) -> Array2<f32> {
    let ctf = Ctf::new(params);
    let s = 1.0 / (box_px as f64 * psize_a);
    Array2::from_shape_fn((box_px, box_px), |(i, j)| {
        ctf.eval_f32(fftfreq(j, box_px) as f64 * s, fftfreq(i, box_px) as f64 * s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wavelength_at_common_voltages() {
        // Tabulated relativistic wavelengths: 300 kV 0.019687 Å, 200 kV 0.025079 Å.
        assert!((electron_wavelength_a(300.0) - 0.019687).abs() < 1e-5);
        assert!((electron_wavelength_a(200.0) - 0.025079).abs() < 1e-5);
    }

    #[test]
    fn value_at_origin_is_plus_amplitude_contrast() {
        let p = CtfParams {
            amp_contrast: 0.07,
            ..CtfParams::default()
        };
        let c = ctf_2d(64, 1.5, &p);
        assert!((c[[0, 0]] - 0.07).abs() < 1e-6, "{}", c[[0, 0]]);
        // With a 90° phase plate the origin is √(1−A²)·sin(π/2) + A·cos(π/2).
        let p = CtfParams {
            amp_contrast: 0.1,
            phase_shift_rad: std::f64::consts::FRAC_PI_2,
            ..p
        };
        let c = ctf_2d(64, 1.5, &p);
        assert!((c[[0, 0]] as f64 - (1.0f64 - 0.01).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn matches_the_relion_expression() {
        // RELION: deltaf = −Δf(θ); argument = K1 deltaf k² + K2 k⁴ − K5 − K3; ctf = −sin(argument).
        let p = CtfParams {
            df1_a: 21000.0,
            df2_a: 19500.0,
            df_angle_rad: 0.6,
            phase_shift_rad: 0.3,
            bfactor_a2: 40.0,
            ..CtfParams::default()
        };
        let ctf = Ctf::new(&p);
        let lambda = electron_wavelength_a(300.0);
        let (k1, k2) = (
            std::f64::consts::PI * lambda,
            std::f64::consts::FRAC_PI_2 * 2.7e7 * lambda.powi(3),
        );
        let k3 = (0.1f64 / (1.0f64 - 0.01).sqrt()).atan();
        for &(kx, ky) in &[(0.01, 0.0), (0.05, -0.13), (-0.2, 0.07), (0.0, 0.3)] {
            let u2: f64 = kx * kx + ky * ky;
            let ang = f64::atan2(ky, kx) - 0.6;
            let deltaf = -(20250.0 + 750.0 * (2.0 * ang).cos());
            let arg = k1 * deltaf * u2 + k2 * u2 * u2 - 0.3 - k3;
            let relion = -arg.sin() * (-40.0 / 4.0 * u2).exp();
            assert!(
                (ctf.eval(kx, ky) - relion).abs() < 1e-9,
                "({kx},{ky}): {} vs {relion}",
                ctf.eval(kx, ky)
            );
        }
    }

    #[test]
    fn zeros_at_the_analytic_radii() {
        // No Cs, no astigmatism: zeros where π λ Δf k² + K3 = nπ.
        let p = CtfParams {
            cs_mm: 0.0,
            df1_a: 10000.0,
            df2_a: 10000.0,
            ..CtfParams::default()
        };
        let ctf = Ctf::new(&p);
        let lambda = electron_wavelength_a(300.0);
        let k3 = (0.1f64 / (0.99f64).sqrt()).atan();
        for n in 1..5 {
            let k = ((n as f64 * std::f64::consts::PI - k3)
                / (std::f64::consts::PI * lambda * 10000.0))
                .sqrt();
            assert!(ctf.eval(k, 0.0).abs() < 1e-9, "zero {n} at k={k}");
            assert!(ctf.eval(0.0, k).abs() < 1e-9);
            // The sign flips across the zero.
            assert!(ctf.eval(k * 0.995, 0.0) * ctf.eval(k * 1.005, 0.0) < 0.0);
        }
        // On the grid: a 256 px box at 1 Å/px, the first zero lies between the samples that
        // bracket it and the grid values change sign there.
        let k_first =
            ((std::f64::consts::PI - k3) / (std::f64::consts::PI * lambda * 10000.0)).sqrt();
        let j = (k_first * 256.0).floor() as usize;
        let c = ctf_2d(256, 1.0, &p);
        assert!(
            c[[0, j]] > 0.0 && c[[0, j + 1]] < 0.0,
            "{} {}",
            c[[0, j]],
            c[[0, j + 1]]
        );
    }

    #[test]
    fn astigmatism_angle_rotates_the_pattern() {
        let base = CtfParams {
            df1_a: 20000.0,
            df2_a: 15000.0,
            df_angle_rad: 0.0,
            ..CtfParams::default()
        };
        let a = Ctf::new(&base);
        // Along x (θ = 0) the defocus is df1; along y it is df2.
        let iso1 = Ctf::new(&CtfParams {
            df2_a: 20000.0,
            ..base
        });
        let iso2 = Ctf::new(&CtfParams {
            df1_a: 15000.0,
            ..base
        });
        for &k in &[0.03, 0.07, 0.11] {
            assert!((a.eval(k, 0.0) - iso1.eval(k, 0.0)).abs() < 1e-9);
            assert!((a.eval(0.0, k) - iso2.eval(0.0, k)).abs() < 1e-9);
        }
        // Rotating the angle by α rotates the pattern: CTF_α(R_α k) = CTF_0(k).
        let alpha = 0.7f64;
        let rot = Ctf::new(&CtfParams {
            df_angle_rad: alpha,
            ..base
        });
        let (s, c) = alpha.sin_cos();
        for &(kx, ky) in &[(0.05, 0.02), (-0.08, 0.1), (0.12, -0.03)] {
            let (rx, ry) = (c * kx - s * ky, s * kx + c * ky);
            assert!((rot.eval(rx, ry) - a.eval(kx, ky)).abs() < 1e-9);
        }
        // And a 90° angle swaps U and V.
        let swapped = Ctf::new(&CtfParams {
            df_angle_rad: std::f64::consts::FRAC_PI_2,
            ..base
        });
        assert!((swapped.eval(0.0, 0.07) - iso1.eval(0.0, 0.07)).abs() < 1e-9);
    }

    #[test]
    fn half_plane_agrees_with_full_grid_and_is_point_symmetric() {
        let p = CtfParams {
            df1_a: 18000.0,
            df2_a: 16000.0,
            df_angle_rad: 1.1,
            bfactor_a2: 50.0,
            ..CtfParams::default()
        };
        let half = ctf_2d(48, 2.0, &p);
        let full = ctf_2d_full(48, 2.0, &p);
        for i in 0..48 {
            // Column 24 is Nyquist: +24 in the half plane, −24 in the full grid's FFT order,
            // the same frequency as (−ky, +24) by point symmetry.
            // (Row 24 is the Nyquist row, itself ambiguous; skip it.)
            if i != 24 {
                assert!((half[[i, 24]] - full[[(48 - i) % 48, 24]]).abs() < 1e-6);
            }
            for j in 0..24 {
                assert_eq!(half[[i, j]], full[[i, j]]);
                // CTF(−k) = CTF(k) (away from the Nyquist row, whose mirror is off the grid).
                if i != 24 {
                    assert!((full[[i, j]] - full[[(48 - i) % 48, (48 - j) % 48]]).abs() < 1e-6);
                }
            }
        }
        // The B-factor envelope damps high frequencies.
        let no_b = ctf_2d(
            48,
            2.0,
            &CtfParams {
                bfactor_a2: 0.0,
                ..p
            },
        );
        let k2 = (20.0f64 / 96.0).powi(2);
        assert!(
            (half[[0, 20]] as f64 - no_b[[0, 20]] as f64 * (-50.0 * k2 / 4.0).exp()).abs() < 1e-6
        );
    }
}
