//! Tests of the CUDA 2D phases: parity with the CPU and reproducibility where a GPU is
//! usable, and the device algorithm of the M-step sums emulated on the host everywhere.

use super::*;
use crate::backend::phases::{check_parity, e_step_block};
use crate::backend::Cpu;
use crate::classify2d::accumulate::tests::{fixture, model};

/// CPU and CUDA phases on the 2D fixture, all 40 particles (both half sets) in a
/// shuffled order: class log-likelihoods within 1e-4 of their range, responsibilities
/// within 1e-4, every statistic within 1e-4 of the largest (check_parity compares in
/// that order, so one E-step's responsibilities are checked before the sums).
fn parity(hard: bool) {
    let Some(gpu) = crate::backend::cuda::gpu_for_test() else {
        return;
    };
    let (grid, classes, parts) = fixture();
    let idx: Vec<usize> = (0..parts.len()).map(|i| (i * 7) % parts.len()).collect();
    let scale = vec![1.0; idx.len()];
    let block = BlockRef {
        particles: &parts,
        idx: &idx,
        scale: &scale,
    };
    let cpu_m = model(grid, &classes, &Cpu, hard);
    let gpu_m = model(grid, &classes, &gpu, hard);
    let layout = model::layout(3, grid).unwrap();
    let params = EStepParams::new(1.0, 0.0, hard).unwrap();
    let prior = vec![0.0; 3];
    if let Err(e) = check_parity(
        (&Cpu, &cpu_m),
        (&gpu, &gpu_m),
        &block,
        &layout,
        &prior,
        &params,
        1e-4,
    ) {
        panic!("CUDA vs CPU (hard = {hard}): {e}");
    }
}

#[test]
fn cuda_plane_phases_match_the_cpu() {
    parity(false);
}

#[test]
fn cuda_plane_phases_hard_match_the_cpu() {
    parity(true);
}

/// The same block twice on the device: the same bits (scores, responsibilities, sums).
#[test]
fn cuda_plane_phases_are_reproducible() {
    let Some(gpu) = crate::backend::cuda::gpu_for_test() else {
        return;
    };
    let (grid, classes, parts) = fixture();
    let idx: Vec<usize> = (0..parts.len()).collect();
    let scale = vec![1.0; idx.len()];
    let block = BlockRef {
        particles: &parts,
        idx: &idx,
        scale: &scale,
    };
    let m = model(grid, &classes, &gpu, false);
    let layout = model::layout(3, grid).unwrap();
    let params = EStepParams::plain();
    let once = || {
        let mut st = Stats::zeros(&layout);
        let (sc, resp) =
            e_step_block(&gpu, &m, &block, &[0.0; 3], &params, true, &mut st).expect("GPU E-step");
        (
            sc.log_marginal.clone(),
            sc.best_pose.clone(),
            resp.probs().clone(),
            st,
        )
    };
    let (a, b) = (once(), once());
    assert_eq!(a.0, b.0, "log-marginals");
    assert_eq!(a.1, b.1, "best poses");
    assert_eq!(a.2, b.2, "responsibilities");
    assert_eq!(a.3.as_slice(), b.3.as_slice(), "statistics");
}

/// The device algorithm of the M-step sums emulated on the host (plain loops in the
/// kernels' order of operations, f64), checked against the CPU phases: the reformulation
/// (weights with the CPU's cut-offs, sums over particles before the inverse FFT and
/// rotation, CTF² at rotated frequencies as a product) and [`add_sums`]'s layouts. Runs
/// without a GPU; the kernels themselves are only checked by the tests above.
mod emulation {
    use super::super::*;
    use crate::backend::phases::e_step_block;
    use crate::backend::Cpu;
    use crate::classify2d::accumulate::tests::{fixture, model};
    use crate::em::responsibilities::pose_weights;

    fn emulate(hard: bool) {
        let (grid, classes, parts) = fixture();
        let idx: Vec<usize> = (0..parts.len()).collect();
        let scale = vec![1.0; idx.len()];
        let block = BlockRef {
            particles: &parts,
            idx: &idx,
            scale: &scale,
        };
        let m = model(grid, &classes, &Cpu, hard);
        let layout = model::layout(3, grid).unwrap();
        let params = EStepParams::new(1.0, 0.0, hard).unwrap();
        let mut want = Stats::zeros(&layout);
        let (sc, resp) =
            e_step_block(&Cpu, &m, &block, &[0.0; 3], &params, true, &mut want).unwrap();
        let poses = &m.scorer.poses;
        let (k, r, t, l) = (3, poses.n_rot(), poses.n_shift(), grid.len());
        let local = Local {
            num_classes: k,
            grid,
            particles: &parts,
        };
        let mut sums = PlaneSums {
            num: vec![0.0; 2 * k * r * 2 * l],
            den: vec![0.0; 2 * 2 * k * l],
        };
        let mut got = Stats::zeros(&layout);
        let mut w = vec![0.0; r * t];
        for (bi, &i) in idx.iter().enumerate() {
            let h = parts.half[i] as usize;
            let ys: Vec<Vec<Complex32>> = (0..t)
                .map(|tt| local.ctf_times_x(i, Some(&m.ramps[tt * l..(tt + 1) * l])))
                .collect();
            for kk in 0..k {
                let p = resp.probs()[[bi, kk]];
                let best = sc.marg.best_pose()[[bi, kk]];
                let base = (bi * k + kk) * r * t;
                pose_weights(&sc.ll[base..base + r * t], 1.0, &mut w);
                for rr in 0..r {
                    let wt = &w[rr * t..(rr + 1) * t];
                    let wr: f64 = if hard {
                        (best / t == rr) as u8 as f64
                    } else {
                        wt.iter().sum()
                    };
                    let on = p >= 1e-3 && (hard || wr * p >= 1e-5);
                    let cw = if on { p * wr } else { 0.0 };
                    got.segment_mut(model::WEIGHT).unwrap()[kk * 2 + h] += cw;
                    for (tt, y) in ys.iter().enumerate() {
                        let a = match (on, hard) {
                            (false, _) => 0.0,
                            (true, true) => (best == rr * t + tt) as u8 as f64 * p,
                            (true, false) => (wt[tt] > 1e-4 * wr) as u8 as f64 * p * wt[tt],
                        };
                        let at = (h * k * r + kk * r + rr) * 2 * l;
                        for (c, v) in y.iter().enumerate() {
                            sums.num[at + 2 * c] += a * v.re as f64;
                            sums.num[at + 2 * c + 1] += a * v.im as f64;
                        }
                    }
                    let (sn, cs) = poses.psi_rad[rr].sin_cos();
                    for c in 0..l {
                        let (fx, fy) = grid.freq_a(c);
                        let e = if grid.shell[c] as usize > grid.k_max {
                            0.0
                        } else {
                            let v = local
                                .ctf(i)
                                .unwrap()
                                .eval(cs * fx - sn * fy, sn * fx + cs * fy);
                            v * v
                        };
                        sums.den[(h * 2 * k + kk) * l + c] += cw * e;
                        sums.den[(h * 2 * k + k + kk) * l + c] += cw * cw * e;
                    }
                }
            }
            let best_k = resp.best_class()[bi];
            let pose = poses.split(sc.marg.best_pose()[[bi, best_k]]);
            let res = local.residual(&m, i, best_k, pose, local.full_ctf(i).as_deref());
            model::add_noise(&mut got, grid, &res);
        }
        add_sums(&m, &sums, &mut got).unwrap();
        let scale = want
            .as_slice()
            .iter()
            .fold(1e-300f64, |s, v| s.max(v.abs()));
        for name in [
            model::NUM,
            model::DEN,
            model::DEN2,
            model::WEIGHT,
            model::NOISE,
        ] {
            let (a, b) = (want.segment(name).unwrap(), got.segment(name).unwrap());
            let d = a
                .iter()
                .zip(b)
                .fold(0.0f64, |e, (x, y)| e.max((x - y).abs()));
            assert!(
                d <= 1e-5 * scale,
                "{name} (hard = {hard}): differs by {d} (largest {scale})"
            );
        }
    }

    #[test]
    fn device_sums_reformulation_matches_the_cpu_sums() {
        emulate(false);
    }

    #[test]
    fn device_sums_reformulation_matches_the_cpu_sums_hard() {
        emulate(true);
    }
}
