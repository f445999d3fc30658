//! Inputs and helpers shared by the tests of the RELION modules.

use std::path::Path;

use crate::dataset::ParticleTable;
use crate::formats::star::{parse_star, StarFile};

use super::format_image_name;

/// The path the test inputs are parsed as (errors start with it).
pub(super) const P: &str = "in.star";

/// A STAR text parsed as [`P`].
pub(super) fn parse(text: &str) -> StarFile {
    parse_star(text, Path::new(P)).unwrap()
}

/// The `N@path` image names of a table's `blob/path` and `blob/idx`.
pub(super) fn names_of(t: &ParticleTable) -> Vec<String> {
    let p = t.str("blob/path").unwrap();
    let i = t.u32("blob/idx").unwrap();
    p.iter()
        .zip(i)
        .map(|(p, &i)| format_image_name(i as u64, p))
        .collect()
}

/// A RELION 3.1 file: two optics groups, three particles with CTF, 3D pose, origins, class
/// and extra labels.
pub(super) const V31: &str = "
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
_rlnBeamTiltX #10
opticsGroup1            1     0.530000   300.000000     2.700000     0.100000     1.060000          256            2     0.000000
opticsGroup2            2     0.530000   200.000000     2.000000     0.070000     1.060000          256            2     0.250000

# version 30001

data_particles

loop_
_rlnCoordinateX #1
_rlnCoordinateY #2
_rlnImageName #3
_rlnMicrographName #4
_rlnOpticsGroup #5
_rlnDefocusU #6
_rlnDefocusV #7
_rlnDefocusAngle #8
_rlnPhaseShift #9
_rlnCtfBfactor #10
_rlnCtfScalefactor #11
_rlnAngleRot #12
_rlnAngleTilt #13
_rlnAnglePsi #14
_rlnOriginXAngst #15
_rlnOriginYAngst #16
_rlnClassNumber #17
_rlnRandomSubset #18
_rlnGroupName #19
  1234.5   987.25 000001@Extract/job012/mic1.mrcs MotionCorr/mic1.mrc 1 10000.5 9800.25 45.5 0 0 1 30.0 60.0 -90.0 2.12 -1.06 1 1 g1
   100.0   200.0  000002@Extract/job012/mic1.mrcs MotionCorr/mic1.mrc 2 20000 19000 -10 12.5 5 0.9 -170.0 120.0 10.0 0 0.53 3 2 g2
   300.0   400.0  000007@Extract/job012/mic2.mrcs MotionCorr/mic2.mrc 1 15000 15000 0 0 0 1 0 0 25 -3.18 0 2 1 g1
";

/// A particle table holding only `_rlnImageName`, one row per name.
pub(super) fn with_names(names: &[&str]) -> String {
    let mut s = String::from("data_particles\nloop_\n_rlnImageName\n");
    for n in names {
        s.push_str(n);
        s.push('\n');
    }
    s
}
