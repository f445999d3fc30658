//! `emclass simulate`: synthetic particle datasets with ground truth, for measuring
//! classification accuracy at realistic SNR with CTF, junk and duplicates.
//!
//! What a dataset holds (see [`SimulateConfig`] for every parameter):
//! - **views2d**: `num_views` projections of one asymmetric blob object from directions
//!   spread far apart on the sphere, each particle in-plane rotated (RELION psi uniform in
//!   [0, 2π)) and shifted (origin uniform in a disc of `max_shift_px`). Class = `gt/view`.
//! - **hetero3d**: `num_states` versions of the object differing by a domain, uniformly
//!   random poses on SO(3) given to the classifier in `alignments3D/pose` / `shift`.
//!   Class = `gt/state`.
//! - In both: junk (`gt/is_junk`; random aggregates, contamination, carbon edges, with the
//!   same signal power as particles), duplicates (`gt/duplicate_of`), a CTF per particle
//!   from its micrograph's defocus, and unit white Gaussian noise at the requested SNR
//!   (masked signal variance after CTF / noise variance; see [`SimulateConfig::snr`] and
//!   the `render` module).
//!
//! Files written into the output folder: `particles.h5` (images + table, via
//! [`crate::dataset::DatasetWriter`]), `ground_truth.csv`, and `volumes/` (hetero3d:
//! `state_00.mrc`, …; views2d: `phantom.mrc` and `views.mrcs`, the CTF-free projection of
//! each view at psi = 0), all at the scale of the particle signal.
//!
//! Fields of `particles.h5` (one row per particle; `uid` unique, deterministic from the seed):
//! - `blob/shape` (box, box), `blob/psize_A`, `blob/sign` = 1; `blob/image_row` is set by
//!   the dataset writer.
//! - `ctf/*` (with `ctf: true`): `accel_kv`, `cs_mm`, `amp_contrast`, `df1_A`, `df2_A`,
//!   `df_angle_rad`, `phase_shift_rad` = 0, `bfactor`, `scale` = 1, `exp_group_id` = 1.
//! - `location/micrograph_uid`, `micrograph_path` (virtual `micrographs/mic_NNNNNN.mrc`; no
//!   such file exists), `micrograph_shape` (ny, nx), `micrograph_psize_A`, `center_x_frac`,
//!   `center_y_frac` (pick position / micrograph size).
//! - Ground truth: `gt/view` (views2d) or `gt/state` (hetero3d), I32, −1 for junk;
//!   `gt/is_junk` (U32 0/1); `gt/is_duplicate` (U32 0/1); `gt/duplicate_of` (U64: the uid
//!   of the original pick for a duplicate, the row's own uid otherwise); `gt/psi_rad`
//!   (F32); `gt/shift_px` (F32 ×2, RELION origin x, y); `gt/pose` (F32 ×3, pose of the
//!   projection matrix).
//! - hetero3d also: `alignments3D/pose`, `alignments3D/shift` (= `gt/pose`, `gt/shift_px`)
//!   and `alignments3D/psize_A`, the known poses a 3D classification without alignment uses.
//!
//! `ground_truth.csv` has the same ground truth, one line per row in row order, with
//! columns `uid, view|state, is_junk, is_duplicate, duplicate_of, psi_rad, shift_x_px,
//! shift_y_px, df1_A, df2_A, df_angle_rad` (empty without CTF), `micrograph_uid,
//! center_x_px, center_y_px, pose_x, pose_y, pose_z`.
//!
//! Conventions: images have RELION's contrast (protein white; the CTF is RELION's, +A at
//! k = 0; `blob/sign` = 1). A particle's centre is at pixel (box/2 − origin_x,
//! box/2 − origin_y) with origin = `gt/shift_px` (RELION's origin in pixels). Poses are
//! RELION matrices A(rot, tilt, psi) projected as in [`phantom`]; `gt/pose` and
//! `alignments3D/pose` store them with [`crate::numerics::rotation::matrix_to_pose`].
//!
//! Determinism: every random value comes from a ChaCha8 stream keyed by (seed, purpose) and
//! numbered by particle row or micrograph ([`rng`]), so a dataset depends only on its
//! config — not on the batch size or the number of threads. Images are generated and
//! written `batch_size` at a time; only the metadata of all rows is held in memory.

pub mod config;
mod phantom;
mod plan;
mod render;
mod rng;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array3;
use rayon::prelude::*;
use serde::Serialize;

pub use config::{SimDtype, SimMode, SimulateConfig};

use crate::dataset::{Column, ColumnData, DatasetAttrs, DatasetWriter, ImageSpec, ParticleTable};
use crate::error::{Error, Result};
use crate::numerics::rotation::matrix_to_pose;
use phantom::Phantom;
use plan::{micrograph_uid, particle_uid, Plan};
use render::{min_sigma_a, pick_matrix, Renderer};

/// Number of candidate objects a views2d simulation chooses from.
const OBJECT_CANDIDATES: u64 = 4;

/// What a simulation produced (for the job's summary.json and log).
#[derive(Clone, Debug, Serialize)]
pub struct SimSummary {
    pub mode: SimMode,
    pub num_particles: usize,
    pub num_junk: usize,
    pub num_duplicates: usize,
    pub num_micrographs: usize,
    /// Particles per view (views2d) or state (hetero3d), junk excluded, duplicates included.
    pub class_counts: Vec<usize>,
    /// Requested SNR (mean masked signal variance over unit noise variance).
    pub snr: f64,
    /// Factor applied to the projections (mass per pixel) to reach `snr`.
    pub signal_amplitude: f64,
    /// Files written, relative to the output folder (which a job renames when complete).
    pub particles_file: PathBuf,
    pub ground_truth_file: PathBuf,
    pub volume_files: Vec<PathBuf>,
    pub seconds: f64,
}

/// A prepared simulation: the object, the plan of every row and a calibrated renderer.
/// Images of any row range can be drawn from it, in memory ([`Simulation::images`]) or
/// streamed to disk by [`run`].
pub struct Simulation {
    cfg: SimulateConfig,
    phantom: Phantom,
    plan: Plan,
    renderer: Renderer,
}

impl Simulation {
    /// Validates `cfg` and prepares the object, the plan and the SNR calibration.
    pub fn new(cfg: &SimulateConfig) -> Result<Simulation> {
        cfg.validate(Path::new("simulate config"))?;
        let radius_a = cfg.particle_diameter() / 2.0;
        let (n_domains, frac) = match cfg.mode {
            SimMode::Views2d => (0, 0.0),
            SimMode::Hetero3d => (cfg.num_states - 1, cfg.domain_mass_fraction as f64),
        };
        let views = match cfg.mode {
            SimMode::Views2d => plan::choose_views(cfg.seed, cfg.num_views),
            SimMode::Hetero3d => Vec::new(),
        };
        let make = |candidate: u64| {
            Phantom::generate(
                cfg.seed,
                candidate,
                cfg.phantom_blobs,
                radius_a,
                min_sigma_a(cfg.psize_a as f64),
                n_domains,
                frac,
            )
        };
        // views2d: of a few seeded candidate objects, keep the one whose views are the
        // most distinct (after in-plane alignment), so that every seed gives views that a
        // classifier can tell apart.
        let phantom = match cfg.mode {
            SimMode::Views2d if views.len() > 1 => (0..OBJECT_CANDIDATES)
                .into_par_iter()
                .map(|c| {
                    let p = make(c);
                    (
                        phantom::max_cross_view_correlation(p.core(), &views, radius_a),
                        p,
                    )
                })
                .collect::<Vec<_>>()
                .into_iter()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, p)| p)
                .expect("at least one candidate"),
            _ => make(0),
        };
        let plan = plan::build(cfg, &views);
        let renderer = Renderer::new(cfg, &phantom, &views);
        Ok(Simulation {
            cfg: cfg.clone(),
            phantom,
            plan,
            renderer,
        })
    }

    /// Number of particles.
    pub fn len(&self) -> usize {
        self.plan.picks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plan.picks.is_empty()
    }

    /// The configuration simulated.
    pub fn config(&self) -> &SimulateConfig {
        &self.cfg
    }

    fn draw(&self, rows: Range<usize>, noisy: bool) -> Array3<f32> {
        assert!(
            rows.start <= rows.end && rows.end <= self.len(),
            "rows {rows:?} outside 0..{}",
            self.len()
        );
        let n = self.cfg.box_px;
        let nn = n * n;
        let mut buf = vec![0.0f32; rows.len() * nn];
        buf.par_chunks_mut(nn)
            .zip(rows.clone().into_par_iter())
            .for_each(|(img, r)| {
                let p = &self.plan.picks[r];
                if noisy {
                    self.renderer.image_into(r, p, img);
                } else {
                    self.renderer.signal_into(p, img);
                }
            });
        Array3::from_shape_vec((rows.len(), n, n), buf).expect("buffer has rows × box × box values")
    }

    /// The images (signal + noise) of `rows`, `(rows, box, box)`, drawn in parallel.
    pub fn images(&self, rows: Range<usize>) -> Array3<f32> {
        self.draw(rows, true)
    }

    /// The noise-free signals (projection, CTF, scaling) of `rows`.
    pub fn signals(&self, rows: Range<usize>) -> Array3<f32> {
        self.draw(rows, false)
    }

    /// Ground-truth class of each row: the view or state, −1 for junk.
    pub fn classes(&self) -> Vec<i32> {
        self.plan.picks.iter().map(|p| p.class).collect()
    }

    /// The true volumes at the scale of the particle signal: `("state_00", vol)`, … in
    /// hetero3d, `("phantom", vol)` in views2d.
    pub fn volumes(&self) -> Vec<(String, Array3<f32>)> {
        let (n, psize) = (self.cfg.box_px, self.cfg.psize_a as f64);
        let amp = self.renderer.amplitude() as f32;
        let scaled =
            |blobs: &[phantom::Blob]| phantom::render_volume(blobs, n, psize).mapv(|v| v * amp);
        match self.cfg.mode {
            SimMode::Views2d => vec![("phantom".to_string(), scaled(self.phantom.core()))],
            SimMode::Hetero3d => (0..self.cfg.num_states)
                .map(|s| (format!("state_{s:02}"), scaled(&self.phantom.state(s))))
                .collect(),
        }
    }

    /// views2d: the CTF-free, centred projection of each view at psi = 0, at the scale of
    /// the signal, `(num_views, box, box)`. Empty in hetero3d.
    pub fn view_projections(&self) -> Array3<f32> {
        let n = self.cfg.box_px;
        let views = &self.plan.views;
        let mut out = Array3::<f32>::zeros((views.len(), n, n));
        let amp = self.renderer.amplitude() as f32;
        for (v, mut img) in views.iter().zip(out.outer_iter_mut()) {
            let a = crate::numerics::rotation::euler_deg_to_matrix(
                v[0].to_degrees(),
                v[1].to_degrees(),
                0.0,
            );
            let c = (n / 2) as f64;
            let buf = img
                .as_slice_mut()
                .expect("row of a fresh array is contiguous");
            phantom::project_into(
                self.phantom.core(),
                &a,
                [c, c],
                self.cfg.psize_a as f64,
                n,
                buf,
            );
            buf.iter_mut().for_each(|x| *x *= amp);
        }
        out
    }

    /// The metadata table of every row (see the module doc and `docs/FORMAT.md` for the
    /// fields).
    pub fn table(&self) -> ParticleTable {
        let cfg = &self.cfg;
        let picks = &self.plan.picks;
        let n = picks.len();
        let uids: Vec<u64> = (0..n).map(|r| particle_uid(cfg.seed, r)).collect();
        let mut t = ParticleTable::new(uids.clone());
        let f32col = |f: &dyn Fn(&plan::Pick) -> f32| picks.iter().map(f).collect::<Vec<f32>>();
        let rep = |v: &[u32]| -> Vec<u32> { (0..n).flat_map(|_| v.iter().copied()).collect() };
        let b = cfg.box_px as u32;
        t.set("blob/shape", Column::new(ColumnData::U32(rep(&[b, b])), 2));
        t.set_f32("blob/psize_A", vec![cfg.psize_a; n]);
        t.set_f32("blob/sign", vec![1.0; n]);
        if cfg.ctf {
            t.set_f32("ctf/accel_kv", vec![cfg.accel_kv; n]);
            t.set_f32("ctf/cs_mm", vec![cfg.cs_mm; n]);
            t.set_f32("ctf/amp_contrast", vec![cfg.amp_contrast; n]);
            t.set_f32("ctf/df1_A", f32col(&|p| p.ctf[0]));
            t.set_f32("ctf/df2_A", f32col(&|p| p.ctf[1]));
            t.set_f32("ctf/df_angle_rad", f32col(&|p| p.ctf[2]));
            t.set_f32("ctf/phase_shift_rad", vec![0.0; n]);
            t.set_f32("ctf/bfactor", vec![cfg.bfactor_a2; n]);
            t.set_f32("ctf/scale", vec![1.0; n]);
            t.set_u32("ctf/exp_group_id", vec![1; n]);
        }
        let [mny, mnx] = cfg.micrograph_shape_px;
        t.set(
            "location/micrograph_uid",
            Column::scalar(ColumnData::U64(
                picks
                    .iter()
                    .map(|p| micrograph_uid(cfg.seed, p.mic as usize))
                    .collect(),
            )),
        );
        t.set_str(
            "location/micrograph_path",
            picks.iter().map(|p| micrograph_path(p.mic)).collect(),
        );
        t.set(
            "location/micrograph_shape",
            Column::new(ColumnData::U32(rep(&[mny as u32, mnx as u32])), 2),
        );
        t.set_f32("location/micrograph_psize_A", vec![cfg.psize_a; n]);
        t.set_f32(
            "location/center_x_frac",
            f32col(&|p| (p.pos_px[0] as f64 / mnx as f64) as f32),
        );
        t.set_f32(
            "location/center_y_frac",
            f32col(&|p| (p.pos_px[1] as f64 / mny as f64) as f32),
        );

        let class_key = match cfg.mode {
            SimMode::Views2d => "gt/view",
            SimMode::Hetero3d => "gt/state",
        };
        t.set(
            class_key,
            Column::scalar(ColumnData::I32(picks.iter().map(|p| p.class).collect())),
        );
        t.set_u32(
            "gt/is_junk",
            picks.iter().map(|p| u32::from(p.is_junk())).collect(),
        );
        t.set_u32(
            "gt/is_duplicate",
            picks
                .iter()
                .enumerate()
                .map(|(r, p)| u32::from(p.source as usize != r))
                .collect(),
        );
        t.set(
            "gt/duplicate_of",
            Column::scalar(ColumnData::U64(
                picks.iter().map(|p| uids[p.source as usize]).collect(),
            )),
        );
        t.set_f32("gt/psi_rad", f32col(&|p| p.euler_rad[2]));
        let shifts: Vec<f32> = picks.iter().flat_map(|p| p.shift_px).collect();
        t.set(
            "gt/shift_px",
            Column::new(ColumnData::F32(shifts.clone()), 2),
        );
        let poses: Vec<f32> = picks
            .iter()
            .flat_map(|p| matrix_to_pose(&pick_matrix(p)).map(|x| x as f32))
            .collect();
        t.set("gt/pose", Column::new(ColumnData::F32(poses.clone()), 3));
        if cfg.mode == SimMode::Hetero3d {
            t.set("alignments3D/pose", Column::new(ColumnData::F32(poses), 3));
            t.set(
                "alignments3D/shift",
                Column::new(ColumnData::F32(shifts), 2),
            );
            t.set_f32("alignments3D/psize_A", vec![cfg.psize_a; n]);
        }
        t
    }

    /// Writes the ground truth as CSV (one row per particle, header line first) to `path`
    /// through `<path>.tmp` and a rename.
    pub fn write_ground_truth_csv(&self, path: &Path) -> Result<()> {
        let tmp = tmp_path(path);
        let res = self
            .write_csv_to(&tmp)
            .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn write_csv_to(&self, path: &Path) -> Result<()> {
        let cfg = &self.cfg;
        let io = |e| Error::io(path, e);
        let mut w = BufWriter::new(File::create(path).map_err(io)?);
        let class_key = match cfg.mode {
            SimMode::Views2d => "view",
            SimMode::Hetero3d => "state",
        };
        writeln!(
            w,
            "uid,{class_key},is_junk,is_duplicate,duplicate_of,psi_rad,shift_x_px,shift_y_px,df1_A,df2_A,df_angle_rad,\
             micrograph_uid,center_x_px,center_y_px,pose_x,pose_y,pose_z"
        )
        .map_err(io)?;
        for (r, p) in self.plan.picks.iter().enumerate() {
            let pose = matrix_to_pose(&pick_matrix(p)).map(|x| x as f32);
            let ctf = if cfg.ctf {
                format!("{},{},{}", p.ctf[0], p.ctf[1], p.ctf[2])
            } else {
                ",,".to_string()
            };
            writeln!(
                w,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                particle_uid(cfg.seed, r),
                p.class,
                u8::from(p.is_junk()),
                u8::from(p.source as usize != r),
                particle_uid(cfg.seed, p.source as usize),
                p.euler_rad[2],
                p.shift_px[0],
                p.shift_px[1],
                ctf,
                micrograph_uid(cfg.seed, p.mic as usize),
                p.pos_px[0],
                p.pos_px[1],
                pose[0],
                pose[1],
                pose[2]
            )
            .map_err(io)?;
        }
        w.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    }

    fn summary(&self) -> SimSummary {
        let picks = &self.plan.picks;
        let mut class_counts = vec![0usize; self.cfg.num_classes()];
        for p in picks.iter().filter(|p| !p.is_junk()) {
            class_counts[p.class as usize] += 1;
        }
        SimSummary {
            mode: self.cfg.mode,
            num_particles: picks.len(),
            num_junk: picks.iter().filter(|p| p.is_junk()).count(),
            num_duplicates: picks
                .iter()
                .enumerate()
                .filter(|(r, p)| p.source as usize != *r)
                .count(),
            num_micrographs: self.plan.num_micrographs,
            class_counts,
            snr: self.cfg.snr as f64,
            signal_amplitude: self.renderer.amplitude(),
            particles_file: PathBuf::new(),
            ground_truth_file: PathBuf::new(),
            volume_files: Vec::new(),
            seconds: 0.0,
        }
    }
}

/// The (virtual) micrograph file name of micrograph `m`; no such file is written.
fn micrograph_path(m: u32) -> String {
    format!("micrographs/mic_{m:06}.mrc")
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Simulates `cfg` into the existing folder `out_dir`: `particles.h5`, `ground_truth.csv`
/// and `volumes/`. Images stream to disk `batch_size` at a time.
pub fn run(cfg: &SimulateConfig, out_dir: &Path) -> Result<SimSummary> {
    let t0 = Instant::now();
    let sim = Simulation::new(cfg)?;
    let n = sim.len();
    log::info!(
        "simulate: {} particles, mode {:?}, box {} px at {} Å/px, SNR {}, seed {}",
        n,
        cfg.mode,
        cfg.box_px,
        cfg.psize_a,
        cfg.snr,
        cfg.seed
    );
    let particles_file = out_dir.join("particles.h5");
    let nn4 = cfg.box_px * cfg.box_px * 4;
    let spec = ImageSpec {
        box_px: cfg.box_px,
        psize_a: cfg.psize_a,
        dtype: cfg.dtype.into(),
        gzip: cfg.gzip,
        // About 1 MiB per chunk, whole images.
        chunk_particles: ((1 << 20) / nn4).clamp(1, cfg.batch_size),
    };
    let mut writer = DatasetWriter::create(&particles_file, spec)?;
    // Batch k is written while batch k + 1 is drawn (two batches of images in memory).
    let t_img = Instant::now();
    let batch = |start: usize| start..(start + cfg.batch_size).min(n);
    let mut current = sim.images(batch(0));
    let mut written = 0;
    while written < n {
        let next_start = written + current.dim().0;
        let (next, res) = rayon::join(
            || (next_start < n).then(|| sim.images(batch(next_start))),
            || writer.append_images(current.view()),
        );
        res?;
        written = next_start;
        let secs = t_img.elapsed().as_secs_f64();
        let eta = secs / written as f64 * (n - written) as f64;
        log::info!(
            "simulate: {written}/{n} particles ({:.0}%), {secs:.1} s, ETA {eta:.0} s",
            100.0 * written as f64 / n as f64
        );
        match next {
            Some(imgs) => current = imgs,
            None => break,
        }
    }
    let attrs = DatasetAttrs {
        blob_root: None,
        source: format!(
            "emclass simulate (mode {:?}, seed {}, {} particles)",
            cfg.mode, cfg.seed, n
        ),
    };
    let images_s = t_img.elapsed().as_secs_f64();
    let t = Instant::now();
    writer.finish(sim.table(), &attrs)?;
    log::info!(
        "simulate: images drawn and written in {images_s:.1} s, table in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let ground_truth_file = out_dir.join("ground_truth.csv");
    sim.write_ground_truth_csv(&ground_truth_file)?;

    let vol_dir = out_dir.join("volumes");
    std::fs::create_dir_all(&vol_dir).map_err(|e| Error::io(&vol_dir, e))?;
    let mut volume_files = Vec::new();
    for (name, vol) in sim.volumes() {
        let path = vol_dir.join(format!("{name}.mrc"));
        crate::formats::mrc::write_volume(&path, vol.view(), cfg.psize_a)?;
        volume_files.push(path);
    }
    if cfg.mode == SimMode::Views2d {
        let path = vol_dir.join("views.mrcs");
        crate::formats::mrc::write_stack(&path, sim.view_projections().view(), cfg.psize_a)?;
        volume_files.push(path);
    }
    let mut summary = sim.summary();
    let relative = |p: &Path| p.strip_prefix(out_dir).unwrap_or(p).to_path_buf();
    summary.particles_file = relative(&particles_file);
    summary.ground_truth_file = relative(&ground_truth_file);
    summary.volume_files = volume_files.iter().map(|p| relative(p)).collect();
    summary.seconds = t0.elapsed().as_secs_f64();
    log::info!(
        "simulate: wrote {} particles ({} junk, {} duplicates) in {:.1} s",
        n,
        summary.num_junk,
        summary.num_duplicates,
        summary.seconds
    );
    Ok(summary)
}

#[cfg(test)]
mod tests;
