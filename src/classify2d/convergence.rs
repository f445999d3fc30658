//! When the full passes of 2D classification stop: after each full pass, the class flow
//! against the previous full pass (the same all-reduced K × K counts as 3D,
//! [`crate::em::driver::class_flow`]) gives the percentage of particles whose best class
//! changed; below `convergence_switch_pct` the run has converged and stops, at most after
//! `full_iterations` passes. With `final_hard_classification`, a converged run does one
//! more pass, hard, and stops after it (the planned last pass is hard in any case).
//!
//! State per local particle: its best class in the current pass and in the previous full
//! pass (4 + 4 bytes); the previous one is the checkpoint's row state, so a resumed run
//! counts switches exactly as an uninterrupted one, on any number of ranks.

use crate::comm::Comm;
use crate::em::driver::{class_flow, switched_pct, Phase};

/// Row state of a particle with no full pass yet.
pub const NO_CLASS: u32 = u32::MAX;

/// The convergence test of the full passes.
#[derive(Clone, Debug)]
pub struct Convergence {
    /// Stop below this percentage of switched particles; none = run every full pass.
    threshold_pct: Option<f64>,
    /// `final_hard_classification`: a converged run ends on one hard pass.
    final_hard: bool,
    /// Best class of each local particle in the current iteration.
    now: Vec<u32>,
    /// ... in the previous full pass.
    prev: Option<Vec<u32>>,
    /// Converged with `final_hard`: the next pass is the last, hard.
    pub hard_next: bool,
}

impl Convergence {
    pub fn new(threshold_pct: Option<f64>, final_hard: bool) -> Self {
        Convergence {
            threshold_pct,
            final_hard,
            now: Vec::new(),
            prev: None,
            hard_next: false,
        }
    }

    /// Fresh start with `n_local` particles, or restored from their row states.
    pub fn start(&mut self, n_local: usize, rows: Option<Vec<u32>>, hard_next: bool) {
        self.now = vec![NO_CLASS; n_local];
        self.prev = rows.filter(|r| r.len() == n_local && r.iter().all(|&c| c != NO_CLASS));
        self.hard_next = hard_next;
    }

    /// Local particle `l` has best class `class` in this iteration.
    pub fn keep(&mut self, l: usize, class: u32) {
        if let Some(c) = self.now.get_mut(l) {
            *c = class;
        }
    }

    /// After an iteration of `phase` (hard or not): the switched percentage (full passes
    /// after the first) and, when the run should stop now, why. Collective (every rank).
    pub fn conclude(
        &mut self,
        phase: Phase,
        hard: bool,
        k: usize,
        comm: &dyn Comm,
    ) -> (Option<f64>, Option<String>) {
        if phase != Phase::Full {
            return (None, None);
        }
        if self.hard_next && hard {
            return (None, Some("converged, then one hard pass".into()));
        }
        let switched = self
            .prev
            .as_ref()
            .map(|prev| switched_pct(&class_flow(prev, &self.now, k, comm)));
        self.prev = Some(self.now.clone());
        let (Some(s), Some(thr)) = (switched, self.threshold_pct) else {
            return (switched, None);
        };
        if s >= thr {
            return (switched, None);
        }
        if self.final_hard && !hard {
            self.hard_next = true;
            return (switched, None);
        }
        (
            switched,
            Some(format!(
                "converged: {s:.2}% of particles switched class (< {thr}%)"
            )),
        )
    }

    /// The checkpoint's row states: each local particle's class in the last full pass.
    pub fn row_states(&self) -> Vec<u32> {
        match &self.prev {
            Some(p) => p.clone(),
            None => vec![NO_CLASS; self.now.len()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Single;

    #[test]
    fn stops_when_few_switch_and_ends_hard_when_asked() {
        let mut c = Convergence::new(Some(10.0), false);
        c.start(10, None, false);
        for l in 0..10 {
            c.keep(l, (l % 2) as u32);
        }
        assert_eq!(c.conclude(Phase::Online, false, 2, &Single), (None, None));
        // The first full pass has nothing to compare with.
        assert_eq!(c.conclude(Phase::Full, false, 2, &Single), (None, None));
        c.keep(0, 1); // 1 of 10 switches: 10%, not below 10%
        let (s, stop) = c.conclude(Phase::Full, false, 2, &Single);
        assert_eq!((s, stop), (Some(10.0), None));
        let (s, stop) = c.conclude(Phase::Full, false, 2, &Single);
        assert_eq!(s, Some(0.0));
        assert!(stop.unwrap().starts_with("converged: 0.00%"));
        // The row states restore the comparison.
        let mut r = Convergence::new(Some(10.0), false);
        r.start(10, Some(c.row_states()), false);
        for l in 0..10 {
            r.keep(l, c.now[l]);
        }
        assert!(r.conclude(Phase::Full, false, 2, &Single).1.is_some());
        // With final_hard_classification: one more pass, hard, then stop.
        let mut h = Convergence::new(Some(10.0), true);
        h.start(4, Some(vec![0, 0, 1, 1]), false);
        for (l, k) in [0, 0, 1, 1].into_iter().enumerate() {
            h.keep(l, k);
        }
        assert_eq!(
            h.conclude(Phase::Full, false, 2, &Single),
            (Some(0.0), None)
        );
        assert!(h.hard_next);
        let (_, stop) = h.conclude(Phase::Full, true, 2, &Single);
        assert_eq!(stop.as_deref(), Some("converged, then one hard pass"));
        // No threshold: never stops.
        let mut n = Convergence::new(None, false);
        n.start(2, Some(vec![0, 1]), false);
        n.keep(0, 0);
        n.keep(1, 1);
        assert_eq!(
            n.conclude(Phase::Full, false, 2, &Single),
            (Some(0.0), None)
        );
    }
}
