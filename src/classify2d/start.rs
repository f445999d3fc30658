//! The start of a 2D classification: σ²_init from 100 random particles, the random initial
//! classes from the first online batch, and the phase ramps of a pose grid.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::comm::agree;
use crate::em::batches::permutation;
use crate::em::engine::Context;
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::fft::Complex32;

use super::accumulate::Local;
use super::engine::Classify2d;
use super::grid::PoseGrid;
use super::model::{self, ClassUpdate};

/// Number of random particles of the initial noise estimate (the seed's "100 random images").
const NOISE_PARTICLES: usize = 100;

impl Classify2d<'_> {
    /// Random initial classes: the particles of the first online batch, each given to a
    /// random class at a random in-plane angle (functions of the global row and the seed).
    pub(super) fn initial_classes(&self, ctx: &Context, poses: &PoseGrid) -> Result<ClassUpdate> {
        let mut st = Stats::zeros(&self.layout);
        let k = self.plan.num_classes;
        let source = ctx.source;
        let first = source.first_row();
        let read = source.for_each_block(&source.local(&ctx.first_batch), |idx, ids, block| {
            let local = Local {
                num_classes: self.plan.num_classes,
                grid: self.grid,
                particles: block,
            };
            for (&i, &l) in idx.iter().zip(ids) {
                let mut rng = ChaCha8Rng::seed_from_u64(self.plan.seed ^ 0x5eed_c1a5);
                rng.set_stream((first + l) as u64);
                let c = rng.gen_range(0..k);
                let psi = poses.psi_rad[rng.gen_range(0..poses.n_rot())];
                let y = local.ctf_times_x(i, None);
                model::add_contribution(
                    &mut st,
                    self.grid,
                    c,
                    block.half[i],
                    &y,
                    local.ctf(i),
                    psi,
                    1.0,
                );
            }
            Ok(())
        });
        agree(ctx.comm, read)?;
        st.all_reduce(ctx.comm);
        Ok(model::update_classes(&st, self.grid, k, &self.post, None))
    }

    /// σ²_init: mean power per shell of 100 random particles (signal + noise).
    pub(super) fn initial_noise(&self, ctx: &Context) -> Result<Vec<f64>> {
        let ns = self.grid.n_shells();
        let lay = StatsLayout::new(&[(model::NOISE, ns), (model::NOISE_N, ns)])?;
        let mut st = Stats::zeros(&lay);
        let pick: Vec<usize> = permutation(ctx.n_total, self.plan.seed, u64::MAX)
            .into_iter()
            .take(NOISE_PARTICLES)
            .collect();
        let mut pick = ctx.source.local(&pick);
        pick.sort_unstable();
        let read = ctx.source.for_each_block(&pick, |idx, _, block| {
            for &i in idx {
                model::add_noise(&mut st, self.grid, block.spectrum(i));
            }
            Ok(())
        });
        agree(ctx.comm, read)?;
        st.all_reduce(ctx.comm);
        let noise = model::noise_per_shell(&st);
        Ok(noise.iter().map(|v| v.unwrap_or(1.0).max(1e-12)).collect())
    }

    /// Phase ramps ρ_t on the whole working half plane, `T × len`.
    pub(super) fn full_ramps(&self, poses: &PoseGrid) -> Vec<Complex32> {
        let g = self.grid;
        let nb = g.box_in as f64;
        let mut out = Vec::with_capacity(poses.n_shift() * g.len());
        for s in &poses.shifts_px {
            for c in 0..g.len() {
                let ph =
                    -std::f64::consts::TAU * (g.kx[c] as f64 * s[0] + g.ky[c] as f64 * s[1]) / nb;
                out.push(Complex32::new(ph.cos() as f32, ph.sin() as f32));
            }
        }
        out
    }
}
