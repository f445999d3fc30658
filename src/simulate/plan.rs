//! The per-particle plan of a simulation: which micrograph each row lies on, where it was
//! picked, whether it is junk or a duplicate, its class, pose, shift and CTF. Built once
//! (tens of bytes per row) before any image is drawn; images are then rendered from it in
//! any order or batch size.
//!
//! Layout: row r lies on micrograph r / particles_per_micrograph. Exactly
//! round(duplicate_fraction · N) rows are duplicates (a micrograph always keeps at least one
//! original); each points to an original on its micrograph. Exactly
//! round(junk_fraction · originals) originals are junk; a duplicate of junk is junk.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::config::{SimMode, SimulateConfig};
use super::rng::{stream, unique_id, Purpose};

/// `class` of a junk pick.
pub const JUNK: i32 = -1;

/// One row of the dataset, as planned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// View (views2d) or state (hetero3d) index; [`JUNK`] for junk.
    pub class: i32,
    /// Row of the physical particle this pick shows (its own row for originals).
    pub source: u32,
    /// Micrograph index.
    pub mic: u32,
    /// Pick location on the micrograph (x, y) in pixels: the centre of the extracted box.
    pub pos_px: [f32; 2],
    /// RELION origin (x, y) in pixels: the particle's centre is at box/2 − origin (so
    /// shifting the image by +origin centres it, as RELION does).
    pub shift_px: [f32; 2],
    /// RELION Euler angles (rot, tilt, psi) in radians of the projection.
    pub euler_rad: [f32; 3],
    /// df1 (DefocusU), df2 (DefocusV) in Å and the astigmatism angle in radians.
    pub ctf: [f32; 3],
    /// Seed of the pick's junk object (junk only; a duplicate shares its original's).
    pub junk_seed: u64,
}

impl Pick {
    pub fn is_junk(&self) -> bool {
        self.class == JUNK
    }
}

/// All rows of a simulation.
#[derive(Clone, Debug)]
pub struct Plan {
    pub picks: Vec<Pick>,
    pub num_micrographs: usize,
    /// Viewing directions (rot, tilt) in radians (views2d; empty in hetero3d).
    pub views: Vec<[f64; 2]>,
}

/// `num_views` viewing directions spread as far apart as possible: greedy farthest-point
/// sampling of 4096 random directions, with d and −d counted as the same direction (their
/// projections are mirror images). Returns (rot, tilt) in radians: the projection direction
/// is the third row of RELION's matrix, (sin tilt cos rot, sin tilt sin rot, cos tilt).
pub fn choose_views(seed: u64, num_views: usize) -> Vec<[f64; 2]> {
    let mut rng = stream(seed, Purpose::Views, 0);
    let cands: Vec<[f64; 3]> = (0..4096)
        .map(|_| rand_distr::UnitSphere.sample(&mut rng))
        .collect();
    let mut chosen = vec![0usize];
    // closeness[i] = max |cos angle| between candidate i and the chosen set.
    let dot = |a: &[f64; 3], b: &[f64; 3]| (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).abs();
    let mut closeness: Vec<f64> = cands.iter().map(|c| dot(c, &cands[0])).collect();
    while chosen.len() < num_views {
        let (best, _) = closeness
            .iter()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |acc, (i, &c)| if c < acc.1 { (i, c) } else { acc },
            );
        chosen.push(best);
        for (c, cand) in closeness.iter_mut().zip(&cands) {
            *c = c.max(dot(cand, &cands[best]));
        }
    }
    chosen
        .iter()
        .map(|&i| {
            let d = cands[i];
            [d[1].atan2(d[0]), d[2].clamp(-1.0, 1.0).acos()]
        })
        .collect()
}

/// Index drawn from normalised `weights` by the uniform `u` in [0, 1).
pub fn categorical(weights: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    // Rounding: the last class with a positive weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// A point uniform in the disc of radius `r`.
fn in_disc(rng: &mut impl Rng, r: f64) -> [f64; 2] {
    let rad = r * rng.gen::<f64>().sqrt();
    let th = rng.gen_range(0.0..std::f64::consts::TAU);
    [rad * th.cos(), rad * th.sin()]
}

/// Builds the plan of `cfg` (validated) with viewing directions `views` (views2d).
pub fn build(cfg: &SimulateConfig, views: &[[f64; 2]]) -> Plan {
    let n = cfg.num_particles;
    let ppm = cfg.particles_per_micrograph;
    let num_mics = n.div_ceil(ppm);
    let mic_of = |r: usize| r / ppm;
    let mic_rows = |m: usize| m * ppm..((m + 1) * ppm).min(n);
    let mut layout = stream(cfg.seed, Purpose::Layout, 0);

    // Duplicates: a random set of rows, keeping one original per micrograph at least.
    let n_dup = (cfg.duplicate_fraction as f64 * n as f64).round() as usize;
    let mut is_dup = vec![false; n];
    let mut originals_left: Vec<usize> = (0..num_mics).map(|m| mic_rows(m).len()).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut layout);
    let mut marked = 0;
    for &r in &order {
        if marked == n_dup {
            break;
        }
        let m = mic_of(r as usize);
        if originals_left[m] >= 2 {
            is_dup[r as usize] = true;
            originals_left[m] -= 1;
            marked += 1;
        }
    }
    drop(order);
    if marked < n_dup {
        log::warn!(
            "simulate: only {marked} of {n_dup} duplicates fit ({} particles per micrograph)",
            ppm
        );
    }
    // Junk: a random set of originals.
    let originals: Vec<u32> = (0..n as u32).filter(|&r| !is_dup[r as usize]).collect();
    let n_junk = (cfg.junk_fraction as f64 * originals.len() as f64).round() as usize;
    let mut shuffled = originals.clone();
    shuffled.shuffle(&mut layout);
    let mut is_junk = vec![false; n];
    for &r in &shuffled[..n_junk] {
        is_junk[r as usize] = true;
    }
    drop(shuffled);

    let weights = cfg.class_weights();
    let box_px = cfg.box_px as f64;
    let tau = std::f64::consts::TAU;
    let mut picks: Vec<Pick> = Vec::with_capacity(n);
    // Originals first (their rows' slots), then duplicates copy from them.
    for r in 0..n {
        if is_dup[r] {
            picks.push(Pick {
                class: JUNK,
                source: r as u32,
                mic: mic_of(r) as u32,
                pos_px: [0.0; 2],
                shift_px: [0.0; 2],
                euler_rad: [0.0; 3],
                ctf: [0.0; 3],
                junk_seed: 0,
            });
            continue;
        }
        let mut rng = stream(cfg.seed, Purpose::Particle, r as u64);
        // The same draws in the same order for every row, whatever its kind.
        let u_class: f64 = rng.gen();
        let junk_seed: u64 = rng.gen();
        let rot = rng.gen_range(0.0..tau);
        let tilt = rng.gen_range(-1.0f64..1.0).acos();
        let psi = rng.gen_range(0.0..tau);
        let shift = in_disc(&mut rng, cfg.max_shift_px as f64);
        let dz: f64 = StandardNormal.sample(&mut rng);
        let class = if is_junk[r] {
            JUNK
        } else {
            categorical(&weights, u_class) as i32
        };
        let (rot, tilt) = match cfg.mode {
            SimMode::Views2d if class >= 0 => (views[class as usize][0], views[class as usize][1]),
            _ => (rot, tilt),
        };
        picks.push(Pick {
            class,
            source: r as u32,
            mic: mic_of(r) as u32,
            pos_px: [0.0; 2],
            shift_px: [shift[0] as f32, shift[1] as f32],
            euler_rad: [rot as f32, tilt as f32, psi as f32],
            // Per-particle defocus offset for now; the micrograph's defocus is added below.
            ctf: [(dz * cfg.defocus_spread_a as f64) as f32, 0.0, 0.0],
            junk_seed,
        });
    }

    // Micrographs: defocus, astigmatism and non-overlapping positions of the originals.
    let d_px = cfg.particle_diameter() / cfg.psize_a as f64;
    let dup_px = cfg.duplicate_max_offset_a as f64 / cfg.psize_a as f64;
    let margin = box_px / 2.0 + dup_px + cfg.max_shift_px as f64 + 1.0;
    let [mny, mnx] = cfg.micrograph_shape_px;
    let (lo_x, hi_x) = (margin, mnx as f64 - margin);
    let (lo_y, hi_y) = (margin, mny as f64 - margin);
    let mut crowded = 0usize;
    let mut placed: Vec<[f64; 2]> = Vec::with_capacity(ppm);
    for m in 0..num_mics {
        let mut rng = stream(cfg.seed, Purpose::Micrograph, m as u64);
        let df_mean = rng.gen_range(cfg.defocus_min_a as f64..=cfg.defocus_max_a as f64);
        let astig = rng.gen_range(0.0..=cfg.astigmatism_max_a as f64);
        let angle = rng.gen_range(0.0..std::f64::consts::PI);
        placed.clear();
        for r in mic_rows(m) {
            if is_dup[r] {
                continue;
            }
            let mut p = [0.0; 2];
            let mut ok = false;
            for _ in 0..64 {
                p = [rng.gen_range(lo_x..hi_x), rng.gen_range(lo_y..hi_y)];
                if placed
                    .iter()
                    .all(|q| (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2) >= d_px * d_px)
                {
                    ok = true;
                    break;
                }
            }
            crowded += usize::from(!ok);
            placed.push(p);
            let pk = &mut picks[r];
            pk.pos_px = [p[0] as f32, p[1] as f32];
            let dz = pk.ctf[0] as f64;
            pk.ctf = [
                (df_mean + astig / 2.0 + dz) as f32,
                (df_mean - astig / 2.0 + dz) as f32,
                angle as f32,
            ];
        }
    }
    if crowded > 0 {
        log::warn!("simulate: {crowded} particles overlap a neighbour (micrographs crowded)");
    }

    // Duplicates: the original's content, picked again within the offset disc.
    let mut mic_originals: Vec<u32> = Vec::new();
    let mut cur_mic = usize::MAX;
    for r in 0..n {
        if !is_dup[r] {
            continue;
        }
        let m = mic_of(r);
        if m != cur_mic {
            cur_mic = m;
            mic_originals = mic_rows(m)
                .filter(|&q| !is_dup[q])
                .map(|q| q as u32)
                .collect();
        }
        let src = mic_originals[layout.gen_range(0..mic_originals.len())];
        let mut rng = stream(cfg.seed, Purpose::Particle, r as u64);
        let d = in_disc(&mut rng, dup_px);
        let o = picks[src as usize];
        picks[r] = Pick {
            source: src,
            mic: m as u32,
            pos_px: [
                (o.pos_px[0] as f64 + d[0]) as f32,
                (o.pos_px[1] as f64 + d[1]) as f32,
            ],
            // The box moved by d, so the particle sits d further from the box centre.
            shift_px: [
                (o.shift_px[0] as f64 + d[0]) as f32,
                (o.shift_px[1] as f64 + d[1]) as f32,
            ],
            ..o
        };
    }
    Plan {
        picks,
        num_micrographs: num_mics,
        views: views.to_vec(),
    }
}

/// The uid of row `r` (unique within a dataset, deterministic from the seed).
pub fn particle_uid(seed: u64, r: usize) -> u64 {
    unique_id(seed, Purpose::Uid, r as u64)
}

/// The uid of micrograph `m`.
pub fn micrograph_uid(seed: u64, m: usize) -> u64 {
    unique_id(seed, Purpose::MicrographUid, m as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize) -> SimulateConfig {
        let mut c = SimulateConfig::with_output("x");
        c.num_particles = n;
        c
    }

    #[test]
    fn views_are_far_apart() {
        let v = choose_views(0, 6);
        let dir = |a: &[f64; 2]| [a[1].sin() * a[0].cos(), a[1].sin() * a[0].sin(), a[1].cos()];
        for i in 0..6 {
            for j in 0..i {
                let (a, b) = (dir(&v[i]), dir(&v[j]));
                let c = (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).abs();
                // Six axes can be ~63° apart (icosahedron); farthest-point gets > 50°.
                assert!(c < 50f64.to_radians().cos(), "views {i},{j}: |cos| = {c}");
            }
        }
    }

    #[test]
    fn fractions_and_duplicates_follow_the_config() {
        let c = cfg(10_000);
        let plan = build(&c, &choose_views(0, c.num_views));
        let picks = &plan.picks;
        let n_dup = picks
            .iter()
            .enumerate()
            .filter(|(r, p)| p.source as usize != *r)
            .count();
        assert_eq!(n_dup, 500);
        let n_junk = picks.iter().filter(|p| p.is_junk()).count() as f64 / 10_000.0;
        assert!((n_junk - 0.15).abs() < 0.01, "junk fraction {n_junk}");
        let max_off = c.duplicate_max_offset_a as f64 / c.psize_a as f64;
        for (r, p) in picks.iter().enumerate() {
            let o = &picks[p.source as usize];
            if p.source as usize == r {
                continue;
            }
            assert_eq!(o.source, p.source, "a duplicate points to an original");
            assert_eq!(
                (p.mic, p.class, p.euler_rad, p.ctf, p.junk_seed),
                (o.mic, o.class, o.euler_rad, o.ctf, o.junk_seed)
            );
            let d = ((p.pos_px[0] - o.pos_px[0]).powi(2) + (p.pos_px[1] - o.pos_px[1]).powi(2))
                .sqrt() as f64;
            assert!(
                d <= max_off + 1e-3,
                "duplicate {r} is {d} px from its original"
            );
            // The pick offset is carried by the shift.
            let ds = [p.shift_px[0] - o.shift_px[0], p.shift_px[1] - o.shift_px[1]];
            assert!(
                (ds[0] - (p.pos_px[0] - o.pos_px[0])).abs() < 1e-3
                    && (ds[1] - (p.pos_px[1] - o.pos_px[1])).abs() < 1e-3
            );
        }
        // Originals on a micrograph do not overlap and stay inside it.
        let d_px = (c.particle_diameter() / c.psize_a as f64) as f32;
        let mic0: Vec<&Pick> = picks
            .iter()
            .enumerate()
            .filter(|(r, p)| p.mic == 0 && p.source as usize == *r)
            .map(|(_, p)| p)
            .collect();
        for (i, a) in mic0.iter().enumerate() {
            assert!(a.pos_px[0] > 64.0 && a.pos_px[0] < 4096.0 - 64.0);
            for b in &mic0[..i] {
                let d = ((a.pos_px[0] - b.pos_px[0]).powi(2) + (a.pos_px[1] - b.pos_px[1]).powi(2))
                    .sqrt();
                assert!(d >= d_px - 1e-3);
            }
        }
        // Defocus in range with df1 ≥ df2 up to the astigmatism.
        for p in picks {
            assert!(p.ctf[0] >= p.ctf[1] && p.ctf[0] - p.ctf[1] <= 500.0 + 1e-2);
            assert!(p.ctf[1] > 7000.0 && p.ctf[0] < 31000.0);
        }
    }

    #[test]
    fn views2d_class_is_the_view_and_weights_are_followed() {
        let mut c = cfg(20_000);
        c.view_weights = Some(vec![1.0, 1.0, 1.0, 1.0, 1.0, 5.0]);
        let views = choose_views(c.seed, 6);
        let plan = build(&c, &views);
        let mut counts = [0usize; 6];
        for p in plan.picks.iter().filter(|p| !p.is_junk()) {
            counts[p.class as usize] += 1;
            let v = views[p.class as usize];
            assert_eq!([p.euler_rad[0], p.euler_rad[1]], [v[0] as f32, v[1] as f32]);
        }
        let total: usize = counts.iter().sum();
        let f5 = counts[5] as f64 / total as f64;
        assert!((f5 - 0.5).abs() < 0.02, "{counts:?}");
    }
}
