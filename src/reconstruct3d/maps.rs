//! The maps of one class from its two half-set sums, at the full box:
//!
//! ```text
//!   half maps   V_h = F⁻¹[num_h / (den_h + 0.01·⟨den_h⟩_shell)] / gridding      (h = A, B)
//!   full map    V   = the same of num_A + num_B, den_A + den_B (unfiltered)
//!   mask        S   = the given solvent mask, or that of V low-passed to
//!                     solvent_mask_lowpass_A: threshold at a fraction of its maximum,
//!                     largest component, dilation, raised-cosine edge (3D classification's
//!                     auto solvent mask)
//!   FSC(s)      between S·V_A and S·V_B (and, for reference, V_A and V_B unmasked)
//!   filtered    F⁻¹[ V̂(k) · √(2·FSC/(1 + FSC)) ] at shell s = round(|k|) (the FSC of the
//!               full map, Rosenthal & Henderson's C_ref weighting; 0 where FSC ≤ 0), then
//!               low-passed at the FSC = 0.143 resolution (raised-cosine edge of ±1 shell)
//! ```

use ndarray::Array3;

use crate::classify3d::model::{half_map, lowpass, masked_fsc};
use crate::numerics::fft::{fftfreq, irfft3, rfft3};
use crate::numerics::frc::frc_resolution_a;
use crate::numerics::volume::{solvent_mask, spherical_mask};
use crate::particles::WorkGrid;

/// The solvent mask's parameters (Å, and the threshold as a fraction of the maximum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskParams {
    pub lowpass_a: f64,
    pub threshold: f64,
    pub dilate_a: f64,
    pub soft_a: f64,
}

/// Every map and curve of one class.
pub struct ClassMaps {
    /// Half maps A and B (unfiltered, unmasked).
    pub halves: [Array3<f32>; 2],
    /// The full map (unfiltered, unmasked).
    pub map: Array3<f32>,
    /// The FSC-weighted map, low-passed at the FSC = 0.143 resolution (unmasked).
    pub filtered: Array3<f32>,
    /// The solvent mask (values in [0, 1]).
    pub mask: Array3<f32>,
    /// Why the mask is a sphere instead (the map had no density to threshold), if it is.
    pub mask_fallback: Option<String>,
    /// Half-map FSC per shell `0..=n/2`, solvent-masked, and unmasked.
    pub fsc: Vec<f64>,
    pub fsc_unmasked: Vec<f64>,
    /// Resolutions (Å) where the masked FSC falls below 0.143 and 0.5, and the unmasked
    /// one below 0.143.
    pub res_0143_a: f64,
    pub res_05_a: f64,
    pub res_0143_unmasked_a: f64,
}

/// Half maps, full map, mask, FSC curves and the filtered map of one class from its two
/// half-set accumulators on `grid` (the full box); the solvent mask is `given`, or
/// generated from the map with `mp`.
pub fn class_maps(
    halves: [&[f64]; 2],
    grid: &WorkGrid,
    mp: &MaskParams,
    given: Option<&Array3<f32>>,
) -> ClassMaps {
    let (n, psize) = (grid.n, grid.psize_a());
    let half_maps = halves.map(|a| half_map(a, n));
    let both: Vec<f64> = halves[0]
        .iter()
        .zip(halves[1])
        .map(|(a, b)| a + b)
        .collect();
    let map = half_map(&both, n);
    drop(both);
    let (mask, mask_fallback) = match given {
        Some(m) => (m.clone(), None),
        None => generated_mask(&map, grid, mp),
    };
    let fsc = masked_fsc(&half_maps, &mask);
    let fsc_unmasked = masked_fsc(&half_maps, &Array3::ones((n, n, n)));
    let res = |f: &[f64], t: f64| frc_resolution_a(f, t, n, psize);
    let (res_0143_a, res_05_a) = (res(&fsc, 0.143), res(&fsc, 0.5));
    let filtered = lowpass(&fsc_weighted(&map, &fsc), grid, res_0143_a);
    ClassMaps {
        halves: half_maps,
        filtered,
        mask,
        mask_fallback,
        res_0143_unmasked_a: res(&fsc_unmasked, 0.143),
        fsc,
        fsc_unmasked,
        res_0143_a,
        res_05_a,
        map,
    }
}

/// The auto solvent mask of `map`, or a soft sphere of 0.9 × the box and the reason when
/// the low-passed map has no density to threshold.
fn generated_mask(
    map: &Array3<f32>,
    grid: &WorkGrid,
    mp: &MaskParams,
) -> (Array3<f32>, Option<String>) {
    let (n, psize) = (grid.n, grid.psize_a());
    let smooth = lowpass(map, grid, mp.lowpass_a.max(2.0 * psize));
    match solvent_mask(smooth.view(), psize, mp.threshold, mp.dilate_a, mp.soft_a) {
        Ok(m) => (m, None),
        Err(e) => (
            spherical_mask(n, 0.45 * n as f64 - 2.0, 2.0),
            Some(e.to_string()),
        ),
    }
}

/// `vol` with each Fourier shell `s = round(|k|)` multiplied by `√(2·FSC/(1 + FSC))`
/// (`fsc` per shell `0..=n/2`; 0 where the FSC is not positive and beyond the last shell).
pub fn fsc_weighted(vol: &Array3<f32>, fsc: &[f64]) -> Array3<f32> {
    let n = vol.dim().0;
    let weight: Vec<f32> = fsc
        .iter()
        .map(|f| {
            let f = f.clamp(0.0, 1.0);
            (2.0 * f / (1.0 + f)).sqrt() as f32
        })
        .collect();
    let mut spec = rfft3(vol.view());
    for ((z, y, x), v) in spec.indexed_iter_mut() {
        let (kz, ky) = (fftfreq(z, n) as f64, fftfreq(y, n) as f64);
        let s = (kz * kz + ky * ky + (x * x) as f64).sqrt().round() as usize;
        *v *= weight.get(s).copied().unwrap_or(0.0);
    }
    irfft3(spec.view(), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify3d::model::{backproject, PAD};
    use crate::em::stats::Stats;
    use crate::numerics::fft::{half_len, Complex32};
    use crate::numerics::project3d::Projector;
    use crate::numerics::rotation::{euler_deg_to_matrix, Mat3};
    use crate::numerics::symmetry::point_group;
    use crate::particles::Particles;
    use crate::reconstruct3d::sums::{halves, layout};

    /// A smooth blob off centre (σ = 2 voxels), negligible at the box edge.
    fn blob(n: usize) -> Array3<f32> {
        let c = n as f64 / 2.0;
        Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let r2 = (z as f64 - c - 2.0).powi(2)
                + (y as f64 - c).powi(2)
                + (x as f64 - c + 3.0).powi(2);
            (-r2 / 8.0).exp() as f32
        })
    }

    /// Noise-free projections of `vol` at poses spread over the sphere (in-plane angle
    /// varying too), back-projected into one class with 3D classification's code.
    fn sums_of_projections(vol: &Array3<f32>, count: usize) -> (Stats, WorkGrid) {
        let n = vol.dim().0;
        let grid = WorkGrid::new(n, 2.0, 4.0);
        assert_eq!((grid.n, grid.k_max), (n, n / 2));
        let proj = Projector::new(vol.view(), PAD);
        let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
        let poses: Vec<Mat3> = (0..count)
            .map(|i| {
                let z = 1.0 - 2.0 * (i as f64 + 0.5) / count as f64;
                let rot = (golden * i as f64).to_degrees();
                euler_deg_to_matrix(rot, z.acos().to_degrees(), 37.0 * i as f64)
            })
            .collect();
        let spectra: Vec<Complex32> = poses
            .iter()
            .flat_map(|a| proj.project(a, grid.k_max).into_raw_vec_and_offset().0)
            .collect();
        let block = Particles::with_poses(0, spectra, None, poses, &grid);
        let mut st = Stats::zeros(&layout(1, &grid).unwrap());
        let idx: Vec<usize> = (0..count).collect();
        let ones = vec![1.0; count];
        backproject(
            &mut st,
            &grid,
            &block,
            &idx,
            &ones,
            &ones,
            &point_group("C1").unwrap(),
        )
        .unwrap();
        (st, grid)
    }

    #[test]
    fn noise_free_projections_give_the_volume_and_a_perfect_fsc() {
        let n = 24;
        let truth = blob(n);
        let (st, grid) = sums_of_projections(&truth, 600);
        let mp = MaskParams {
            lowpass_a: 10.0,
            threshold: 0.15,
            dilate_a: 4.0,
            soft_a: 6.0,
        };
        let m = class_maps(halves(&st, &grid, 0).unwrap(), &grid, &mp, None);
        assert!(m.mask_fallback.is_none(), "{:?}", m.mask_fallback);
        for v in [&m.map, &m.filtered, &m.halves[0], &m.mask] {
            assert_eq!(v.dim(), (n, n, n));
        }
        let cc = |a: &Array3<f32>, b: &Array3<f32>| {
            let (ma, mb) = (a.mean().unwrap(), b.mean().unwrap());
            let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
            for (x, y) in a.iter().zip(b.iter()) {
                let (x, y) = ((x - ma) as f64, (y - mb) as f64);
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            ab / (aa * bb).sqrt()
        };
        assert!(cc(&m.map, &truth) > 0.99, "{}", cc(&m.map, &truth));
        assert!(
            cc(&m.filtered, &truth) > 0.99,
            "{}",
            cc(&m.filtered, &truth)
        );
        // Every shell of signal agrees between the half sets: the resolution is Nyquist.
        assert!(m.fsc[..n / 2 - 1].iter().all(|f| *f > 0.9), "{:?}", m.fsc);
        assert!((m.res_0143_a - 4.0).abs() < 0.5, "{}", m.res_0143_a);
        assert!(m.res_05_a >= m.res_0143_a);
        // The mask covers the blob's density and not the corners.
        let c = n / 2;
        assert!(m.mask[[c + 2, c, c - 3]] > 0.99);
        assert_eq!(m.mask[[0, 0, 0]], 0.0);
    }

    #[test]
    fn fsc_weighting_keeps_perfect_shells_and_removes_uncorrelated_ones() {
        let n = 24;
        let v = blob(n);
        let same = fsc_weighted(&v, &vec![1.0; n / 2 + 1]);
        let worst = v
            .iter()
            .zip(same.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        // FSC 1/3 everywhere: weight √(2/3 / (4/3)) = √½.
        let third = fsc_weighted(&v, &vec![1.0 / 3.0; n / 2 + 1]);
        for (a, b) in v.iter().zip(third.iter()) {
            assert!((a * 0.5f32.sqrt() - b).abs() < 1e-5);
        }
        // Shells with FSC ≤ 0 are removed: only the DC term (shell 0) is left.
        let mut fsc = vec![-0.2; n / 2 + 1];
        fsc[0] = 1.0;
        let dc = fsc_weighted(&v, &fsc);
        let mean = v.sum() / v.len() as f32;
        assert!(dc.iter().all(|x| (x - mean).abs() < 1e-5));
        assert_eq!(rfft3(dc.view()).dim(), (n, n, half_len(n)));
    }
}
