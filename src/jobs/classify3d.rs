//! `emclass classify3d`: loads the config, masks and initial volumes, each rank's share of
//! the particles, runs the 3D classification engine and writes the output folder (every
//! rank appends its own rows of the particle files in turn; rank 0 writes the rest):
//! `particles.h5` (input fields + `alignments3D/class`, `class_posterior`, `class_probs`,
//! `class_ess`, `log_likelihood`, `alpha`; images referenced), `particles_class_XX.h5`, `volumes/class_XX.mrc`
//! (and all of them in `volumes/all_volumes.mrcs`)
//! with half maps, `consensus.mrc`, `solvent_mask.mrc`, `focus_mask.mrc`, `plots/`,
//! `summary.json` and `config.used.yaml`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::Array3;
use serde_json::json;

use crate::classify3d::config::{Classify3dConfig, InitMode, ScaleMode};
use crate::classify3d::engine::{Classify3d, Extra, Inputs, Results};
use crate::classify3d::model::ClassVolume;
use crate::classify3d::particles;
use crate::classify3d::plan::Plan3d;
use crate::cli::JobArgs;
use crate::comm::Comm;
use crate::config;
use crate::dataset::{Column, ColumnData, Dataset, DatasetAttrs, ParticleTable};
use crate::em::binned::{Binned, BINS};
use crate::em::checkpoint::{self, Keeper};
use crate::em::driver::Phase;
use crate::em::engine::{Engine, Outcome as Ran, Record, View};
use crate::error::{Error, Result};
use crate::formats::mrc::{read_volume, write_volume, write_volume_stack};
use crate::jobs::collective;
use crate::jobs::em_shell::{open_input, output_dir, particle_source, read_resume, Input};
use crate::jobs::output::{config_without_output, OutputDir};
use crate::jobs::turns::{gathered_ari, shared_dir, write_in_turns};
use crate::numerics::symmetry::point_group;
use crate::numerics::volume::{check_mask, resample3};
use crate::particles::{Needs, WorkGrid};
use crate::report::plot::{histogram_counts_png, lines_png, PLOT_SIZE_PX};
use crate::report::plots3d::{
    class_flow_diagram_png, class_flow_matrix_png, grouped_bars_png, volume_slices_png,
};

/// What the run produced, for the output.
struct Outcome {
    consensus: ClassVolume,
    solvent_mask: Array3<f32>,
    solvent_mask_generated: bool,
    classes: Vec<ClassVolume>,
    history: Vec<Record<Extra>>,
    flows: Vec<(usize, Vec<Vec<u64>>)>,
    sigma2: Vec<f64>,
    stop_reason: String,
}

/// The configuration and inputs every rank reads (small files), checked collectively.
struct Setup {
    cfg: Classify3dConfig,
    n_total: usize,
    rows: Range<usize>,
    box_px: usize,
    psize: f64,
    has_ctf: bool,
    grid: WorkGrid,
    plan: Plan3d,
    backend: std::sync::Arc<dyn crate::backend::Backend>,
}

fn setup(args: &JobArgs, comm: &dyn Comm) -> Result<Setup> {
    let mut cfg: Classify3dConfig = collective(comm, config::load(&args.config, &args.set))?;
    if let Some(dir) = &args.resume {
        cfg.output = dir.clone();
    }
    let Input {
        n_total,
        rows,
        box_px,
        psize,
        has_ctf,
    } = open_input(comm, &cfg.input)?;
    // `select` is collective for `auto`: every rank reaches it (the validation is the same
    // on every rank).
    let checked = cfg
        .validate_for(&args.config, box_px, psize, n_total)
        .and_then(|_| crate::backend::select(cfg.backend, &args.config, "classify3d", comm));
    let backend = collective(comm, checked)?;
    let grid = WorkGrid::new(box_px, psize, cfg.res_a());
    let plan = collective(comm, cfg.plan(n_total))?;
    Ok(Setup {
        plan,
        backend,
        cfg,
        n_total,
        rows,
        box_px,
        psize,
        has_ctf,
        grid,
    })
}

/// Masks, initial volumes, input scales and symmetry operators.
fn inputs<'a>(args: &JobArgs, comm: &dyn Comm, s: &'a Setup) -> Result<Inputs<'a>> {
    let (cfg, grid) = (&s.cfg, &s.grid);
    let side_a = s.box_px as f64 * s.psize;
    let volume = |p: &Path, key: &str, is_mask: bool| {
        read_working_volume(p, &args.config, key, side_a, grid.n, is_mask)
    };
    let solvent_mask = collective(
        comm,
        cfg.solvent_mask
            .as_ref()
            .map(|p| volume(p, "solvent_mask", true))
            .transpose(),
    )?;
    let focus_mask = collective(
        comm,
        cfg.focus_mask
            .as_ref()
            .map(|p| volume(p, "focus_mask", true))
            .transpose(),
    )?;
    let initial_volumes = collective(
        comm,
        match cfg.init_mode {
            InitMode::Simple | InitMode::Pca => Ok(None),
            InitMode::Input => cfg
                .initial_volumes
                .iter()
                .map(|p| volume(p, "initial_volumes", false))
                .collect::<Result<Vec<_>>>()
                .map(Some),
        },
    )?;
    let input_scales = collective(
        comm,
        match cfg.per_particle_scale {
            ScaleMode::Input => particles::input_scales(&cfg.input, s.rows.clone()).map(Some),
            _ => Ok(None),
        },
    )?;
    let syms = collective(
        comm,
        point_group(&cfg.symmetry)
            .map_err(|e| Error::config(&args.config, "symmetry", e.to_string())),
    )?;
    Ok(Inputs {
        plan: &s.plan,
        grid,
        n_total: s.n_total,
        syms,
        solvent_mask,
        focus_mask,
        initial_volumes,
        input_scales,
        gpu: s.backend.as_cuda(),
    })
}

/// Runs the job on every rank.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let s = setup(args, comm)?;
    let (cfg, grid, rows, n_total) = (&s.cfg, &s.grid, &s.rows, s.n_total);
    let inputs = inputs(args, comm, &s)?;
    if let Some(g) = inputs.gpu {
        let need = crate::classify3d::gpu::device_bytes(cfg.num_classes, grid, inputs.syms.len());
        collective(comm, g.check_budget(need, &args.config, "num_classes"))?;
    }
    let focus = inputs.focus_mask.clone();
    let out = output_dir(comm, args, &cfg.output)?;
    let staging = shared_dir(comm, out.as_ref().map(|o| o.path()))?;
    let config_yaml = config_without_output(cfg);
    let keeper = Keeper {
        dir: &staging,
        job: "classify3d",
        config_yaml: &config_yaml,
        n_total,
        rows: rows.clone(),
    };
    let resume = match &args.resume {
        Some(dir) => Some(read_resume::<Classify3d>(comm, &keeper, dir)?),
        None => None,
    };
    log_start(comm, &s, &inputs);
    let needs = Needs {
        ctf: s.has_ctf,
        poses: true,
    };
    let source = particle_source(
        comm,
        &cfg.input,
        rows.clone(),
        grid,
        needs,
        cfg.max_resident_gb,
    )?;
    let mut problem = Classify3d::new(inputs)?;
    let dir = out.as_ref().map(|o| o.path().to_path_buf());
    if let Some(d) = &dir {
        let p = d.join("plots");
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    let engine = Engine {
        plan: s.plan.engine,
        source: &source,
        comm,
        job: "classify3d",
    };
    let ran = engine.run(
        &mut problem,
        resume,
        |view| {
            if let Some(snap) = &view.snapshot {
                keeper.write(comm, snap)?;
            }
            let p = view.problem;
            if cfg.output_every_fem_iter && view.it.phase == Phase::Full {
                write_fem_iteration(comm, args, &s, dir.as_deref(), view.record.iteration, p)?;
            }
            if let (Some(d), Phase::Full) = (&dir, view.it.phase) {
                fem_iteration_plots(&d.join("plots"), view)?;
            }
            match (&dir, p.flow_now, p.flows.last()) {
                (Some(d), true, Some((t, flow))) => flow_plots(&d.join("plots"), flow, *t),
                _ => Ok(()),
            }
        },
        |_, _, _| Ok(()),
    );
    let ran = collective(comm, ran)?;
    let (mut outcome, mut results, scale) = take_outcome(problem, ran);
    if cfg.reorder_classes_by_size {
        reorder_by_size(comm, &mut outcome, &mut results);
    }
    let written = write_particles(
        comm,
        cfg,
        &args.config,
        &staging,
        rows,
        &results,
        &scale,
        true,
    )?;
    if comm.is_root() {
        checkpoint::remove_all(&staging);
    }
    collective(
        comm,
        match out {
            Some(out) => write_outputs(cfg, out, &outcome, &written, grid, focus.as_ref()),
            None => Ok(()),
        },
    )
}

/// The run's sizes, sampling and symmetry, and a missing CTF.
fn log_start(comm: &dyn Comm, s: &Setup, inputs: &Inputs) {
    let (cfg, grid, n_total) = (&s.cfg, &s.grid, s.n_total);
    log::info!(
        "classify3d: {n_total} particles on {} rank(s), {} classes, box {} px at {} Å → volumes {} px at {:.2} Å (filter {} Å), symmetry {} ({} operators)",
        comm.size(),
        cfg.num_classes,
        s.box_px,
        s.psize,
        grid.n,
        grid.psize_a(),
        cfg.res_a(),
        cfg.symmetry,
        inputs.syms.len()
    );
    if !s.has_ctf {
        log::info!(
            "{}: no ctf/* fields, classifying without CTF correction",
            cfg.input.display()
        );
    }
}

/// Takes what the output needs out of the finished problem: the outcome, the local rows'
/// results and their per-particle scales.
fn take_outcome(problem: Classify3d, ran: Ran<Extra>) -> (Outcome, Results, Vec<f64>) {
    let outcome = Outcome {
        consensus: problem.consensus,
        solvent_mask: problem.mask,
        solvent_mask_generated: problem.mask_generated,
        classes: problem.classes,
        history: ran.history,
        flows: problem.flows,
        sigma2: problem.sigma2,
        stop_reason: ran.stop_reason,
    };
    (outcome, problem.results, problem.scale)
}

/// `output_every_fem_iter`: this F-EM iteration's particles.h5 (every rank writes its rows
/// in turn) and class volumes under `dir/fem_iterations/iter_NNN` (rank 0 has `dir`).
fn write_fem_iteration(
    comm: &dyn Comm,
    args: &JobArgs,
    s: &Setup,
    dir: Option<&Path>,
    iteration: usize,
    p: &Classify3d,
) -> Result<()> {
    let sub = dir.map(|d| {
        d.join("fem_iterations")
            .join(format!("iter_{iteration:03}"))
    });
    if let Some(sub) = &sub {
        std::fs::create_dir_all(sub).map_err(|e| Error::io(sub, e))?;
    }
    let shared = shared_dir(comm, sub.as_deref())?;
    write_particles(
        comm,
        &s.cfg,
        &args.config,
        &shared,
        &s.rows,
        &p.results,
        &p.scale,
        false,
    )?;
    if let Some(sub) = &sub {
        write_volumes(sub, &p.classes, s.grid.psize_a())?;
        log::info!("F-EM iteration output: {}", sub.display());
    }
    Ok(())
}

/// Reads an MRC volume covering the particle box (`side_a` Å, within 2%) and resamples it to
/// the working box `n`; with `is_mask`, its values must be a mask (in [0, 1]) and the
/// resampled mask is clamped to [0, 1] (Fourier resampling rings slightly outside).
fn read_working_volume(
    p: &Path,
    cfg_path: &Path,
    key: &str,
    side_a: f64,
    n: usize,
    is_mask: bool,
) -> Result<Array3<f32>> {
    let (vol, psize) = read_volume(p)?;
    let (a, b, c) = vol.dim();
    if a != b || b != c || a % 2 != 0 {
        return Err(Error::file(
            p,
            format!("{key}: volume is {c}×{b}×{a}; need an even-sided cube"),
        ));
    }
    let extent = a as f64 * psize as f64;
    if psize > 0.0 && (extent - side_a).abs() > 0.02 * side_a {
        return Err(Error::config(
            cfg_path,
            key,
            format!(
                "{}: the volume spans {extent:.1} Å ({a} px at {psize} Å) but the particles span {side_a:.1} Å",
                p.display()
            ),
        ));
    }
    if let Some(v) = vol.iter().find(|v| !v.is_finite()) {
        return Err(Error::file(
            p,
            format!("{key}: volume holds a non-finite value {v}"),
        ));
    }
    if is_mask {
        check_mask(vol.view(), &p.display().to_string())?;
        return Ok(resample3(vol.view(), n).mapv(|v| v.clamp(0.0, 1.0)));
    }
    Ok(resample3(vol.view(), n))
}

/// Renumbers classes by assigned size over all ranks, largest first: every rank its
/// results, and the volumes and flows (the same on every rank).
fn reorder_by_size(comm: &dyn Comm, o: &mut Outcome, r: &mut Results) {
    let k = o.classes.len();
    let mut count = vec![0u64; k];
    for &c in &r.class {
        count[c as usize] += 1;
    }
    comm.all_reduce_sum_u64(&mut count);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(count[c]), c));
    let mut new_of = vec![0usize; k];
    for (new, &old) in order.iter().enumerate() {
        new_of[old] = new;
    }
    o.classes = order.iter().map(|&c| o.classes[c].clone()).collect();
    for c in r.class.iter_mut() {
        *c = new_of[*c as usize] as u32;
    }
    for row in r.probs.chunks_mut(k) {
        let old = row.to_vec();
        for (c, v) in old.into_iter().enumerate() {
            row[new_of[c]] = v;
        }
    }
    for (_, f) in o.flows.iter_mut() {
        let old = f.clone();
        for (i, row) in old.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                f[new_of[i]][new_of[j]] = *v;
            }
        }
    }
    log::info!("classes reordered by size: new class j was class {order:?}[j]");
}

/// Class volumes and half maps into `dir/volumes/`, and every class volume in one file for
/// download (CryoSPARC v4.5's "all volumes"), `all_volumes.mrcs`: an MRC2014 volume stack
/// (ispg 401, mz = n, nz = K·n; class k is sections k·n..(k+1)·n) labelled with its layout.
fn write_volumes(dir: &Path, classes: &[ClassVolume], psize_w: f64) -> Result<()> {
    let v = dir.join("volumes");
    std::fs::create_dir_all(&v).map_err(|e| Error::io(&v, e))?;
    let n = classes.first().map_or(0, |c| c.vol.dim().0);
    write_volume_stack(
        v.join("all_volumes.mrcs"),
        &classes.iter().map(|c| c.vol.view()).collect::<Vec<_>>(),
        psize_w as f32,
        &format!(
            "emclass volume stack: {} classes of {n}^3, class k = sections k*{n}..(k+1)*{n}",
            classes.len()
        ),
    )?;
    for (k, c) in classes.iter().enumerate() {
        write_volume(
            v.join(format!("class_{k:02}.mrc")),
            c.vol.view(),
            psize_w as f32,
        )?;
        write_volume(
            v.join(format!("class_{k:02}_half_A.mrc")),
            c.halves[0].view(),
            psize_w as f32,
        )?;
        write_volume(
            v.join(format!("class_{k:02}_half_B.mrc")),
            c.halves[1].view(),
            psize_w as f32,
        )?;
    }
    Ok(())
}

/// The input rows `table` (local rows `from..`) with this job's fields.
fn result_table(
    table: &ParticleTable,
    r: &Results,
    scale: Option<&[f64]>,
    from: usize,
) -> ParticleTable {
    let n = table.len();
    let k = r.k;
    let rows = from..from + n;
    let mut table = table.clone();
    table.set_u32("alignments3D/class", r.class[rows.clone()].to_vec());
    table.set_f32(
        "alignments3D/class_posterior",
        r.class_posterior[rows.clone()].to_vec(),
    );
    table.set_f32("alignments3D/class_ess", r.class_ess[rows.clone()].to_vec());
    table.set_f32(
        "alignments3D/log_likelihood",
        r.log_likelihood[rows.clone()].to_vec(),
    );
    table.set(
        "alignments3D/class_probs",
        Column::new(
            ColumnData::F32(r.probs[from * k..(from + n) * k].to_vec()),
            k,
        ),
    );
    if let Some(scale) = scale {
        table.set_f32(
            "alignments3D/alpha",
            scale[rows].iter().map(|s| *s as f32).collect(),
        );
    }
    table
}

/// What the ranks' rows add up to (meaningful on rank 0).
struct Written {
    num_particles: usize,
    /// Particles assigned to each class, and the sum of their probabilities.
    assigned: Vec<f64>,
    effective: Vec<f64>,
    /// Class ESS of every particle (rank 0; 4 bytes per particle gathered for the histogram).
    /// Final class ESS of every particle, binned over all ranks.
    ess: Binned,
    ari: Option<f64>,
}

/// Rows of output metadata per block.
const WRITE_BLOCK: usize = 8192;

/// `particles.h5` and, with `per_class`, `particles_class_XX.h5` into `dir` (the same
/// folder on every rank), each rank appending its rows `rows` in turn: no rank gathers
/// the others' rows. With `per_class` off (the per-iteration copies) only the files.
#[allow(clippy::too_many_arguments)]
fn write_particles(
    comm: &dyn Comm,
    cfg: &Classify3dConfig,
    cfg_path: &Path,
    dir: &Path,
    rows: &Range<usize>,
    r: &Results,
    scale: &[f64],
    per_class: bool,
) -> Result<Written> {
    let k = r.k;
    // Input scales are finite everywhere or the column is left out, on every rank alike.
    let mut nonfinite = [u64::from(scale.iter().any(|s| !s.is_finite()))];
    comm.all_reduce_sum_u64(&mut nonfinite);
    let scale = (nonfinite[0] == 0 && scale.len() == r.class.len()).then_some(scale);
    let empty = collective(comm, Dataset::open_range(&cfg.input, 0..0))?;
    let attrs = DatasetAttrs {
        blob_root: empty.attrs().blob_root.clone(),
        source: format!("emclass classify3d {}", cfg_path.display()),
    };
    let schema = result_table(
        empty.table(),
        &Results::new(0, k),
        scale.map(|_| &[][..]),
        0,
    );
    drop(empty);
    let mut paths = vec![dir.join("particles.h5")];
    if per_class {
        paths.extend((0..k).map(|c| dir.join(format!("particles_class_{c:02}.h5"))));
    }
    let mut pairs: HashMap<(i64, i64), u64> = HashMap::new();
    let mut has_truth = false;
    write_in_turns(comm, &paths, &cfg.input, &schema, &attrs, |apps| {
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + WRITE_BLOCK).min(rows.end);
            let block = Dataset::open_range(&cfg.input, start..end)?;
            let from = start - rows.start;
            let table = result_table(block.table(), r, scale, from);
            if let Some(state) = table.get("gt/state").and_then(|c| c.data.to_f64()) {
                has_truth = true;
                for (i, s) in state.iter().enumerate() {
                    if *s >= 0.0 {
                        *pairs
                            .entry((*s as i64, r.class[from + i] as i64))
                            .or_insert(0) += 1;
                    }
                }
            }
            apps[0].append(&table)?;
            if per_class {
                let mut by_class = vec![Vec::new(); k];
                for i in 0..table.len() {
                    by_class[r.class[from + i] as usize].push(i);
                }
                for (c, mine) in by_class.iter().enumerate() {
                    apps[1 + c].append(&table.select(mine))?;
                }
            }
            start = end;
        }
        Ok(())
    })?;
    let mut sums = vec![0.0f64; 2 * k + 1];
    for (i, &c) in r.class.iter().enumerate() {
        sums[c as usize] += 1.0;
        for (e, p) in sums[k..2 * k].iter_mut().zip(&r.probs[i * k..(i + 1) * k]) {
            *e += *p as f64;
        }
    }
    sums[2 * k] = r.class.len() as f64;
    comm.all_reduce_sum_f64(&mut sums);
    let mut ess = Binned::new(1.0, k.max(2) as f64, BINS);
    r.class_ess.iter().for_each(|&e| ess.add(e as f64));
    ess.all_reduce(comm);
    Ok(Written {
        num_particles: sums[2 * k] as usize,
        assigned: sums[..k].to_vec(),
        effective: sums[k..2 * k].to_vec(),
        ess,
        ari: gathered_ari(comm, &pairs, has_truth),
    })
}

/// The class-size bars (hard assignments and effective size) and the per-particle ESS
/// histogram: `class_sizes{tag}.png`, `class_ess{tag}.png`.
fn size_and_ess_plots(
    plots: &Path,
    tag: &str,
    assigned: &[f64],
    effective: &[f64],
    ess: &Binned,
) -> Result<()> {
    if let Some((lo, hi, counts)) = ess.bars(40) {
        histogram_counts_png(
            &plots.join(format!("class_ess{tag}.png")),
            "Per-particle class ESS",
            "effective number of classes",
            lo,
            hi,
            &counts,
            PLOT_SIZE_PX,
        )?;
    }
    grouped_bars_png(
        &plots.join(format!("class_sizes{tag}.png")),
        "Class assignments and effective size",
        "class",
        "particles",
        &[("assignments", assigned), ("effective size", effective)],
    )
}

/// After every F-EM iteration (rank 0), as the seed shows them: `class_sizes_iterNNN.png`
/// (hard counts from the all-reduced per-class bins, effective sizes from the class
/// weights) and `class_ess_iterNNN.png`.
fn fem_iteration_plots(plots: &Path, view: &View<Classify3d>) -> Result<()> {
    let assigned: Vec<f64> = view
        .class_ess
        .hard_counts()
        .iter()
        .map(|&c| c as f64)
        .collect();
    let tag = format!("_iter{:03}", view.record.iteration);
    let effective = &view.record.extra.class_effective_size;
    size_and_ess_plots(plots, &tag, &assigned, effective, view.ess)
}

/// Class-flow matrix and diagram of one F-EM iteration (and the latest as the plain names).
fn flow_plots(plots: &Path, flow: &[Vec<u64>], t: usize) -> Result<()> {
    let title = format!("Class flow into iteration {t}");
    class_flow_matrix_png(
        &plots.join(format!("class_flow_matrix_iter{t:03}.png")),
        flow,
        &title,
    )?;
    class_flow_diagram_png(
        &plots.join(format!("class_flow_diagram_iter{t:03}.png")),
        flow,
        &title,
    )?;
    class_flow_matrix_png(&plots.join("class_flow_matrix.png"), flow, &title)?;
    class_flow_diagram_png(&plots.join("class_flow_diagram.png"), flow, &title)
}

/// Writes the volumes, plots and summary into the staged folder (whose particle files the
/// ranks wrote) and renames it into place (rank 0).
fn write_outputs(
    cfg: &Classify3dConfig,
    out: OutputDir,
    o: &Outcome,
    written: &Written,
    grid: &WorkGrid,
    focus: Option<&Array3<f32>>,
) -> Result<()> {
    let dir: PathBuf = out.path().to_path_buf();
    let ps = grid.psize_a() as f32;
    write_volumes(&dir, &o.classes, grid.psize_a())?;
    write_volume(dir.join("consensus.mrc"), o.consensus.vol.view(), ps)?;
    write_volume(dir.join("solvent_mask.mrc"), o.solvent_mask.view(), ps)?;
    if let Some(f) = focus {
        write_volume(dir.join("focus_mask.mrc"), f.view(), ps)?;
    }
    let plots = dir.join("plots");
    let w = written;
    size_and_ess_plots(&plots, "", &w.assigned, &w.effective, &w.ess)?;
    volume_plots(&plots, o)?;
    fsc_plot(&plots, &o.classes, grid)?;
    if let Some((t, f)) = o.flows.last() {
        flow_plots(&plots, f, *t)?;
    }
    if let Some(a) = written.ari {
        log::info!("adjusted Rand index vs simulated states (non-junk): {a:.4}");
    }
    let summary = summary(cfg, o, written, grid);
    out.finish(&summary, cfg, "classify3d")
}

/// Central slices of each class's difference from the consensus, and of the consensus and
/// the classes themselves.
fn volume_plots(plots: &Path, o: &Outcome) -> Result<()> {
    let diff: Vec<(String, Array3<f32>)> = o
        .classes
        .iter()
        .enumerate()
        .map(|(j, c)| (format!("class {j} − consensus"), &c.vol - &o.consensus.vol))
        .collect();
    volume_slices_png(
        &plots.join("difference_from_consensus.png"),
        "Difference from consensus (FSC-filtered), central slices",
        &diff,
        true,
    )?;
    let mut vols: Vec<(String, Array3<f32>)> = vec![("consensus".into(), o.consensus.vol.clone())];
    vols.extend(
        o.classes
            .iter()
            .enumerate()
            .map(|(j, c)| (format!("class {j}"), c.vol.clone())),
    );
    volume_slices_png(
        &plots.join("class_volumes.png"),
        "Class volumes, central slices",
        &vols,
        false,
    )
}

/// The half-map FSC curve of every class.
fn fsc_plot(plots: &Path, classes: &[ClassVolume], grid: &WorkGrid) -> Result<()> {
    let side = grid.n as f64 * grid.psize_a();
    let curves: Vec<(String, Vec<(f64, f64)>)> = classes
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let pts = (1..c.fsc.len())
                .map(|s| (s as f64 / side, c.fsc[s]))
                .collect();
            (format!("class {j} ({:.1} Å)", c.res_a), pts)
        })
        .collect();
    let series: Vec<(&str, &[(f64, f64)])> = curves
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    lines_png(
        &plots.join("fsc.png"),
        "Half-map FSC per class (solvent-masked)",
        "spatial frequency (1/Å)",
        "FSC",
        &series,
        false,
        PLOT_SIZE_PX,
    )
}

/// `summary.json`: the run's sizes and results, the iteration records and class flows.
fn summary(
    cfg: &Classify3dConfig,
    o: &Outcome,
    written: &Written,
    grid: &WorkGrid,
) -> serde_json::Value {
    let k = cfg.num_classes;
    let (assigned, effective, ari) = (&written.assigned, &written.effective, written.ari);
    json!({
        "job": "classify3d",
        "input": cfg.input,
        "num_particles": written.num_particles,
        "num_classes": k,
        "working_box_px": grid.n,
        "working_psize_A": grid.psize_a(),
        "symmetry": cfg.symmetry,
        "class_assignments": assigned,
        "class_effective_size": effective,
        "class_fsc0143_res_A": o.classes.iter().map(|c| c.res_a).collect::<Vec<_>>(),
        "consensus_fsc0143_res_A": o.consensus.res_a,
        "solvent_mask": if o.solvent_mask_generated { "generated" } else { "input" },
        "stop_reason": o.stop_reason,
        "ari_vs_ground_truth_states": ari,
        "iterations": o.history,
        "class_flow": o.flows.iter().map(|(t, f)| json!({"iteration": t, "counts": f})).collect::<Vec<_>>(),
        "sigma2": o.sigma2,
    })
}
