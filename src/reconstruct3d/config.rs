//! The `emclass reconstruct3d` job configuration (CryoSPARC's "Heterogeneous Reconstruction
//! Only", the next step after 3D classification): which classes, how particles are weighted,
//! symmetry, per-particle scale and the solvent mask of each class. `configs/reconstruct3d.yaml`
//! documents every key with its default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::check_range;
use crate::error::{Error, Result};
use crate::numerics::symmetry::point_group;

/// How a particle's weight in each class is taken from the classification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// Weight 1 in its assigned class (`alignments3D/class`), 0 elsewhere.
    #[default]
    Hard,
    /// Its probability of each class (`alignments3D/class_probs`).
    Soft,
}

/// Where each particle's scale (contrast relative to the class volume) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleSource {
    /// `alignments3D/alpha`, as 3D classification writes it.
    #[default]
    Input,
    /// 1.0 for every particle.
    None,
}

/// Configuration of `emclass reconstruct3d`. Field names are the YAML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconstruct3dConfig {
    /// Particle dataset (.h5) with `alignments3D/pose` (+ `shift`), the class assignments
    /// and `ctf/*` (usually classify3d's `particles.h5`).
    pub input: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// Input class indices to reconstruct (0-based); null = every class.
    #[serde(default)]
    pub classes: Option<Vec<usize>>,
    /// hard | soft. Default hard.
    #[serde(default)]
    pub weighting: Weighting,
    /// Point group enforced in back-projection: C1, Cn, Dn, T, O, I. Default C1.
    #[serde(default = "d_symmetry")]
    pub symmetry: String,
    /// input | none. Default input.
    #[serde(default)]
    pub per_particle_scale: ScaleSource,
    /// Solvent mask MRC for every class (the particles' box, values in [0, 1]); null = one
    /// generated from each class's map.
    #[serde(default)]
    pub solvent_mask: Option<PathBuf>,
    /// Solvent mask: low-pass of the class map before thresholding, Å. Default 15.
    #[serde(rename = "solvent_mask_lowpass_A", default = "d_mask_lowpass")]
    pub solvent_mask_lowpass_a: f64,
    /// Solvent mask: threshold as a fraction of the low-passed map's maximum. Default 0.15.
    #[serde(default = "d_mask_threshold")]
    pub solvent_mask_threshold: f64,
    /// Solvent mask: dilation, Å. Default 6.
    #[serde(rename = "solvent_mask_dilate_A", default = "d_mask_dilate")]
    pub solvent_mask_dilate_a: f64,
    /// Solvent mask: soft edge width, Å. Default 12.
    #[serde(rename = "solvent_mask_soft_A", default = "d_mask_soft")]
    pub solvent_mask_soft_a: f64,
    /// Memory budget per rank for its pre-processed particles, GiB (0 = always stream).
    /// Default 4.
    #[serde(default = "d_max_resident_gb")]
    pub max_resident_gb: f64,
}

fn d_symmetry() -> String {
    "C1".to_string()
}
fn d_mask_lowpass() -> f64 {
    15.0
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
fn d_max_resident_gb() -> f64 {
    4.0
}

impl Reconstruct3dConfig {
    /// Every default, with the given paths.
    pub fn with_paths(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Reconstruct3dConfig {
            input: input.into(),
            output: output.into(),
            classes: None,
            weighting: Weighting::Hard,
            symmetry: d_symmetry(),
            per_particle_scale: ScaleSource::Input,
            solvent_mask: None,
            solvent_mask_lowpass_a: d_mask_lowpass(),
            solvent_mask_threshold: d_mask_threshold(),
            solvent_mask_dilate_a: d_mask_dilate(),
            solvent_mask_soft_a: d_mask_soft(),
            max_resident_gb: d_max_resident_gb(),
        }
    }

    /// The classes to reconstruct, in the order given, once the input's class count `k` is
    /// known: every class when `classes` is null; an index `≥ k` is an error naming
    /// `classes` (`path` is the config file).
    pub fn selected(&self, path: &Path, k: usize) -> Result<Vec<usize>> {
        let Some(list) = &self.classes else {
            return Ok((0..k).collect());
        };
        if let Some(c) = list.iter().find(|c| **c >= k) {
            return Err(Error::config(
                path,
                "classes",
                format!(
                    "class {c} is out of range: the input has {k} classes (0..={})",
                    k.saturating_sub(1)
                ),
            ));
        }
        Ok(list.clone())
    }
}

impl crate::config::JobConfig for Reconstruct3dConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        if let Some(list) = &self.classes {
            if list.is_empty() {
                return Err(Error::config(
                    path,
                    "classes",
                    "is empty; list the classes to reconstruct, or null for every class",
                ));
            }
            for (i, c) in list.iter().enumerate() {
                if list[..i].contains(c) {
                    return Err(Error::config(
                        path,
                        "classes",
                        format!("class {c} is listed twice"),
                    ));
                }
            }
        }
        point_group(&self.symmetry).map_err(|e| Error::config(path, "symmetry", e.to_string()))?;
        check_range(
            path,
            "solvent_mask_lowpass_A",
            self.solvent_mask_lowpass_a,
            1e-3,
            1e4,
        )?;
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
        check_range(path, "max_resident_gb", self.max_resident_gb, 0.0, 1e6)
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn load(text: &str) -> Result<Reconstruct3dConfig> {
        load_str(text, Path::new("r.yaml"), &[])
    }

    #[test]
    fn defaults() {
        let c = load("input: a.h5\noutput: out\n").unwrap();
        assert_eq!(c, Reconstruct3dConfig::with_paths("a.h5", "out"));
        assert_eq!(c.weighting, Weighting::Hard);
        assert_eq!(c.selected(Path::new("r.yaml"), 3).unwrap(), vec![0, 1, 2]);
        let c = load("input: a\noutput: b\nclasses: [2, 0]\nweighting: soft\n").unwrap();
        assert_eq!(c.weighting, Weighting::Soft);
        assert_eq!(c.selected(Path::new("r.yaml"), 3).unwrap(), vec![2, 0]);
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases = [
            ("classes: []\n", "classes: is empty"),
            ("classes: [1, 1]\n", "classes: class 1 is listed twice"),
            ("classes: [-1]\n", "classes"),
            ("weighting: fuzzy\n", "weighting"),
            ("symmetry: Q3\n", "symmetry"),
            ("per_particle_scale: optimal\n", "per_particle_scale"),
            ("solvent_mask_threshold: 1.5\n", "solvent_mask_threshold"),
            ("solvent_mask_lowpass_A: 0\n", "solvent_mask_lowpass_A"),
            ("solvent_mask_dilate_A: -1\n", "solvent_mask_dilate_A"),
            ("max_resident_gb: -2\n", "max_resident_gb"),
            ("num_classes: 3\n", "num_classes: unknown field"),
        ];
        for (extra, needle) in cases {
            let e = load(&format!("input: a\noutput: b\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("r.yaml: "), "{extra:?}: {e}");
            assert!(e.contains(needle), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "{extra:?}: {e}");
        }
    }

    #[test]
    fn a_class_beyond_the_input_is_refused() {
        let c = load("input: a\noutput: b\nclasses: [0, 4]\n").unwrap();
        let e = c.selected(Path::new("r.yaml"), 3).unwrap_err().to_string();
        assert_eq!(
            e,
            "r.yaml: classes: class 4 is out of range: the input has 3 classes (0..=2)"
        );
    }
}
