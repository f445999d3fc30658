//! The start of a 3D classification, before the EM iterations (and again on resume, where
//! it is deterministic): the consensus of all particles at their poses, the solvent mask,
//! the noise model against the consensus, the per-particle scales and the initial classes.
//! Every pass reads the rank's particles block by block from the particle source (resident
//! or streamed) and sums over ranks with one all-reduce.

use ndarray::Array3;

use crate::comm::{agree, Comm};
use crate::em::batches::permutation;
use crate::em::binned::Binned;
use crate::em::stats::{Stats, StatsLayout};
use crate::error::Result;
use crate::numerics::pca;
use crate::numerics::project3d::Projector;
use crate::numerics::volume::{solvent_mask, spherical_mask};
use crate::particles::ParticleSource;

use super::config::ScaleMode;
use super::engine::Classify3d;
use super::estep::{fit_scales, score};
use super::gpu;
use super::model::{self, ClassVolume, PAD};

impl Classify3d<'_> {
    /// Reconstructs `k` volumes from one-hot groups of local particles (`group(l)` = class
    /// of local row `l`, or None), summed over ranks.
    fn reconstruct_groups(
        &self,
        source: &ParticleSource,
        comm: &dyn Comm,
        group: impl Fn(usize) -> Option<usize>,
        k: usize,
        mask: &Array3<f32>,
    ) -> Result<Vec<ClassVolume>> {
        let mut st = Stats::zeros(&model::layout(k, self.grid)?);
        let read = source.for_each_all(|idx, ids, block| {
            let (mut sel, mut scale, mut probs) = (Vec::new(), Vec::new(), Vec::new());
            for (&i, &l) in idx.iter().zip(ids) {
                if let Some(c) = group(l) {
                    sel.push(i);
                    scale.push(self.scale[l]);
                    let mut row = vec![0.0; k];
                    row[c] = 1.0;
                    probs.extend(row);
                }
            }
            model::backproject(&mut st, self.grid, block, &sel, &scale, &probs, &self.syms)
        });
        agree(comm, read)?;
        st.all_reduce(comm);
        model::reconstruct_classes(&st, self.grid, mask, true)
    }

    /// σ² per shell from the residuals of every particle against `vol`.
    fn noise_against(
        &self,
        source: &ParticleSource,
        comm: &dyn Comm,
        vol: &Array3<f32>,
        prev: &[f64],
    ) -> Result<Vec<f64>> {
        let proj = Projector::new(vol.view(), PAD);
        let ns = self.grid.n_shells();
        let lay = StatsLayout::new(&[(model::NOISE, ns), (model::NOISE_N, ns)])?;
        let mut st = Stats::zeros(&lay);
        let read = source.for_each_all(|idx, ids, block| {
            let scale: Vec<f64> = ids.iter().map(|&l| self.scale[l]).collect();
            let sc = score(block, self.grid, &[&proj], idx, &scale, prev);
            for j in 0..idx.len() {
                model::add_noise(&mut st, &sc.resid[j * ns..(j + 1) * ns], &sc.counts)?;
            }
            Ok(())
        });
        agree(comm, read)?;
        st.all_reduce(comm);
        model::noise_per_shell(&st, prev)
    }

    /// Consensus, mask, noise model and per-particle scales.
    pub(super) fn start_model(&mut self, source: &ParticleSource, comm: &dyn Comm) -> Result<()> {
        let (plan, grid) = (self.plan, self.grid);
        let n = grid.n;
        let t0 = std::time::Instant::now();
        self.scale = vec![1.0; source.len()];
        // 1. Consensus of all particles at their poses (scale 1), FSC-filtered.
        let ones = Array3::<f32>::ones((n, n, n));
        let mut consensus = self
            .reconstruct_groups(source, comm, |_| Some(0), 1, &ones)?
            .remove(0);
        // 2. Solvent mask (given, or from the consensus).
        let (mask, generated) = match self.solvent_mask_input.take() {
            Some(m) => (m, false),
            None => {
                let m = solvent_mask(
                    consensus.vol.view(),
                    grid.psize_a(),
                    plan.solvent_mask.0,
                    plan.solvent_mask.1,
                    plan.solvent_mask.2,
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
        let sigma2 = self.noise_against(source, comm, &consensus.vol, &flat)?;
        match plan.per_particle_scale {
            ScaleMode::None => {}
            ScaleMode::Input => {
                if let Some(s) = self.input_scales.take() {
                    self.scale = s;
                }
            }
            ScaleMode::Optimal => {
                let proj = Projector::new(consensus.vol.view(), PAD);
                let mut fitted = vec![1.0; source.len()];
                let dev = gpu::DeviceCopy::default();
                let read = source.for_each_all(|idx, ids, block| {
                    let s = match self.gpu {
                        Some(g) => gpu::fit_scales(g, &dev, block, idx, grid, &proj, &sigma2)?,
                        None => fit_scales(block, idx, grid, &proj, &sigma2),
                    };
                    ids.iter().zip(s).for_each(|(&l, v)| fitted[l] = v);
                    Ok(())
                });
                agree(comm, read)?;
                self.scale = fitted;
            }
        }
        self.sigma2 = self.noise_against(source, comm, &consensus.vol, &sigma2)?;
        if let Some(q) = Binned::of_all_ranks(comm, &self.scale).quartiles() {
            log::info!("per-particle scale ({:?}): {q}", plan.per_particle_scale);
        }
        self.consensus = consensus;
        self.mask = mask;
        self.mask_generated = generated;
        Ok(())
    }

    /// The initial classes: the input volumes scaled to the consensus, or reconstructions
    /// of random particles (a function of the seed and the global row).
    pub(super) fn initial_classes(
        &mut self,
        source: &ParticleSource,
        comm: &dyn Comm,
    ) -> Result<Vec<ClassVolume>> {
        let (plan, grid) = (self.plan, self.grid);
        let (n, k) = (grid.n, plan.num_classes);
        let (consensus, mask) = (&self.consensus, &self.mask);
        if let Some(vols) = &self.initial_volumes {
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
            return Ok(vols
                .iter()
                .map(|v| ClassVolume {
                    vol: &model::lowpass(&v.mapv(|x| x * s), grid, plan.init_lowpass_a) * mask,
                    fsc: consensus.fsc.clone(),
                    halves: consensus.halves.clone(),
                    res_a: consensus.res_a,
                })
                .collect());
        }
        if let Some((b, per)) = plan.init_pca {
            return self.pca_classes(source, comm, b, per);
        }
        let per = plan.init_particles_per_class;
        let mut cl = self.random_subsets(source, comm, k, per)?;
        for c in cl.iter_mut() {
            c.vol = &model::lowpass(&c.vol, grid, plan.init_lowpass_a) * &self.mask;
        }
        if comm.is_root() {
            log::info!(
                "initial classes: {per} random particles each, low-passed to {} Å",
                plan.init_lowpass_a
            );
        }
        Ok(cl)
    }

    /// Reconstructions of `b` disjoint random subsets of `per` particles each (the first
    /// b·per rows of the seeded global permutation), masked by the solvent mask.
    fn random_subsets(
        &self,
        source: &ParticleSource,
        comm: &dyn Comm,
        b: usize,
        per: usize,
    ) -> Result<Vec<ClassVolume>> {
        let perm = permutation(self.n_total, self.plan.seed ^ 0x1417_c1a5, 0);
        let first = source.first_row();
        let mut group = vec![None; source.len()];
        for c in 0..b {
            for &g in &perm[(c * per).min(self.n_total)..((c + 1) * per).min(self.n_total)] {
                if g >= first && g < first + source.len() {
                    group[g - first] = Some(c);
                }
            }
        }
        drop(perm);
        self.reconstruct_groups(source, comm, |l| group[l], b, &self.mask)
    }

    /// `init_mode: pca`: `b` subset reconstructions, low-passed and masked; their scores on
    /// the first K − 1 principal components, k-means into K groups, and each class the mean
    /// of its group (the same on every rank: the reconstructions are all-reduced and the
    /// rest is deterministic).
    fn pca_classes(
        &self,
        source: &ParticleSource,
        comm: &dyn Comm,
        b: usize,
        per: usize,
    ) -> Result<Vec<ClassVolume>> {
        let (plan, grid) = (self.plan, self.grid);
        let k = plan.num_classes;
        let vols: Vec<Array3<f32>> = self
            .random_subsets(source, comm, b, per)?
            .into_iter()
            .map(|c| &model::lowpass(&c.vol, grid, plan.init_lowpass_a) * &self.mask)
            .collect();
        let flat: Vec<&[f32]> = vols
            .iter()
            .map(|v| v.as_slice().expect("standard layout"))
            .collect();
        let (scores, explained) = pca::principal_scores(&flat, (k - 1).max(1));
        let label = pca::kmeans(&scores, k);
        let consensus = &self.consensus;
        let classes = (0..k)
            .map(|c| {
                let members: Vec<&Array3<f32>> = vols
                    .iter()
                    .zip(&label)
                    .filter(|(_, &l)| l == c)
                    .map(|(v, _)| v)
                    .collect();
                let mut vol = Array3::<f32>::zeros(vols[0].dim());
                for v in &members {
                    vol += *v;
                }
                vol /= members.len().max(1) as f32;
                ClassVolume {
                    vol,
                    fsc: consensus.fsc.clone(),
                    halves: consensus.halves.clone(),
                    res_a: consensus.res_a,
                }
            })
            .collect();
        if comm.is_root() {
            let sizes: Vec<usize> = (0..k)
                .map(|c| label.iter().filter(|&&l| l == c).count())
                .collect();
            log::info!(
                "initial classes (pca): {b} reconstructions of {per} random particles, low-passed to {} Å; variance explained by the first {} components {:?}; reconstructions per class {sizes:?}",
                plan.init_lowpass_a,
                explained.len(),
                explained.iter().map(|e| format!("{:.1}%", 100.0 * e)).collect::<Vec<_>>()
            );
        }
        Ok(classes)
    }
}
