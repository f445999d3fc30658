//! The online-then-full EM iteration driver shared by the classification jobs: which
//! particles iteration `t` works on, its learning rate, the one all-reduce of the batch
//! statistics and their blending into the running statistics, and the F-EM convergence
//! bookkeeping (class flow between iterations, % of particles that switched class).
//!
//! ```text
//!   t < T_o                 online (O-EM): batch(t) of the seeded permutation, η(t) from
//!                           the learning-rate schedule, S ← (1 − η)·S + η·S_batch
//!   T_o ≤ t < T_o + T_f     full (F-EM): every particle, S ← S_all
//!   t ≥ T_o + T_f           assign: an E-step only (used when T_f = 0, so every particle
//!                           gets an assignment)
//! ```
//!
//! The first absorbed batch initialises S. The driver does not know what the statistics
//! mean; the job's model fills them in its E-step and reads them in its M-step.

use crate::comm::Comm;
use crate::error::Result;

use super::batches::OnlineBatches;
use super::schedule::LearningRate;
use super::stats::Stats;

/// What an iteration does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Online,
    Full,
    Assign,
}

impl Phase {
    /// Name used in logs and summary.json.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Online => "online",
            Phase::Full => "full",
            Phase::Assign => "assign",
        }
    }
}

/// Iteration plan, batches, learning rate and running statistics of one run.
pub struct Driver {
    batches: OnlineBatches,
    rate: LearningRate,
    online: usize,
    full_max: usize,
    batch_offset: usize,
    running: Option<Stats>,
}

impl Driver {
    /// `online` O-EM iterations on batches of `batch_size` of `n_total` particles (seeded),
    /// then at most `full_max` F-EM iterations. `batch_offset` skips batches already used
    /// (e.g. for initial classes).
    pub fn new(
        n_total: usize,
        batch_size: usize,
        seed: u64,
        rate: LearningRate,
        online: usize,
        full_max: usize,
        batch_offset: usize,
    ) -> Result<Driver> {
        Ok(Driver {
            batches: OnlineBatches::new(n_total, batch_size, seed)?,
            rate,
            online,
            full_max,
            batch_offset,
            running: None,
        })
    }

    /// The phase of iteration `t`.
    pub fn phase(&self, t: usize) -> Phase {
        if t < self.online {
            Phase::Online
        } else if t < self.online + self.full_max {
            Phase::Full
        } else {
            Phase::Assign
        }
    }

    /// Iterations to run at most: O-EM + F-EM, plus one assignment pass when there is no
    /// F-EM iteration.
    pub fn max_iterations(&self) -> usize {
        self.online + self.full_max.max(1)
    }

    /// O-EM iterations.
    pub fn online_iterations(&self) -> usize {
        self.online
    }

    /// Effective O-EM batch size.
    pub fn batch_size(&self) -> usize {
        self.batches.batch_size()
    }

    /// The global rows of iteration `t`: its batch (O-EM) or None for every particle.
    pub fn rows(&mut self, t: usize) -> Option<Vec<usize>> {
        (self.phase(t) == Phase::Online).then(|| self.batches.batch(t + self.batch_offset))
    }

    /// The first O-EM batch of the permutation (global rows), whatever the offset.
    pub fn first_batch(&mut self) -> Vec<usize> {
        self.batches.batch(0)
    }

    /// η(t): the schedule's value in O-EM, 1 otherwise.
    pub fn learning_rate(&self, t: usize) -> f64 {
        if self.phase(t) == Phase::Online {
            self.rate.at(t)
        } else {
            1.0
        }
    }

    /// The running statistics (None before the first iteration).
    pub fn running(&self) -> Option<&Stats> {
        self.running.as_ref()
    }

    /// Restores the running statistics of a checkpoint.
    pub fn restore(&mut self, running: Option<Stats>) {
        self.running = running;
    }

    /// Sums `batch` over ranks (one all-reduce) and folds it into the running statistics
    /// with η(t); returns them.
    pub fn absorb(&mut self, mut batch: Stats, t: usize, comm: &dyn Comm) -> Result<&Stats> {
        batch.all_reduce(comm);
        let eta = self.learning_rate(t);
        match self.running.as_mut() {
            Some(r) if eta < 1.0 => r.blend(&batch, eta)?,
            _ => self.running = Some(batch),
        }
        Ok(self.running.as_ref().expect("set above"))
    }
}

/// Class flow between two assignments of the same particles: `flow[i][j]` = particles in
/// class `i` before and class `j` now, summed over ranks (one all-reduce).
pub fn class_flow(prev: &[u32], cur: &[u32], k: usize, comm: &dyn Comm) -> Vec<Vec<u64>> {
    let mut buf = vec![0u64; k * k];
    for (&a, &b) in prev.iter().zip(cur) {
        buf[a as usize * k + b as usize] += 1;
    }
    comm.all_reduce_sum_u64(&mut buf);
    buf.chunks(k).map(|r| r.to_vec()).collect()
}

/// Percentage of particles off the diagonal of a class-flow matrix (0 for no particles).
pub fn switched_pct(flow: &[Vec<u64>]) -> f64 {
    let total: u64 = flow.iter().flatten().sum();
    let stay: u64 = flow.iter().enumerate().map(|(i, r)| r[i]).sum();
    if total == 0 {
        0.0
    } else {
        100.0 * (total - stay) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;
    use crate::em::stats::StatsLayout;

    #[test]
    fn phases_rows_and_rates() {
        let rate = LearningRate::new(0.5, 2.0).unwrap();
        let mut d = Driver::new(100, 30, 7, rate, 3, 2, 0).unwrap();
        let phases: Vec<Phase> = (0..6).map(|t| d.phase(t)).collect();
        use Phase::*;
        assert_eq!(phases, vec![Online, Online, Online, Full, Full, Assign]);
        assert_eq!(d.max_iterations(), 5);
        let b0 = d.rows(0).unwrap();
        assert_eq!(b0.len(), 30);
        assert!(d.rows(3).is_none());
        assert_eq!(d.learning_rate(0), 0.5);
        assert_eq!(d.learning_rate(2), 0.25);
        assert_eq!(d.learning_rate(3), 1.0);
        // No F-EM: one assignment pass after O-EM.
        let d = Driver::new(100, 30, 7, rate, 3, 0, 0).unwrap();
        assert_eq!(d.max_iterations(), 4);
        assert_eq!(d.phase(3), Assign);
        // The offset skips batches.
        let mut a = Driver::new(100, 30, 7, rate, 3, 2, 1).unwrap();
        let mut b = Driver::new(100, 30, 7, rate, 3, 2, 0).unwrap();
        assert_eq!(a.rows(0), b.rows(1));
    }

    #[test]
    fn absorb_blends_online_and_replaces_in_full() {
        let lay = StatsLayout::new(&[("x", 1)]).unwrap();
        let rate = LearningRate::new(0.5, 0.0).unwrap();
        let mut d = Driver::new(10, 5, 0, rate, 2, 1, 0).unwrap();
        let st = |v: f64| {
            let mut s = Stats::zeros(&lay);
            s.as_mut_slice()[0] = v;
            s
        };
        assert_eq!(d.absorb(st(4.0), 0, &Single).unwrap().as_slice(), &[4.0]);
        assert_eq!(d.absorb(st(2.0), 1, &Single).unwrap().as_slice(), &[3.0]);
        assert_eq!(d.absorb(st(10.0), 2, &Single).unwrap().as_slice(), &[10.0]);
    }

    #[test]
    fn flow_and_switches() {
        let f = class_flow(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3, &Single);
        assert_eq!(f, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        assert!((switched_pct(&f) - 40.0).abs() < 1e-12);
        assert_eq!(switched_pct(&[vec![0]]), 0.0);
    }
}
