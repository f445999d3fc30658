//! RELION particle STAR files ↔ [`ParticleTable`]: which `_rln` label is which table field,
//! in which unit, and how RELION 3.1's optics groups are split off and joined back.
//!
//! Reading ([`star_to_table`]) accepts RELION 3.1+ files (`data_optics` + `data_particles`,
//! joined by `_rlnOpticsGroup`; a label in both is taken from the particle) and older
//! single-table files (`data_`, `data_images`, ... with everything per particle). Mapping:
//!
//! | STAR | table | conversion |
//! |---|---|---|
//! | `_rlnImageName` `N@path` | `blob/idx`, `blob/path` | idx = N − 1 (N ≥ 1); no `@`: idx 0 |
//! | `_rlnDefocusU`, `_rlnDefocusV` | `ctf/df1_A`, `ctf/df2_A` | Å |
//! | `_rlnDefocusAngle`, `_rlnPhaseShift` | `ctf/df_angle_rad`, `ctf/phase_shift_rad` | deg → rad |
//! | `_rlnVoltage`, `_rlnSphericalAberration`, `_rlnAmplitudeContrast` | `ctf/accel_kv`, `ctf/cs_mm`, `ctf/amp_contrast` | |
//! | `_rlnCtfBfactor`, `_rlnCtfScalefactor` | `ctf/bfactor`, `ctf/scale` | |
//! | `_rlnOpticsGroup` | `ctf/exp_group_id` | |
//! | `_rlnImagePixelSize` (or `_rlnPixelSize`, or `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`) | `blob/psize_A` | |
//! | `_rlnImageSize` | `blob/shape` | (n, n) |
//! | `_rlnMicrographName`, `_rlnCoordinateX/Y` | `location/micrograph_path`, `location/center_x_px/center_y_px` | |
//! | `_rlnAngleRot`, `_rlnAngleTilt`, `_rlnAnglePsi` | `alignments3D/pose` | pose of RELION's matrix (see `numerics::rotation`) |
//! | `_rlnAnglePsi` alone | `alignments2D/pose` | deg → rad |
//! | `_rlnOriginXAngst/YAngst` (or `_rlnOriginX/Y` in px) | `<group>/shift` | Å ÷ pixel size → px |
//! | `_rlnClassNumber` | `<group>/class` | 1-based → 0-based |
//! | `_rlnMaxValueProbDistribution` | `<group>/class_posterior` | |
//! | `_rlnNrOfSignificantSamples` | `<group>/class_ess` | export: rounded to an integer ≥ 1 |
//! | `_rlnLogLikeliContribution` | `<group>/log_likelihood` | |
//!
//! `<group>` is `alignments3D` when rot and tilt are present, else `alignments2D`; it also
//! gets `<group>/psize_A` (the pixel size its shifts are in).
//!
//! The two classification statistics are the nearest RELION has to emclass's (and
//! CryoSPARC's), not the same numbers: emclass's `class_posterior` is the probability of
//! the best class (summed over poses), RELION's MaxValueProbDistribution the largest
//! posterior of one (class, orientation, translation) sample; emclass's `class_ess` is the
//! effective number of classes 1/Σ_k p_k², written rounded because RELION's
//! NrOfSignificantSamples is a count (of the samples that hold most of the posterior), so a
//! STAR round trip keeps `class_ess` only to the nearest integer. RELION's values, read from
//! a RELION file, land in the same fields. emclass's `log_likelihood` is the particle's
//! log-likelihood under the mixture (the log of the class- and pose-averaged Gaussian
//! likelihood of its residual, without the normalisation constant shared by every particle
//! of the run); RELION's LogLikeliContribution is the same kind of number with RELION's own
//! constants and sampling, so values compare within one run of one program, not across
//! programs. The six CTF labels DefocusU,
//! DefocusV, DefocusAngle, Voltage, SphericalAberration and AmplitudeContrast are required
//! (from the particles or their optics group) unless [`CtfPolicy::IfPresent`] is asked for.
//! Every other label is kept as an extra column, `relion/<label without rln>` (`_rlnX`) or
//! `star/<label>` (other programs' labels), F64 or Str, so it is written back on export;
//! optics-only labels are expanded to one value per particle. `uid` is the row number + 1
//! (the import job replaces it with uids derived from the image references).
//!
//! Writing ([`table_to_star`]) produces RELION 3.1: `data_optics` with one row per
//! `ctf/exp_group_id` (all particles in group 1 when the table has none; ids are shifted by
//! one when a group 0 exists, as RELION's groups start at 1) holding the group's name
//! (`relion/OpticsGroupName`, else `opticsGroupN`), voltage, Cs, amplitude contrast, pixel
//! size, image size, `_rlnImageDimensionality 2` and extra columns of optics labels; a value
//! that differs within a group is written per particle instead. `data_particles` holds the
//! image names given by the caller, micrograph and coordinates (px, or frac × micrograph
//! shape), angles (3D: Euler angles of the pose; 2D: psi only), origins in Å (shift × pixel
//! size; in px as `_rlnOriginX/Y` when no pixel size is known), CTF, class + 1, best-class
//! probability, rounded ESS and log-likelihood, optics group and the extra columns. When a table has both 2D and 3D alignments, the 3D ones are
//! written (RELION has one set of angles and one class number per particle).
//!
//! Numbers: f32 fields are written in their shortest decimal form and unit conversions are
//! written with the fewest digits that convert back to the same f32, so table → STAR →
//! table is exact for every field (poses to within f32 rounding of the angle conversion).
//!
//! The code: `import` (STAR → table), `export` (table → STAR), `names` (image names
//! `N@stack`), `reader` (reading a label from the particles or their optics group) and
//! `units` (unit conversions and the shortest decimal forms written on export); this file
//! holds the label lists and the names of extra columns, which both directions share.
//!
//! [`ParticleTable`]: crate::dataset::ParticleTable

mod export;
mod import;
mod names;
mod reader;
mod units;

#[cfg(test)]
mod round_trip_tests;
#[cfg(test)]
mod test_data;

pub use export::table_to_star;
pub use import::{star_to_table, star_to_table_with};
pub use names::{format_image_name, parse_image_name};

/// Prefix of extra columns holding `_rlnX` labels (`relion/X`).
pub const RELION_PREFIX: &str = "relion/";
/// Prefix of extra columns holding other programs' labels (`star/label`).
pub const OTHER_PREFIX: &str = "star/";

/// Whether a particle file must have CTF parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtfPolicy {
    /// Error when any of the six CTF labels is missing (the default).
    Require,
    /// Import the CTF when all six labels are present; otherwise import none of it (the
    /// CTF labels that are present are kept as extra `relion/` columns).
    IfPresent,
}

/// Labels without which the CTF of a particle is unknown.
const CTF_REQUIRED: [&str; 6] = [
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
];

/// Labels that RELION 3.1+ keeps in `data_optics` (written there on export when uniform
/// within each group).
const OPTICS_LABELS: &[&str] = &[
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnMagMat00",
    "rlnMagMat01",
    "rlnMagMat10",
    "rlnMagMat11",
    "rlnMtfFileName",
    "rlnMicrographMtfPixelSize",
    "rlnCtfDataArePhaseFlipped",
    "rlnCtfDataAreCtfPremultiplied",
];

/// `v` as an integer, if it is one.
fn as_int(v: f64) -> Option<i64> {
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64)
}

/// Table name of an unmapped label.
fn extra_name(label: &str) -> String {
    match label.strip_prefix("rln") {
        Some(rest) if !rest.is_empty() => format!("{RELION_PREFIX}{rest}"),
        _ => format!("{OTHER_PREFIX}{label}"),
    }
}

/// STAR label of an extra column, if `name` is one.
fn extra_label(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(RELION_PREFIX) {
        return (!rest.is_empty()).then(|| format!("rln{rest}"));
    }
    name.strip_prefix(OTHER_PREFIX)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
