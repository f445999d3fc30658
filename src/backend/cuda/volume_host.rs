//! A host transcription of `kernels/volume.cu` (tests only): the same arithmetic, loop by
//! loop, on the same flat inputs as the device API ([`super::volume`]), so machines
//! without a GPU check that the inputs the host prepares (layouts, matrices, CTF
//! coefficients, point lists, fixed-point scale) give the CPU reference's results. It
//! cannot check the CUDA code itself; keep the two in step when either changes.

use super::volume::{block_scale, Backprojection, Geometry, ParticleBlock};
use crate::error::Result;
use crate::numerics::fft::Complex32;

const MIN_WEIGHT: f64 = 1e-3;

fn slice_point(a: &[f64; 9], fx: f64, fy: f64) -> [f64; 3] {
    [
        a[0] * fx + a[3] * fy,
        a[1] * fx + a[4] * fy,
        a[2] * fx + a[5] * fy,
    ]
}

fn corners(p: [f64; 3], m: usize) -> ([i64; 8], [f64; 8]) {
    let (mi, h) = (m as i64, (m / 2 + 1) as i64);
    let (x0, y0, z0) = (
        p[0].floor() as i64,
        p[1].floor() as i64,
        p[2].floor() as i64,
    );
    let (fx, fy, fz) = (p[0] - x0 as f64, p[1] - y0 as f64, p[2] - z0 as f64);
    let (wx, wy, wz) = ([1.0 - fx, fx], [1.0 - fy, fy], [1.0 - fz, fz]);
    let (mut idx, mut w) = ([0i64; 8], [0.0f64; 8]);
    for c in 0..8 {
        let (dx, dy, dz) = (c & 1, (c >> 1) & 1, (c >> 2) & 1);
        let (x, y, z) = (x0 + dx as i64, y0 + dy as i64, z0 + dz as i64);
        if x < h && y.abs() < mi / 2 && z.abs() < mi / 2 {
            let (zw, yw) = (
                if z < 0 { z + mi } else { z },
                if y < 0 { y + mi } else { y },
            );
            idx[c] = (zw * mi + yw) * h + x;
            w[c] = wx[dx] * wy[dy] * wz[dz];
        }
    }
    (idx, w)
}

fn slice_value(vol: &[Complex32], a: &[f64; 9], kx: i64, ky: i64, g: &Geometry) -> Complex32 {
    let km = g.k_max as i64;
    if kx * kx + ky * ky > km * km {
        return Complex32::new(0.0, 0.0);
    }
    let pad = g.pad as f64;
    let mut p = slice_point(a, kx as f64 * pad, ky as f64 * pad);
    let conj = p[0] < 0.0;
    if conj {
        p = [-p[0], -p[1], -p[2]];
    }
    let (idx, w) = corners(p, g.n * g.pad);
    let mut acc = Complex32::new(0.0, 0.0);
    for c in 0..8 {
        acc += vol[idx[c] as usize] * w[c] as f32;
    }
    if conj {
        acc = acc.conj();
    }
    acc * if (kx + ky) & 1 == 1 { -1.0 } else { 1.0 }
}

/// `ctf_eval` of common.cuh.
fn ctf_f32(c: &[f64; 9], kx: f64, ky: f64) -> f32 {
    let k2 = kx * kx + ky * ky;
    let df_k2 = c[4] * k2 + c[5] * ((kx * kx - ky * ky) * c[6] + 2.0 * kx * ky * c[7]);
    let chi = c[0] * df_k2 - c[1] * k2 * k2 + c[2];
    let env = if c[3] != 0.0 { (c[3] * k2).exp() } else { 1.0 };
    (chi as f32).sin() * (c[8] * env) as f32
}

/// `ctf_eval_f64` of volume.cu.
fn ctf_f64(c: &[f64; 9], kx: f64, ky: f64) -> f64 {
    let k2 = kx * kx + ky * ky;
    let df_k2 = c[4] * k2 + c[5] * ((kx * kx - ky * ky) * c[6] + 2.0 * kx * ky * c[7]);
    let chi = c[0] * df_k2 - c[1] * k2 * k2 + c[2];
    let env = if c[3] != 0.0 { (c[3] * k2).exp() } else { 1.0 };
    c[8] * chi.sin() * env
}

/// `volume_score`: residual power `len × K × n_shells`.
pub fn score(g: &Geometry, vols: &[&[Complex32]], b: &ParticleBlock, alpha: &[f64]) -> Vec<f64> {
    let (n, ns, nk) = (g.n, g.shells.len(), vols.len());
    let h = n / 2 + 1;
    let nb = b.poses.len();
    let mut out = vec![0.0; nb * nk * ns];
    for j in 0..nb {
        let x = &b.spectra[j * n * h..(j + 1) * n * h];
        for (k, vol) in vols.iter().enumerate() {
            for s in 1..ns {
                let mut acc = 0.0f64;
                for &c in &g.shells[s] {
                    let c = c as usize;
                    let (i, kx) = (c / h, (c % h) as i64);
                    let ky = if i < n.div_ceil(2) {
                        i as i64
                    } else {
                        i as i64 - n as i64
                    };
                    let pv = slice_value(vol, &b.poses[j], kx, ky, g);
                    let ctf = b.ctfs.map_or(1.0, |cs| {
                        ctf_f32(&cs[j], kx as f64 * b.freq_step, ky as f64 * b.freq_step)
                    });
                    let d = x[c] - pv * (alpha[j] as f32 * ctf);
                    acc += if kx == 0 { 0.5 } else { 1.0 } * d.norm_sqr() as f64;
                }
                out[(j * nk + k) * ns + s] = acc;
            }
        }
    }
    out
}

/// `volume_backproject` followed by `volume_add_fixed`, as
/// `VolumeDevice::backproject_block` queues them: adds the block's sums to the resident
/// f64 sums `out` (2K accumulators of V voxels × 3).
pub fn backproject(g: &Geometry, nk: usize, b: &Backprojection, out: &mut [f64]) -> Result<()> {
    let mut fixed = vec![0u64; out.len()];
    let scale = backproject_fixed(g, nk, b, &mut fixed)?;
    add_fixed(out, &mut fixed, scale);
    Ok(())
}

/// `volume_add_fixed`: `sums[t] += (i64)fixed[t] / scale`, `fixed[t] = 0`.
pub fn add_fixed(sums: &mut [f64], fixed: &mut [u64], scale: f64) {
    for (o, v) in sums.iter_mut().zip(fixed) {
        *o += (*v as i64) as f64 / scale;
        *v = 0;
    }
}

/// `volume_backproject`: adds the block's contributions to `fixed` (2K accumulators of V
/// voxels × 3, 64-bit fixed point, wrapping as the device's atomics) and returns the
/// block's scale ([`block_scale`]).
pub fn backproject_fixed(
    g: &Geometry,
    nk: usize,
    b: &Backprojection,
    fixed: &mut [u64],
) -> Result<f64> {
    let np = g.points.len();
    let scale = block_scale(b, np)?;
    let m = g.n * g.pad;
    let (mi, h) = (m as i64, (m / 2 + 1) as i64);
    let nv = (mi * mi * h) as usize;
    let acc = fixed;
    let mut add = |i: usize, v: f64| {
        acc[i] = acc[i].wrapping_add((v * scale).round_ties_even() as i64 as u64);
    };
    for j in 0..b.alpha.len() {
        let pr = &b.probs[j * nk..(j + 1) * nk];
        if pr.iter().all(|p| *p < MIN_WEIGHT) {
            continue;
        }
        let (al, half) = (b.alpha[j], b.half[j] as usize);
        for gi in 0..b.n_syms {
            for (q, &(fx, fy)) in g.points.iter().enumerate() {
                let c2 = b.ctfs.map_or(1.0f32, |cs| {
                    let pad = g.pad as f64;
                    let f = b.freq_step_in;
                    let c = ctf_f64(&cs[j], fx as f64 / pad * f, fy as f64 / pad * f);
                    (c * c) as f32
                });
                let mut v = b.values[j * np + q];
                let mut p = slice_point(&b.mats[j * b.n_syms + gi], fx as f64, fy as f64);
                if p[0] < 0.0 {
                    p = [-p[0], -p[1], -p[2]];
                    v = v.conj();
                }
                let (idx, w) = corners(p, m);
                for c in 0..8 {
                    let t = w[c] as f32;
                    if t == 0.0 {
                        continue;
                    }
                    let (re, im, c2t) = (v.re * t, v.im * t, c2 * t);
                    let mut targets = vec![(idx[c], im)];
                    if c % 2 == 0 && p[0] < 1.0 {
                        let i = idx[c];
                        let (z, y) = (i / (mi * h), (i / h) % mi);
                        let mir = (((mi - z) % mi) * mi + (mi - y) % mi) * h;
                        if mir != i {
                            targets.push((mir, -im));
                        }
                    }
                    for (vox, im) in targets {
                        for (k, &pk) in pr.iter().enumerate() {
                            if pk < MIN_WEIGHT {
                                continue;
                            }
                            let (w1, w2) = (pk * al, pk * al * al);
                            let a = 3 * ((2 * k + half) * nv + vox as usize);
                            add(a, w1 * re as f64);
                            add(a + 1, w1 * im as f64);
                            add(a + 2, w2 * c2t as f64);
                        }
                    }
                }
            }
        }
    }
    Ok(scale)
}
