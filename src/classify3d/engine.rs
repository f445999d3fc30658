//! The 3D classification driver: consensus reconstruction, solvent mask, noise model and
//! per-particle scales, initial classes, then O-EM and F-EM iterations through the shared
//! [`crate::em::driver::Driver`] until a convergence criterion is met.
//!
//! Every rank runs the same code on its own particles; statistics are summed by one
//! all-reduce per reconstruction, so every rank holds the same volumes.

use std::time::Instant;

use ndarray::Array3;
use serde::Serialize;

use crate::classify2d::grid::WorkGrid;
use crate::comm::{agree, Comm};
use crate::em::batches::permutation;
use crate::em::binned::{Binned, BINS};
use crate::em::driver::{class_flow, switched_pct, Driver, Phase};
use crate::em::responsibilities::{responsibilities, EStepParams};
use crate::em::schedule::{LearningRate, SimilaritySchedule};
use crate::em::stats::{Stats, StatsLayout};
use crate::error::{Error, Result};
use crate::numerics::project3d::Projector;
use crate::numerics::rotation::Mat3;
use crate::numerics::volume::{solvent_mask, spherical_mask};

use super::checkpoint::{self, RankState, Shared};
use super::config::{Classify3dConfig, ScaleMode};
use super::estep::{fit_scales, score};
use super::model::{self, ClassVolume, PAD};
use super::particles::Particles3d;

/// Per-particle results of the last iteration that saw the particle (local rows).
#[derive(Clone, Debug)]
pub struct Results {
    pub k: usize,
    /// `len × K` class probabilities.
    pub probs: Vec<f32>,
    pub class: Vec<u32>,
    pub class_posterior: Vec<f32>,
    pub class_ess: Vec<f32>,
}

impl Results {
    /// No rows, `k` classes.
    pub fn empty(k: usize) -> Results {
        Results::new(0, k)
    }
    fn new(n: usize, k: usize) -> Results {
        Results {
            k,
            probs: vec![0.0; n * k],
            class: vec![0; n],
            class_posterior: vec![0.0; n],
            class_ess: vec![0.0; n],
        }
    }
}

/// One row of the per-iteration record (summary.json, log).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct IterationRecord {
    pub iteration: usize,
    pub phase: String,
    pub particles: usize,
    pub learning_rate: f64,
    pub class_similarity: f64,
    pub hard_classification: bool,
    pub ess_quartiles: [f64; 5],
    pub best_prob_quartiles: [f64; 5],
    /// Particles whose most likely class is k (this iteration's particles).
    pub class_assignments: Vec<u64>,
    /// Σ_i p_ik of the running statistics.
    pub class_effective_size: Vec<f64>,
    #[serde(rename = "class_fsc0143_res_A")]
    pub class_res_a: Vec<f64>,
    /// % of particles that changed class since the previous F-EM iteration.
    pub switched_pct: Option<f64>,
    /// Size-weighted RMS change of the class volumes (relative to the consensus RMS).
    pub rms_density_change: Option<f64>,
    pub seconds: f64,
}

/// What the run produced.
pub struct Outcome {
    pub consensus: ClassVolume,
    pub solvent_mask: Array3<f32>,
    pub solvent_mask_generated: bool,
    pub classes: Vec<ClassVolume>,
    pub results: Results,
    pub history: Vec<IterationRecord>,
    /// Class flow between consecutive F-EM iterations: (iteration, K × K counts).
    pub flows: Vec<(usize, Vec<Vec<u64>>)>,
    pub sigma2: Vec<f64>,
    /// Why the run stopped.
    pub stop_reason: String,
}

/// Per-iteration view for the caller (plots, per-iteration output).
pub struct IterationView<'a> {
    pub record: &'a IterationRecord,
    pub phase: Phase,
    pub classes: &'a [ClassVolume],
    pub consensus: &'a ClassVolume,
    pub flow: Option<&'a Vec<Vec<u64>>>,
    pub results: &'a Results,
    /// Per-particle scales (local rows; fixed before the EM loop).
    pub scale: &'a [f64],
    /// The state to continue from (every rank; not after the last iteration). The job
    /// writes each rank's part, then rank 0 the shared part (its `config_yaml` left empty
    /// for the job to fill).
    pub checkpoint: Option<(Shared, RankState)>,
}

/// Inputs of a run.
pub struct Engine<'a> {
    pub cfg: &'a Classify3dConfig,
    pub grid: &'a WorkGrid,
    pub comm: &'a dyn Comm,
    pub n_total: usize,
    pub syms: Vec<Mat3>,
    /// Solvent mask from a file (resampled to the working box), or None to generate it.
    pub solvent_mask: Option<Array3<f32>>,
    pub focus_mask: Option<Array3<f32>>,
    /// `init_mode: input` volumes (working box).
    pub initial_volumes: Option<Vec<Array3<f32>>>,
    /// Input scales for `per_particle_scale: input`.
    pub input_scales: Option<Vec<f64>>,
}

fn quart(b: &Binned) -> [f64; 5] {
    b.quartiles()
        .map(|q| [q.min, q.q25, q.median, q.q75, q.max])
        .unwrap_or([f64::NAN; 5])
}

impl<'a> Engine<'a> {
    fn layout(&self, k: usize) -> Result<StatsLayout> {
        model::layout(k, self.grid)
    }

    /// Reconstructs `k` volumes from one-hot groups of local particles (`group[i]` = class
    /// or None), summed over ranks.
    fn reconstruct_groups(
        &self,
        parts: &Particles3d,
        group: &[Option<usize>],
        k: usize,
        mask: &Array3<f32>,
    ) -> Result<Vec<ClassVolume>> {
        let mut st = Stats::zeros(&self.layout(k)?);
        let locals: Vec<usize> = (0..parts.len()).filter(|&i| group[i].is_some()).collect();
        let mut probs = vec![0.0; locals.len() * k];
        for (j, &i) in locals.iter().enumerate() {
            probs[j * k + group[i].expect("filtered")] = 1.0;
        }
        model::backproject(&mut st, self.grid, parts, &locals, &probs, &self.syms)?;
        st.all_reduce(self.comm);
        model::reconstruct_classes(&st, self.grid, mask, true)
    }

    /// σ² per shell from the residuals of every particle against `vol`.
    fn noise_against(
        &self,
        parts: &Particles3d,
        vol: &Array3<f32>,
        prev: &[f64],
    ) -> Result<Vec<f64>> {
        let proj = Projector::new(vol.view(), PAD);
        let all: Vec<usize> = (0..parts.len()).collect();
        let sc = score(parts, self.grid, &[&proj], &all, prev);
        let lay = StatsLayout::new(&[
            (model::NOISE, self.grid.n_shells()),
            (model::NOISE_N, self.grid.n_shells()),
        ])?;
        let mut st = Stats::zeros(&lay);
        let ns = self.grid.n_shells();
        for i in 0..all.len() {
            model::add_noise(&mut st, &sc.resid[i * ns..(i + 1) * ns], &sc.counts)?;
        }
        st.all_reduce(self.comm);
        model::noise_per_shell(&st, prev)
    }

    /// Runs the classification; `on_iteration` is called on every rank after each M-step.
    pub fn run(
        &self,
        parts: &mut Particles3d,
        resume: Option<(Shared, RankState)>,
        mut on_iteration: impl FnMut(&IterationView) -> Result<()>,
    ) -> Result<Outcome> {
        let cfg = self.cfg;
        let grid = self.grid;
        let k = cfg.num_classes;
        let n = grid.n;
        let n_local = parts.len();
        let comm = self.comm;

        // 1. Consensus of all particles at their poses (scale 1), FSC-filtered.
        let t0 = Instant::now();
        let ones = Array3::<f32>::ones((n, n, n));
        let all_one: Vec<Option<usize>> = vec![Some(0); n_local];
        let mut consensus = self
            .reconstruct_groups(parts, &all_one, 1, &ones)?
            .remove(0);
        // 2. Solvent mask (given, or from the consensus).
        let (mask, generated) = match &self.solvent_mask {
            Some(m) => (m.clone(), false),
            None => {
                let m = solvent_mask(
                    consensus.vol.view(),
                    grid.psize_a(),
                    cfg.solvent_mask_threshold,
                    cfg.solvent_mask_dilate_a,
                    cfg.solvent_mask_soft_a,
                )
                .unwrap_or_else(|e| {
                    if comm.is_root() {
                        log::warn!("solvent mask: {e}; using a soft sphere of 0.9 × the box");
                    }
                    spherical_mask(n, 0.45 * n as f64 - 2.0, 2.0)
                });
                (m, true)
            }
        };
        consensus.vol *= &mask;
        if comm.is_root() {
            log::info!(
                "consensus of {} particles: FSC 0.143 at {:.1} Å ({:.1} s); solvent mask {} ({:.0}% of the box)",
                self.n_total,
                consensus.res_a,
                t0.elapsed().as_secs_f64(),
                if generated { "generated from the consensus" } else { "from the input" },
                100.0 * mask.sum() as f64 / mask.len() as f64
            );
        }
        // 3. Noise model and per-particle scales.
        let flat = vec![1.0; grid.n_shells()];
        let mut sigma2 = self.noise_against(parts, &consensus.vol, &flat)?;
        match cfg.per_particle_scale {
            ScaleMode::None => parts.scale.iter_mut().for_each(|s| *s = 1.0),
            ScaleMode::Input => {
                parts.scale = self
                    .input_scales
                    .clone()
                    .unwrap_or_else(|| vec![1.0; n_local])
            }
            ScaleMode::Optimal => {
                let proj = Projector::new(consensus.vol.view(), PAD);
                parts.scale = fit_scales(parts, grid, &proj, &sigma2);
            }
        }
        sigma2 = self.noise_against(parts, &consensus.vol, &sigma2)?;
        if let Some(q) = Binned::of_all_ranks(comm, &parts.scale).quartiles() {
            log::info!("per-particle scale ({:?}): {q}", cfg.per_particle_scale);
        }
        // 4. Initial classes.
        let focus = self.focus_mask.as_ref().map(|f| (f, &consensus.vol));
        let mut classes: Vec<ClassVolume> = match (&resume, &self.initial_volumes) {
            (Some((c, _)), _) => {
                if comm.is_root() {
                    log::info!(
                        "resuming at iteration {} (consensus, mask and scales recomputed)",
                        c.next_iteration + 1
                    );
                }
                c.classes()?
            }
            (None, Some(vols)) => {
                // One least-squares scale for all input volumes (their mean against the
                // consensus), so the particles' scale applies and their differences in mass
                // are kept.
                let mean = vols
                    .iter()
                    .fold(Array3::<f32>::zeros((n, n, n)), |acc, v| acc + v)
                    / vols.len().max(1) as f32;
                let (mut ab, mut bb) = (0.0f64, 0.0f64);
                for (a, b) in consensus.vol.iter().zip(mean.iter()) {
                    ab += (*a as f64) * (*b as f64);
                    bb += (*b as f64).powi(2);
                }
                let s = if bb > 0.0 { ab / bb } else { 1.0 } as f32;
                vols.iter()
                    .map(|v| ClassVolume {
                        vol: &model::lowpass(&v.mapv(|x| x * s), grid, cfg.init_lowpass_a) * &mask,
                        fsc: consensus.fsc.clone(),
                        halves: consensus.halves.clone(),
                        res_a: consensus.res_a,
                    })
                    .collect()
            }
            (None, None) => {
                let per = cfg.init_particles_per_class.min(self.n_total / k).max(1);
                let perm = permutation(self.n_total, cfg.seed ^ 0x1417_c1a5, 0);
                let mut group = vec![None; n_local];
                for c in 0..k {
                    for &g in &perm[c * per..((c + 1) * per).min(self.n_total)] {
                        if g >= parts.first_row && g < parts.first_row + n_local {
                            group[g - parts.first_row] = Some(c);
                        }
                    }
                }
                let mut cl = self.reconstruct_groups(parts, &group, k, &mask)?;
                for c in cl.iter_mut() {
                    c.vol = &model::lowpass(&c.vol, grid, cfg.init_lowpass_a) * &mask;
                }
                if comm.is_root() {
                    log::info!(
                        "initial classes: {per} random particles each, low-passed to {} Å",
                        cfg.init_lowpass_a
                    );
                }
                cl
            }
        };

        // 5. O-EM then F-EM.
        let oem = if cfg.oem_epochs == 0 {
            0
        } else {
            cfg.oem_iterations(self.n_total)
        };
        let halflife = cfg.oem_learning_rate_halflife_pct / 100.0 * oem as f64;
        let rate = LearningRate::new(cfg.oem_learning_rate_init, halflife)?;
        let mut driver = Driver::new(
            self.n_total,
            cfg.batch_total(self.n_total),
            cfg.seed,
            rate,
            oem,
            cfg.fem_max_iterations,
            0,
        )?;
        let sim = SimilaritySchedule::new(
            cfg.class_similarity,
            cfg.class_similarity_anneal_start,
            cfg.anneal_end(self.n_total),
            cfg.force_hard_classification,
            cfg.hard_after_anneal,
        )?;
        let mut results = Results::new(n_local, k);
        let mut history = Vec::new();
        let mut flows = Vec::new();
        let mut weights = vec![1.0 / k as f64; k];
        let mut prev_fem: Option<Vec<u32>> = None;
        let lay = self.layout(k)?;
        let mut t0 = 0;
        if let Some((c, mine)) = resume {
            let restored = mine.results();
            if restored.class.len() != n_local || restored.k != k {
                return Err(Error::Usage(format!(
                    "--resume: the checkpoint holds {} particles of {} classes for rank {}, which has {n_local} of {k}; resume with the same number of ranks",
                    restored.class.len(),
                    restored.k,
                    comm.rank()
                )));
            }
            results = restored;
            prev_fem = mine.prev_fem;
            history = c.history;
            flows = c.flows;
            weights = c.weights;
            sigma2 = c.sigma2;
            driver.restore(match &c.running {
                Some(buf) => Some(Stats::from_slice(&lay, buf)?),
                None => None,
            });
            t0 = c.next_iteration;
        }
        let mut stop_reason = format!(
            "reached the iteration limit ({} O-EM + {} F-EM)",
            oem, cfg.fem_max_iterations
        );
        let ns = grid.n_shells();
        for t in t0..driver.max_iterations() {
            let start = Instant::now();
            let phase = driver.phase(t);
            let locals = match driver.rows(t) {
                Some(rows) => parts.local(&rows),
                None => (0..n_local).collect(),
            };
            let eff = model::effective_volumes(&classes, &mask, focus);
            let projs: Vec<Projector> = eff.iter().map(|v| Projector::new(v.view(), PAD)).collect();
            let prefs: Vec<&Projector> = projs.iter().collect();
            let sc = score(parts, grid, &prefs, &locals, &sigma2);
            let params = EStepParams::new(1.0, sim.similarity(t), sim.hard(t))?;
            let tot: f64 = weights.iter().sum::<f64>().max(1e-300);
            let log_prior: Vec<f64> = weights
                .iter()
                .map(|w| (w / tot).max(1e-3 / k as f64).ln())
                .collect();
            let resp = responsibilities(sc.ll.view(), &log_prior, &params)?;
            let probs = resp
                .probs()
                .as_standard_layout()
                .into_owned()
                .into_raw_vec_and_offset()
                .0;
            let mut assigned = vec![0u64; k];
            for (j, &i) in locals.iter().enumerate() {
                let b = resp.best_class()[j];
                assigned[b] += 1;
                results.class[i] = b as u32;
                results.class_posterior[i] = resp.best_prob()[j] as f32;
                results.class_ess[i] = resp.ess()[j] as f32;
                for c in 0..k {
                    results.probs[i * k + c] = probs[j * k + c] as f32;
                }
            }
            comm.all_reduce_sum_u64(&mut assigned);
            let mut ess_all = Binned::new(1.0, k.max(2) as f64, BINS);
            let mut best_all = Binned::new(0.0, 1.0, BINS);
            resp.ess().iter().for_each(|&v| ess_all.add(v));
            resp.best_prob().iter().for_each(|&v| best_all.add(v));
            ess_all.all_reduce(comm);
            best_all.all_reduce(comm);
            let eta = driver.learning_rate(t);
            let mut rms_change = None;
            if phase != Phase::Assign {
                let mut batch = Stats::zeros(&lay);
                model::backproject(&mut batch, grid, parts, &locals, &probs, &self.syms)?;
                let mut noise = vec![0.0; ns];
                for j in 0..locals.len() {
                    for c in 0..k {
                        let p = probs[j * k + c];
                        let r = &sc.resid[(j * k + c) * ns..(j * k + c + 1) * ns];
                        noise.iter_mut().zip(r).for_each(|(a, b)| *a += p * b);
                    }
                    model::add_noise(&mut batch, &noise, &sc.counts)?;
                    noise.iter_mut().for_each(|v| *v = 0.0);
                }
                let running = driver.absorb(batch, t, comm)?;
                let new = model::reconstruct_classes(running, grid, &mask, cfg.use_fsc_filter)?;
                sigma2 = model::noise_per_shell(running, &sigma2)?;
                weights = running.segment(model::WEIGHT)?.to_vec();
                rms_change = Some(model::rms_change(&classes, &new, &weights, &consensus.vol));
                classes = new;
            }
            // F-EM convergence: class flow against the previous F-EM iteration.
            let mut flow = None;
            let mut switched = None;
            if phase == Phase::Full {
                if let Some(prev) = &prev_fem {
                    let f = class_flow(prev, &results.class, k, comm);
                    switched = Some(switched_pct(&f));
                    flow = Some(f);
                }
                prev_fem = Some(results.class.clone());
            }
            let record = IterationRecord {
                iteration: t,
                phase: phase.name().to_string(),
                particles: assigned.iter().sum::<u64>() as usize,
                learning_rate: eta,
                class_similarity: params.similarity(),
                hard_classification: params.hard(),
                ess_quartiles: quart(&ess_all),
                best_prob_quartiles: quart(&best_all),
                class_assignments: assigned,
                class_effective_size: weights.clone(),
                class_res_a: classes.iter().map(|c| c.res_a).collect(),
                switched_pct: switched,
                rms_density_change: if phase == Phase::Full {
                    rms_change
                } else {
                    None
                },
                seconds: start.elapsed().as_secs_f64(),
            };
            if comm.is_root() {
                log::info!(
                    "iteration {}/{} ({}, {} particles, similarity {:.3}{}, η {:.3}): {:.1} s",
                    t + 1,
                    driver.max_iterations(),
                    record.phase,
                    record.particles,
                    record.class_similarity,
                    if record.hard_classification {
                        ", hard"
                    } else {
                        ""
                    },
                    eta,
                    record.seconds
                );
                if let (Some(e), Some(b)) = (ess_all.quartiles(), best_all.quartiles()) {
                    log::info!("  class ESS per particle:     {e}");
                    log::info!("  probability of best class:  {b}");
                }
                log::info!(
                    "  assignments {:?}, FSC 0.143 {:?} Å{}{}",
                    record.class_assignments,
                    record
                        .class_res_a
                        .iter()
                        .map(|r| (r * 10.0).round() / 10.0)
                        .collect::<Vec<_>>(),
                    switched
                        .map(|s| format!(", switched {s:.2}%"))
                        .unwrap_or_default(),
                    record
                        .rms_density_change
                        .map(|r| format!(", RMS change {r:.4}"))
                        .unwrap_or_default()
                );
            }
            history.push(record);
            let has_flow = flow.is_some();
            if let Some(f) = flow {
                flows.push((t, f));
            }
            let checkpoint = (t + 1 < driver.max_iterations()).then(|| {
                let (vols, fsc, res_a) = Shared::volumes_of(&classes);
                (
                    Shared {
                        version: checkpoint::VERSION,
                        config_yaml: String::new(),
                        ranks: comm.size(),
                        next_iteration: t + 1,
                        n,
                        vols,
                        fsc,
                        res_a,
                        sigma2: sigma2.clone(),
                        weights: weights.clone(),
                        running: driver.running().map(|r| r.as_slice().to_vec()),
                        history: history.clone(),
                        flows: flows.clone(),
                    },
                    RankState::of(comm.rank(), t + 1, &results, prev_fem.as_ref()),
                )
            });
            let reported = on_iteration(&IterationView {
                record: history.last().expect("pushed above"),
                phase,
                classes: &classes,
                consensus: &consensus,
                flow: if has_flow {
                    flows.last().map(|(_, f)| f)
                } else {
                    None
                },
                results: &results,
                scale: &parts.scale,
                checkpoint,
            });
            // A failure on one rank (rank 0's plots) ends every rank before the next collective.
            agree(self.comm, reported)?;
            if phase == Phase::Full {
                if let Some(s) = switched {
                    if s < cfg.convergence_switch_pct {
                        stop_reason = format!(
                            "converged: {s:.2}% of particles switched class (< {}%)",
                            cfg.convergence_switch_pct
                        );
                        break;
                    }
                    if let (Some(thr), Some(r)) = (cfg.rms_density_change_threshold, rms_change) {
                        if r < thr {
                            stop_reason = format!("converged: RMS density change {r:.4} (< {thr})");
                            break;
                        }
                    }
                }
            }
        }
        if comm.is_root() {
            log::info!("classify3d: {stop_reason}");
        }
        Ok(Outcome {
            consensus,
            solvent_mask: mask,
            solvent_mask_generated: generated,
            classes,
            results,
            history,
            flows,
            sigma2,
            stop_reason,
        })
    }
}
