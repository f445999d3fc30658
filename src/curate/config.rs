//! Configurations of the curation jobs `emclass subset`, `select2d` and `rebalance2d`
//! (`configs/subset.yaml`, `select2d.yaml`, `rebalance2d.yaml` document each key and its
//! default), and the checks after which the jobs trust the values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{check_range, JobConfig};
use crate::curate::thresholds::check_thresholds;
use crate::error::{Error, Result};

/// What `emclass subset` cuts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsetMode {
    /// The probability of each particle's best 2D class.
    #[serde(rename = "class_probability_2d")]
    ClassProbability2d,
    /// The summed probability of the listed 3D classes.
    #[serde(rename = "class_probability_3d")]
    ClassProbability3d,
    /// Any numeric per-particle field.
    Statistic,
}

/// How the statistic is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// At the given thresholds.
    Threshold,
    /// Into the components of a Gaussian mixture.
    Gmm,
}

/// Which side of a single threshold is selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Values ≥ the threshold.
    Above,
    /// Values < the threshold.
    Below,
}

/// Configuration of `emclass subset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    #[serde(default = "d_mode")]
    pub mode: SubsetMode,
    /// class_probability_3d: the good 3D classes.
    #[serde(default)]
    pub classes: Vec<usize>,
    /// statistic: the field.
    #[serde(default)]
    pub field: Option<String>,
    /// statistic: the column of a multi-column field.
    #[serde(default)]
    pub component: Option<usize>,
    #[serde(default = "d_method")]
    pub method: SplitMethod,
    /// threshold: one or more strictly increasing thresholds; null = [0.9] for the class
    /// probability modes (required for `statistic`). See [`SubsetConfig::thresholds`].
    #[serde(default)]
    pub thresholds: Option<Vec<f64>>,
    /// threshold with one value: which side is `selected.h5`.
    #[serde(default = "d_keep")]
    pub keep: Keep,
    #[serde(default = "d_components")]
    pub gmm_components: usize,
    #[serde(default = "d_gmm_iter")]
    pub gmm_max_iterations: usize,
    #[serde(default = "d_gmm_tol")]
    pub gmm_tolerance: f64,
    #[serde(default = "d_bins")]
    pub histogram_bins: usize,
}

fn d_mode() -> SubsetMode {
    SubsetMode::ClassProbability2d
}
fn d_method() -> SplitMethod {
    SplitMethod::Threshold
}
fn d_keep() -> Keep {
    Keep::Above
}
fn d_components() -> usize {
    2
}
fn d_gmm_iter() -> usize {
    500
}
fn d_gmm_tol() -> f64 {
    1e-8
}
fn d_bins() -> usize {
    50
}

impl SubsetConfig {
    /// The thresholds in use: as configured, or 0.9 (the seed's example) when unset.
    pub fn thresholds(&self) -> Vec<f64> {
        self.thresholds.clone().unwrap_or_else(|| vec![0.9])
    }
}

impl JobConfig for SubsetConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let only = |key: &str, set: bool, mode: &str| -> Result<()> {
            if set {
                return Err(Error::config(
                    path,
                    key,
                    format!("is only used with {mode}"),
                ));
            }
            Ok(())
        };
        match self.mode {
            SubsetMode::ClassProbability3d if self.classes.is_empty() => {
                return Err(Error::config(
                    path,
                    "classes",
                    "class_probability_3d needs the good 3D classes, e.g. classes: [0, 2]",
                ))
            }
            SubsetMode::ClassProbability3d => {}
            _ => only(
                "classes",
                !self.classes.is_empty(),
                "mode: class_probability_3d",
            )?,
        }
        match self.mode {
            SubsetMode::Statistic if self.field.as_deref().unwrap_or("").is_empty() => {
                return Err(Error::config(
                    path,
                    "field",
                    "mode statistic needs a per-particle field, e.g. field: ctf/df1_A",
                ))
            }
            SubsetMode::Statistic => {}
            _ => {
                only("field", self.field.is_some(), "mode: statistic")?;
                only("component", self.component.is_some(), "mode: statistic")?;
            }
        }
        match self.method {
            SplitMethod::Threshold => {
                if self.mode == SubsetMode::Statistic && self.thresholds.is_none() {
                    return Err(Error::config(
                        path,
                        "thresholds",
                        "mode statistic with method threshold needs thresholds, e.g. thresholds: [15000]",
                    ));
                }
                let t = self.thresholds();
                check_thresholds(&t, path, "thresholds")?;
                if self.mode != SubsetMode::Statistic {
                    for &t in &t {
                        check_range(path, "thresholds", t, 0.0, 1.0)?;
                    }
                }
            }
            SplitMethod::Gmm => {
                only("thresholds", self.thresholds.is_some(), "method: threshold")?;
                if !(1..=20).contains(&self.gmm_components) {
                    return Err(Error::config(path, "gmm_components", "must be 1 to 20"));
                }
                if self.gmm_max_iterations == 0 {
                    return Err(Error::config(
                        path,
                        "gmm_max_iterations",
                        "must be at least 1",
                    ));
                }
                check_range(path, "gmm_tolerance", self.gmm_tolerance, 0.0, 1.0)?;
            }
        }
        if !(1..=1000).contains(&self.histogram_bins) {
            return Err(Error::config(path, "histogram_bins", "must be 1 to 1000"));
        }
        Ok(())
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

/// Configuration of `emclass select2d`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select2dConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The class averages; null = `classes.mrcs` next to the input, if there is one.
    #[serde(default)]
    pub classes_file: Option<PathBuf>,
    #[serde(default)]
    pub keep: Vec<usize>,
    #[serde(default)]
    pub drop: Vec<usize>,
    #[serde(default)]
    pub min_class_size: usize,
    #[serde(rename = "max_frc_res_A", default)]
    pub max_frc_res_a: Option<f64>,
}

impl JobConfig for Select2dConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        if !self.keep.is_empty() && !self.drop.is_empty() {
            return Err(Error::config(
                path,
                "drop",
                "give either keep or drop, not both",
            ));
        }
        if let Some(r) = self.max_frc_res_a {
            check_range(path, "max_frc_res_A", r, 1e-3, 1e5)?;
        }
        Ok(())
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

/// Configuration of `emclass rebalance2d`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rebalance2dConfig {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The class averages; null = `classes.mrcs` next to the input.
    #[serde(default)]
    pub classes_file: Option<PathBuf>,
    #[serde(default = "d_true")]
    pub do_superclassification: bool,
    #[serde(default = "d_superclasses")]
    pub num_superclasses: usize,
    #[serde(default)]
    pub rebalance_factor: f64,
    #[serde(default)]
    pub max_superclass_size: Option<usize>,
    #[serde(rename = "angle_step_deg", default = "d_angle_step")]
    pub angle_step_deg: f64,
    #[serde(rename = "max_shift_A", default)]
    pub max_shift_a: Option<f64>,
    #[serde(default = "d_working_box")]
    pub working_box_px: usize,
    #[serde(default)]
    pub seed: u64,
}

fn d_true() -> bool {
    true
}
fn d_superclasses() -> usize {
    10
}
fn d_angle_step() -> f64 {
    5.0
}
fn d_working_box() -> usize {
    64
}

impl JobConfig for Rebalance2dConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        if self.num_superclasses == 0 {
            return Err(Error::config(
                path,
                "num_superclasses",
                "must be at least 1",
            ));
        }
        check_range(path, "rebalance_factor", self.rebalance_factor, 0.0, 1.0)?;
        if self.max_superclass_size == Some(0) {
            return Err(Error::config(
                path,
                "max_superclass_size",
                "must be at least 1 (or null)",
            ));
        }
        check_range(path, "angle_step_deg", self.angle_step_deg, 0.1, 90.0)?;
        if let Some(s) = self.max_shift_a {
            check_range(path, "max_shift_A", s, 0.0, 1e4)?;
        }
        if !(16..=512).contains(&self.working_box_px) || !self.working_box_px.is_multiple_of(2) {
            return Err(Error::config(
                path,
                "working_box_px",
                "must be an even number from 16 to 512",
            ));
        }
        Ok(())
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

/// The class-average file of a job: `configured`, or `classes.mrcs` next to `input`.
pub fn classes_file_for(input: &Path, configured: Option<&Path>) -> PathBuf {
    configured.map(Path::to_path_buf).unwrap_or_else(|| {
        input
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("classes.mrcs")
    })
}
