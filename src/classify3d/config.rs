//! The `emclass classify3d` job configuration: CryoSPARC's "3D Classification" parameters
//! in snake_case (`configs/classify3d.yaml` documents each one with its default), plus the
//! forum thread's `hard_after_anneal` and its reverse `hard_first_iterations`, and the validation after which the engine trusts the
//! values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backend::BackendChoice;
use crate::config::{check_learning_rate, check_range};
use crate::error::{Error, Result};
use crate::numerics::symmetry::point_group;

/// How the class volumes start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// Each class is reconstructed from its own random subset of particles.
    #[default]
    Simple,
    /// The volumes listed in `initial_volumes` (one per class).
    Input,
    /// Principal components of `init_pca_reconstructions` reconstructions from disjoint
    /// random particle subsets: k-means of their scores on the first K − 1 components into
    /// K groups, each class the mean of its group's reconstructions.
    Pca,
}

/// Where each particle's scale (its contrast relative to the consensus) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleMode {
    /// Least-squares fit against the consensus projection before the EM loop.
    #[default]
    Optimal,
    /// The input's `alignments3D/alpha`.
    Input,
    /// 1.0 for every particle.
    None,
}

/// Configuration of `emclass classify3d`. Field names are the YAML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classify3dConfig {
    /// Input particle dataset (.h5) with `alignments3D/pose`, `alignments3D/shift` and
    /// `ctf/*`.
    pub input: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// Number of classes. Default 2.
    #[serde(default = "d_num_classes")]
    pub num_classes: usize,
    /// Classification resolution, Å (required): sets the class volumes' box and pixel size.
    #[serde(rename = "filter_res_A")]
    pub filter_res_a: Option<f64>,
    /// simple | input | pca. Default simple.
    #[serde(default)]
    pub init_mode: InitMode,
    /// With `init_mode: input`: one MRC volume per class.
    #[serde(default)]
    pub initial_volumes: Vec<PathBuf>,
    /// `init_mode: simple`: particles reconstructed into each initial class (`pca`: into
    /// each subset reconstruction). Default 1000.
    #[serde(default = "d_init_particles")]
    pub init_particles_per_class: usize,
    /// `init_mode: pca`: number of subset reconstructions (at least num_classes); null =
    /// max(10·num_classes, 20), at most N / 2 subsets. Default null.
    #[serde(default)]
    pub init_pca_reconstructions: Option<usize>,
    /// Low-pass of the initial volumes, Å. Default 20.
    #[serde(rename = "init_lowpass_A", default = "d_init_lowpass")]
    pub init_lowpass_a: f64,
    /// Solvent mask MRC; null = generated from the consensus volume.
    #[serde(default)]
    pub solvent_mask: Option<PathBuf>,
    /// Auto solvent mask: threshold as a fraction of the consensus maximum. Default 0.15.
    #[serde(default = "d_mask_threshold")]
    pub solvent_mask_threshold: f64,
    /// Auto solvent mask: dilation, Å. Default 6.
    #[serde(rename = "solvent_mask_dilate_A", default = "d_mask_dilate")]
    pub solvent_mask_dilate_a: f64,
    /// Auto solvent mask: soft edge width, Å. Default 12.
    #[serde(rename = "solvent_mask_soft_A", default = "d_mask_soft")]
    pub solvent_mask_soft_a: f64,
    /// Focus mask MRC; null = the whole solvent mask.
    #[serde(default)]
    pub focus_mask: Option<PathBuf>,
    /// Initial O-EM learning rate in (0, 1]. Default 0.4.
    #[serde(default = "d_lr_init")]
    pub oem_learning_rate_init: f64,
    /// O-EM learning-rate half-life, % of the O-EM iterations; 0 = constant. Default 50.
    #[serde(
        rename = "oem_learning_rate_halflife_pct",
        alias = "oem_learning_rate_halflife",
        default = "d_lr_halflife"
    )]
    pub oem_learning_rate_halflife_pct: f64,
    /// O-EM batch size per class. Default 1000.
    #[serde(default = "d_oem_batch")]
    pub oem_batch_size: usize,
    /// O-EM passes over the data. Default 2.
    #[serde(default = "d_oem_epochs")]
    pub oem_epochs: usize,
    /// Most F-EM iterations. Default 20.
    #[serde(default = "d_fem_max")]
    pub fem_max_iterations: usize,
    /// Filter each class by its half-map FSC. Default on.
    #[serde(default = "d_true")]
    pub use_fsc_filter: bool,
    /// F-EM stops when fewer than this % of particles change class. Default 2.
    #[serde(
        rename = "convergence_switch_pct",
        alias = "convergence_criterion_pct",
        default = "d_switch_pct"
    )]
    pub convergence_switch_pct: f64,
    /// F-EM also stops when the size-weighted relative RMS change of the class volumes falls
    /// below this; null = off. Default 0.01.
    #[serde(default = "d_rms_threshold")]
    pub rms_density_change_threshold: Option<f64>,
    /// optimal | input | none. Default optimal.
    #[serde(default)]
    pub per_particle_scale: ScaleMode,
    /// One-hot M-step weights (no weighted back-projection); the written posterior stays
    /// soft. Default off.
    #[serde(default)]
    pub force_hard_classification: bool,
    /// Initial class similarity in [0, 1] (1 = every class equally likely). Default 0.5.
    #[serde(default = "d_similarity")]
    pub class_similarity: f64,
    /// Iteration (O-EM first, counted from 0) where similarity starts to fall. Default 0.
    #[serde(default)]
    pub class_similarity_anneal_start: usize,
    /// Iteration where similarity reaches 0; null = the end of the first O-EM epoch.
    #[serde(default)]
    pub class_similarity_anneal_end: Option<usize>,
    /// Switch to hard classification once similarity has annealed to 0. Default off.
    #[serde(default)]
    pub hard_after_anneal: bool,
    /// Hard classification in the first N iterations (O-EM first, counted from 0, then
    /// F-EM), weighted after: the forum's "hard first to let the volumes diverge, then
    /// weighted back-projection". No convergence stop while they run. 0 = off (default).
    #[serde(default)]
    pub hard_first_iterations: usize,
    /// Point group enforced in back-projection: C1, Cn, Dn, T, O, I. Default C1.
    #[serde(default = "d_symmetry")]
    pub symmetry: String,
    /// Number classes by size (largest first) at the end. Default off.
    #[serde(default)]
    pub reorder_classes_by_size: bool,
    /// Write volumes and particles after every F-EM iteration. Default off.
    #[serde(default)]
    pub output_every_fem_iter: bool,
    /// Random seed (initial subsets, O-EM batches). Default 0.
    #[serde(default)]
    pub seed: u64,
    /// auto | cpu | cuda. Default auto.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Memory budget per rank for its pre-processed particles, GiB. A rank whose share does
    /// not fit streams its particles from the file in every pass (in blocks, with
    /// read-ahead) instead of holding them; 0 always streams. Default 4.
    #[serde(default = "d_max_resident_gb")]
    pub max_resident_gb: f64,
}

fn d_max_resident_gb() -> f64 {
    4.0
}

fn d_num_classes() -> usize {
    2
}
fn d_init_particles() -> usize {
    1000
}
fn d_init_lowpass() -> f64 {
    20.0
}
fn d_mask_threshold() -> f64 {
    0.15
}
fn d_mask_dilate() -> f64 {
    6.0
}
fn d_mask_soft() -> f64 {
    12.0
}
fn d_lr_init() -> f64 {
    0.4
}
fn d_lr_halflife() -> f64 {
    50.0
}
fn d_oem_batch() -> usize {
    1000
}
fn d_oem_epochs() -> usize {
    2
}
fn d_fem_max() -> usize {
    20
}
fn d_true() -> bool {
    true
}
fn d_switch_pct() -> f64 {
    2.0
}
fn d_rms_threshold() -> Option<f64> {
    Some(0.01)
}
fn d_similarity() -> f64 {
    0.5
}
fn d_symmetry() -> String {
    "C1".to_string()
}

impl Classify3dConfig {
    /// Every default, with the given paths and filter resolution.
    pub fn with_paths(input: impl Into<PathBuf>, output: impl Into<PathBuf>, res_a: f64) -> Self {
        Classify3dConfig {
            input: input.into(),
            output: output.into(),
            num_classes: d_num_classes(),
            filter_res_a: Some(res_a),
            init_mode: InitMode::Simple,
            initial_volumes: Vec::new(),
            init_particles_per_class: d_init_particles(),
            init_pca_reconstructions: None,
            init_lowpass_a: d_init_lowpass(),
            solvent_mask: None,
            solvent_mask_threshold: d_mask_threshold(),
            solvent_mask_dilate_a: d_mask_dilate(),
            solvent_mask_soft_a: d_mask_soft(),
            focus_mask: None,
            oem_learning_rate_init: d_lr_init(),
            oem_learning_rate_halflife_pct: d_lr_halflife(),
            oem_batch_size: d_oem_batch(),
            oem_epochs: d_oem_epochs(),
            fem_max_iterations: d_fem_max(),
            use_fsc_filter: true,
            convergence_switch_pct: d_switch_pct(),
            rms_density_change_threshold: d_rms_threshold(),
            per_particle_scale: ScaleMode::Optimal,
            force_hard_classification: false,
            class_similarity: d_similarity(),
            class_similarity_anneal_start: 0,
            class_similarity_anneal_end: None,
            hard_after_anneal: false,
            hard_first_iterations: 0,
            symmetry: d_symmetry(),
            reorder_classes_by_size: false,
            output_every_fem_iter: false,
            seed: 0,
            backend: BackendChoice::Auto,
            max_resident_gb: d_max_resident_gb(),
        }
    }

    /// The filter resolution (validated to be set).
    pub fn res_a(&self) -> f64 {
        self.filter_res_a.unwrap_or(f64::NAN)
    }

    /// O-EM batch size in particles: `oem_batch_size × num_classes`, at most `n`.
    pub fn batch_total(&self, n: usize) -> usize {
        (self.oem_batch_size * self.num_classes).clamp(1, n.max(1))
    }

    /// Number of O-EM iterations for `n` particles: epochs × batches per epoch.
    pub fn oem_iterations(&self, n: usize) -> usize {
        self.oem_epochs * (n / self.batch_total(n)).max(1)
    }

    /// O-EM iterations the run does for `n` particles (0 with `oem_epochs: 0`).
    pub fn oem_iterations_planned(&self, n: usize) -> usize {
        if self.oem_epochs == 0 {
            0
        } else {
            self.oem_iterations(n)
        }
    }

    /// Iteration where class similarity reaches 0.
    pub fn anneal_end(&self, n: usize) -> usize {
        self.class_similarity_anneal_end
            .unwrap_or_else(|| (n / self.batch_total(n)).max(1))
            .max(self.class_similarity_anneal_start)
    }

    /// Checks the values against the dataset (known once the input is open).
    pub fn validate_for(&self, path: &Path, box_px: usize, psize_a: f64, n: usize) -> Result<()> {
        let nyquist = 2.0 * psize_a;
        let res = self.res_a();
        if res < nyquist - 1e-9 {
            return Err(Error::config(
                path,
                "filter_res_A",
                format!(
                    "{res} Å is finer than the Nyquist limit {nyquist} Å of the input ({psize_a} Å/pixel)"
                ),
            ));
        }
        if res > box_px as f64 * psize_a / 4.0 {
            return Err(Error::config(
                path,
                "filter_res_A",
                format!(
                    "{res} Å is too coarse for a {box_px}-pixel box at {psize_a} Å/pixel (at most a quarter of the box, {} Å)",
                    box_px as f64 * psize_a / 4.0
                ),
            ));
        }
        let total = self.oem_iterations_planned(n) + self.fem_max_iterations;
        if self.hard_first_iterations >= total {
            return Err(Error::config(
                path,
                "hard_first_iterations",
                format!(
                    "{} would make all {total} iterations of this run hard ({} O-EM + fem_max_iterations {}); lower it or use force_hard_classification",
                    self.hard_first_iterations,
                    self.oem_iterations_planned(n),
                    self.fem_max_iterations
                ),
            ));
        }
        if self.num_classes > n {
            return Err(Error::config(
                path,
                "num_classes",
                format!("{} classes for {n} particles", self.num_classes),
            ));
        }
        Ok(())
    }
}

impl Classify3dConfig {
    /// `num_classes`, `filter_res_A` and the initial volumes (mode, files, particles, low-pass).
    fn validate_classes_and_init(&self, path: &Path) -> Result<()> {
        if self.num_classes == 0 {
            return Err(Error::config(path, "num_classes", "must be at least 1"));
        }
        match self.filter_res_a {
            None => {
                return Err(Error::config(
                    path,
                    "filter_res_A",
                    "must be set: classification runs at this resolution (e.g. 3-6 Å for a ligand, 6-10 Å for a domain motion, >10 Å for a missing domain)",
                ))
            }
            Some(r) => check_range(path, "filter_res_A", r, 1e-3, 1e4)?,
        }
        match self.init_mode {
            InitMode::Input if self.initial_volumes.len() != self.num_classes => {
                return Err(Error::config(
                    path,
                    "initial_volumes",
                    format!(
                        "init_mode input needs one volume per class: {} given for num_classes {}",
                        self.initial_volumes.len(),
                        self.num_classes
                    ),
                ))
            }
            InitMode::Simple | InitMode::Pca if !self.initial_volumes.is_empty() => {
                return Err(Error::config(
                    path,
                    "initial_volumes",
                    "given but init_mode is not input; set init_mode: input to use them",
                ))
            }
            _ => {}
        }
        if self.init_particles_per_class == 0 {
            return Err(Error::config(
                path,
                "init_particles_per_class",
                "must be at least 1",
            ));
        }
        check_range(path, "init_lowpass_A", self.init_lowpass_a, 1e-3, 1e4)?;
        if let Some(b) = self.init_pca_reconstructions {
            if self.init_mode != InitMode::Pca {
                return Err(Error::config(
                    path,
                    "init_pca_reconstructions",
                    "given but init_mode is not pca",
                ));
            }
            if b < self.num_classes || b > 1000 {
                return Err(Error::config(
                    path,
                    "init_pca_reconstructions",
                    format!("{b} is outside [num_classes = {}, 1000]", self.num_classes),
                ));
            }
        }
        Ok(())
    }

    /// The generated solvent mask's threshold, dilation and soft edge.
    fn validate_solvent_mask(&self, path: &Path) -> Result<()> {
        check_range(
            path,
            "solvent_mask_threshold",
            self.solvent_mask_threshold,
            1e-6,
            1.0 - 1e-6,
        )?;
        check_range(
            path,
            "solvent_mask_dilate_A",
            self.solvent_mask_dilate_a,
            0.0,
            1e4,
        )?;
        check_range(
            path,
            "solvent_mask_soft_A",
            self.solvent_mask_soft_a,
            0.0,
            1e4,
        )?;
        Ok(())
    }

    /// O-EM learning rate, batches and epochs, the F-EM iterations and convergence criteria.
    fn validate_em_schedule(&self, path: &Path) -> Result<()> {
        check_learning_rate(
            path,
            self.oem_learning_rate_init,
            "oem_learning_rate_halflife_pct",
            self.oem_learning_rate_halflife_pct,
        )?;
        if self.oem_batch_size == 0 {
            return Err(Error::config(path, "oem_batch_size", "must be at least 1"));
        }
        if self.oem_epochs + self.fem_max_iterations == 0 {
            return Err(Error::config(
                path,
                "fem_max_iterations",
                "oem_epochs + fem_max_iterations must be at least 1",
            ));
        }
        check_range(
            path,
            "convergence_switch_pct",
            self.convergence_switch_pct,
            0.0,
            100.0,
        )?;
        if let Some(t) = self.rms_density_change_threshold {
            check_range(path, "rms_density_change_threshold", t, 0.0, 1e6)?;
        }
        Ok(())
    }

    /// Class similarity and its annealing window; the hard schedules that exclude each other.
    fn validate_similarity(&self, path: &Path) -> Result<()> {
        check_range(path, "class_similarity", self.class_similarity, 0.0, 1.0)?;
        if self.hard_first_iterations > 0 {
            for (on, key) in [
                (self.force_hard_classification, "force_hard_classification"),
                (self.hard_after_anneal, "hard_after_anneal"),
            ] {
                if on {
                    return Err(Error::config(
                        path,
                        "hard_first_iterations",
                        format!("cannot be combined with {key}: true (hard first, then weighted, is a schedule of its own); turn one off"),
                    ));
                }
            }
        }
        if let Some(end) = self.class_similarity_anneal_end {
            if end < self.class_similarity_anneal_start {
                return Err(Error::config(
                    path,
                    "class_similarity_anneal_end",
                    format!(
                        "{end} is before class_similarity_anneal_start ({})",
                        self.class_similarity_anneal_start
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl crate::config::JobConfig for Classify3dConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        self.validate_classes_and_init(path)?;
        check_range(path, "max_resident_gb", self.max_resident_gb, 0.0, 1e6)?;
        self.validate_solvent_mask(path)?;
        self.validate_em_schedule(path)?;
        self.validate_similarity(path)?;
        point_group(&self.symmetry).map_err(|e| Error::config(path, "symmetry", e.to_string()))?;
        if self.output_every_fem_iter && self.reorder_classes_by_size {
            return Err(Error::config(
                path,
                "output_every_fem_iter",
                "cannot be on together with reorder_classes_by_size (class numbers would change at the end); turn one off",
            ));
        }
        Ok(())
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn load(text: &str) -> Result<Classify3dConfig> {
        load_str(text, Path::new("c.yaml"), &[])
    }

    #[test]
    fn defaults() {
        let c = load("input: a.h5\noutput: out\nfilter_res_A: 10\n").unwrap();
        assert_eq!(c, Classify3dConfig::with_paths("a.h5", "out", 10.0));
        assert_eq!(c.num_classes, 2);
        assert_eq!(c.oem_batch_size, 1000);
        assert!(c.use_fsc_filter && !c.force_hard_classification && !c.hard_after_anneal);
        // 20,000 particles, 2 classes: batches of 2,000, 10 per epoch, 2 epochs.
        assert_eq!(c.batch_total(20_000), 2000);
        assert_eq!(c.oem_iterations(20_000), 20);
        assert_eq!(c.anneal_end(20_000), 10);
        // Short name of the half-life accepted too.
        let c =
            load("input: a\noutput: b\nfilter_res_A: 10\noem_learning_rate_halflife: 0\n").unwrap();
        assert_eq!(c.oem_learning_rate_halflife_pct, 0.0);
    }

    #[test]
    fn rejects_bad_combinations() {
        let cases = [
            ("", "filter_res_A"),
            ("filter_res_A: 10\nnum_classes: 0\n", "num_classes"),
            ("filter_res_A: 10\ninit_mode: input\ninitial_volumes: [a.mrc]\n", "initial_volumes"),
            ("filter_res_A: 10\ninitial_volumes: [a.mrc, b.mrc]\n", "initial_volumes"),
            ("filter_res_A: 10\nsymmetry: C0\n", "symmetry"),
            ("filter_res_A: 10\nsymmetry: X7\n", "symmetry"),
            (
                "filter_res_A: 10\noutput_every_fem_iter: true\nreorder_classes_by_size: true\n",
                "output_every_fem_iter",
            ),
            ("filter_res_A: 10\nclass_similarity: 1.5\n", "class_similarity"),
            (
                "filter_res_A: 10\nclass_similarity_anneal_start: 5\nclass_similarity_anneal_end: 2\n",
                "class_similarity_anneal_end",
            ),
            ("filter_res_A: 10\noem_learning_rate_init: 0\n", "oem_learning_rate_init"),
            (
                "filter_res_A: 10\nhard_first_iterations: 2\nforce_hard_classification: true\n",
                "hard_first_iterations",
            ),
            (
                "filter_res_A: 10\nhard_first_iterations: 2\nhard_after_anneal: true\n",
                "hard_after_anneal",
            ),
            ("filter_res_A: 10\nper_particle_scale: best\n", "per_particle_scale"),
            ("filter_res_A: 10\nnum_clases: 3\n", "num_clases"),
        ];
        for (extra, key) in cases {
            let e = load(&format!("input: a\noutput: b\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra:?}: {e}");
        }
        assert!(load(
            "input: a\noutput: b\nfilter_res_A: 10\ninit_mode: input\nnum_classes: 2\ninitial_volumes: [a.mrc, b.mrc]\n"
        )
        .is_ok());
    }

    #[test]
    fn validates_against_the_data() {
        let c = Classify3dConfig::with_paths("a", "b", 10.0);
        let p = Path::new("c.yaml");
        assert!(c.validate_for(p, 128, 2.0, 100).is_ok());
        let e = c.validate_for(p, 128, 6.0, 100).unwrap_err().to_string();
        assert!(e.contains("Nyquist"), "{e}");
        let e = c.validate_for(p, 16, 0.5, 100).unwrap_err().to_string();
        assert!(e.contains("too coarse"), "{e}");
        let e = c.validate_for(p, 128, 2.0, 1).unwrap_err().to_string();
        assert!(e.contains("num_classes"), "{e}");
        // 100 particles: one batch per epoch, 2 O-EM + 20 F-EM iterations.
        let mut h = c.clone();
        h.hard_first_iterations = 21;
        assert!(h.validate_for(p, 128, 2.0, 100).is_ok());
        h.hard_first_iterations = 22;
        let e = h.validate_for(p, 128, 2.0, 100).unwrap_err().to_string();
        assert!(
            e.contains("hard_first_iterations") && e.contains("all 22"),
            "{e}"
        );
    }
}
