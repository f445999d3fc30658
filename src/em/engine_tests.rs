//! The engine on the single-rank communicator with a toy problem: a 1D mixture of two unit
//! Gaussians at −3 and +3 (weights 0.3 and 0.7), the value of particle i stored as the real
//! part of its first spectral coefficient. EM must find the means and weights, assign every
//! particle of a well-separated set to its component, stop at the convergence test, and a
//! run resumed from any iteration's checkpoint must end with the uninterrupted result.

use super::*;
use crate::comm::Single;
use crate::em::checkpoint::Keeper;
use crate::numerics::fft::Complex32;
use crate::particles::WorkGrid;
use rand::{Rng, SeedableRng};

struct Mixture {
    layout: StatsLayout,
    means: Vec<f64>,
    weights: Vec<f64>,
    /// Latest class of each local particle.
    class: Vec<u32>,
    changed: usize,
    /// Stop at the first full pass where no particle switches.
    stop_early: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Extra {
    means: Vec<f64>,
}

struct Row {
    probs: [f64; 2],
}

impl Scored for Row {
    fn ess(&self) -> f64 {
        1.0 / (self.probs[0].powi(2) + self.probs[1].powi(2))
    }
    fn best_prob(&self) -> f64 {
        self.probs[0].max(self.probs[1])
    }
    fn best_class(&self) -> usize {
        usize::from(self.probs[1] > self.probs[0])
    }
}

impl Problem for Mixture {
    type Prepared = (Vec<f64>, Vec<f64>);
    type Row = Row;
    type Extra = Extra;
    type Shared = (Vec<f64>, Vec<f64>);
    type RowState = u32;

    fn layout(&self) -> &StatsLayout {
        &self.layout
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn start(&mut self, ctx: &Context, resume: Option<(Self::Shared, Vec<u32>)>) -> Result<()> {
        self.class = vec![0; ctx.source.len()];
        match resume {
            Some(((m, w), rows)) => {
                self.means = m;
                self.weights = w;
                self.class = rows;
            }
            None => {
                self.means = vec![-0.5, 0.5];
                self.weights = vec![0.5, 0.5];
            }
        }
        Ok(())
    }
    fn prepare(&mut self, _: &Iteration, _: &Context) -> Result<Self::Prepared> {
        self.changed = 0;
        Ok((self.means.clone(), self.weights.clone()))
    }
    fn e_step(
        &self,
        (means, weights): &Self::Prepared,
        _: &Iteration,
        block: &Particles,
        idx: &[usize],
        _: &[usize],
        st: &mut Stats,
    ) -> Result<Vec<(usize, Row)>> {
        let mut out = Vec::new();
        for &i in idx {
            let x = block.spectrum(i)[0].re as f64;
            let l: Vec<f64> = (0..2)
                .map(|k| weights[k].ln() - 0.5 * (x - means[k]).powi(2))
                .collect();
            let m = l[0].max(l[1]);
            let z = (l[0] - m).exp() + (l[1] - m).exp();
            let p = [(l[0] - m).exp() / z, (l[1] - m).exp() / z];
            let s = st.as_mut_slice();
            for k in 0..2 {
                s[k] += p[k];
                s[2 + k] += p[k] * x;
            }
            out.push((i, Row { probs: p }));
        }
        Ok(out)
    }
    fn keep(&mut self, local: usize, row: &Row, _: &Iteration) -> Result<()> {
        let c = (row.probs[1] > row.probs[0]) as u32;
        if c != self.class[local] {
            self.changed += 1;
        }
        self.class[local] = c;
        Ok(())
    }
    fn m_step(&mut self, s: &Stats, _: &Iteration) -> Result<()> {
        let s = s.as_slice();
        let n = s[0] + s[1];
        for k in 0..2 {
            self.weights[k] = s[k] / n;
            self.means[k] = s[2 + k] / s[k];
        }
        Ok(())
    }
    fn conclude(&mut self, it: &Iteration, _: &Context) -> Result<Conclusion<Extra>> {
        let stop = (self.stop_early && it.phase == Phase::Full && it.t > 3 && self.changed == 0)
            .then(|| "converged: no particle switched".to_string());
        Ok(Conclusion {
            extra: Extra {
                means: self.means.clone(),
            },
            stop,
        })
    }
    fn describe(&self, e: &Extra) -> Vec<String> {
        vec![format!("means {:?}", e.means)]
    }
    fn shared_state(&self) -> Self::Shared {
        (self.means.clone(), self.weights.clone())
    }
    fn row_states(&self) -> Vec<u32> {
        self.class.clone()
    }
}

fn mixture() -> Mixture {
    Mixture {
        layout: StatsLayout::new(&[("w", 2), ("wx", 2)]).unwrap(),
        means: Vec::new(),
        weights: Vec::new(),
        class: Vec::new(),
        changed: 0,
        stop_early: true,
    }
}

/// `n` draws and their true components; one particle per draw.
fn data(n: usize) -> (ParticleSource, Vec<u32>) {
    let grid = WorkGrid::new(8, 1.0, 2.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut spectra = vec![Complex32::new(0.0, 0.0); n * grid.len()];
    let mut truth = Vec::new();
    for i in 0..n {
        let k = rng.gen_bool(0.7) as u32;
        let mu = if k == 1 { 3.0 } else { -3.0 };
        let x: f64 = mu + rng.sample::<f64, _>(rand_distr::StandardNormal);
        spectra[i * grid.len()] = Complex32::new(x as f32, 0.0);
        truth.push(k);
    }
    let parts = Particles::from_spectra(spectra, None, vec![0; n], &grid);
    (ParticleSource::in_memory(parts, 0..n), truth)
}

fn plan(n: usize) -> Plan {
    Plan {
        n_total: n,
        batch_size: 200,
        seed: 5,
        rate: LearningRate::new(0.9, 2.0).unwrap(),
        online: 4,
        full_max: 20,
        batch_offset: 0,
    }
}

#[test]
fn a_gaussian_mixture_is_recovered() {
    let n = 3000;
    let (source, truth) = data(n);
    let engine = Engine {
        plan: plan(n),
        source: &source,
        comm: &Single,
        job: "toy",
    };
    let mut p = mixture();
    let mut final_rows = 0;
    let mut phases = Vec::new();
    let out = engine
        .run(
            &mut p,
            None,
            |v| {
                phases.push(v.it.phase);
                Ok(())
            },
            |it, _, _| {
                if it.last {
                    final_rows += 1;
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(
        (p.means[0] + 3.0).abs() < 0.1 && (p.means[1] - 3.0).abs() < 0.1,
        "{:?}",
        p.means
    );
    assert!((p.weights[1] - 0.7).abs() < 0.03, "{:?}", p.weights);
    let wrong = p.class.iter().zip(&truth).filter(|(a, b)| a != b).count();
    assert!(wrong < n / 100, "{wrong} misassigned");
    assert!(
        out.stop_reason.starts_with("converged"),
        "{}",
        out.stop_reason
    );
    assert!(out.history.len() < 24, "{}", out.history.len());
    assert_eq!(
        &phases[..5],
        &[
            Phase::Online,
            Phase::Online,
            Phase::Online,
            Phase::Online,
            Phase::Full
        ]
    );
    assert_eq!(out.history[0].particles, 200);
    assert_eq!(out.history[0].allreduce_bytes, 32);
    assert_eq!(
        out.history[0].diagnostics_allreduce_bytes,
        2 * (4096 + 2) * 8 + 2 * 100 * 8
    );
    // A converged run ends before the last planned pass: no final-pass rows (a problem that
    // can stop early keeps its own results).
    assert_eq!(final_rows, 0);
    // Online batches: 200 particles each; full passes every particle.
    assert_eq!(out.history[4].particles, n);
}

#[test]
fn a_run_resumed_from_its_checkpoint_ends_with_the_same_result() {
    let n = 1500;
    let (source, _) = data(n);
    let dir = tempfile::tempdir().unwrap();
    let keeper = Keeper {
        dir: dir.path(),
        job: "toy",
        config_yaml: "x: 1\n",
        n_total: n,
        rows: 0..n,
    };
    let engine = Engine {
        plan: Plan {
            full_max: 3,
            ..plan(n)
        },
        source: &source,
        comm: &Single,
        job: "toy",
    };
    let mixture = || Mixture {
        stop_early: false,
        ..mixture()
    };
    let mut whole = mixture();
    let mut rows_whole = Vec::new();
    let out = engine
        .run(
            &mut whole,
            None,
            |_| Ok(()),
            |it, l, r| {
                if it.last {
                    rows_whole.push((l, r.probs));
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(rows_whole.len(), n, "the last pass gives every particle");
    // Stop after iteration 5 (the checkpoint continues at 6), then resume.
    let mut first = mixture();
    let stopped = engine.run(
        &mut first,
        None,
        |v| {
            if let Some(s) = &v.snapshot {
                keeper.write(&Single, s)?;
            }
            if v.it.t == 5 {
                return Err(Error::Internal("stop".into()));
            }
            Ok(())
        },
        |_, _, _| Ok(()),
    );
    assert!(stopped.is_err());
    let bytes = std::fs::read(dir.path().join(crate::em::checkpoint::FILE)).unwrap();
    let resume = keeper.read::<Mixture>(&bytes).unwrap();
    assert_eq!(resume.next_iteration, 6);
    let mut resumed = mixture();
    let mut rows_resumed = Vec::new();
    let out2 = engine
        .run(
            &mut resumed,
            Some(resume),
            |_| Ok(()),
            |it, l, r| {
                if it.last {
                    rows_resumed.push((l, r.probs));
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(resumed.means, whole.means);
    assert_eq!(rows_resumed, rows_whole);
    assert_eq!(out2.history.len(), out.history.len());
    assert_eq!(out2.history[3].extra, out.history[3].extra);
    // Another configuration is refused.
    let other = Keeper {
        config_yaml: "x: 2\n",
        ..keeper
    };
    assert!(other.read::<Mixture>(&bytes).is_err());
}
