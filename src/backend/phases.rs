//! The E-step of an EM iteration as a backend runs it: one trait per phase, for every
//! problem (its frozen model is the type parameter `M`).
//!
//! 1. [`Score`]: the scores of a block of particles against the model: per particle and
//!    class, the log-likelihood with the poses marginalised (2D: over in-plane rotations
//!    and shifts; 3D: at the known pose), plus what phase 2 needs (best poses, residuals).
//! 2. responsibilities from those class log-likelihoods ([`crate::em::responsibilities`],
//!    the same code for every backend);
//! 3. [`Accumulate`]: the particles' M-step sums (class sums at their weights, CTF²
//!    denominators, noise sums) into the iteration's statistics.
//!
//! [`e_step_block`] runs the three for one block; both classify2d and classify3d call it.
//! The CPU implementations (in each problem's module, for [`super::Cpu`]) are the
//! reference: a new backend implements both traits for a problem's model and must pass
//! [`check_parity`] (through [`backend_parity_test!`]) on fixed inputs: class
//! log-likelihoods and responsibilities within a stated tolerance, and the same statistics.

use ndarray::ArrayView2;

use crate::em::responsibilities::{responsibilities, EStepParams, Responsibilities};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::particles::Particles;

/// Particles `idx` of a block with their per-particle scales (`scale[j]` for `idx[j]`).
pub struct BlockRef<'b> {
    pub particles: &'b Particles,
    pub idx: &'b [usize],
    pub scale: &'b [f64],
}

/// What every problem's scores give the shared responsibilities.
pub trait ClassScores {
    /// Log-likelihood per particle and class (`idx.len() × K`), poses marginalised.
    fn class_ll(&self) -> ArrayView2<'_, f64>;
}

/// Phase 1: scores of a block's particles against the frozen model `M`.
pub trait Score<M: ?Sized>: Sync {
    type Scores: ClassScores + Send;
    fn score(&self, model: &M, block: &BlockRef) -> Result<Self::Scores>;
}

/// Phase 2: the M-step sums of a block's particles, from their scores and responsibilities.
pub trait Accumulate<M: ?Sized>: Score<M> {
    fn accumulate(
        &self,
        model: &M,
        block: &BlockRef,
        scores: &Self::Scores,
        resp: &Responsibilities,
        stats: &mut Stats,
    ) -> Result<()>;
}

/// Scores a block, turns the class log-likelihoods into responsibilities with `log_prior`
/// and `params`, and (with `accumulate`) adds the block's M-step sums to `stats`.
pub fn e_step_block<M: ?Sized, B: Accumulate<M>>(
    backend: &B,
    model: &M,
    block: &BlockRef,
    log_prior: &[f64],
    params: &EStepParams,
    accumulate: bool,
    stats: &mut Stats,
) -> Result<(B::Scores, Responsibilities)> {
    let scores = backend.score(model, block)?;
    let resp = responsibilities(scores.class_ll(), log_prior, params)?;
    if accumulate {
        backend.accumulate(model, block, &scores, &resp, stats)?;
    }
    Ok((scores, resp))
}

/// Runs one block through a reference and a candidate implementation (each with the model
/// it built) and compares: class log-likelihoods within `tol` of the reference's range
/// (absolute where they are small), responsibilities within `tol`, and every statistic
/// within `tol` of the largest reference statistic in magnitude. Returns what differs.
#[allow(clippy::too_many_arguments)]
pub fn check_parity<M: ?Sized, R: Accumulate<M>, C: Accumulate<M>>(
    reference: (&R, &M),
    candidate: (&C, &M),
    block: &BlockRef,
    layout: &StatsLayout,
    log_prior: &[f64],
    params: &EStepParams,
    tol: f64,
) -> std::result::Result<(), String> {
    type Scored = Result<(Vec<f64>, Vec<f64>)>;
    let run = |b: &dyn Fn(&mut Stats) -> Scored| {
        let mut st = Stats::zeros(layout);
        let (ll, p) = b(&mut st).map_err(|e| e.to_string())?;
        Ok::<_, String>((ll, p, st))
    };
    let flat = |s: &dyn ClassScores, r: &Responsibilities| {
        (
            s.class_ll().iter().copied().collect::<Vec<f64>>(),
            r.probs().iter().copied().collect::<Vec<f64>>(),
        )
    };
    let (ll_r, p_r, st_r) = run(&|st| {
        let (s, r) = e_step_block(reference.0, reference.1, block, log_prior, params, true, st)?;
        Ok(flat(&s, &r))
    })?;
    let (ll_c, p_c, st_c) = run(&|st| {
        let (s, r) = e_step_block(candidate.0, candidate.1, block, log_prior, params, true, st)?;
        Ok(flat(&s, &r))
    })?;
    let worst = |a: &[f64], b: &[f64]| -> std::result::Result<f64, String> {
        if a.len() != b.len() {
            return Err(format!("{} values against {}", b.len(), a.len()));
        }
        Ok(a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max))
    };
    let scale_of = |v: &[f64]| v.iter().map(|x| x.abs()).fold(1e-300, f64::max);
    let ll_range = {
        let (lo, hi) = ll_r
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        (hi - lo).max(1.0)
    };
    let d_ll = worst(&ll_r, &ll_c)?;
    if d_ll > tol * ll_range {
        return Err(format!(
            "class log-likelihoods differ by {d_ll} (range {ll_range})"
        ));
    }
    let d_p = worst(&p_r, &p_c)?;
    if d_p > tol {
        return Err(format!("responsibilities differ by {d_p}"));
    }
    let d_st = worst(st_r.as_slice(), st_c.as_slice())?;
    let s = scale_of(st_r.as_slice());
    if d_st > tol * s {
        return Err(format!("statistics differ by {d_st} (largest {s})"));
    }
    Ok(())
}

/// A test that a candidate backend matches the reference on one problem's fixed inputs:
/// `backend_parity_test!(name, || (reference, reference_model, candidate, candidate_model,
/// block_fixture, layout, log_prior, params), tol)`, where the closure builds everything
/// and `block_fixture` is a `(Particles, idx, scale)` triple.
#[macro_export]
macro_rules! backend_parity_test {
    ($name:ident, $setup:expr, $tol:expr) => {
        #[test]
        fn $name() {
            let (r, rm, c, cm, (particles, idx, scale), layout, prior, params) = ($setup)();
            let block = $crate::backend::phases::BlockRef {
                particles: &particles,
                idx: &idx,
                scale: &scale,
            };
            if let Err(e) = $crate::backend::phases::check_parity(
                (&r, &rm),
                (&c, &cm),
                &block,
                &layout,
                &prior,
                &params,
                $tol,
            ) {
                panic!("{}: {e}", stringify!($name));
            }
        }
    };
}
