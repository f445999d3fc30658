//! The `emclass simulate` job configuration: every field with its default, and the one
//! validation step after which the generator trusts the values. The documented defaults are
//! the ones in `configs/simulate_views2d.yaml` / `configs/simulate_hetero3d.yaml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::ImageDtype;
use crate::error::{Error, Result};

/// What the synthetic dataset contains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimMode {
    /// `num_views` distinct projection directions of one object, random in-plane angles and
    /// shifts: ground truth for 2D classification (`gt/view`).
    #[default]
    Views2d,
    /// `num_states` volumes differing by a domain, uniformly random 3D poses (given in
    /// `alignments3D/pose`): ground truth for 3D classification (`gt/state`).
    Hetero3d,
}

/// Stored image precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimDtype {
    #[default]
    F32,
    F16,
}

impl From<SimDtype> for ImageDtype {
    fn from(d: SimDtype) -> ImageDtype {
        match d {
            SimDtype::F32 => ImageDtype::F32,
            SimDtype::F16 => ImageDtype::F16,
        }
    }
}

/// Configuration of `emclass simulate`. Field names are the YAML keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Output folder (required). The job writes `particles.h5`, `ground_truth.csv` and
    /// `volumes/*.mrc` into it.
    pub output: PathBuf,
    /// `views2d` (default) or `hetero3d`.
    #[serde(default)]
    pub mode: SimMode,
    /// Number of particle images, duplicates and junk included. Default 20000.
    #[serde(default = "d_num_particles")]
    pub num_particles: usize,
    /// Image side in pixels (even). Default 128.
    #[serde(default = "d_box_px")]
    pub box_px: usize,
    /// Pixel size in Å. Default 2.0.
    #[serde(rename = "psize_A", default = "d_psize")]
    pub psize_a: f32,
    /// Diameter of the synthetic particle in Å; null (default) = 0.6 · box_px · psize_A.
    /// Also the diameter of the circular mask in which the SNR is defined.
    #[serde(rename = "particle_diameter_A", default)]
    pub particle_diameter_a: Option<f32>,
    /// Signal-to-noise ratio, default 0.05: the variance of the noise-free, CTF-modulated
    /// particle image over the pixels inside a centred circle of diameter
    /// `particle_diameter_A`, divided by the variance of the added white Gaussian noise
    /// (which is 1), averaged over the particles of the dataset.
    #[serde(default = "d_snr")]
    pub snr: f32,
    /// Random seed; the same seed gives the same dataset, whatever the thread count or
    /// `batch_size`. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Stored image precision, `f32` (default) or `f16`.
    #[serde(default)]
    pub dtype: SimDtype,
    /// HDF5 gzip level 1-9 for the images, or null (default) for no compression.
    #[serde(default)]
    pub gzip: Option<u8>,
    /// Particles generated and written per batch (memory holds one batch of images).
    /// Default 1024.
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,

    /// views2d: number of distinct viewing directions. Default 6.
    #[serde(default = "d_num_views")]
    pub num_views: usize,
    /// views2d: relative populations of the views (`num_views` non-negative numbers);
    /// null (default) = uniform.
    #[serde(default)]
    pub view_weights: Option<Vec<f32>>,

    /// hetero3d: number of 3D states. Default 2.
    #[serde(default = "d_num_states")]
    pub num_states: usize,
    /// hetero3d: relative populations of the states; null (default) = uniform.
    #[serde(default)]
    pub state_weights: Option<Vec<f32>>,
    /// hetero3d: mass of the flexible domain as a fraction of the state-0 mass. State 0 has
    /// every domain; state s ≥ 1 lacks domain s. Default 0.10.
    #[serde(default = "d_domain_mass_fraction")]
    pub domain_mass_fraction: f32,

    /// Fraction of particles that are junk (no consistent structure, same signal power;
    /// `gt/is_junk` = 1, `gt/view` / `gt/state` = −1). Default 0.15.
    #[serde(default = "d_junk_fraction")]
    pub junk_fraction: f32,
    /// Fraction of particles that are duplicates: the same particle (same projection, pose
    /// and CTF) picked again on the same micrograph within `duplicate_max_offset_A`, with
    /// its own noise. Default 0.05 (at most 0.5).
    #[serde(default = "d_duplicate_fraction")]
    pub duplicate_fraction: f32,
    /// Largest distance in Å between a duplicate pick and its original. Default 8.0.
    #[serde(rename = "duplicate_max_offset_A", default = "d_duplicate_max_offset")]
    pub duplicate_max_offset_a: f32,
    /// Particle centres are displaced from the box centre by a shift drawn uniformly in a
    /// disc of this radius (pixels). Default 4.0.
    #[serde(default = "d_max_shift_px")]
    pub max_shift_px: f32,
    /// Number of Gaussian blobs making up the synthetic object. Default 40.
    #[serde(default = "d_phantom_blobs")]
    pub phantom_blobs: usize,

    /// Apply a CTF (default true). Without it no `ctf/*` fields are written.
    #[serde(default = "d_true")]
    pub ctf: bool,
    /// Acceleration voltage, kV. Default 300.
    #[serde(default = "d_accel_kv")]
    pub accel_kv: f32,
    /// Spherical aberration, mm. Default 2.7.
    #[serde(default = "d_cs_mm")]
    pub cs_mm: f32,
    /// Amplitude contrast. Default 0.1.
    #[serde(default = "d_amp_contrast")]
    pub amp_contrast: f32,
    /// Micrograph mean defocus is uniform in [defocus_min_A, defocus_max_A] (Å, underfocus
    /// positive). Defaults 8000 and 30000.
    #[serde(rename = "defocus_min_A", default = "d_defocus_min")]
    pub defocus_min_a: f32,
    #[serde(rename = "defocus_max_A", default = "d_defocus_max")]
    pub defocus_max_a: f32,
    /// Astigmatism df1 − df2 is uniform in [0, astigmatism_max_A] per micrograph, at a
    /// uniform random angle. Default 500.
    #[serde(rename = "astigmatism_max_A", default = "d_astigmatism_max")]
    pub astigmatism_max_a: f32,
    /// Standard deviation (Å) of a particle's defocus around its micrograph's (height in
    /// the ice). Default 100.
    #[serde(rename = "defocus_spread_A", default = "d_defocus_spread")]
    pub defocus_spread_a: f32,
    /// CTF envelope B-factor in Å² (`ctf/bfactor`). Default 0.
    #[serde(rename = "bfactor_A2", default)]
    pub bfactor_a2: f32,

    /// Particles picked per (virtual) micrograph. Default 200.
    #[serde(default = "d_particles_per_micrograph")]
    pub particles_per_micrograph: usize,
    /// Micrograph shape in pixels [ny, nx] (same pixel size as the particles).
    /// Default [4096, 4096].
    #[serde(default = "d_micrograph_shape")]
    pub micrograph_shape_px: [usize; 2],
}

fn d_num_particles() -> usize {
    20000
}
fn d_box_px() -> usize {
    128
}
fn d_psize() -> f32 {
    2.0
}
fn d_snr() -> f32 {
    0.05
}
fn d_batch_size() -> usize {
    1024
}
fn d_num_views() -> usize {
    6
}
fn d_num_states() -> usize {
    2
}
fn d_domain_mass_fraction() -> f32 {
    0.10
}
fn d_junk_fraction() -> f32 {
    0.15
}
fn d_duplicate_fraction() -> f32 {
    0.05
}
fn d_duplicate_max_offset() -> f32 {
    8.0
}
fn d_max_shift_px() -> f32 {
    4.0
}
fn d_phantom_blobs() -> usize {
    40
}
fn d_true() -> bool {
    true
}
fn d_accel_kv() -> f32 {
    300.0
}
fn d_cs_mm() -> f32 {
    2.7
}
fn d_amp_contrast() -> f32 {
    0.1
}
fn d_defocus_min() -> f32 {
    8000.0
}
fn d_defocus_max() -> f32 {
    30000.0
}
fn d_astigmatism_max() -> f32 {
    500.0
}
fn d_defocus_spread() -> f32 {
    100.0
}
fn d_particles_per_micrograph() -> usize {
    200
}
fn d_micrograph_shape() -> [usize; 2] {
    [4096, 4096]
}

impl SimulateConfig {
    /// A configuration with every default and the given output folder.
    pub fn with_output(output: impl Into<PathBuf>) -> SimulateConfig {
        SimulateConfig {
            output: output.into(),
            mode: SimMode::default(),
            num_particles: d_num_particles(),
            box_px: d_box_px(),
            psize_a: d_psize(),
            particle_diameter_a: None,
            snr: d_snr(),
            seed: 0,
            dtype: SimDtype::default(),
            gzip: None,
            batch_size: d_batch_size(),
            num_views: d_num_views(),
            view_weights: None,
            num_states: d_num_states(),
            state_weights: None,
            domain_mass_fraction: d_domain_mass_fraction(),
            junk_fraction: d_junk_fraction(),
            duplicate_fraction: d_duplicate_fraction(),
            duplicate_max_offset_a: d_duplicate_max_offset(),
            max_shift_px: d_max_shift_px(),
            phantom_blobs: d_phantom_blobs(),
            ctf: true,
            accel_kv: d_accel_kv(),
            cs_mm: d_cs_mm(),
            amp_contrast: d_amp_contrast(),
            defocus_min_a: d_defocus_min(),
            defocus_max_a: d_defocus_max(),
            astigmatism_max_a: d_astigmatism_max(),
            defocus_spread_a: d_defocus_spread(),
            bfactor_a2: 0.0,
            particles_per_micrograph: d_particles_per_micrograph(),
            micrograph_shape_px: d_micrograph_shape(),
        }
    }

    /// Parses YAML text read from `path` (used in error messages) and validates it.
    pub fn from_yaml(text: &str, path: &Path) -> Result<SimulateConfig> {
        crate::config::load_str(text, path, &[])
    }

    /// Particle diameter in Å (the configured one or 0.6 · box · psize).
    pub fn particle_diameter(&self) -> f64 {
        match self.particle_diameter_a {
            Some(d) => d as f64,
            None => 0.6 * self.box_px as f64 * self.psize_a as f64,
        }
    }

    /// Relative class populations, normalised to sum 1 (views or states by mode).
    pub fn class_weights(&self) -> Vec<f64> {
        let (n, w) = match self.mode {
            SimMode::Views2d => (self.num_views, &self.view_weights),
            SimMode::Hetero3d => (self.num_states, &self.state_weights),
        };
        let raw: Vec<f64> = match w {
            Some(w) => w.iter().map(|&x| x as f64).collect(),
            None => vec![1.0; n],
        };
        let s: f64 = raw.iter().sum();
        raw.iter().map(|x| x / s).collect()
    }

    /// Number of classes of the mode (views or states).
    pub fn num_classes(&self) -> usize {
        match self.mode {
            SimMode::Views2d => self.num_views,
            SimMode::Hetero3d => self.num_states,
        }
    }

    /// Checks every value; errors name `path` (the config file) and the key to change.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(path, key, msg));
        let finite_pos = |x: f32| x.is_finite() && x > 0.0;
        if self.output.as_os_str().is_empty() {
            return bad("output", "must name the output folder".into());
        }
        if self.num_particles == 0 || self.num_particles > u32::MAX as usize {
            return bad(
                "num_particles",
                format!("{} is not in 1..=4294967295", self.num_particles),
            );
        }
        if self.box_px < 16 || self.box_px > 1024 || !self.box_px.is_multiple_of(2) {
            return bad(
                "box_px",
                format!("{} must be an even number in 16..=1024", self.box_px),
            );
        }
        if !finite_pos(self.psize_a) {
            return bad(
                "psize_A",
                format!("{} must be a positive number of Å", self.psize_a),
            );
        }
        let box_a = self.box_px as f32 * self.psize_a;
        if let Some(d) = self.particle_diameter_a {
            if !finite_pos(d) || d > 0.9 * box_a {
                return bad(
                    "particle_diameter_A",
                    format!(
                        "{d} must be positive and at most 0.9 × the box ({:.1} Å)",
                        0.9 * box_a
                    ),
                );
            }
            if d / self.psize_a < 8.0 {
                return bad(
                    "particle_diameter_A",
                    format!("{d} Å is under 8 pixels; the object cannot be drawn"),
                );
            }
        }
        if !finite_pos(self.snr) {
            return bad("snr", format!("{} must be a positive number", self.snr));
        }
        if let Some(g) = self.gzip {
            if !(1..=9).contains(&g) {
                return bad("gzip", format!("{g} must be a level in 1..=9 or null"));
            }
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        match self.mode {
            SimMode::Views2d => {
                if self.num_views == 0 || self.num_views > 1000 {
                    return bad(
                        "num_views",
                        format!("{} is not in 1..=1000", self.num_views),
                    );
                }
                check_weights(path, "view_weights", &self.view_weights, self.num_views)?;
            }
            SimMode::Hetero3d => {
                if self.num_states == 0 || self.num_states > 100 {
                    return bad(
                        "num_states",
                        format!("{} is not in 1..=100", self.num_states),
                    );
                }
                check_weights(path, "state_weights", &self.state_weights, self.num_states)?;
                let f = self.domain_mass_fraction;
                let total = f * (self.num_states.saturating_sub(1)) as f32;
                if !finite_pos(f) || total > 0.5 {
                    return bad(
                        "domain_mass_fraction",
                        format!("{f} must be positive with (num_states − 1) × fraction ≤ 0.5 (is {total})"),
                    );
                }
            }
        }
        if !(0.0..=1.0).contains(&self.junk_fraction) {
            return bad(
                "junk_fraction",
                format!("{} is not in [0, 1]", self.junk_fraction),
            );
        }
        if !(0.0..=0.5).contains(&self.duplicate_fraction) {
            return bad(
                "duplicate_fraction",
                format!("{} is not in [0, 0.5]", self.duplicate_fraction),
            );
        }
        if !(self.duplicate_max_offset_a.is_finite() && self.duplicate_max_offset_a >= 0.0) {
            return bad(
                "duplicate_max_offset_A",
                format!("{} must be ≥ 0", self.duplicate_max_offset_a),
            );
        }
        if !(self.max_shift_px.is_finite()
            && self.max_shift_px >= 0.0
            && self.max_shift_px <= self.box_px as f32 / 8.0)
        {
            return bad(
                "max_shift_px",
                format!(
                    "{} must be in [0, box_px/8 = {}]",
                    self.max_shift_px,
                    self.box_px / 8
                ),
            );
        }
        if self.duplicate_max_offset_a / self.psize_a + self.max_shift_px > self.box_px as f32 / 4.0
        {
            return bad(
                "duplicate_max_offset_A",
                format!(
                    "{} Å plus max_shift_px would move particles more than box_px/4 from the centre",
                    self.duplicate_max_offset_a
                ),
            );
        }
        if self.phantom_blobs < 4 || self.phantom_blobs > 1000 {
            return bad(
                "phantom_blobs",
                format!("{} is not in 4..=1000", self.phantom_blobs),
            );
        }
        if !finite_pos(self.accel_kv) {
            return bad("accel_kv", format!("{} must be positive", self.accel_kv));
        }
        if !(self.cs_mm.is_finite() && self.cs_mm >= 0.0) {
            return bad("cs_mm", format!("{} must be ≥ 0", self.cs_mm));
        }
        if !(0.0..1.0).contains(&self.amp_contrast) {
            return bad(
                "amp_contrast",
                format!("{} is not in [0, 1)", self.amp_contrast),
            );
        }
        if !finite_pos(self.defocus_min_a) {
            return bad(
                "defocus_min_A",
                format!("{} must be positive", self.defocus_min_a),
            );
        }
        if !(self.defocus_max_a.is_finite() && self.defocus_max_a >= self.defocus_min_a) {
            return bad(
                "defocus_max_A",
                format!("{} must be ≥ defocus_min_A", self.defocus_max_a),
            );
        }
        if !(self.astigmatism_max_a.is_finite()
            && self.astigmatism_max_a >= 0.0
            && self.astigmatism_max_a < self.defocus_min_a)
        {
            return bad(
                "astigmatism_max_A",
                format!("{} must be in [0, defocus_min_A)", self.astigmatism_max_a),
            );
        }
        if !(self.defocus_spread_a.is_finite()
            && self.defocus_spread_a >= 0.0
            && 4.0 * self.defocus_spread_a < self.defocus_min_a)
        {
            return bad(
                "defocus_spread_A",
                format!("{} must be in [0, defocus_min_A/4)", self.defocus_spread_a),
            );
        }
        if !(self.bfactor_a2.is_finite() && self.bfactor_a2 >= 0.0) {
            return bad("bfactor_A2", format!("{} must be ≥ 0", self.bfactor_a2));
        }
        if self.particles_per_micrograph == 0 {
            return bad("particles_per_micrograph", "must be at least 1".into());
        }
        let [ny, nx] = self.micrograph_shape_px;
        if ny < 2 * self.box_px || nx < 2 * self.box_px || ny > 1 << 20 || nx > 1 << 20 {
            return bad(
                "micrograph_shape_px",
                format!("[{ny}, {nx}]: each side must be in 2·box_px..=1048576"),
            );
        }
        // Non-overlapping placement needs room: particles (discs of the particle diameter)
        // may cover at most 30% of the usable area.
        let d_px = self.particle_diameter() / self.psize_a as f64;
        let usable = (ny - self.box_px) as f64 * (nx - self.box_px) as f64;
        let covered =
            self.particles_per_micrograph as f64 * std::f64::consts::FRAC_PI_4 * d_px * d_px;
        if covered > 0.3 * usable {
            return bad(
                "particles_per_micrograph",
                format!(
                    "{} particles of {d_px:.0} px cover {:.0}% of a [{ny}, {nx}] micrograph (at most 30%)",
                    self.particles_per_micrograph,
                    100.0 * covered / usable
                ),
            );
        }
        Ok(())
    }
}

fn check_weights(path: &Path, key: &str, w: &Option<Vec<f32>>, n: usize) -> Result<()> {
    if let Some(w) = w {
        if w.len() != n {
            return Err(Error::config(
                path,
                key,
                format!("has {} values for {n} classes", w.len()),
            ));
        }
        if w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) || w.iter().sum::<f32>() <= 0.0 {
            return Err(Error::config(
                path,
                key,
                "values must be ≥ 0 with a positive sum".to_string(),
            ));
        }
    }
    Ok(())
}

impl crate::config::JobConfig for SimulateConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        SimulateConfig::validate(self, path)
    }
    fn output(&self) -> &Path {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse_to_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, mode) in [
            ("configs/simulate_views2d.yaml", SimMode::Views2d),
            ("configs/simulate_hetero3d.yaml", SimMode::Hetero3d),
        ] {
            let path = root.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let cfg = SimulateConfig::from_yaml(&text, &path).unwrap();
            let mut expect = SimulateConfig::with_output(cfg.output.clone());
            expect.mode = mode;
            assert_eq!(cfg, expect, "{file} must list exactly the defaults");
        }
    }

    #[test]
    fn minimal_yaml_takes_defaults_and_unknown_keys_fail() {
        let p = Path::new("job.yaml");
        let cfg = SimulateConfig::from_yaml("output: out\n", p).unwrap();
        assert_eq!(cfg, SimulateConfig::with_output("out"));
        let err = SimulateConfig::from_yaml("output: out\nnum_view: 3\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job.yaml: num_view: unknown field") && err.contains("line 2 column 1"),
            "{err}"
        );
        let err = SimulateConfig::from_yaml("num_views: 3\n", p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("output"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let p = Path::new("job.yaml");
        let cases = [
            ("output: o\nbox_px: 127\n", "box_px"),
            ("output: o\nview_weights: [1, 2]\n", "view_weights"),
            (
                "output: o\nmode: hetero3d\nnum_states: 3\ndomain_mass_fraction: 0.3\n",
                "domain_mass_fraction",
            ),
            ("output: o\nduplicate_fraction: 0.7\n", "duplicate_fraction"),
            ("output: o\ngzip: 12\n", "gzip"),
            (
                "output: o\nparticles_per_micrograph: 5000\n",
                "particles_per_micrograph",
            ),
            ("output: o\namp_contrast: 1.0\n", "amp_contrast"),
        ];
        for (yaml, key) in cases {
            let err = SimulateConfig::from_yaml(yaml, p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("job.yaml: {key}:")),
                "{yaml:?} → {err}"
            );
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let mut cfg = SimulateConfig::with_output("x");
        cfg.view_weights = Some(vec![1.0, 2.0, 1.0, 1.0, 1.0, 3.0]);
        cfg.gzip = Some(4);
        cfg.dtype = SimDtype::F16;
        let text = serde_norway::to_string(&cfg).unwrap();
        assert!(
            text.contains("psize_A:") && text.contains("dtype: f16"),
            "{text}"
        );
        assert_eq!(
            SimulateConfig::from_yaml(&text, Path::new("x.yaml")).unwrap(),
            cfg
        );
    }
}
