//! `emclass classify2d`: loads the config and each rank's share of the particles, runs the
//! 2D classification engine, and writes the output folder on rank 0: `particles.h5`
//! (input fields + `alignments2D/*`, referencing the input images), `duplicates.h5` when
//! duplicates are removed, `classes.mrcs`, `plots/`, `summary.json`, `config.used.yaml`.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Axis};
use serde_json::json;

use crate::classify2d::checkpoint::{self, Checkpoint};
use crate::classify2d::config::Classify2dConfig;
use crate::classify2d::duplicates;
use crate::classify2d::engine::{Engine, IterationView, Outcome, Results};
use crate::classify2d::grid::WorkGrid;
use crate::classify2d::model::PostProcess;
use crate::classify2d::particles;
use crate::cli::JobArgs;
use crate::comm::{partition, Comm};
use crate::config::{self, JobConfig};
use crate::dataset::store::write_referencing;
use crate::dataset::{Column, ColumnData, Dataset, DatasetAttrs};
use crate::em::metrics::adjusted_rand_index;
use crate::error::{Error, Result};
use crate::formats::mrc::write_stack;
use crate::jobs::collective;
use crate::jobs::output::{check_writable, OutputDir};
use crate::numerics::fft::{irfft2, rfft2};
use crate::numerics::frc::frc_resolution_a;
use crate::numerics::image2d::fourier_pad;
use crate::numerics::mask::soft_circular_mask;
use crate::report::montage::{class_label, montage_png, MontageStyle};
use crate::report::plot::{histogram_png, lines_png, PLOT_SIZE_PX};

/// Runs the job on every rank.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let mut cfg: Classify2dConfig = collective(comm, config::load(&args.config, &args.set))?;
    if let Some(dir) = &args.resume {
        cfg.output = dir.clone();
    }
    let n_total = collective(comm, Dataset::count(&cfg.input))?;
    if n_total == 0 {
        return collective(
            comm,
            Err(Error::file(&cfg.input, "has no particles to classify")),
        );
    }
    let rows = partition(n_total, comm.size(), comm.rank());
    let ds = collective(comm, Dataset::open_range(&cfg.input, rows.clone()))?;
    let (box_px, psize) = (ds.box_px(), ds.psize_a() as f64);
    let checked = cfg.validate_for(&args.config, box_px, psize).and_then(|_| {
        if cfg.num_classes > n_total {
            return Err(Error::config(
                &args.config,
                "num_classes",
                format!("{} classes for {n_total} particles", cfg.num_classes),
            ));
        }
        crate::backend::select(cfg.backend, &args.config, "classify2d")
    });
    let backend = collective(comm, checked)?;
    // The output folder (rank 0), refused before any work if it exists; or, with --resume,
    // the staging folder of the killed run and its checkpoint (read by rank 0, sent to all).
    let out = if comm.is_root() {
        collective(
            comm,
            match &args.resume {
                Some(dir) => OutputDir::resume(dir),
                None => check_writable(&cfg.output, args.overwrite)
                    .and_then(|_| OutputDir::create(cfg.output(), args.overwrite)),
            }
            .map(Some),
        )?
    } else {
        collective(comm, Ok(None))?
    };
    let config_yaml = config_without_output(&cfg);
    let resume = match &args.resume {
        Some(dir) => Some(collective(
            comm,
            read_checkpoint(comm, out.as_ref().map(|o| o.path()), dir, &config_yaml),
        )?),
        None => None,
    };
    let grid = WorkGrid::new(box_px, psize, cfg.max_res_a);
    log::info!(
        "classify2d: {n_total} particles on {} rank(s), box {box_px} px at {psize} Å → working box {} px ({:.2} Å/px, {:.1} Å)",
        comm.size(),
        grid.n,
        grid.psize_a(),
        grid.shell_res_a(grid.k_max)
    );
    let parts = collective(
        comm,
        particles::load(&ds, rows.clone(), &grid, cfg.ctf_correct),
    )?;
    let post = collective(comm, post_process(&cfg, &args.config, &grid, box_px, psize))?;
    let engine = Engine {
        cfg: &cfg,
        grid: &grid,
        particles: &parts,
        comm,
        n_total,
        post,
        backend: backend.as_ref(),
    };
    let plots = out.as_ref().map(|o| o.path().join("plots"));
    if let Some(p) = &plots {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let staging = out.as_ref().map(|o| o.path().to_path_buf());
    let outcome = engine.run(resume, |view| {
        if let Some(dir) = &plots {
            iteration_plots(dir, view, &grid, box_px, psize)?;
        }
        match (&view.checkpoint, &staging) {
            (Some(c), Some(dir)) => {
                let mut c = c.clone();
                c.config_yaml = config_yaml.clone();
                c.write(dir)
            }
            _ => Ok(()),
        }
    });
    let outcome = collective(comm, outcome)?;
    let gathered = gather_results(comm, &outcome.results);
    let written = match (out, gathered) {
        (Some(out), Some(all)) => write_outputs(
            &cfg,
            &args.config,
            out,
            &outcome,
            &all,
            &grid,
            box_px,
            psize,
        ),
        _ => Ok(()),
    };
    collective(comm, written)
}

/// The class-average mask and post-processing switches.
fn post_process(
    cfg: &Classify2dConfig,
    path: &Path,
    grid: &WorkGrid,
    box_px: usize,
    psize: f64,
) -> Result<PostProcess> {
    let side = box_px as f64 * psize;
    let d_in = cfg.mask_diameter_a.unwrap_or(0.85 * side);
    let d_out = cfg
        .mask_diameter_outer_a
        .unwrap_or((1.2 * d_in).min(side))
        .max(d_in);
    let mask = soft_circular_mask(grid.n, grid.psize_a(), d_in, d_out)
        .map_err(|e| Error::config(path, "mask_diameter_A", e.to_string()))?;
    Ok(PostProcess {
        mask,
        recenter: cfg.recenter,
        recenter_threshold: cfg.recenter_threshold,
        vertical: cfg.align_filaments_vertical,
        nonnegative: cfg.nonnegative,
        clamp_solvent: cfg.clamp_solvent,
    })
}

/// The configuration as YAML without `output` (what a resumed run must match).
fn config_without_output(cfg: &Classify2dConfig) -> String {
    let mut v = serde_norway::to_value(cfg).unwrap_or(serde_norway::Value::Null);
    if let Some(m) = v.as_mapping_mut() {
        m.remove("output");
    }
    serde_norway::to_string(&v).unwrap_or_default()
}

/// Rank 0 reads the checkpoint in `staging` and sends it to every rank; each checks that it
/// was made with the same configuration.
fn read_checkpoint(
    comm: &dyn Comm,
    staging: Option<&Path>,
    dir: &Path,
    config_yaml: &str,
) -> Result<Checkpoint> {
    let path = staging.map(|s| s.join(checkpoint::FILE));
    let mut bytes = match &path {
        Some(p) if p.exists() => std::fs::read(p).map_err(|e| Error::io(p, e))?,
        _ => Vec::new(),
    };
    comm.broadcast_bytes(0, &mut bytes);
    if bytes.is_empty() {
        return Err(Error::file(
            dir,
            "nothing to resume: the killed run wrote no checkpoint yet (it ended in its first iteration)",
        ));
    }
    let c = Checkpoint::from_bytes(&bytes, &dir.join(checkpoint::FILE))?;
    if c.config_yaml != config_yaml {
        return Err(Error::file(
            dir,
            "the checkpoint was made with another configuration (apart from output); resume with the same config and --set values",
        ));
    }
    Ok(c)
}

/// Class averages padded back to the input box and pixel size.
fn full_size(images: &[Array2<f32>], grid: &WorkGrid, box_px: usize) -> Array3<f32> {
    let mut out = Array3::<f32>::zeros((images.len(), box_px, box_px));
    for (i, img) in images.iter().enumerate() {
        let spec = rfft2(img.view());
        let big = fourier_pad(spec.view(), grid.n, box_px);
        out.index_axis_mut(Axis(0), i)
            .assign(&irfft2(big.view(), box_px));
    }
    out
}

/// Montage of the classes with count and FRC-0.5 resolution.
fn montage(
    path: &Path,
    images: &Array3<f32>,
    counts: &[f64],
    frc05: &[f64],
    psize: f64,
    box_px: usize,
) -> Result<()> {
    let labels: Vec<String> = counts
        .iter()
        .zip(frc05)
        .map(|(&c, &r)| class_label(c.round() as usize, Some(r)))
        .collect();
    class_montage(path, images, &labels, psize, box_px)
}

/// Montage of class averages `(K, box, box)` with one label each, 10 per row, scale bar.
pub(crate) fn class_montage(
    path: &Path,
    images: &Array3<f32>,
    labels: &[String],
    psize: f64,
    box_px: usize,
) -> Result<()> {
    let style = MontageStyle {
        ncols: 10,
        tile_px: 128,
        psize_a: psize,
        scale_bar_a: scale_bar_a(box_px as f64 * psize),
    };
    montage_png(path, images.view(), labels, &style)
}

/// A round scale-bar length of about a quarter of the box.
fn scale_bar_a(side_a: f64) -> f64 {
    let target = side_a / 4.0;
    let p = 10f64.powf(target.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * p)
        .find(|&v| v <= target)
        .unwrap_or(p)
}

/// Per-iteration plots (rank 0).
fn iteration_plots(
    dir: &Path,
    v: &IterationView,
    grid: &WorkGrid,
    box_px: usize,
    psize: f64,
) -> Result<()> {
    let imgs = full_size(&v.classes.images, grid, box_px);
    montage(
        &dir.join(format!("classes_iter{:03}.png", v.record.iteration)),
        &imgs,
        &v.classes.counts,
        &v.record.class_frc05_res_a,
        psize,
        box_px,
    )
}

/// Every rank's results, concatenated in global row order, on rank 0.
fn gather_results(comm: &dyn Comm, r: &Results) -> Option<Results> {
    let n = r.class.len();
    let k = r.k;
    let mut bytes = Vec::with_capacity(n * (6 + k) * 4);
    for i in 0..n {
        bytes.extend_from_slice(&r.class[i].to_le_bytes());
        for v in [
            r.class_posterior[i],
            r.class_ess[i],
            r.psi_rad[i],
            r.shift_px[i][0],
            r.shift_px[i][1],
        ] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for v in &r.probs[i * k..(i + 1) * k] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let parts = comm.gather_bytes(0, &bytes)?;
    let rec = (6 + k) * 4;
    let total: usize = parts.iter().map(|p| p.len() / rec).sum();
    let mut out = Results {
        k,
        probs: Vec::with_capacity(total * k),
        class: Vec::with_capacity(total),
        class_posterior: Vec::with_capacity(total),
        class_ess: Vec::with_capacity(total),
        psi_rad: Vec::with_capacity(total),
        shift_px: Vec::with_capacity(total),
    };
    let f = |b: &[u8]| f32::from_le_bytes(b.try_into().expect("4 bytes"));
    for p in parts {
        for c in p.chunks_exact(rec) {
            out.class
                .push(u32::from_le_bytes(c[0..4].try_into().expect("4 bytes")));
            out.class_posterior.push(f(&c[4..8]));
            out.class_ess.push(f(&c[8..12]));
            out.psi_rad.push(f(&c[12..16]));
            out.shift_px.push([f(&c[16..20]), f(&c[20..24])]);
            for j in 0..k {
                out.probs.push(f(&c[24 + 4 * j..28 + 4 * j]));
            }
        }
    }
    Some(out)
}

/// Writes every output file into the staged folder and renames it into place (rank 0).
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    cfg: &Classify2dConfig,
    cfg_path: &Path,
    out: OutputDir,
    outcome: &Outcome,
    all: &Results,
    grid: &WorkGrid,
    box_px: usize,
    psize: f64,
) -> Result<()> {
    let dir: PathBuf = out.path().to_path_buf();
    let input = Dataset::open(&cfg.input)?;
    let mut table = input.table().clone();
    let n = table.len();
    let k = cfg.num_classes;
    table.set_u32("alignments2D/class", all.class.clone());
    table.set_f32("alignments2D/class_posterior", all.class_posterior.clone());
    table.set_f32("alignments2D/class_ess", all.class_ess.clone());
    table.set_f32("alignments2D/pose", all.psi_rad.clone());
    table.set(
        "alignments2D/shift",
        Column::new(
            ColumnData::F32(all.shift_px.iter().flat_map(|s| [s[0], s[1]]).collect()),
            2,
        ),
    );
    table.set_f32("alignments2D/psize_A", vec![psize as f32; n]);
    table.set(
        "alignments2D/class_probs",
        Column::new(ColumnData::F32(all.probs.clone()), k),
    );
    if !cfg.ctf_correct {
        // CryoSPARC's convention for "no CTF correction", kept for later jobs.
        table.set_f32("ctf/amp_contrast", vec![1.0; n]);
        table.set_f32("ctf/df1_A", vec![0.0; n]);
        table.set_f32("ctf/df2_A", vec![0.0; n]);
        table.set_f32("ctf/cs_mm", vec![0.0; n]);
    }
    let attrs = DatasetAttrs {
        blob_root: input.attrs().blob_root.clone(),
        source: format!("emclass classify2d {}", cfg_path.display()),
    };
    let mut n_dup = 0;
    let mut dup_truth = None;
    if cfg.remove_duplicates {
        let picks = duplicates::picks_from_table(
            &table,
            &cfg.input,
            &all.shift_px,
            psize,
            &all.class_posterior,
        )?;
        let rejected = duplicates::find_duplicates(&picks, cfg.min_separation_a);
        let keep: Vec<usize> = (0..n).filter(|&i| !rejected[i]).collect();
        let drop: Vec<usize> = (0..n).filter(|&i| rejected[i]).collect();
        n_dup = drop.len();
        dup_truth = duplicate_truth(&table, &rejected);
        write_referencing(
            &dir.join("duplicates.h5"),
            &table.select(&drop),
            &attrs,
            &input,
        )?;
        write_referencing(
            &dir.join("particles.h5"),
            &table.select(&keep),
            &attrs,
            &input,
        )?;
        log::info!(
            "removed {n_dup} duplicate particles (closer than {} Å)",
            cfg.min_separation_a
        );
    } else {
        write_referencing(&dir.join("particles.h5"), &table, &attrs, &input)?;
    }
    let imgs = full_size(&outcome.classes.images, grid, box_px);
    write_stack(dir.join("classes.mrcs"), imgs.view(), psize as f32)?;
    let frc05: Vec<f64> = outcome
        .classes
        .frc
        .iter()
        .map(|f| frc_resolution_a(f, 0.5, grid.n, grid.psize_a()))
        .collect();
    let plots = dir.join("plots");
    montage(
        &plots.join("classes.png"),
        &imgs,
        &outcome.classes.counts,
        &frc05,
        psize,
        box_px,
    )?;
    histogram_png(
        &plots.join("class_ess.png"),
        "Effective number of classes per particle",
        "class ESS",
        &outcome.all_ess,
        40,
        &[],
        PLOT_SIZE_PX,
    )?;
    histogram_png(
        &plots.join("best_class_probability.png"),
        "Probability of best class",
        "probability",
        &outcome.all_best_prob,
        40,
        &[],
        PLOT_SIZE_PX,
    )?;
    let curve = |v: &[f64]| -> Vec<(f64, f64)> {
        // Shells 1..k_max (the last, partial shell of the crop circle is left out).
        (1..v.len().saturating_sub(1))
            .map(|s| (s as f64 / (box_px as f64 * psize), v[s]))
            .collect()
    };
    let (used, cur, init) = (
        curve(&outcome.sigma2_used),
        curve(&outcome.sigma2_current),
        curve(&outcome.sigma2_init),
    );
    lines_png(
        &plots.join("noise_model.png"),
        "Noise model",
        "spatial frequency (1/Å)",
        "sigma² per coefficient",
        &[
            ("current sigma", &used),
            ("current noise", &cur),
            ("initial sigma", &init),
        ],
        true,
        PLOT_SIZE_PX,
    )?;
    // Accuracy against simulated ground truth, when the input carries it.
    let ari = table_ari(&table, "gt/view", &all.class);
    let mut counts = vec![0usize; k];
    for &c in &all.class {
        counts[c as usize] += 1;
    }
    let summary = json!({
        "job": "classify2d",
        "input": cfg.input,
        "num_particles": n,
        "num_classes": k,
        "working_box_px": grid.n,
        "working_psize_A": grid.psize_a(),
        "class_sizes": counts,
        "class_frc05_res_A": frc05,
        "duplicates_removed": n_dup,
        "ari_vs_ground_truth_views": ari,
        "duplicates_vs_ground_truth": dup_truth,
        "iterations": outcome.history,
        "sigma2_initial": outcome.sigma2_init,
        "sigma2_current": outcome.sigma2_current,
    });
    if let Some(a) = ari {
        log::info!("adjusted Rand index vs simulated views (non-junk): {a:.4}");
    }
    out.finish(&summary, cfg, "classify2d")
}

/// ARI between the ground-truth `field` (`gt/view`, `gt/state`; −1 = junk) and the classes
/// over non-junk particles, if the field exists.
pub(crate) fn table_ari(
    table: &crate::dataset::ParticleTable,
    field: &str,
    class: &[u32],
) -> Option<f64> {
    let view = table.get(field)?.data.to_f64()?;
    let (a, b): (Vec<i64>, Vec<i64>) = view
        .iter()
        .zip(class)
        .filter(|(v, _)| **v >= 0.0)
        .map(|(v, c)| (*v as i64, *c as i64))
        .unzip();
    (!a.is_empty()).then(|| adjusted_rand_index(&a, &b))
}

/// Simulated duplicate pairs (`gt/is_duplicate`, `gt/duplicate_of`) against the removals:
/// pairs that lost exactly one member, and removed particles in no pair.
fn duplicate_truth(
    table: &crate::dataset::ParticleTable,
    rejected: &[bool],
) -> Option<serde_json::Value> {
    let is_dup = table.get("gt/is_duplicate")?.data.to_f64()?;
    let of = table.u64("gt/duplicate_of")?;
    let row: std::collections::HashMap<u64, usize> = table
        .uid()
        .iter()
        .enumerate()
        .map(|(i, &u)| (u, i))
        .collect();
    let (mut pairs, mut found) = (0usize, 0usize);
    let mut in_pair = vec![false; table.len()];
    for i in 0..table.len() {
        if is_dup[i] > 0.5 {
            pairs += 1;
            in_pair[i] = true;
            if let Some(&j) = row.get(&of[i]) {
                in_pair[j] = true;
                if rejected[i] != rejected[j] {
                    found += 1;
                }
            }
        }
    }
    let others = in_pair.iter().filter(|&&p| !p).count();
    let false_removed = (0..table.len())
        .filter(|&i| rejected[i] && !in_pair[i])
        .count();
    log::info!(
        "duplicates vs simulated truth: {found} of {pairs} pairs found, {false_removed} of {others} other particles removed"
    );
    Some(json!({
        "pairs": pairs,
        "pairs_found": found,
        "other_particles": others,
        "false_removals": false_removed,
    }))
}
