//! The EM iteration loop shared by 2D and 3D classification. A job plugs in a [`Problem`]
//! (what its statistics are, how a block of particles is scored, how the model is updated);
//! the engine owns everything around it, top to bottom in [`Engine::run`]:
//!
//! ```text
//!   start         the problem initialises its model (or restores it from a checkpoint)
//!   for t:        phase(t) from the driver:
//!     online      t < T_o: batch b(t) of the seeded global permutation (each rank keeps
//!                 its members), η(t) from the learning-rate schedule
//!     full        T_o ≤ t < T_o + T_f: every particle, η = 1
//!     assign      t = T_o when T_f = 0: an E-step only, so every particle gets a result
//!     prepare     the problem freezes its model for the E-step (templates, projectors)
//!     E-step      the rank's rows of the iteration, block by block from the particle
//!                 source (resident or streamed: the same blocks, so the same bits), into
//!                 the batch statistics; each particle's result goes to the problem and,
//!                 in full and assign passes, to the caller's sink; ESS and best-class probability into all-reduced bins;
//!                 then the problem adds any sums it kept elsewhere (a GPU's resident class
//!                 sums, brought down once per iteration)
//!     agree       every rank learns whether every rank scored its particles
//!     all-reduce  the batch statistics, once (not in the assign pass)
//!     blend       S ← (1 − η)·S + η·S_batch (the first batch initialises S)
//!     M-step      the problem's deterministic update from S, the same on every rank
//!     conclude    the problem's part of the iteration record and its convergence test
//!     record      one record (log line, summary.json), the caller's per-iteration
//!                 callback (plots, checkpoint writing), agreed across ranks
//! ```
//!
//! Nothing per particle leaves its rank: results stay with the problem or go to the
//! caller's sink (which writes rank-local spill files), diagnostics are binned.
//! A checkpoint ([`super::checkpoint`]) holds the driver's running statistics, the history,
//! the problem's shared state and each particle's row state keyed by its global row, so a
//! run resumes on any number of ranks.

use std::time::Instant;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::comm::{agree, Comm};
use crate::error::{Error, Result};
use crate::particles::{ParticleSource, Particles};

use super::binned::{Binned, PerClassEss, BINS};
use super::driver::{Driver, Phase};
use super::schedule::LearningRate;
use super::stats::{Stats, StatsLayout};

/// The iteration plan of a run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Particles in the whole dataset.
    pub n_total: usize,
    /// O-EM batch size (capped at `n_total`).
    pub batch_size: usize,
    /// Seed of the batch permutation.
    pub seed: u64,
    pub rate: LearningRate,
    /// O-EM iterations.
    pub online: usize,
    /// F-EM iterations at most.
    pub full_max: usize,
    /// Batches skipped at the start (used by the problem's initialisation).
    pub batch_offset: usize,
}

/// What iteration `t` is.
#[derive(Clone, Copy, Debug)]
pub struct Iteration {
    pub t: usize,
    pub phase: Phase,
    /// Learning rate η(t).
    pub eta: f64,
    /// Iterations planned at most.
    pub of: usize,
    /// No iteration is planned after this one (the final pass).
    pub last: bool,
    /// Particles in this iteration (over all ranks).
    pub particles: usize,
}

/// A particle's result as the engine sees it (for the binned diagnostics).
pub trait Scored {
    /// Effective number of classes.
    fn ess(&self) -> f64;
    /// Probability of the most likely class.
    fn best_prob(&self) -> f64;
    /// The most likely class (for the per-class ESS summary).
    fn best_class(&self) -> usize;
}

/// What the engine gives a problem at start.
pub struct Context<'a> {
    pub source: &'a ParticleSource,
    pub comm: &'a dyn Comm,
    pub n_total: usize,
    /// The first O-EM batch (global rows), whatever the batch offset.
    pub first_batch: Vec<usize>,
}

/// The problem's part of an iteration: its record fields and, to stop early, why.
pub struct Conclusion<E> {
    pub extra: E,
    pub stop: Option<String>,
}

/// A classification problem run by the engine.
pub trait Problem {
    /// The model frozen for one iteration's E-step (shared by the rayon workers).
    type Prepared: Sync;
    /// One particle's result.
    type Row: Scored;
    /// The problem's fields of the iteration record.
    type Extra: Clone + Serialize + DeserializeOwned;
    /// The model state kept in a checkpoint (the same on every rank).
    type Shared: Serialize + DeserializeOwned;
    /// One particle's state kept in a checkpoint.
    type RowState: Clone + Serialize + DeserializeOwned;

    /// The statistics layout.
    fn layout(&self) -> &StatsLayout;
    /// Number of classes (range of the ESS bins).
    fn num_classes(&self) -> usize;
    /// Initialises the model, or restores it (shared state and this rank's row states,
    /// in local row order) from a checkpoint.
    fn start(
        &mut self,
        ctx: &Context,
        resume: Option<(Self::Shared, Vec<Self::RowState>)>,
    ) -> Result<()>;
    /// Freezes the model for iteration `it`.
    fn prepare(&mut self, it: &Iteration, ctx: &Context) -> Result<Self::Prepared>;
    /// Scores particles `idx` of `block` (local rows `ids`), adds their M-step sums to
    /// `stats` and returns each one's result, keyed by its index in `block`.
    #[allow(clippy::too_many_arguments)]
    fn e_step(
        &self,
        prep: &Self::Prepared,
        it: &Iteration,
        block: &Particles,
        idx: &[usize],
        ids: &[usize],
        stats: &mut Stats,
    ) -> Result<Vec<(usize, Self::Row)>>;
    /// After the E-step of every local block of an iteration: adds sums the problem kept
    /// elsewhere (a GPU's resident class sums) to `stats`, before the all-reduce.
    fn finish_e_step(&self, _prep: &Self::Prepared, _stats: &mut Stats) -> Result<()> {
        Ok(())
    }
    /// Keeps the result of local row `local` (called in local row order).
    fn keep(&mut self, local: usize, row: &Self::Row, it: &Iteration) -> Result<()>;
    /// The M-step from the running statistics (the same on every rank).
    fn m_step(&mut self, running: &Stats, it: &Iteration) -> Result<()>;
    /// After the M-step (or the assign pass): the record fields and the convergence test.
    fn conclude(&mut self, it: &Iteration, ctx: &Context) -> Result<Conclusion<Self::Extra>>;
    /// Extra log lines for the record (rank 0 prints them).
    fn describe(&self, extra: &Self::Extra) -> Vec<String>;
    /// The model state for a checkpoint.
    fn shared_state(&self) -> Self::Shared;
    /// Every local particle's state for a checkpoint (local row order).
    fn row_states(&self) -> Vec<Self::RowState>;
}

/// One row of the per-iteration record (summary.json, log): the engine's fields, then the
/// problem's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record<E> {
    pub iteration: usize,
    pub phase: String,
    pub particles: usize,
    pub learning_rate: f64,
    pub ess_quartiles: [f64; 5],
    pub best_prob_quartiles: [f64; 5],
    #[serde(flatten)]
    pub extra: E,
    pub seconds: f64,
    /// Of which this rank's E-step (scoring and its M-step contributions).
    pub estep_seconds: f64,
    /// Of which communication: the all-reduce of the statistics and of the binned
    /// diagnostics (including waiting for the slowest rank).
    pub comm_seconds: f64,
    /// Bytes of the statistics all-reduce (each rank's buffer).
    pub allreduce_bytes: usize,
    /// Bytes of the all-reduces of the binned diagnostics: the ESS and best-probability
    /// summaries (two 4,096-bin summaries with their ranges: 2 × (4,096 + 2) × 8 = 65,568 B)
    /// and the per-class ESS bins (K × 100 × 8 B); independent of N.
    pub diagnostics_allreduce_bytes: usize,
}

/// The state to continue from after an iteration.
pub struct Snapshot<'a, P: Problem> {
    pub next_iteration: usize,
    pub running: Option<&'a Stats>,
    pub history: &'a [Record<P::Extra>],
    pub problem: &'a P,
}

/// Per-iteration view passed to the caller.
pub struct View<'a, P: Problem> {
    pub it: Iteration,
    pub record: &'a Record<P::Extra>,
    pub problem: &'a P,
    /// ESS and best-class probability of this iteration's particles, over all ranks.
    pub ess: &'a Binned,
    pub best_prob: &'a Binned,
    /// Hard class counts and per-class ESS of this iteration's particles, over all ranks.
    pub class_ess: &'a PerClassEss,
    /// Not after the last iteration: what a checkpoint holds.
    pub snapshot: Option<Snapshot<'a, P>>,
}

/// A checkpoint's content for the engine (decoded by [`super::checkpoint`]).
pub struct Resume<P: Problem> {
    pub next_iteration: usize,
    pub running: Option<Vec<f64>>,
    pub history: Vec<Record<P::Extra>>,
    pub shared: P::Shared,
    /// This rank's row states, local row order.
    pub rows: Vec<P::RowState>,
}

/// What a run produced.
pub struct Outcome<E> {
    pub history: Vec<Record<E>>,
    /// Diagnostics of the last iteration (over all ranks).
    pub ess: Binned,
    pub best_prob: Binned,
    pub class_ess: PerClassEss,
    /// Why the run stopped.
    pub stop_reason: String,
}

/// The engine: a plan, a rank's particles and the communicator.
pub struct Engine<'a> {
    pub plan: Plan,
    pub source: &'a ParticleSource,
    pub comm: &'a dyn Comm,
    /// Log prefix (the job's name).
    pub job: &'static str,
}

/// Empty ESS and best-class-probability bins for `k` classes.
fn bins(k: usize) -> (Binned, Binned) {
    (
        Binned::new(1.0, k.max(2) as f64, BINS),
        Binned::new(0.0, 1.0, BINS),
    )
}

fn quartiles(b: &Binned) -> [f64; 5] {
    b.quartiles()
        .map(|q| [q.min, q.q25, q.median, q.q75, q.max])
        .unwrap_or([f64::NAN; 5])
}

/// One iteration's outcome before the caller sees it.
struct Done<E> {
    it: Iteration,
    record: Record<E>,
    ess: Binned,
    best: Binned,
    class_ess: PerClassEss,
    stop: Option<String>,
}

impl<'a> Engine<'a> {
    /// Runs `problem` to the end. `on_iteration` is called on every rank after each
    /// iteration; `on_row` receives the result of every local particle in every pass over
    /// all particles (full and assign iterations, not the O-EM batches), in local row order,
    /// with its iteration: a caller that writes results keeps the latest pass (a new `it.t`
    /// starts it over), which is the last one whether the run ends at the iteration limit or
    /// stops early on the problem's convergence test.
    pub fn run<P: Problem>(
        &self,
        problem: &mut P,
        resume: Option<Resume<P>>,
        mut on_iteration: impl FnMut(&View<P>) -> Result<()>,
        mut on_row: impl FnMut(&Iteration, usize, &P::Row) -> Result<()>,
    ) -> Result<Outcome<P::Extra>> {
        let plan = self.plan;
        let mut driver = Driver::new(
            plan.n_total,
            plan.batch_size.min(plan.n_total),
            plan.seed,
            plan.rate,
            plan.online,
            plan.full_max,
            plan.batch_offset,
        )?;
        let ctx = Context {
            source: self.source,
            comm: self.comm,
            n_total: plan.n_total,
            first_batch: driver.first_batch(),
        };
        let (t0, mut history) = self.begin(problem, resume, &mut driver, &ctx)?;
        let (mut ess, mut best) = bins(problem.num_classes());
        let mut class_ess = PerClassEss::new(problem.num_classes());
        let mut stop_reason = format!(
            "reached the iteration limit ({} online + {} full)",
            plan.online, plan.full_max
        );
        for t in t0..driver.max_iterations() {
            let done = self.iterate(problem, &mut driver, &ctx, t, &mut on_row)?;
            history.push(done.record);
            let view = View {
                it: done.it,
                record: history.last().expect("pushed above"),
                problem: &*problem,
                ess: &done.ess,
                best_prob: &done.best,
                class_ess: &done.class_ess,
                snapshot: (!done.it.last && done.stop.is_none()).then(|| Snapshot {
                    next_iteration: t + 1,
                    running: driver.running(),
                    history: &history,
                    problem: &*problem,
                }),
            };
            // A failure on one rank (rank 0's plots) ends every rank before the next
            // collective.
            agree(self.comm, on_iteration(&view))?;
            (ess, best, class_ess) = (done.ess, done.best, done.class_ess);
            if let Some(why) = done.stop {
                stop_reason = why;
                break;
            }
        }
        if self.comm.is_root() {
            log::info!("{}: {stop_reason}", self.job);
        }
        Ok(Outcome {
            history,
            ess,
            best_prob: best,
            class_ess,
            stop_reason,
        })
    }

    /// Starts the problem, fresh or from a checkpoint: the first iteration and the history.
    fn begin<P: Problem>(
        &self,
        problem: &mut P,
        resume: Option<Resume<P>>,
        driver: &mut Driver,
        ctx: &Context,
    ) -> Result<(usize, Vec<Record<P::Extra>>)> {
        let Some(r) = resume else {
            problem.start(ctx, None)?;
            return Ok((0, Vec::new()));
        };
        driver.restore(match &r.running {
            Some(buf) => Some(Stats::from_slice(problem.layout(), buf)?),
            None => None,
        });
        problem.start(ctx, Some((r.shared, r.rows)))?;
        if self.comm.is_root() {
            log::info!(
                "{}: resuming at iteration {} of {}",
                self.job,
                r.next_iteration + 1,
                driver.max_iterations()
            );
        }
        Ok((r.next_iteration, r.history))
    }

    /// Iteration `t`: prepare, E-step, agree, all-reduce and blend, M-step, conclude, record.
    fn iterate<P: Problem>(
        &self,
        problem: &mut P,
        driver: &mut Driver,
        ctx: &Context,
        t: usize,
        on_row: &mut impl FnMut(&Iteration, usize, &P::Row) -> Result<()>,
    ) -> Result<Done<P::Extra>> {
        let comm = self.comm;
        let start = Instant::now();
        let phase = driver.phase(t);
        let total = driver.max_iterations();
        let it = Iteration {
            t,
            phase,
            eta: driver.learning_rate(t),
            of: total,
            last: t + 1 == total,
            particles: if phase == Phase::Online {
                driver.batch_size()
            } else {
                self.plan.n_total
            },
        };
        let prep = problem.prepare(&it, ctx)?;
        let t_e = Instant::now();
        let mut batch = Stats::zeros(problem.layout());
        let (mut ess, mut best) = bins(problem.num_classes());
        let mut class_ess = PerClassEss::new(problem.num_classes());
        let scored = self.e_step(problem, &prep, &it, driver, &mut batch, |p, l, row| {
            ess.add(row.ess());
            best.add(row.best_prob());
            class_ess.add(row.best_class(), row.ess());
            p.keep(l, row, &it)?;
            if it.phase != Phase::Online {
                on_row(&it, l, row)?;
            }
            Ok(())
        });
        // Every rank learns whether every rank scored its particles (a bad block of the
        // file, a full disk) before the collectives below, so none waits forever.
        agree(comm, scored)?;
        drop(prep);
        let estep_seconds = t_e.elapsed().as_secs_f64();
        let t_c = Instant::now();
        let diagnostics_allreduce_bytes =
            ess.all_reduce(comm) + best.all_reduce(comm) + class_ess.all_reduce(comm);
        let mut allreduce_bytes = 0;
        let running = if phase == Phase::Assign {
            None
        } else {
            allreduce_bytes = 8 * batch.as_slice().len();
            Some(driver.absorb(batch, t, comm)?)
        };
        let comm_seconds = t_c.elapsed().as_secs_f64();
        if let Some(running) = running {
            problem.m_step(running, &it)?;
        }
        let concl = problem.conclude(&it, ctx)?;
        let record = Record {
            iteration: t,
            phase: phase.name().to_string(),
            particles: it.particles,
            learning_rate: it.eta,
            ess_quartiles: quartiles(&ess),
            best_prob_quartiles: quartiles(&best),
            extra: concl.extra,
            seconds: start.elapsed().as_secs_f64(),
            estep_seconds,
            comm_seconds,
            allreduce_bytes,
            diagnostics_allreduce_bytes,
        };
        if comm.is_root() {
            self.log(&it, &record, &ess, &best, problem);
        }
        Ok(Done {
            it,
            record,
            ess,
            best,
            class_ess,
            stop: concl.stop,
        })
    }

    /// The E-step of one iteration over this rank's rows: its batch members (O-EM) or
    /// every row in segments (so no list of all rows is built), block by block.
    fn e_step<P: Problem>(
        &self,
        problem: &mut P,
        prep: &P::Prepared,
        it: &Iteration,
        driver: &mut Driver,
        batch: &mut Stats,
        mut keep: impl FnMut(&mut P, usize, &P::Row) -> Result<()>,
    ) -> Result<()> {
        let source = self.source;
        let mut on_block = |idx: &[usize], ids: &[usize], block: &Particles| -> Result<()> {
            let mut rows = problem.e_step(prep, it, block, idx, ids, batch)?;
            // Block indices increase with the local row: this is local row order.
            rows.sort_unstable_by_key(|(i, _)| *i);
            for (i, row) in rows {
                // idx[j] is the block index of local row ids[j] (idx is sorted).
                let j = idx.binary_search(&i).map_err(|_| {
                    Error::Internal(format!("E-step result for block index {i} not asked for"))
                })?;
                keep(problem, ids[j], &row)?;
            }
            Ok(())
        };
        match driver.rows(it.t) {
            Some(global) => {
                let locals = source.local(&global);
                source.for_each_block(&locals, &mut on_block)
            }
            None => source.for_each_all(&mut on_block),
        }?;
        problem.finish_e_step(prep, batch)
    }

    fn log<P: Problem>(
        &self,
        it: &Iteration,
        r: &Record<P::Extra>,
        ess: &Binned,
        best: &Binned,
        problem: &P,
    ) {
        log::info!(
            "iteration {}/{} ({}, {} particles, η {:.3}): {:.1} s (E-step {:.1} s, communication {:.2} s, all-reduce {:.1} MB)",
            it.t + 1,
            it.of,
            r.phase,
            r.particles,
            r.learning_rate,
            r.seconds,
            r.estep_seconds,
            r.comm_seconds,
            r.allreduce_bytes as f64 / 1e6
        );
        for line in problem.describe(&r.extra) {
            log::info!("  {line}");
        }
        if let (Some(e), Some(b)) = (ess.quartiles(), best.quartiles()) {
            log::info!("  effective number of classes per particle: {e}");
            log::info!("  probability of best class:                {b}");
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
