//! The `emclass classify2d` job configuration: CryoSPARC's 2D classification parameters in
//! snake_case with CryoSPARC's defaults (`configs/classify2d.yaml` documents each one), and
//! the validation after which the engine trusts the values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backend::BackendChoice;
use crate::config::{check_learning_rate, check_range};
use crate::error::{Error, Result};

/// Configuration of `emclass classify2d`. Field names are the YAML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classify2dConfig {
    /// Input particle dataset (.h5) with images and, when `ctf_correct`, `ctf/*` fields.
    pub input: PathBuf,
    /// Output folder.
    pub output: PathBuf,
    /// Number of 2D classes. Default 50.
    #[serde(default = "d_num_classes")]
    pub num_classes: usize,
    /// Finest resolution used anywhere (alignment and averaging), Å. Default 6.
    #[serde(rename = "max_res_A", default = "d_max_res")]
    pub max_res_a: f64,
    /// Finest resolution used for alignment, Å; null = `max_res_A`. Must not be finer than
    /// `max_res_A`.
    #[serde(rename = "max_align_res_A", default)]
    pub max_align_res_a: Option<f64>,
    /// Coarsest resolution used for alignment (high-pass), Å; null = off.
    #[serde(rename = "min_align_res_A", default)]
    pub min_align_res_a: Option<f64>,
    /// Initial classification uncertainty factor. Default 2.
    #[serde(default = "d_icuf")]
    pub icuf: f64,
    /// Inner diameter of the class-average circular mask, Å; null = 85% of the box.
    #[serde(rename = "mask_diameter_A", default)]
    pub mask_diameter_a: Option<f64>,
    /// Outer diameter of the soft edge, Å; null = 1.2 × the inner diameter (at most the box).
    #[serde(rename = "mask_diameter_outer_A", default)]
    pub mask_diameter_outer_a: Option<f64>,
    /// Re-centre class averages on their centre of mass each iteration. Default on.
    #[serde(default = "d_true")]
    pub recenter: bool,
    /// Pixels above this fraction of the class maximum define the centre of mass. Default 0.2.
    #[serde(default = "d_recenter_threshold")]
    pub recenter_threshold: f64,
    /// Rotate each class so its long axis is vertical (filaments). Default off.
    #[serde(default)]
    pub align_filaments_vertical: bool,
    /// Remove duplicate particles at the end (needs `location/*`). Default off.
    #[serde(default)]
    pub remove_duplicates: bool,
    /// Duplicates: picks closer than this after applying the shifts, Å. Default 20.
    #[serde(rename = "min_separation_A", default = "d_min_separation")]
    pub min_separation_a: f64,
    /// Average each particle at its best pose (on) or over all poses weighted by their
    /// probability (off). Default on.
    #[serde(default = "d_true")]
    pub force_max: bool,
    /// Online-EM iterations on random batches. Default 20.
    #[serde(default = "d_online_em_iterations")]
    pub online_em_iterations: usize,
    /// Online-EM batch size per class. Default 100.
    #[serde(default = "d_batch_size_per_class")]
    pub batch_size_per_class: usize,
    /// Online-EM learning rate at the first batch, η(0) in (0, 1]. Default 1.
    #[serde(default = "d_lr_init")]
    pub oem_learning_rate_init: f64,
    /// Online-EM learning-rate half-life, iterations: η(t) = η(0)/(1 + t/h); 0 = constant
    /// η(0). Default 2.
    #[serde(default = "d_lr_halflife")]
    pub oem_learning_rate_halflife: f64,
    /// Full iterations over all particles after online EM, at most (see
    /// `convergence_switch_pct`). Default 10 (CryoSPARC's is 1; issue 18's measurements).
    #[serde(default = "d_full_iterations")]
    pub full_iterations: usize,
    /// Stop the full iterations early when fewer than this percentage of particles changed
    /// their best class since the previous full iteration; null = run all of them. Default 1.
    #[serde(default = "d_convergence_switch_pct")]
    pub convergence_switch_pct: Option<f64>,
    /// Clamp class-average pixels to ≥ 0. Default off.
    #[serde(default)]
    pub nonnegative: bool,
    /// Zero the solvent (outside the mask) and smooth class averages. Default off.
    #[serde(default)]
    pub clamp_solvent: bool,
    /// Correct for the CTF. Off: amplitude contrast 1, defocus 0, Cs 0 are written to the
    /// output particles (as CryoSPARC does). Default on.
    #[serde(default = "d_true")]
    pub ctf_correct: bool,
    /// The final iteration assigns each particle wholly to its best class (M-step weights);
    /// the written posterior stays soft. Default off.
    #[serde(default)]
    pub final_hard_classification: bool,
    /// Radius of the translational search around the box centre, in input pixels.
    /// Default 5 (RELION's offset range).
    #[serde(default = "d_max_shift_px")]
    pub max_shift_px: f64,
    /// Random seed (initial classes, online-EM batches). Default 0.
    #[serde(default)]
    pub seed: u64,
    /// auto | cpu | cuda. Default auto.
    #[serde(default)]
    pub backend: BackendChoice,
    /// On the CUDA backend, let cuBLAS use TF32 tensor cores for the E-step products
    /// (inputs rounded to a 10-bit mantissa: faster, less exact). Default false (FP32).
    /// Ignored on the CPU.
    #[serde(default)]
    pub gpu_tf32: bool,
    /// Memory budget per rank for its pre-processed particles, GiB. A rank whose share does
    /// not fit streams its particles from the file every iteration (in blocks, with
    /// read-ahead) instead of holding them; 0 always streams. Default 4.
    #[serde(default = "d_max_resident_gb")]
    pub max_resident_gb: f64,
}

fn d_max_resident_gb() -> f64 {
    4.0
}

fn d_num_classes() -> usize {
    50
}
fn d_max_res() -> f64 {
    6.0
}
fn d_icuf() -> f64 {
    2.0
}
fn d_true() -> bool {
    true
}
fn d_recenter_threshold() -> f64 {
    0.2
}
fn d_min_separation() -> f64 {
    20.0
}
fn d_online_em_iterations() -> usize {
    20
}
fn d_batch_size_per_class() -> usize {
    100
}
fn d_lr_init() -> f64 {
    1.0
}
fn d_lr_halflife() -> f64 {
    2.0
}
fn d_convergence_switch_pct() -> Option<f64> {
    Some(1.0)
}
fn d_full_iterations() -> usize {
    10
}
fn d_max_shift_px() -> f64 {
    5.0
}

impl Classify2dConfig {
    /// Every default, with the given input and output.
    pub fn with_paths(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Classify2dConfig {
            input: input.into(),
            output: output.into(),
            num_classes: d_num_classes(),
            max_res_a: d_max_res(),
            max_align_res_a: None,
            min_align_res_a: None,
            icuf: d_icuf(),
            mask_diameter_a: None,
            mask_diameter_outer_a: None,
            recenter: true,
            recenter_threshold: d_recenter_threshold(),
            align_filaments_vertical: false,
            remove_duplicates: false,
            min_separation_a: d_min_separation(),
            force_max: true,
            online_em_iterations: d_online_em_iterations(),
            batch_size_per_class: d_batch_size_per_class(),
            oem_learning_rate_init: d_lr_init(),
            oem_learning_rate_halflife: d_lr_halflife(),
            full_iterations: d_full_iterations(),
            convergence_switch_pct: d_convergence_switch_pct(),
            nonnegative: false,
            clamp_solvent: false,
            ctf_correct: true,
            final_hard_classification: false,
            max_shift_px: d_max_shift_px(),
            seed: 0,
            backend: BackendChoice::Auto,
            gpu_tf32: false,
            max_resident_gb: d_max_resident_gb(),
        }
    }

    /// The alignment limit, Å (`max_align_res_A`, or `max_res_A` when unset).
    pub fn align_res_a(&self) -> f64 {
        self.max_align_res_a.unwrap_or(self.max_res_a)
    }

    /// Total iterations: online-EM then full.
    pub fn total_iterations(&self) -> usize {
        self.online_em_iterations + self.full_iterations
    }

    /// Checks the values against the dataset's box and pixel size (known only once the
    /// input is open): resolutions not finer than Nyquist, masks inside the box.
    pub fn validate_for(&self, path: &Path, box_px: usize, psize_a: f64) -> Result<()> {
        let nyquist = 2.0 * psize_a;
        let side = box_px as f64 * psize_a;
        for (key, v) in [
            ("max_res_A", self.max_res_a),
            ("max_align_res_A", self.align_res_a()),
        ] {
            if v < nyquist - 1e-9 {
                return Err(Error::config(
                    path,
                    key,
                    format!(
                        "{v} Å is finer than the Nyquist limit {nyquist} Å of the input ({psize_a} Å/pixel)"
                    ),
                ));
            }
        }
        if let Some(lo) = self.min_align_res_a {
            if lo > side {
                return Err(Error::config(
                    path,
                    "min_align_res_A",
                    format!("{lo} Å is coarser than the box ({side} Å): nothing would be aligned"),
                ));
            }
        }
        if let Some(d) = self.mask_diameter_a {
            if d > side {
                return Err(Error::config(
                    path,
                    "mask_diameter_A",
                    format!("{d} Å is larger than the box ({side} Å)"),
                ));
            }
        }
        if self.max_shift_px > box_px as f64 / 4.0 {
            return Err(Error::config(
                path,
                "max_shift_px",
                format!(
                    "{} is more than a quarter of the box ({box_px} pixels)",
                    self.max_shift_px
                ),
            ));
        }
        Ok(())
    }
}

impl crate::config::JobConfig for Classify2dConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        if self.num_classes == 0 {
            return Err(Error::config(path, "num_classes", "must be at least 1"));
        }
        if let Some(p) = self.convergence_switch_pct {
            check_range(path, "convergence_switch_pct", p, 0.0, 100.0)?;
        }
        check_learning_rate(
            path,
            self.oem_learning_rate_init,
            "oem_learning_rate_halflife",
            self.oem_learning_rate_halflife,
        )?;
        check_range(path, "max_res_A", self.max_res_a, 1e-3, 1e4)?;
        if let Some(a) = self.max_align_res_a {
            check_range(path, "max_align_res_A", a, 1e-3, 1e4)?;
            if a < self.max_res_a {
                return Err(Error::config(
                    path,
                    "max_align_res_A",
                    format!(
                        "{a} Å is finer than max_res_A ({} Å); it must be the same or a lower resolution",
                        self.max_res_a
                    ),
                ));
            }
        }
        if let Some(lo) = self.min_align_res_a {
            check_range(path, "min_align_res_A", lo, 1e-3, 1e5)?;
            if lo <= self.align_res_a() {
                return Err(Error::config(
                    path,
                    "min_align_res_A",
                    format!(
                        "{lo} Å must be coarser than the alignment limit {} Å",
                        self.align_res_a()
                    ),
                ));
            }
        }
        check_range(path, "icuf", self.icuf, 1e-6, 1e6)?;
        if let Some(d) = self.mask_diameter_a {
            check_range(path, "mask_diameter_A", d, 1e-3, 1e6)?;
        }
        if let Some(o) = self.mask_diameter_outer_a {
            check_range(path, "mask_diameter_outer_A", o, 1e-3, 1e6)?;
            if let Some(d) = self.mask_diameter_a {
                if o < d {
                    return Err(Error::config(
                        path,
                        "mask_diameter_outer_A",
                        format!("{o} Å is smaller than mask_diameter_A ({d} Å)"),
                    ));
                }
            }
        }
        check_range(
            path,
            "recenter_threshold",
            self.recenter_threshold,
            0.0,
            1.0,
        )?;
        check_range(path, "min_separation_A", self.min_separation_a, 0.0, 1e6)?;
        if self.online_em_iterations + self.full_iterations == 0 {
            return Err(Error::config(
                path,
                "full_iterations",
                "online_em_iterations + full_iterations must be at least 1",
            ));
        }
        if self.batch_size_per_class == 0 {
            return Err(Error::config(
                path,
                "batch_size_per_class",
                "must be at least 1",
            ));
        }
        check_range(path, "max_shift_px", self.max_shift_px, 0.0, 1e4)?;
        check_range(path, "max_resident_gb", self.max_resident_gb, 0.0, 1e6)?;
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

    fn load(text: &str) -> Result<Classify2dConfig> {
        load_str(text, Path::new("c.yaml"), &[])
    }

    #[test]
    fn defaults_are_cryosparcs() {
        let c = load("input: a.h5\noutput: out\n").unwrap();
        assert_eq!(c, Classify2dConfig::with_paths("a.h5", "out"));
        assert_eq!(c.num_classes, 50);
        assert_eq!(c.align_res_a(), 6.0);
        assert!(c.force_max && c.recenter && c.ctf_correct);
        assert_eq!(
            (
                c.online_em_iterations,
                c.batch_size_per_class,
                c.full_iterations
            ),
            // full_iterations: 10, not CryoSPARC's 1 (issue 18, docs/ALGORITHMS.md)
            (20, 100, 10)
        );
    }

    #[test]
    fn rejects_align_res_finer_than_max_res() {
        let e = load("input: a\noutput: b\nmax_res_A: 8\nmax_align_res_A: 6\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_align_res_A") && e.contains("finer than max_res_A"),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let e = load("input: a\noutput: b\nnum_clases: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_clases"), "{e}");
        let e = load("input: a\noutput: b\nnum_classes: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_classes"), "{e}");
        let e = load("input: a\noutput: b\nmin_align_res_A: 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_align_res_A"), "{e}");
        let e = load("input: a\noutput: b\nmask_diameter_A: 100\nmask_diameter_outer_A: 90\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mask_diameter_outer_A"), "{e}");
    }

    #[test]
    fn validates_against_the_data() {
        let c = Classify2dConfig::with_paths("a", "b");
        let p = Path::new("c.yaml");
        assert!(c.validate_for(p, 128, 2.0).is_ok());
        let e = c.validate_for(p, 128, 4.0).unwrap_err().to_string();
        assert!(e.contains("Nyquist"), "{e}");
        let e = c.validate_for(p, 16, 1.0).unwrap_err().to_string();
        assert!(e.contains("max_shift_px"), "{e}");
    }
}
