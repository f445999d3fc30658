//! The 2D classification driver: initial classes and noise, online-EM iterations on random
//! batches, then full iterations, each one E-step over the rank's share of the particles,
//! one all-reduce of the packed statistics and the same deterministic M-step on every rank.
//!
//! Rank independence: batches come from one seeded global permutation, the random initial
//! assignment and the 100 noise particles are functions of the global row, and statistics
//! are summed in f64, so 1, 2 or 64 ranks give the same classes up to summation order.

use std::time::Instant;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::comm::{agree, Comm};
use crate::em::batches::{permutation, OnlineBatches};
use crate::em::binned::{Binned, BINS};
use crate::em::responsibilities::{marginalize_poses, pose_weights, responsibilities, EStepParams};
use crate::em::schedule::{IcufSchedule, LearningRate};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::fft::Complex32;
use crate::numerics::frc::frc_resolution_a;

use super::checkpoint::{self, Checkpoint};
use super::config::Classify2dConfig;
use super::estep::{rotated_spectrum, Scorer, Templates};
use super::grid::{Band, PoseGrid, WorkGrid};
use super::model::{self, ClassUpdate, PostProcess};
use super::particles::Particles;
use super::results::ResultRow;
use super::source::ParticleSource;

/// Coarsest alignment limit of the first iteration, Å (raised as the classes improve).
pub const START_ALIGN_RES_A: f64 = 25.0;
/// Local rows per segment of a full pass (the list of a segment's rows is all that exists).
const SEGMENT: usize = 64 * super::source::BLOCK_PARTICLES;
/// Particles scored per GEMM batch.
const CHUNK: usize = 16;
/// Class probabilities below this are not back-projected.
const MIN_WEIGHT: f64 = 1e-3;
/// Number of random particles of the initial noise estimate (the seed's "100 random images").
const NOISE_PARTICLES: usize = 100;

/// One row of the per-iteration record (summary.json, log).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct IterationRecord {
    pub iteration: usize,
    pub phase: String,
    pub particles: usize,
    #[serde(rename = "align_res_A")]
    pub align_res_a: f64,
    pub n_rotations: usize,
    pub n_shifts: usize,
    pub band_coefficients: usize,
    pub learning_rate: f64,
    pub ess_quartiles: [f64; 5],
    pub best_prob_quartiles: [f64; 5],
    pub class_counts: Vec<f64>,
    #[serde(rename = "class_frc05_res_A")]
    pub class_frc05_res_a: Vec<f64>,
    pub seconds: f64,
    /// Of which this rank's E-step (scoring and its M-step contributions).
    pub estep_seconds: f64,
    /// Of which communication: the all-reduce of the statistics and the gather of the
    /// per-particle diagnostics (including waiting for the slowest rank).
    pub comm_seconds: f64,
    /// Bytes of the statistics all-reduce (each rank's buffer).
    pub allreduce_bytes: usize,
}

/// What the run produced.
pub struct Outcome {
    pub classes: ClassUpdate,
    pub history: Vec<IterationRecord>,
    pub sigma2_init: Vec<f64>,
    pub sigma2_current: Vec<f64>,
    pub sigma2_used: Vec<f64>,
    /// ESS and best-class probability of every particle (root only, global order).
    pub ess: Binned,
    pub best_prob: Binned,
}

/// Everything fixed for a run.
pub struct Engine<'a> {
    pub cfg: &'a Classify2dConfig,
    pub grid: &'a WorkGrid,
    /// This rank's particles (resident or streamed).
    pub source: &'a ParticleSource,
    pub comm: &'a dyn Comm,
    /// Particles in the whole dataset.
    pub n_total: usize,
    pub post: PostProcess,
    /// Where the E-step's matrix products run.
    pub backend: &'a dyn crate::backend::Backend,
}

/// Per-iteration view of the engine's state passed to the caller (plots).
pub struct IterationView<'a> {
    pub record: &'a IterationRecord,
    pub classes: &'a ClassUpdate,
    pub sigma2_used: &'a [f64],
    pub sigma2_current: &'a [f64],
    pub sigma2_init: &'a [f64],
    /// ESS and best probability of the particles of this iteration, over all ranks (exact
    /// min and max on rank 0).
    pub ess: &'a Binned,
    pub best_prob: &'a Binned,
    /// Root only, and not after the last pass: the state to continue from (its
    /// `config_yaml` is left for the job to fill).
    pub checkpoint: Option<Checkpoint>,
}

impl<'a> Engine<'a> {
    fn local<'b>(&self, block: &'b Particles) -> Local<'b>
    where
        'a: 'b,
    {
        Local {
            cfg: self.cfg,
            grid: self.grid,
            particles: block,
        }
    }

    fn layout(&self) -> Result<StatsLayout> {
        model::layout(self.cfg.num_classes, self.grid)
    }

    /// Random initial classes: the particles of the first online batch, each given to a
    /// random class at a random in-plane angle (functions of the global row and the seed).
    fn initial_classes(&self, batch: &[usize], poses: &PoseGrid) -> Result<ClassUpdate> {
        let mut st = Stats::zeros(&self.layout()?);
        let k = self.cfg.num_classes;
        let first = self.source.first_row();
        let read = self
            .source
            .for_each_block(&self.source.local(batch), |idx, ids, block| {
                let local = self.local(block);
                for (&i, &l) in idx.iter().zip(ids) {
                    let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ 0x5eed_c1a5);
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
        agree(self.comm, read)?;
        st.all_reduce(self.comm);
        Ok(model::update_classes(&st, self.grid, k, &self.post, None))
    }

    /// σ²_init: mean power per shell of 100 random particles (signal + noise).
    fn initial_noise(&self) -> Result<Vec<f64>> {
        let lay = StatsLayout::new(&[
            (model::NOISE, self.grid.n_shells()),
            (model::NOISE_N, self.grid.n_shells()),
        ])?;
        let mut st = Stats::zeros(&lay);
        let pick: Vec<usize> = permutation(self.n_total, self.cfg.seed, u64::MAX)
            .into_iter()
            .take(NOISE_PARTICLES)
            .collect();
        let mut pick = self.source.local(&pick);
        pick.sort_unstable();
        let read = self.source.for_each_block(&pick, |idx, _, block| {
            for &i in idx {
                model::add_noise(&mut st, self.grid, block.spectrum(i));
            }
            Ok(())
        });
        agree(self.comm, read)?;
        st.all_reduce(self.comm);
        let noise = model::noise_per_shell(&st);
        Ok(noise.iter().map(|v| v.unwrap_or(1.0).max(1e-12)).collect())
    }

    /// Phase ramps ρ_t on the whole working half plane, `T × len`.
    fn full_ramps(&self, poses: &PoseGrid) -> Vec<Complex32> {
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

    /// Runs the whole classification. `on_iteration` is called on every rank after each
    /// iteration's M-step; `on_result` receives the final pass's result of every local
    /// particle, in local row order.
    pub fn run(
        &self,
        resume: Option<Checkpoint>,
        mut on_iteration: impl FnMut(&IterationView) -> Result<()>,
        mut on_result: impl FnMut(&ResultRow) -> Result<()>,
    ) -> Result<Outcome> {
        let cfg = self.cfg;
        let k = cfg.num_classes;
        let n_local = self.source.len();
        let total = cfg.total_iterations();
        let batch_size = (cfg.batch_size_per_class * k).min(self.n_total);
        let mut batches = OnlineBatches::new(self.n_total, batch_size, cfg.seed)?;
        let icuf = IcufSchedule::new(cfg.icuf, cfg.online_em_iterations)?;
        let eta = LearningRate::new(1.0, 2.0)?;
        let k_align = self.grid.shell_at(cfg.align_res_a());
        let k_lo = cfg
            .min_align_res_a
            .map(|r| self.grid.shell_at(r).max(1))
            .unwrap_or(1);
        let k_start = self
            .grid
            .shell_at(START_ALIGN_RES_A)
            .clamp((k_lo + 2).min(k_align), k_align);
        let mut k_hi = k_start;
        let layout = self.layout()?;

        let (sigma2_init, mut sigma2_cur, mut classes, mut running, mut history, t0) = match resume
        {
            Some(c) => {
                let running = match &c.running {
                    Some(buf) => Some(Stats::from_slice(&layout, buf)?),
                    None => None,
                };
                k_hi = c.k_hi;
                log::info!(
                    "resuming at iteration {} of {}",
                    c.next_iteration + 1,
                    total
                );
                let classes = c.classes()?;
                (
                    c.sigma2_init,
                    c.sigma2_current,
                    classes,
                    running,
                    c.history,
                    c.next_iteration,
                )
            }
            None => {
                let sigma2_init = self.initial_noise()?;
                let first = batches.batch(0);
                let classes =
                    self.initial_classes(&first, &PoseGrid::new(k_hi, cfg.max_shift_px))?;
                (
                    sigma2_init.clone(),
                    sigma2_init,
                    classes,
                    None,
                    Vec::with_capacity(total),
                    0,
                )
            }
        };
        let mut sigma2_used = sigma2_init.clone();
        let summary = |k: usize| {
            (
                Binned::new(1.0, k.max(2) as f64, BINS),
                Binned::new(0.0, 1.0, BINS),
            )
        };
        let (mut all_ess, mut all_best) = summary(k);
        // With no full iteration, a last E-step-only pass over all particles gives every
        // particle its assignment.
        let passes = if cfg.full_iterations == 0 {
            total + 1
        } else {
            total
        };
        for t in t0..passes {
            let start = Instant::now();
            let online = t < cfg.online_em_iterations;
            let estep_only = t >= total;
            let last = t + 1 == passes;
            // This iteration's local rows: its batch members, or every row in segments
            // (so no list of all rows is built).
            let segments: Vec<std::ops::Range<usize>> = if online {
                Vec::new()
            } else {
                (0..n_local.div_ceil(SEGMENT))
                    .map(|s| s * SEGMENT..((s + 1) * SEGMENT).min(n_local))
                    .collect()
            };
            let batch_locals = online.then(|| {
                let mut b = self.source.local(&batches.batch(t + 1));
                b.sort_unstable();
                b
            });
            let band = Band::new(self.grid, k_lo, k_hi);
            let poses = PoseGrid::new(k_hi, cfg.max_shift_px);
            let noise_power: Vec<Vec<f64>> = classes
                .noise_gain
                .iter()
                .map(|g| g.iter().zip(&sigma2_cur).map(|(g, s)| g * s).collect())
                .collect();
            let templates = Templates::build(&classes.images, &poses, &band, Some(&noise_power));
            icuf.sigma2(t, &sigma2_init, &sigma2_cur, &mut sigma2_used)?;
            let scorer = Scorer::new(
                self.grid,
                &band,
                &poses,
                templates,
                &sigma2_used,
                self.backend,
            )?;
            let hard = cfg.final_hard_classification && t + 1 >= total;
            let params = EStepParams::new(1.0, 0.0, hard)?;
            let ramps = self.full_ramps(&poses);
            let t_e = Instant::now();
            let mut batch_stats = Stats::zeros(&layout);
            let (mut ess_b, mut best_b) = summary(k);
            let mut on_block = |idx: &[usize], _: &[usize], block: &Particles| {
                let (st, mut rows) =
                    self.e_and_m(&scorer, block, idx, &classes.images, &params, &ramps)?;
                batch_stats.add(&st)?;
                // Block indices increase with the local row: this is local row order.
                rows.sort_unstable_by_key(|(i, _)| *i);
                for (_, row) in rows {
                    ess_b.add(row.ess as f64);
                    best_b.add(row.prob as f64);
                    if last {
                        on_result(&row)?;
                    }
                }
                Ok(())
            };
            let scored = match &batch_locals {
                Some(b) => self.source.for_each_block(b, &mut on_block),
                None => segments.iter().try_for_each(|seg| {
                    let rows: Vec<usize> = seg.clone().collect();
                    self.source.for_each_block(&rows, &mut on_block)
                }),
            };
            // Every rank learns whether every rank scored its particles (a bad block of the
            // file, a full disk) before the collectives below, so none waits forever.
            agree(self.comm, scored)?;
            let estep_seconds = t_e.elapsed().as_secs_f64();
            let t_c = Instant::now();
            ess_b.all_reduce(self.comm);
            best_b.all_reduce(self.comm);
            let eta_t = if online { eta.at(t) } else { 1.0 };
            let mut allreduce_bytes = 0;
            if !estep_only {
                batch_stats.all_reduce(self.comm);
                allreduce_bytes = 8 * batch_stats.as_slice().len();
            }
            let comm_seconds = t_c.elapsed().as_secs_f64();
            if !estep_only {
                match running.as_mut() {
                    Some(r) => r.blend(&batch_stats, eta_t)?,
                    None => running = Some(batch_stats),
                }
                let run_st = running.as_ref().expect("set above");
                classes =
                    model::update_classes(run_st, self.grid, k, &self.post, Some(&classes.images));
                for (s, v) in sigma2_cur.iter_mut().zip(model::noise_per_shell(run_st)) {
                    if let Some(v) = v {
                        *s = v.max(1e-12);
                    }
                }
            }
            let psize_w = self.grid.psize_a();
            let frc05: Vec<f64> = classes
                .frc
                .iter()
                .map(|f| frc_resolution_a(f, 0.5, self.grid.n, psize_w))
                .collect();
            let quart = |b: &Binned| -> [f64; 5] {
                b.quartiles()
                    .map(|q| [q.min, q.q25, q.median, q.q75, q.max])
                    .unwrap_or([f64::NAN; 5])
            };
            let record = IterationRecord {
                iteration: t,
                phase: if estep_only {
                    "assign"
                } else if online {
                    "online"
                } else {
                    "full"
                }
                .to_string(),
                particles: if online { batch_size } else { self.n_total },
                align_res_a: self.grid.shell_res_a(k_hi),
                n_rotations: poses.n_rot(),
                n_shifts: poses.n_shift(),
                band_coefficients: band.len(),
                learning_rate: eta_t,
                ess_quartiles: if self.comm.is_root() {
                    quart(&ess_b)
                } else {
                    [f64::NAN; 5]
                },
                best_prob_quartiles: if self.comm.is_root() {
                    quart(&best_b)
                } else {
                    [f64::NAN; 5]
                },
                class_counts: classes.counts.clone(),
                class_frc05_res_a: frc05,
                seconds: start.elapsed().as_secs_f64(),
                estep_seconds,
                comm_seconds,
                allreduce_bytes,
            };
            if self.comm.is_root() {
                log::info!(
                    "iteration {}/{} ({}, {} particles, align {:.1} Å, {} angles × {} shifts): {:.1} s (E-step {:.1} s, communication {:.2} s, all-reduce {:.1} MB)",
                    t + 1,
                    passes,
                    record.phase,
                    record.particles,
                    record.align_res_a,
                    record.n_rotations,
                    record.n_shifts,
                    record.seconds,
                    record.estep_seconds,
                    record.comm_seconds,
                    record.allreduce_bytes as f64 / 1e6
                );
                if let (Some(e), Some(b)) = (ess_b.quartiles(), best_b.quartiles()) {
                    log::info!("  effective number of classes per particle: {e}");
                    log::info!("  probability of best class:                {b}");
                }
            }
            // Raise the alignment limit to where the class averages have signal.
            let k_est = signal_shell(&classes, 0.143);
            k_hi = k_hi.max(k_est.min(k_align)).max(k_start);
            history.push(record);
            let checkpoint = (self.comm.is_root() && t + 1 < passes).then(|| Checkpoint {
                version: checkpoint::VERSION,
                config_yaml: String::new(),
                next_iteration: t + 1,
                k_hi,
                box_px: self.grid.n,
                images: classes
                    .images
                    .iter()
                    .map(|a| a.iter().copied().collect())
                    .collect(),
                frc: classes.frc.clone(),
                counts: classes.counts.clone(),
                noise_gain: classes.noise_gain.clone(),
                running: running.as_ref().map(|r| r.as_slice().to_vec()),
                sigma2_init: sigma2_init.clone(),
                sigma2_current: sigma2_cur.clone(),
                history: history.clone(),
            });
            let reported = on_iteration(&IterationView {
                record: history.last().expect("pushed above"),
                classes: &classes,
                sigma2_used: &sigma2_used,
                sigma2_current: &sigma2_cur,
                sigma2_init: &sigma2_init,
                ess: &ess_b,
                best_prob: &best_b,
                checkpoint,
            });
            agree(self.comm, reported)?;
            all_ess = ess_b;
            all_best = best_b;
        }
        Ok(Outcome {
            classes,
            history,
            sigma2_init,
            sigma2_current: sigma2_cur,
            sigma2_used,
            ess: all_ess,
            best_prob: all_best,
        })
    }

    /// E-step over particles `locals` of `block` and the M-step contributions of those
    /// particles; each result is keyed by its index in `block`.
    fn e_and_m(
        &self,
        scorer: &Scorer,
        block: &Particles,
        locals: &[usize],
        images: &[Array2<f32>],
        params: &EStepParams,
        ramps: &[Complex32],
    ) -> Result<(Stats, Vec<(usize, ResultRow)>)> {
        let layout = self.layout()?;
        let k = self.cfg.num_classes;
        let log_prior = vec![0.0; k];
        let local = self.local(block);
        type Partial = Result<(Stats, Vec<(usize, ResultRow)>)>;
        let folded: Vec<Partial> = locals
            .par_chunks(CHUNK)
            .fold(
                || Ok((Stats::zeros(&layout), Vec::new())),
                |acc: Partial, chunk| {
                    let (mut st, mut rows) = acc?;
                    local.chunk(
                        scorer, chunk, images, params, &log_prior, ramps, &mut st, &mut rows,
                    )?;
                    Ok((st, rows))
                },
            )
            .collect();
        let mut st = Stats::zeros(&layout);
        let mut rows = Vec::with_capacity(locals.len());
        for part in folded {
            let (s, r) = part?;
            st.add(&s)?;
            rows.extend(r);
        }
        Ok((st, rows))
    }
}

/// The comm-free part of the engine that rayon workers share.
#[derive(Clone, Copy)]
struct Local<'a> {
    cfg: &'a Classify2dConfig,
    grid: &'a WorkGrid,
    particles: &'a Particles,
}

impl<'a> Local<'a> {
    fn ctf(&self, i: usize) -> Option<&crate::numerics::ctf::Ctf> {
        self.particles.ctf.as_ref().map(|v| &v[i])
    }

    /// CTF of particle i on the whole working half plane.
    fn full_ctf(&self, i: usize) -> Option<Vec<f32>> {
        self.ctf(i).map(|c| {
            let mut out = vec![0.0f32; self.grid.len()];
            c.half_plane_into(self.grid.n, self.grid.n, self.grid.psize_a(), &mut out);
            out
        })
    }

    /// `C·X·ramp` on the working half plane (`ramp` = None: no shift).
    fn ctf_times_x(&self, i: usize, ramp: Option<&[Complex32]>) -> Vec<Complex32> {
        let x = self.particles.spectrum(i);
        let ctf = self.full_ctf(i);
        (0..x.len())
            .map(|c| {
                let mut v = x[c];
                if let Some(r) = ramp {
                    v *= r[c];
                }
                if let Some(ctf) = &ctf {
                    v *= ctf[c];
                }
                v
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk(
        &self,
        scorer: &Scorer,
        chunk: &[usize],
        images: &[Array2<f32>],
        params: &EStepParams,
        log_prior: &[f64],
        ramps: &[Complex32],
        st: &mut Stats,
        rows: &mut Vec<(usize, ResultRow)>,
    ) -> Result<()> {
        let k = self.cfg.num_classes;
        let poses = scorer.poses;
        let np = poses.len();
        let nt = poses.n_shift();
        let len = self.grid.len();
        let ll = scorer.score(self.particles, chunk)?;
        let marg = marginalize_poses(&ll, chunk.len(), k, np, 1.0)?;
        let resp = responsibilities(marg.log_marginal().view(), log_prior, params)?;
        let mut wbuf = vec![0.0f64; np];
        for (bi, &i) in chunk.iter().enumerate() {
            let probs = resp.probs().row(bi);
            let best_k = resp.best_class()[bi];
            let best_j = marg.best_pose()[[bi, best_k]];
            let (br, bt) = poses.split(best_j);
            let half = self.particles.half[i];
            let ctf = self.ctf(i);
            let full_ctf = self.full_ctf(i);
            let x = self.particles.spectrum(i);
            for kk in 0..k {
                let p = probs[kk];
                if p < MIN_WEIGHT {
                    continue;
                }
                if self.cfg.force_max || params.hard() {
                    let (r, t) = poses.split(marg.best_pose()[[bi, kk]]);
                    let y = combine(
                        x,
                        full_ctf.as_deref(),
                        &[(&ramps[t * len..(t + 1) * len], 1.0)],
                    );
                    model::add_contribution(st, self.grid, kk, half, &y, ctf, poses.psi_rad[r], p);
                } else {
                    let base = (bi * k + kk) * np;
                    pose_weights(&ll[base..base + np], 1.0, &mut wbuf);
                    for r in 0..poses.n_rot() {
                        let w = &wbuf[r * nt..(r + 1) * nt];
                        let wr: f64 = w.iter().sum();
                        if wr * p < MIN_WEIGHT * 1e-2 {
                            continue;
                        }
                        let terms: Vec<(&[Complex32], f64)> = (0..nt)
                            .filter(|&t| w[t] > 1e-4 * wr)
                            .map(|t| (&ramps[t * len..(t + 1) * len], w[t] / wr))
                            .collect();
                        let y = combine(x, full_ctf.as_deref(), &terms);
                        model::add_contribution(
                            st,
                            self.grid,
                            kk,
                            half,
                            &y,
                            ctf,
                            poses.psi_rad[r],
                            p * wr,
                        );
                    }
                }
            }
            // Noise: residual at the best class and pose.
            let tmpl = rotated_spectrum(&images[best_k], poses.psi_rad[br]);
            let ramp = &ramps[bt * len..(bt + 1) * len];
            let resid: Vec<Complex32> = (0..len)
                .map(|c| {
                    let cv = full_ctf.as_ref().map_or(1.0, |f| f[c]);
                    x[c] * ramp[c] - tmpl[c] * cv
                })
                .collect();
            model::add_noise(st, self.grid, &resid);
            let s = poses.shifts_px[bt];
            rows.push((
                i,
                ResultRow {
                    probs: probs.iter().map(|&v| v as f32).collect(),
                    class: best_k as u32,
                    prob: resp.best_prob()[bi] as f32,
                    ess: resp.ess()[bi] as f32,
                    psi: poses.psi_rad[br] as f32,
                    shift: [s[0] as f32, s[1] as f32],
                },
            ));
        }
        Ok(())
    }
}

/// `C·X·Σ_t w_t ρ_t` on the working half plane.
fn combine(x: &[Complex32], ctf: Option<&[f32]>, terms: &[(&[Complex32], f64)]) -> Vec<Complex32> {
    (0..x.len())
        .map(|c| {
            let mut ramp = Complex32::new(0.0, 0.0);
            for (r, w) in terms {
                ramp += r[c] * *w as f32;
            }
            let v = x[c] * ramp;
            match ctf {
                Some(f) => v * f[c],
                None => v,
            }
        })
        .collect()
}

/// The count-weighted median over classes of the last shell before the half-set FRC first
/// drops below `threshold`.
pub fn signal_shell(classes: &ClassUpdate, threshold: f64) -> usize {
    let mut v: Vec<(usize, f64)> = classes
        .frc
        .iter()
        .zip(&classes.counts)
        .filter(|(_, &c)| c > 0.0)
        .map(|(f, &c)| {
            let k = (1..f.len())
                .find(|&s| f[s] < threshold)
                .unwrap_or(f.len())
                .saturating_sub(1);
            (k, c)
        })
        .collect();
    if v.is_empty() {
        return 0;
    }
    v.sort_by_key(|p| p.0);
    let total: f64 = v.iter().map(|p| p.1).sum();
    let mut acc = 0.0;
    for (k, c) in &v {
        acc += c;
        if acc >= 0.5 * total {
            return *k;
        }
    }
    v[v.len() - 1].0
}
