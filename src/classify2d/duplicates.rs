//! Duplicate-pick removal at the end of 2D classification (CryoSPARC's "Remove duplicate
//! particles"): the same physical particle picked twice shows up as two images whose
//! alignments move their contents onto the same point of the micrograph. Two particles of one
//! micrograph whose corrected positions are strictly closer than `min_separation_A` are
//! duplicates; the one with the higher score is kept, the other rejected.
//!
//! Position convention. The pick (the centre of the extracted box) is
//! `center_x_frac · nx · micrograph_psize_A` Å from the micrograph's left edge (y likewise with
//! `ny`). A 2D shift is a RELION origin in the image's pixels (`psize_in_A`): shifting the
//! image by +shift centres its content, so the particle's centre lies at box centre − shift,
//! i.e. on the micrograph at
//!
//! ```text
//! x_A = center_x_frac · nx · micrograph_psize_A − shift_x · psize_in_A
//! y_A = center_y_frac · ny · micrograph_psize_A − shift_y · psize_in_A
//! ```
//!
//! Two picks of one particle at different positions thus end at the same corrected position.
//! The search hashes the kept picks into cells of side `min_separation_A` per micrograph, so
//! it costs O(n log n) (the sort by score) plus O(n) neighbour checks at realistic densities.

use std::collections::HashMap;
use std::path::Path;

use crate::dataset::{ColumnData, ParticleTable};
use crate::error::{Error, Result};

/// One particle's corrected position on its micrograph and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// Micrograph identifier: only picks of the same micrograph can be duplicates.
    pub micrograph: u64,
    /// Corrected particle centre, Å from the micrograph's origin (see the module doc).
    pub x_a: f64,
    pub y_a: f64,
    /// Higher is better: of a group of duplicates, the highest-scoring pick is kept.
    pub score: f64,
}

/// Returns, for every pick, true if it is rejected as a duplicate.
///
/// Picks are visited by decreasing score (ties: lower index first; NaN scores last); a pick
/// is rejected when it lies strictly closer than `min_separation_a` (Å) to an already kept
/// pick of the same micrograph, otherwise kept. So in a chain A–B–C where only neighbours are
/// close, A and C are both kept when B is rejected. A separation ≤ 0 rejects nothing.
pub fn find_duplicates(picks: &[Pick], min_separation_a: f64) -> Vec<bool> {
    let mut rejected = vec![false; picks.len()];
    if min_separation_a.is_nan() || min_separation_a <= 0.0 {
        return rejected;
    }
    let key = |p: &Pick| {
        if p.score.is_nan() {
            f64::NEG_INFINITY
        } else {
            p.score
        }
    };
    let mut order: Vec<usize> = (0..picks.len()).collect();
    // Stable: equal scores keep index order.
    order.sort_by(|&a, &b| key(&picks[b]).total_cmp(&key(&picks[a])));

    let sep2 = min_separation_a * min_separation_a;
    let cell_of = |v: f64| (v / min_separation_a).floor() as i64;
    let mut kept: HashMap<(u64, i64, i64), Vec<usize>> = HashMap::new();
    for i in order {
        let p = &picks[i];
        let (cx, cy) = (cell_of(p.x_a), cell_of(p.y_a));
        let close = (-1..=1).any(|dx| {
            (-1..=1).any(|dy| {
                kept.get(&(p.micrograph, cx.saturating_add(dx), cy.saturating_add(dy)))
                    .is_some_and(|cell| {
                        cell.iter().any(|&j| {
                            let q = &picks[j];
                            (q.x_a - p.x_a).powi(2) + (q.y_a - p.y_a).powi(2) < sep2
                        })
                    })
            })
        });
        if close {
            rejected[i] = true;
        } else {
            kept.entry((p.micrograph, cx, cy)).or_default().push(i);
        }
    }
    rejected
}

/// Picked position in Å corrected by the 2D shift: `x_A = pick_x_A − shift_x·psize_in`
/// (the shift moves the particle's content by +shift to centre it, so the particle centre
/// lies at pick − shift, in the image's pixels of size `psize_in_a`); y alike.
///
/// The pick and its micrograph come from whichever location fields the dataset has:
/// - micrograph: `location/micrograph_uid` (CryoSPARC, simulator), else a 64-bit FNV-1a hash
///   of `location/micrograph_path` (RELION's `rlnMicrographName`);
/// - pick: `location/center_x_frac · nx · location/micrograph_psize_A` with nx from
///   `location/micrograph_shape` ([ny, nx] pixels) (CryoSPARC), else `location/center_x_px`
///   (RELION's `rlnCoordinateX`, micrograph pixels) times the micrograph pixel size:
///   `location/micrograph_psize_A`, else `relion/MicrographPixelSize`, else the particles'
///   own pixel size `psize_in_a` (true when they were extracted without rescaling; see
///   [`location_note`]).
///
/// `table` was read from `path` (named in errors). `shifts_px` (x, y) and `scores` have one
/// entry per row.
pub fn picks_from_table(
    table: &ParticleTable,
    path: &Path,
    shifts_px: &[[f32; 2]],
    psize_in_a: f64,
    scores: &[f32],
) -> Result<Vec<Pick>> {
    let n = table.len();
    if shifts_px.len() != n || scores.len() != n {
        return Err(Error::file(
            path,
            format!(
                "remove_duplicates: {} shifts and {} scores for {n} particles",
                shifts_px.len(),
                scores.len()
            ),
        ));
    }
    let loc = Location { table, path, n };
    let mics = loc.micrographs()?;
    let (px, py) = loc.picks_a(psize_in_a)?;
    Ok((0..n)
        .map(|r| {
            let [sx, sy] = shifts_px[r];
            Pick {
                micrograph: mics[r],
                x_a: px[r] - sx as f64 * psize_in_a,
                y_a: py[r] - sy as f64 * psize_in_a,
                score: scores[r] as f64,
            }
        })
        .collect())
}

/// A line for the log when the picks' micrograph pixel size is assumed (RELION coordinates
/// without `rlnMicrographPixelSize`), `None` when the dataset states it.
pub fn location_note(table: &ParticleTable, psize_in_a: f64) -> Option<String> {
    let stated = ["location/center_x_frac", "location/micrograph_psize_A"]
        .iter()
        .any(|f| table.has(f))
        || table.has("relion/MicrographPixelSize");
    (!stated && table.has("location/center_x_px")).then(|| {
        format!(
            "remove_duplicates: the micrograph pixel size is not in the data \
             (rlnMicrographPixelSize); taking coordinates as pixels of {psize_in_a} Å, the \
             particles' own (right unless they were extracted with rescaling)"
        )
    })
}

const MISSING: &str = "missing: remove_duplicates needs particle locations (particles \
                       imported without micrographs cannot have duplicates removed)";

/// The location fields of a table read from `path`, checked as they are read.
struct Location<'a> {
    table: &'a ParticleTable,
    path: &'a Path,
    n: usize,
}

impl Location<'_> {
    fn col(&self, name: &str, width: usize) -> Result<&crate::dataset::Column> {
        let c = self
            .table
            .get(name)
            .ok_or_else(|| Error::field(self.path, name, MISSING))?;
        if c.width != width || c.rows() != self.n {
            return Err(Error::field(
                self.path,
                name,
                format!(
                    "expected {} rows of {width} value(s), found width {}",
                    self.n, c.width
                ),
            ));
        }
        Ok(c)
    }

    /// Finite numbers of a field (a NaN or infinite location is refused, naming the row).
    fn numeric(&self, name: &str, width: usize) -> Result<Vec<f64>> {
        let v = self
            .col(name, width)?
            .data
            .to_f64()
            .ok_or_else(|| Error::field(self.path, name, "expected numbers, found strings"))?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::field(
                self.path,
                name,
                format!(
                    "particle uid {} has the value {}",
                    self.table.uid()[i / width],
                    v[i]
                ),
            ));
        }
        Ok(v)
    }

    fn micrographs(&self) -> Result<Vec<u64>> {
        const UID: &str = "location/micrograph_uid";
        if !self.table.has(UID) {
            if let Some(paths) = self.table.str("location/micrograph_path") {
                return Ok(paths.iter().map(|p| fnv1a64(p.as_bytes())).collect());
            }
        }
        // Not through f64: uids use all 64 bits.
        match &self.col(UID, 1)?.data {
            ColumnData::U64(v) => Ok(v.clone()),
            ColumnData::U32(v) => Ok(v.iter().map(|&u| u as u64).collect()),
            other => {
                let msg = format!("expected u64, found {}", other.type_name());
                Err(Error::field(self.path, UID, msg))
            }
        }
    }

    /// Pick positions (x, y) in Å on the micrograph.
    fn picks_a(&self, psize_in_a: f64) -> Result<(Vec<f64>, Vec<f64>)> {
        let t = self.table;
        if !t.has("location/center_x_frac") && t.has("location/center_x_px") {
            let x = self.numeric("location/center_x_px", 1)?;
            let y = self.numeric("location/center_y_px", 1)?;
            let apix = if t.has("location/micrograph_psize_A") {
                self.numeric("location/micrograph_psize_A", 1)?
            } else if t.has("relion/MicrographPixelSize") {
                self.numeric("relion/MicrographPixelSize", 1)?
            } else {
                vec![psize_in_a; self.n]
            };
            let scale = |v: Vec<f64>| v.iter().zip(&apix).map(|(c, a)| c * a).collect();
            return Ok((scale(x), scale(y)));
        }
        let shape = self.numeric("location/micrograph_shape", 2)?;
        let mic_psize = self.numeric("location/micrograph_psize_A", 1)?;
        let fx = self.numeric("location/center_x_frac", 1)?;
        let fy = self.numeric("location/center_y_frac", 1)?;
        Ok((0..self.n)
            .map(|r| {
                let (ny, nx) = (shape[2 * r], shape[2 * r + 1]);
                (fx[r] * nx * mic_psize[r], fy[r] * ny * mic_psize[r])
            })
            .unzip())
    }
}

/// 64-bit FNV-1a: a stable micrograph key from its path (the same on every rank and run).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Column;

    fn pk(micrograph: u64, x_a: f64, y_a: f64, score: f64) -> Pick {
        Pick {
            micrograph,
            x_a,
            y_a,
            score,
        }
    }

    #[test]
    fn pairs_within_and_outside_the_separation() {
        // 19.9 Å apart: duplicates; exactly 20 Å: not (strictly closer is required).
        let within = [pk(1, 0.0, 0.0, 1.0), pk(1, 19.9, 0.0, 2.0)];
        assert_eq!(
            find_duplicates(&within, 20.0),
            [true, false],
            "higher score kept"
        );
        let at = [pk(1, 0.0, 0.0, 1.0), pk(1, 12.0, 16.0, 2.0)];
        assert_eq!(find_duplicates(&at, 20.0), [false, false]);
        let far = [pk(1, 100.0, 100.0, 1.0), pk(1, 130.0, 100.0, 1.0)];
        assert_eq!(find_duplicates(&far, 20.0), [false, false]);
        // Equal scores: the lower index is kept. Across cell boundaries too.
        let tie = [pk(1, 39.0, -1.0, 3.0), pk(1, 41.0, 1.0, 3.0)];
        assert_eq!(find_duplicates(&tie, 20.0), [false, true]);
        // Separation 0 rejects nothing, even identical positions.
        assert_eq!(find_duplicates(&tie[..1].repeat(2), 0.0), [false, false]);
    }

    #[test]
    fn different_micrographs_are_never_duplicates() {
        let p = [
            pk(1, 5.0, 5.0, 1.0),
            pk(2, 5.0, 5.0, 2.0),
            pk(u64::MAX, 5.0, 5.0, 0.0),
        ];
        assert_eq!(find_duplicates(&p, 20.0), [false, false, false]);
    }

    #[test]
    fn chain_keeps_both_ends() {
        // A–B and B–C are close, A–C are not; A has the best score.
        let p = [
            pk(7, 0.0, 0.0, 3.0),
            pk(7, 15.0, 0.0, 2.0),
            pk(7, 30.0, 0.0, 1.0),
        ];
        assert_eq!(find_duplicates(&p, 20.0), [false, true, false]);
        // With B best, B alone survives.
        let p = [
            pk(7, 0.0, 0.0, 1.0),
            pk(7, 15.0, 0.0, 3.0),
            pk(7, 30.0, 0.0, 2.0),
        ];
        assert_eq!(find_duplicates(&p, 20.0), [true, false, true]);
    }

    #[test]
    fn empty_input() {
        assert!(find_duplicates(&[], 20.0).is_empty());
        let p = picks_from_table(&located(0), Path::new("p.h5"), &[], 1.0, &[]).unwrap();
        assert!(p.is_empty());
    }

    fn located(rows: usize) -> ParticleTable {
        let mut t = ParticleTable::new((0..rows as u64).collect());
        let uid = ColumnData::U64(vec![u64::MAX - 1; rows]);
        t.set("location/micrograph_uid", Column::scalar(uid));
        let shape = ColumnData::U32([1000, 2000].repeat(rows)); // ny, nx
        t.set("location/micrograph_shape", Column::new(shape, 2));
        t.set_f32("location/micrograph_psize_A", vec![0.5; rows]);
        t.set_f32("location/center_x_frac", vec![0.25; rows]);
        t.set_f32("location/center_y_frac", vec![0.5; rows]);
        t
    }

    #[test]
    fn positions_are_picks_minus_shifts_in_angstrom() {
        let t = located(2);
        let p = picks_from_table(
            &t,
            Path::new("p.h5"),
            &[[0.0, 0.0], [4.0, -2.0]],
            2.0,
            &[1.0, 5.0],
        )
        .unwrap();
        // x: 0.25 · 2000 px · 0.5 Å = 250 Å; y: 0.5 · 1000 · 0.5 = 250 Å.
        assert_eq!(p[0], pk(u64::MAX - 1, 250.0, 250.0, 1.0));
        // The content sits at box centre − shift: 4 px · 2 Å left, 2 px · 2 Å up.
        assert_eq!(p[1], pk(u64::MAX - 1, 242.0, 254.0, 5.0));
    }

    #[test]
    fn missing_location_field_is_named() {
        for field in [
            "location/micrograph_uid",
            "location/micrograph_shape",
            "location/center_y_frac",
        ] {
            let mut t = located(3);
            t.remove(field);
            let e = picks_from_table(&t, Path::new("p.h5"), &[[0.0; 2]; 3], 1.0, &[0.0; 3])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("p.h5") && e.contains(field) && e.contains("remove_duplicates"),
                "{e}"
            );
        }
    }

    #[test]
    fn finds_the_simulators_duplicates_with_true_shifts() {
        use crate::simulate::{SimulateConfig, Simulation};
        let mut c = SimulateConfig::with_output("unused");
        c.num_particles = 2000;
        c.num_views = 1;
        c.box_px = 64;
        c.psize_a = 3.0;
        c.particles_per_micrograph = 50;
        c.micrograph_shape_px = [1024, 1024];
        c.duplicate_fraction = 0.2;
        // Larger than 20 Å: duplicates are found only if the shifts are applied, and with
        // the right sign (pick + shift would leave duplicates up to 60 Å apart).
        c.duplicate_max_offset_a = 30.0;
        let sim = Simulation::new(&c).unwrap();
        let t = sim.table();
        let shifts: Vec<[f32; 2]> = t
            .f32("gt/shift_px")
            .unwrap()
            .chunks(2)
            .map(|s| [s[0], s[1]])
            .collect();
        let scores: Vec<f32> = (0..t.len()).map(|r| ((r * 7919) % 1009) as f32).collect();
        let picks =
            picks_from_table(&t, Path::new("sim"), &shifts, c.psize_a as f64, &scores).unwrap();
        let rejected = find_duplicates(&picks, 20.0);

        // Group rows by the physical particle they show; each group should keep exactly one.
        let of = t.u64("gt/duplicate_of").unwrap();
        let mut groups: HashMap<u64, (usize, usize)> = HashMap::new(); // (size, kept)
        for (r, &src) in of.iter().enumerate() {
            let g = groups.entry(src).or_default();
            g.0 += 1;
            g.1 += usize::from(!rejected[r]);
        }
        let expected: usize = groups.values().map(|g| g.0 - 1).sum();
        let found: usize = groups.values().map(|g| g.0 - g.1.max(1)).sum();
        let lost = groups.values().filter(|g| g.1 == 0).count();
        assert!(expected >= 300, "{expected} duplicates simulated");
        assert!(
            found as f64 >= 0.95 * expected as f64,
            "found {found} of {expected}"
        );
        assert!(
            (lost as f64) < 0.01 * groups.len() as f64,
            "{lost} of {} particles lost",
            groups.len()
        );
    }

    #[test]
    fn relion_locations_use_the_micrograph_name_and_pixel_coordinates() {
        let mut t = ParticleTable::new(vec![1, 2, 3]);
        let names = ["mics/a.mrc", "mics/a.mrc", "mics/b.mrc"].map(String::from);
        t.set_str("location/micrograph_path", names.to_vec());
        t.set_f32("location/center_x_px", vec![100.0, 104.0, 100.0]);
        t.set_f32("location/center_y_px", vec![50.0, 50.0, 50.0]);
        let p = picks_from_table(&t, Path::new("p.h5"), &[[0.0; 2]; 3], 2.0, &[1.0; 3]).unwrap();
        // Coordinates in micrograph pixels, of the particles' size when none is stated.
        assert_eq!((p[1].x_a, p[1].y_a), (208.0, 100.0));
        assert_eq!(p[0].micrograph, p[1].micrograph);
        assert_ne!(p[0].micrograph, p[2].micrograph);
        assert_eq!(p[0].micrograph, fnv1a64(b"mics/a.mrc"));
        assert!(location_note(&t, 2.0)
            .unwrap()
            .contains("rlnMicrographPixelSize"));
        // 8 Å apart on one micrograph: duplicates; the same place on another: not.
        assert_eq!(find_duplicates(&p, 20.0), [false, true, false]);
        t.set_f32("relion/MicrographPixelSize", vec![1.0; 3]);
        let p = picks_from_table(&t, Path::new("p.h5"), &[[1.0, 0.0]; 3], 2.0, &[1.0; 3]).unwrap();
        assert_eq!(p[1].x_a, 104.0 - 2.0);
        assert!(location_note(&t, 2.0).is_none());
    }

    #[test]
    fn non_finite_locations_are_refused_by_name() {
        let mut t = located(2);
        t.set_f32("location/center_x_frac", vec![0.5, f32::NAN]);
        let e = picks_from_table(&t, Path::new("p.h5"), &[[0.0; 2]; 2], 1.0, &[0.0; 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("location/center_x_frac") && e.contains("NaN"),
            "{e}"
        );
    }
}
