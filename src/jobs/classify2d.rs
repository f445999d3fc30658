//! `emclass classify2d`: loads the config and each rank's share of the particles, runs the
//! 2D classification engine, and writes the output folder: `particles.h5`
//! (input fields + `alignments2D/*`, referencing the input images), `duplicates.h5` when
//! duplicates are removed, `classes.mrcs`, `plots/`, `summary.json`, `config.used.yaml`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Axis};
use serde_json::json;

use crate::classify2d::config::Classify2dConfig;
use crate::classify2d::duplicate_routing::{self, PickTruth, RoutedPick};
use crate::classify2d::duplicates;
use crate::classify2d::engine::{Classify2d, Extra};
use crate::classify2d::model::{ClassUpdate, PostProcess};
use crate::classify2d::results::{self, ResultRow, SpillReader, SpillWriter};
use crate::cli::JobArgs;
use crate::comm::Comm;
use crate::config::{self, JobConfig};
use crate::dataset::{Dataset, DatasetAttrs, ParticleTable};
use crate::em::binned::{Binned, PerClassEss};
use crate::em::checkpoint::{self, Keeper};
use crate::em::engine::{Engine, Record, View};
use crate::error::{Error, Result};
use crate::formats::mrc::write_stack;
use crate::jobs::collective;
use crate::jobs::em_shell::{open_input, output_dir, particle_source, read_resume, Input};
use crate::jobs::output::{config_without_output, OutputDir};
use crate::jobs::turns::{gathered_ari, shared_dir, write_in_turns};
use crate::numerics::fft::{irfft2, rfft2};
use crate::numerics::frc::frc_resolution_a;
use crate::numerics::image2d::fourier_pad;
use crate::numerics::mask::soft_circular_mask;
use crate::particles::{Needs, WorkGrid};
use crate::report::montage::{class_label, montage_png, MontageStyle};
use crate::report::plot::{histogram_counts_png, lines_png, PLOT_SIZE_PX};

/// The configuration, checked against the dataset's header on every rank, and the backend.
struct Setup {
    cfg: Classify2dConfig,
    n_total: usize,
    rows: Range<usize>,
    box_px: usize,
    psize: f64,
    backend: std::sync::Arc<dyn crate::backend::Backend>,
}

fn setup(args: &JobArgs, comm: &dyn Comm) -> Result<Setup> {
    let mut cfg: Classify2dConfig = collective(comm, config::load(&args.config, &args.set))?;
    if let Some(dir) = &args.resume {
        cfg.output = dir.clone();
    }
    let Input {
        n_total,
        rows,
        box_px,
        psize,
        ..
    } = open_input(comm, &cfg.input)?;
    let checked = cfg.validate_for(&args.config, box_px, psize).and_then(|_| {
        if cfg.num_classes > n_total {
            return Err(Error::config(
                &args.config,
                "num_classes",
                format!("{} classes for {n_total} particles", cfg.num_classes),
            ));
        }
        let b = crate::backend::select(cfg.backend, &args.config, "classify2d", comm)?;
        if let Some(g) = b.as_cuda() {
            g.set_tf32(cfg.gpu_tf32)?;
        }
        Ok(b)
    });
    let backend = collective(comm, checked)?;
    Ok(Setup {
        cfg,
        n_total,
        rows,
        box_px,
        psize,
        backend,
    })
}

/// Runs the job on every rank.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let Setup {
        cfg,
        n_total,
        rows,
        box_px,
        psize,
        backend,
    } = setup(args, comm)?;
    let out = output_dir(comm, args, cfg.output())?;
    let staging = shared_dir(comm, out.as_ref().map(|o| o.path()))?;
    let config_yaml = config_without_output(&cfg);
    let keeper = Keeper {
        dir: &staging,
        job: "classify2d",
        config_yaml: &config_yaml,
        n_total,
        rows: rows.clone(),
    };
    let resume = match &args.resume {
        Some(dir) => Some(read_resume::<Classify2d>(comm, &keeper, dir)?),
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
    let needs = Needs {
        ctf: cfg.ctf_correct,
        poses: false,
    };
    let source = particle_source(
        comm,
        &cfg.input,
        rows.clone(),
        &grid,
        needs,
        cfg.max_resident_gb,
    )?;
    let post = collective(comm, post_process(&cfg, &args.config, &grid, box_px, psize))?;
    let plan = collective(comm, cfg.plan(n_total))?;
    let mut problem = Classify2d::new(&plan, &grid, post, backend.as_ref())?;
    problem.config = args.config.clone();
    let engine = Engine {
        plan: plan.engine,
        source: &source,
        comm,
        job: "classify2d",
    };
    let plots = out.as_ref().map(|o| o.path().join("plots"));
    if let Some(p) = &plots {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let spill_path = results::spill_path(&staging, comm.rank());
    let mut spill = collective(comm, SpillWriter::create(&spill_path, cfg.num_classes))?;
    let mut spill_pass = None;
    let ran = engine.run(
        &mut problem,
        resume,
        |view| {
            if let Some(dir) = &plots {
                iteration_plots(dir, view, &grid, box_px, psize)?;
            }
            match &view.snapshot {
                Some(snap) => keeper.write(comm, snap),
                None => Ok(()),
            }
        },
        |it, _, row| {
            // Every full pass writes its rows; the last one written is the result.
            if spill_pass != Some(it.t) {
                spill.restart()?;
                spill_pass = Some(it.t);
            }
            spill.push(row)
        },
    );
    let ran = collective(comm, ran)?;
    let outcome = Outcome {
        classes: problem.classes,
        history: ran.history,
        sigma2_init: problem.sigma2_init,
        sigma2_current: problem.sigma2_current,
        sigma2_used: problem.sigma2_used,
        ess: ran.ess,
        best_prob: ran.best_prob,
        class_ess: ran.class_ess,
    };
    let spilled = spill.finish().and_then(|n| {
        if n == rows.len() {
            Ok(())
        } else {
            Err(Error::file(
                &spill_path,
                format!("{n} results for {} particles", rows.len()),
            ))
        }
    });
    collective(comm, spilled)?;
    let written = write_particles(comm, &cfg, &args.config, &staging, rows, &spill_path, psize)?;
    if comm.is_root() {
        checkpoint::remove_all(&staging);
    }
    collective(
        comm,
        match out {
            Some(out) => {
                write_outputs(&cfg, out, &outcome, &written, &grid, box_px, psize, n_total)
            }
            None => Ok(()),
        },
    )
}

/// What the run produced, for the output.
struct Outcome {
    classes: ClassUpdate,
    history: Vec<Record<Extra>>,
    sigma2_init: Vec<f64>,
    sigma2_current: Vec<f64>,
    sigma2_used: Vec<f64>,
    /// ESS and best-class probability of every particle in the last pass (binned over ranks).
    ess: Binned,
    best_prob: Binned,
    /// Per-class ESS of the last pass (binned over ranks).
    class_ess: PerClassEss,
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

/// Montage of the classes: the hard count (particles whose best class it is) and FRC-0.5
/// resolution above each, the median ESS of those particles at its bottom right.
fn montage(
    path: &Path,
    images: &Array3<f32>,
    hard_counts: &[u64],
    frc05: &[f64],
    class_ess: &PerClassEss,
    (psize, box_px): (f64, usize),
) -> Result<()> {
    let labels: Vec<String> = hard_counts
        .iter()
        .zip(frc05)
        .map(|(&c, &r)| class_label(c as usize, Some(r)))
        .collect();
    let corners: Vec<String> = (0..labels.len())
        .map(|c| class_ess.median_label(c))
        .collect();
    class_montage(path, images, &labels, Some(&corners), psize, box_px)
}

/// Montage of class averages `(K, box, box)` with one label each (and optionally a corner
/// label each), 10 per row, scale bar.
pub(crate) fn class_montage(
    path: &Path,
    images: &Array3<f32>,
    labels: &[String],
    corners: Option<&[String]>,
    psize: f64,
    box_px: usize,
) -> Result<()> {
    let style = MontageStyle {
        ncols: 10,
        tile_px: 128,
        psize_a: psize,
        scale_bar_a: scale_bar_a(box_px as f64 * psize),
    };
    montage_png(path, images.view(), labels, corners, &style)
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

/// Per-iteration plots (rank 0), as the seed shows them after every iteration: the class
/// montage (`classes_iterNNN.png`; counts of this iteration's particles: the batch in
/// O-EM), the ESS and best-class-probability histograms and the noise model
/// (`class_ess_iterNNN.png`, `best_class_probability_iterNNN.png`, `noise_model_iterNNN.png`).
fn iteration_plots(
    dir: &Path,
    v: &View<Classify2d>,
    grid: &WorkGrid,
    box_px: usize,
    psize: f64,
) -> Result<()> {
    let imgs = full_size(&v.problem.classes.images, grid, box_px);
    let tag = format!("_iter{:03}", v.record.iteration);
    montage(
        &dir.join(format!("classes{tag}.png")),
        &imgs,
        &v.class_ess.hard_counts(),
        &v.record.extra.class_frc05_res_a,
        v.class_ess,
        (psize, box_px),
    )?;
    let p = v.problem;
    let sigma2 = [&p.sigma2_used[..], &p.sigma2_current, &p.sigma2_init];
    diagnostic_plots(dir, &tag, v.ess, v.best_prob, sigma2, (psize, box_px))
}

/// The ESS and best-class-probability histograms and the noise-model plot, named
/// `class_ess{tag}.png`, `best_class_probability{tag}.png` and `noise_model{tag}.png`;
/// `sigma2` = [used, current estimate, initial] per shell.
fn diagnostic_plots(
    plots: &Path,
    tag: &str,
    ess: &Binned,
    best_prob: &Binned,
    sigma2: [&[f64]; 3],
    (psize, box_px): (f64, usize),
) -> Result<()> {
    for (file, title, x, b) in [
        (
            "class_ess",
            "Effective number of classes per particle",
            "class ESS",
            ess,
        ),
        (
            "best_class_probability",
            "Probability of best class",
            "probability",
            best_prob,
        ),
    ] {
        if let Some((lo, hi, counts)) = b.bars(40) {
            let path = plots.join(format!("{file}{tag}.png"));
            histogram_counts_png(&path, title, x, lo, hi, &counts, PLOT_SIZE_PX)?;
        }
    }
    let curve = |v: &[f64]| -> Vec<(f64, f64)> {
        // Shells 1..k_max (the last, partial shell of the crop circle is left out).
        (1..v.len().saturating_sub(1))
            .map(|s| (s as f64 / (box_px as f64 * psize), v[s]))
            .collect()
    };
    let [used, cur, init] = sigma2.map(curve);
    lines_png(
        &plots.join(format!("noise_model{tag}.png")),
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
    )
}

/// What the ranks' particle rows add up to (meaningful on rank 0).
struct Written {
    /// Hard class sizes over every particle (duplicates included).
    class_sizes: Vec<u64>,
    /// Against simulated views (non-junk particles), when the input has `gt/view`.
    ari: Option<f64>,
    duplicates_removed: usize,
    duplicates_vs_truth: Option<serde_json::Value>,
}

/// Rows of the output metadata per block read back from the input and the spill file.
const WRITE_BLOCK: usize = 8192;

/// The output rows for input rows `table` and their results.
fn output_table(
    table: &ParticleTable,
    rows: &[ResultRow],
    cfg: &Classify2dConfig,
    psize: f64,
) -> ParticleTable {
    let mut t = table.clone();
    let n = t.len();
    results::set_columns(&mut t, rows, cfg.num_classes, psize);
    if !cfg.ctf_correct {
        // CryoSPARC's convention for "no CTF correction", kept for later jobs.
        t.set_f32("ctf/amp_contrast", vec![1.0; n]);
        t.set_f32("ctf/df1_A", vec![0.0; n]);
        t.set_f32("ctf/df2_A", vec![0.0; n]);
        t.set_f32("ctf/cs_mm", vec![0.0; n]);
    }
    t
}

/// Calls `f(first_global_row, input_rows, results)` for consecutive blocks of this rank's
/// rows, reading the input metadata and the spill file back block by block.
fn for_each_written_block(
    cfg: &Classify2dConfig,
    rows: &Range<usize>,
    spill: &Path,
    mut f: impl FnMut(usize, &Dataset, &[ResultRow]) -> Result<()>,
) -> Result<()> {
    let mut reader = SpillReader::open(spill, cfg.num_classes)?;
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + WRITE_BLOCK).min(rows.end);
        let block = Dataset::open_range(&cfg.input, start..end)?;
        let res = reader.read(end - start)?;
        f(start, &block, &res)?;
        start = end;
    }
    Ok(())
}

/// Writes `particles.h5` (and `duplicates.h5`) from every rank's rows in turns, without
/// gathering them; returns the class sizes, ARI and duplicate counts.
fn write_particles(
    comm: &dyn Comm,
    cfg: &Classify2dConfig,
    cfg_path: &Path,
    staging: &Path,
    rows: Range<usize>,
    spill: &Path,
    psize: f64,
) -> Result<Written> {
    let k = cfg.num_classes;
    let rejected = if cfg.remove_duplicates {
        Some(find_duplicates(comm, cfg, &rows, spill, psize)?)
    } else {
        None
    };
    let empty = collective(comm, Dataset::open_range(&cfg.input, 0..0))?;
    let attrs = DatasetAttrs {
        blob_root: empty.attrs().blob_root.clone(),
        source: format!("emclass classify2d {}", cfg_path.display()),
    };
    let schema = output_table(empty.table(), &[], cfg, psize);
    drop(empty);
    let mut paths = vec![staging.join("particles.h5")];
    if rejected.is_some() {
        paths.push(staging.join("duplicates.h5"));
    }
    let mut sizes = vec![0u64; k];
    let mut pairs: HashMap<(i64, i64), u64> = HashMap::new();
    let mut has_truth = false;
    write_in_turns(comm, &paths, &cfg.input, &schema, &attrs, |apps| {
        for_each_written_block(cfg, &rows, spill, |first, block, res| {
            let table = output_table(block.table(), res, cfg, psize);
            for r in res {
                sizes[r.class as usize] += 1;
            }
            if let Some(view) = table.get("gt/view").and_then(|c| c.data.to_f64()) {
                has_truth = true;
                for (v, r) in view.iter().zip(res) {
                    if *v >= 0.0 {
                        *pairs.entry((*v as i64, r.class as i64)).or_insert(0) += 1;
                    }
                }
            }
            match &rejected {
                Some((rej, _)) => {
                    let off = first - rows.start;
                    let (keep, drop): (Vec<usize>, Vec<usize>) =
                        (0..table.len()).partition(|&i| !rej[off + i]);
                    apps[0].append(&table.select(&keep))?;
                    apps[1].append(&table.select(&drop))
                }
                None => apps[0].append(&table),
            }
        })?;
        std::fs::remove_file(spill).map_err(|e| Error::io(spill, e))
    })?;
    comm.all_reduce_sum_u64(&mut sizes);
    let ari = gathered_ari(comm, &pairs, has_truth);
    let (duplicates_removed, duplicates_vs_truth) = match rejected {
        Some((_, (n, t))) => (n, t),
        None => (0, None),
    };
    Ok(Written {
        class_sizes: sizes,
        ari,
        duplicates_removed,
        duplicates_vs_truth,
    })
}

/// This rank's duplicate verdicts, and the number removed and the comparison with
/// simulated truth (the same on every rank).
type Verdicts = (Vec<bool>, (usize, Option<serde_json::Value>));

/// Duplicate removal needs every pick of a micrograph in one place: each rank routes the
/// picks of its particles to the owner rank of their micrograph, which decides and sends the
/// verdicts back (see [`duplicate_routing`]); no rank sees every pick.
fn find_duplicates(
    comm: &dyn Comm,
    cfg: &Classify2dConfig,
    rows: &Range<usize>,
    spill: &Path,
    psize: f64,
) -> Result<Verdicts> {
    let mut mine: Vec<RoutedPick> = Vec::with_capacity(rows.len());
    let mut note = None;
    let read = for_each_written_block(cfg, rows, spill, |first, block, res| {
        let t = block.table();
        let shifts: Vec<[f32; 2]> = res.iter().map(|r| r.shift).collect();
        let scores: Vec<f32> = res.iter().map(|r| r.prob).collect();
        let picks = duplicates::picks_from_table(t, &cfg.input, &shifts, psize, &scores)?;
        note = note.take().or_else(|| duplicates::location_note(t, psize));
        let is_dup = t.get("gt/is_duplicate").and_then(|c| c.data.to_f64());
        let of = t.u64("gt/duplicate_of");
        for (i, p) in picks.into_iter().enumerate() {
            let truth = match (&is_dup, of) {
                (Some(d), Some(o)) => Some(PickTruth {
                    uid: t.uid()[i],
                    is_duplicate: d[i] > 0.5,
                    duplicate_of: o[i],
                }),
                _ => None,
            };
            mine.push(RoutedPick {
                row: (first + i) as u64,
                pick: p,
                truth,
            });
        }
        Ok(())
    });
    collective(comm, read)?;
    if let (Some(n), true) = (&note, comm.is_root()) {
        log::warn!("{n}");
    }
    let d = duplicate_routing::remove_duplicates(comm, &mine, cfg.min_separation_a);
    log::info!(
        "removed {} duplicate particles (closer than {} Å)",
        d.removed,
        cfg.min_separation_a
    );
    let truth = d.truth.map(|c| {
        log::info!(
            "duplicates vs simulated truth: {} of {} pairs found, {} of {} other particles removed",
            c.pairs_found,
            c.pairs,
            c.false_removals,
            c.other_particles
        );
        json!({
            "pairs": c.pairs,
            "pairs_found": c.pairs_found,
            "other_particles": c.other_particles,
            "false_removals": c.false_removals,
        })
    });
    Ok((d.rejected, (d.removed as usize, truth)))
}

/// Writes the class averages, plots and summary into the staged folder (whose particle
/// files the ranks wrote) and renames it into place (rank 0).
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    cfg: &Classify2dConfig,
    out: OutputDir,
    outcome: &Outcome,
    written: &Written,
    grid: &WorkGrid,
    box_px: usize,
    psize: f64,
    n: usize,
) -> Result<()> {
    let dir: PathBuf = out.path().to_path_buf();
    let k = cfg.num_classes;
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
        &written.class_sizes,
        &frc05,
        &outcome.class_ess,
        (psize, box_px),
    )?;
    let o = outcome;
    let sigma2 = [&o.sigma2_used[..], &o.sigma2_current, &o.sigma2_init];
    diagnostic_plots(&plots, "", &o.ess, &o.best_prob, sigma2, (psize, box_px))?;
    let ari = written.ari;
    let counts = &written.class_sizes;
    let (n_dup, dup_truth) = (written.duplicates_removed, &written.duplicates_vs_truth);
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
