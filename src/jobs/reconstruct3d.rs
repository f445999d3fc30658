//! `emclass reconstruct3d`: reconstructs the classes of a 3D classification at the full box
//! ([`crate::reconstruct3d`]). Every rank reads its own rows' class assignments, scales and
//! particles, back-projects them, and the sums are all-reduced once; rank 0 then makes each
//! class's maps and writes the output folder: `class_XX_half_A.mrc`, `class_XX_half_B.mrc`,
//! `class_XX_map.mrc` (unfiltered), `class_XX_map_filtered.mrc` (FSC-weighted, low-passed at
//! FSC 0.143), `class_XX_mask.mrc` (XX the input class index), `fsc.csv`, `plots/fsc.png`,
//! `plots/class_maps.png`, `summary.json` and `config.used.yaml`. The input is only read.

use std::path::Path;

use ndarray::Array3;
use serde_json::json;

use crate::classify3d::model::WEIGHT;
use crate::classify3d::particles::input_scales;
use crate::cli::JobArgs;
use crate::comm::Comm;
use crate::config;
use crate::em::stats::Stats;
use crate::error::{Error, Result};
use crate::formats::mrc::{read_volume, write_volume};
use crate::jobs::collective;
use crate::jobs::em_shell::{open_input, output_dir, particle_source, Input};
use crate::jobs::output::{check_writable, OutputDir};
use crate::numerics::symmetry::point_group;
use crate::numerics::volume::check_mask;
use crate::particles::{Needs, WorkGrid};
use crate::reconstruct3d::assignments::Assignments;
use crate::reconstruct3d::config::{Reconstruct3dConfig, ScaleSource};
use crate::reconstruct3d::maps::{class_maps, ClassMaps, MaskParams};
use crate::reconstruct3d::sums::{self, accumulate, Sources, COUNT};
use crate::report::plot::{lines_png, PLOT_SIZE_PX};
use crate::report::plots3d::volume_slices_png;

/// Runs the job on every rank.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let cfg: Reconstruct3dConfig = collective(comm, config::load(&args.config, &args.set))?;
    collective(comm, check_writable(&cfg.output, args.overwrite))?;
    let Input {
        n_total,
        rows,
        box_px,
        psize,
        has_ctf,
    } = open_input(comm, &cfg.input)?;
    // The full box: every shell up to Nyquist.
    let grid = WorkGrid::new(box_px, psize, 2.0 * psize);
    let assignments = collective(
        comm,
        Assignments::read(&cfg.input, rows.clone(), cfg.weighting),
    )?;
    let mut k = [assignments.local_classes() as f64];
    comm.all_reduce_max_f64(&mut k);
    let num_input_classes = k[0] as usize;
    let selected = collective(comm, cfg.selected(&args.config, num_input_classes))?;
    let scale = collective(
        comm,
        match cfg.per_particle_scale {
            ScaleSource::Input => input_scales(&cfg.input, rows.clone()),
            ScaleSource::None => Ok(vec![1.0; rows.len()]),
        },
    )?;
    let syms = collective(
        comm,
        point_group(&cfg.symmetry)
            .map_err(|e| Error::config(&args.config, "symmetry", e.to_string())),
    )?;
    let given_mask = collective(
        comm,
        match (&cfg.solvent_mask, comm.is_root()) {
            (Some(p), true) => read_mask(p, &args.config, box_px, psize).map(Some),
            _ => Ok(None),
        },
    )?;
    if comm.is_root() {
        log::info!(
            "reconstruct3d: {n_total} particles on {} rank(s), classes {selected:?} of {num_input_classes} ({:?} weighting), box {box_px} px at {psize} Å, symmetry {} ({} operators); Fourier sums {:.2} GiB per rank",
            comm.size(),
            cfg.weighting,
            cfg.symmetry,
            syms.len(),
            sums::bytes(selected.len(), &grid) as f64 / (1u64 << 30) as f64
        );
        if !has_ctf {
            log::info!(
                "{}: no ctf/* fields, reconstructing without CTF correction",
                cfg.input.display()
            );
        }
    }
    let needs = Needs {
        ctf: has_ctf,
        poses: true,
    };
    let source = particle_source(comm, &cfg.input, rows, &grid, needs, cfg.max_resident_gb)?;
    let out = output_dir(comm, args, &cfg.output)?;
    let sources = Sources {
        source: &source,
        assignments: &assignments,
        weighting: cfg.weighting,
        selected: &selected,
        scale: &scale,
        syms: &syms,
    };
    let st = accumulate(&sources, &grid, comm)?;
    drop(source);
    let job = Job {
        cfg: &cfg,
        grid: &grid,
        selected: &selected,
        n_total,
        num_input_classes,
        given_mask: given_mask.as_ref(),
    };
    collective(
        comm,
        match out {
            Some(out) => job.write_outputs(out, &st),
            None => Ok(()),
        },
    )
}

/// What the output needs besides the sums.
struct Job<'a> {
    cfg: &'a Reconstruct3dConfig,
    grid: &'a WorkGrid,
    selected: &'a [usize],
    n_total: usize,
    num_input_classes: usize,
    /// `solvent_mask` (rank 0), or None to generate one per class.
    given_mask: Option<&'a Array3<f32>>,
}

/// One class's line of `summary.json` and what the shared plots and table need.
struct Done {
    json: serde_json::Value,
    fsc: Vec<f64>,
    res_0143_a: f64,
    filtered: Array3<f32>,
}

impl Job<'_> {
    /// Rank 0: every class's maps, the FSC table and plots, the summary; then the folder is
    /// renamed into place.
    fn write_outputs(&self, out: OutputDir, st: &Stats) -> Result<()> {
        let dir = out.path().to_path_buf();
        let plots = dir.join("plots");
        std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
        let mut done = Vec::with_capacity(self.selected.len());
        for (j, &c) in self.selected.iter().enumerate() {
            done.push(self.write_class(&dir, st, j, c)?);
        }
        let curves: Vec<(usize, &[f64])> = self
            .selected
            .iter()
            .zip(&done)
            .map(|(c, d)| (*c, d.fsc.as_slice()))
            .collect();
        std::fs::write(dir.join("fsc.csv"), fsc_csv(self.grid, &curves))
            .map_err(|e| Error::io(dir.join("fsc.csv"), e))?;
        let res: Vec<f64> = done.iter().map(|d| d.res_0143_a).collect();
        fsc_plot(&plots.join("fsc.png"), self.grid, &curves, &res)?;
        let slices: Vec<(String, Array3<f32>)> = self
            .selected
            .iter()
            .zip(done.iter_mut())
            .map(|(c, d)| (format!("class {c}"), std::mem::take(&mut d.filtered)))
            .collect();
        volume_slices_png(
            &plots.join("class_maps.png"),
            "FSC-weighted class maps, central slices",
            &slices,
            false,
        )?;
        let summary = self.summary(done.into_iter().map(|d| d.json).collect());
        out.finish(&summary, self.cfg, "reconstruct3d")
    }

    /// The maps of output class `j` (input class `c`) into `dir`, and its summary.
    fn write_class(&self, dir: &Path, st: &Stats, j: usize, c: usize) -> Result<Done> {
        let (weight, count) = (st.segment(WEIGHT)?[j], st.segment(COUNT)?[j]);
        let mp = MaskParams {
            lowpass_a: self.cfg.solvent_mask_lowpass_a,
            threshold: self.cfg.solvent_mask_threshold,
            dilate_a: self.cfg.solvent_mask_dilate_a,
            soft_a: self.cfg.solvent_mask_soft_a,
        };
        let m = class_maps(
            sums::halves(st, self.grid, j)?,
            self.grid,
            &mp,
            self.given_mask,
        );
        let ps = self.grid.psize_a() as f32;
        let ClassMaps {
            halves,
            map,
            filtered,
            mask,
            ..
        } = &m;
        for (name, v) in [
            ("half_A", &halves[0]),
            ("half_B", &halves[1]),
            ("map", map),
            ("map_filtered", filtered),
            ("mask", mask),
        ] {
            write_volume(dir.join(format!("class_{c:02}_{name}.mrc")), v.view(), ps)?;
        }
        let empty = weight <= 0.0;
        if empty {
            log::warn!("class {c}: no particle has weight in it; its maps are empty");
        } else if let Some(why) = &m.mask_fallback {
            log::warn!("class {c}: solvent mask: {why}; using a soft sphere of 0.9 × the box");
        }
        log::info!(
            "class {c}: {count} particles (weight {weight:.1}), FSC 0.143 at {:.2} Å, 0.5 at {:.2} Å (unmasked 0.143 at {:.2} Å)",
            m.res_0143_a,
            m.res_05_a,
            m.res_0143_unmasked_a
        );
        let known = |r: f64| (!empty).then_some(r);
        let json = json!({
            "class": c,
            "particles": count,
            "weight": weight,
            "fsc0143_res_A": known(m.res_0143_a),
            "fsc05_res_A": known(m.res_05_a),
            "fsc0143_unmasked_res_A": known(m.res_0143_unmasked_a),
            "mask": match (self.given_mask, &m.mask_fallback) {
                (Some(_), _) => "input",
                (None, Some(_)) => "sphere",
                (None, None) => "generated",
            },
            "mask_fraction": m.mask.sum() as f64 / m.mask.len() as f64,
        });
        Ok(Done {
            json,
            res_0143_a: m.res_0143_a,
            fsc: m.fsc,
            filtered: m.filtered,
        })
    }

    /// `summary.json`: sizes, settings and one entry per class.
    fn summary(&self, classes: Vec<serde_json::Value>) -> serde_json::Value {
        let cfg = self.cfg;
        let pick = |key: &str| -> Vec<serde_json::Value> {
            classes.iter().map(|c| c[key].clone()).collect()
        };
        json!({
            "job": "reconstruct3d",
            "input": cfg.input,
            "num_particles": self.n_total,
            "num_input_classes": self.num_input_classes,
            "classes": self.selected,
            "weighting": cfg.weighting,
            "per_particle_scale": cfg.per_particle_scale,
            "symmetry": cfg.symmetry,
            "box_px": self.grid.n,
            "psize_A": self.grid.psize_a(),
            "class_particles": pick("particles"),
            "class_weight": pick("weight"),
            "class_fsc0143_res_A": pick("fsc0143_res_A"),
            "class_fsc05_res_A": pick("fsc05_res_A"),
            "per_class": classes,
        })
    }
}

/// The `solvent_mask` file: a cube of the particles' box (`box_px`, at their pixel size
/// `psize` within 1% when its header has one) holding mask values (finite, in [0, 1]).
fn read_mask(p: &Path, cfg_path: &Path, box_px: usize, psize: f64) -> Result<Array3<f32>> {
    let (vol, ps) = read_volume(p)?;
    let (a, b, c) = vol.dim();
    if (a, b, c) != (box_px, box_px, box_px) {
        return Err(Error::config(
            cfg_path,
            "solvent_mask",
            format!(
                "{}: the mask is {c}×{b}×{a} voxels; it must be the particles' box, {box_px}³",
                p.display()
            ),
        ));
    }
    if ps > 0.0 && (ps as f64 - psize).abs() > 0.01 * psize {
        return Err(Error::config(
            cfg_path,
            "solvent_mask",
            format!(
                "{}: the mask's pixel size is {ps} Å but the particles' is {psize} Å",
                p.display()
            ),
        ));
    }
    check_mask(vol.view(), &p.display().to_string())
        .map_err(|e| Error::config(cfg_path, "solvent_mask", e.to_string()))?;
    Ok(vol.mapv(|v| v.clamp(0.0, 1.0)))
}

/// `fsc.csv`: one row per shell `1..=n/2` (shell 0 has no resolution): the shell, its
/// resolution in Å and the solvent-masked half-map FSC of each class (`class_XX` columns).
fn fsc_csv(grid: &WorkGrid, curves: &[(usize, &[f64])]) -> String {
    let mut s = String::from("shell,resolution_A");
    for (c, _) in curves {
        s += &format!(",class_{c:02}");
    }
    s += "\n";
    for shell in 1..=grid.n / 2 {
        s += &format!("{shell},{:.4}", grid.shell_res_a(shell));
        for (_, f) in curves {
            s += &format!(",{:.6}", f.get(shell).copied().unwrap_or(0.0));
        }
        s += "\n";
    }
    s
}

/// The half-map FSC of every class against spatial frequency, labelled with its 0.143
/// resolution.
fn fsc_plot(path: &Path, grid: &WorkGrid, curves: &[(usize, &[f64])], res: &[f64]) -> Result<()> {
    let side = grid.n as f64 * grid.psize_a();
    let pts: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .zip(res)
        .map(|((c, f), r)| {
            let p = (1..f.len()).map(|s| (s as f64 / side, f[s])).collect();
            (format!("class {c} ({r:.1} Å at 0.143)"), p)
        })
        .collect();
    let series: Vec<(&str, &[(f64, f64)])> = pts
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    lines_png(
        path,
        "Half-map FSC per class (solvent-masked), full box",
        "spatial frequency (1/Å)",
        "FSC",
        &series,
        false,
        PLOT_SIZE_PX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fsc_table_has_a_row_per_shell_and_a_column_per_class() {
        let grid = WorkGrid::new(8, 2.0, 4.0);
        let a = [1.0, 0.9, 0.5, 0.2, 0.1];
        let b = [1.0, 0.8, 0.4, 0.0, -0.1];
        let t = fsc_csv(&grid, &[(0, &a), (3, &b)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "shell,resolution_A,class_00,class_03");
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1], "1,16.0000,0.900000,0.800000");
        assert_eq!(lines[4], "4,4.0000,0.100000,-0.100000");
    }
}
