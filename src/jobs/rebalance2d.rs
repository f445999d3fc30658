//! `emclass rebalance2d`: CryoSPARC's Rebalance 2D Classes. The affinity of every pair of
//! class averages (rotation- and shift-invariant normalised cross-correlation), superclasses
//! by agglomerative clustering of that matrix (or one per class), then seeded random
//! dropping from the superclasses larger than the cap the rebalance factor (or
//! `max_superclass_size`) sets. Writes `selected.h5` / `excluded.h5` (with
//! `alignments2D/superclass`), `affinity.csv`, `superclasses.csv`, plots (affinity matrix
//! unsorted and sorted by superclass, superclass sizes before/after, class averages grouped
//! by superclass), `summary.json` and `config.used.yaml`.

use std::fmt::Write as _;
use std::path::Path;

use ndarray::{Array2, Array3, Axis};
use serde_json::json;

use crate::cli::JobArgs;
use crate::config;
use crate::curate::affinity::{affinity_matrix, AffinityParams};
use crate::curate::cluster::{agglomerative, sorted_order};
use crate::curate::config::Rebalance2dConfig;
use crate::curate::rebalance::{choose_kept, superclass_cap};
use crate::dataset::{Dataset, ParticleTable};
use crate::error::{Error, Result};
use crate::jobs::classes2d::{self, Classes2d};
use crate::jobs::classify2d::class_montage;
use crate::jobs::output::{check_writable, OutputDir};
use crate::jobs::selection::{plots_dir, selected_excluded, true_particle_count, write_subsets};
use crate::report::affinity_plot::affinity_matrix_png;
use crate::report::plots3d::grouped_bars_png;

/// Runs the job (on one process; the affinity search uses every core).
pub fn run(args: &JobArgs) -> Result<()> {
    let cfg: Rebalance2dConfig = config::load(&args.config, &args.set)?;
    check_writable(&cfg.output, args.overwrite)?;
    let input = Dataset::open(&cfg.input)?;
    let classes = classes2d::load(&input, cfg.classes_file.as_deref(), true, &args.config)?;
    let k = classes.k;
    let m = cfg.num_superclasses;
    if !cfg.do_superclassification && m != k {
        return Err(Error::config(
            &args.config,
            "num_superclasses",
            format!("is {m}, but with do_superclassification off each of the {k} classes is its own superclass: set it to {k}"),
        ));
    }
    if m > k {
        return Err(Error::config(
            &args.config,
            "num_superclasses",
            format!("is {m}, more than the {k} classes"),
        ));
    }
    let avg = classes
        .averages
        .as_ref()
        .expect("load(require_averages = true)");
    let box_px = avg.images.dim().1;
    let params = AffinityParams {
        angle_step_deg: cfg.angle_step_deg,
        max_shift_px: cfg
            .max_shift_a
            .map_or(0.1 * box_px as f64, |s| s / avg.psize_a),
        working_box_px: cfg.working_box_px,
    };
    let t0 = std::time::Instant::now();
    let affinity = affinity_matrix(avg.images.view(), &params)
        .map_err(|e| Error::file(&avg.path, format!("class averages: {e}")))?;
    log::info!(
        "affinity of {k} class averages ({} rotations, shifts ≤ {:.1} px): {:.1} s",
        (360.0 / cfg.angle_step_deg).round(),
        params.max_shift_px,
        t0.elapsed().as_secs_f64()
    );
    let labels: Vec<usize> = if cfg.do_superclassification {
        agglomerative(affinity.view(), m)
    } else {
        (0..k).collect()
    };
    let superclass: Vec<usize> = classes.class.iter().map(|&c| labels[c]).collect();
    let mut before = vec![0usize; m];
    superclass.iter().for_each(|&s| before[s] += 1);
    let cap = superclass_cap(&before, cfg.rebalance_factor, cfg.max_superclass_size);
    let keep = choose_kept(&superclass, m, cap, cfg.seed);
    let mut after = vec![0usize; m];
    superclass
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .for_each(|(&s, _)| after[s] += 1);
    log::info!("superclass sizes before: {before:?}");
    log::info!(
        "superclass sizes after:  {after:?} (cap {})",
        cap.map_or("none".to_string(), |c| c.to_string())
    );

    let out = OutputDir::create(&cfg.output, args.overwrite)?;
    let dir = out.path().to_path_buf();
    let mut table: ParticleTable = input.table().clone();
    table.set_u32(
        "alignments2D/superclass",
        superclass.iter().map(|&s| s as u32).collect(),
    );
    let subsets = selected_excluded(
        &keep,
        "particles kept after rebalancing",
        "particles dropped by rebalancing",
    );
    let source = format!("emclass rebalance2d {}", args.config.display());
    let counts = write_subsets(&dir, &input, &table, &subsets, &source)?;
    write_csv(&dir.join("affinity.csv"), &affinity_csv(&affinity))?;
    write_csv(
        &dir.join("superclasses.csv"),
        &superclass_csv(&labels, &classes),
    )?;
    let order = sorted_order(affinity.view(), &labels);
    plots(&dir, &affinity, &labels, &order, &before, &after, &classes)?;
    let truth = purity_vs_views(&table, &superclass, m);
    if let Some(t) = &truth {
        log::info!("superclasses vs simulated views: {t}");
    }
    let summary = json!({
        "job": "rebalance2d",
        "input": cfg.input,
        "class_averages": avg.path,
        "num_particles": classes.class.len(),
        "num_true_particles": true_particle_count(&table),
        "num_classes": k,
        "class_sizes": classes.sizes,
        "num_superclasses": m,
        "superclass_of_class": labels,
        "superclass_sizes_before": before,
        "superclass_sizes_after": after,
        "cap": cap,
        "rebalance_factor": cfg.rebalance_factor,
        "max_superclass_size": cfg.max_superclass_size,
        "sorted_class_order": order,
        "superclasses_vs_ground_truth_views": truth,
        "subsets": counts,
    });
    out.finish(&summary, &cfg, "rebalance2d")
}

fn write_csv(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The K×K affinity matrix with a header row and column of class indexes.
fn affinity_csv(a: &Array2<f64>) -> String {
    let k = a.nrows();
    let mut s = String::from("class");
    (0..k).for_each(|j| write!(s, ",{j}").unwrap());
    s.push('\n');
    for (i, row) in a.outer_iter().enumerate() {
        write!(s, "{i}").unwrap();
        row.iter().for_each(|v| write!(s, ",{v:.6}").unwrap());
        s.push('\n');
    }
    s
}

/// `class,superclass,particles` per class.
fn superclass_csv(labels: &[usize], classes: &Classes2d) -> String {
    let mut s = String::from("class,superclass,particles\n");
    for (c, l) in labels.iter().enumerate() {
        writeln!(s, "{c},{l},{}", classes.sizes[c]).unwrap();
    }
    s
}

fn plots(
    dir: &Path,
    affinity: &Array2<f64>,
    labels: &[usize],
    order: &[usize],
    before: &[usize],
    after: &[usize],
    classes: &Classes2d,
) -> Result<()> {
    let p = plots_dir(dir)?;
    let identity: Vec<usize> = (0..affinity.nrows()).collect();
    affinity_matrix_png(
        &p.join("affinity.png"),
        affinity.view(),
        &identity,
        None,
        "Affinity of class averages",
    )?;
    affinity_matrix_png(
        &p.join("affinity_sorted.png"),
        affinity.view(),
        order,
        Some(labels),
        "Affinity sorted by superclass",
    )?;
    let (b, a): (Vec<f64>, Vec<f64>) = before
        .iter()
        .zip(after)
        .map(|(&b, &a)| (b as f64, a as f64))
        .unzip();
    grouped_bars_png(
        &p.join("superclass_sizes.png"),
        "Superclass sizes",
        "superclass",
        "particles",
        &[("before", &b), ("after rebalancing", &a)],
    )?;
    // Class averages in sorted order, labelled with superclass, class and size.
    let avg = classes
        .averages
        .as_ref()
        .expect("rebalance2d requires averages");
    let imgs: Array3<f32> = avg.images.select(Axis(0), order);
    let text: Vec<String> = order
        .iter()
        .map(|&c| format!("S{}  #{c}  {} ptcls", labels[c], classes.sizes[c]))
        .collect();
    class_montage(
        &p.join("superclasses.png"),
        &imgs,
        &text,
        avg.psize_a,
        imgs.dim().1,
    )
}

/// On simulated data (`gt/view`): purity (particles in their superclass's most common view)
/// and completeness (particles in their view's most common superclass), over non-junk
/// particles.
fn purity_vs_views(
    table: &ParticleTable,
    superclass: &[usize],
    m: usize,
) -> Option<serde_json::Value> {
    let view = table.get("gt/view")?.data.to_f64()?;
    let pairs: Vec<(usize, usize)> = view
        .iter()
        .zip(superclass)
        .filter(|(v, _)| **v >= 0.0)
        .map(|(v, s)| (*v as usize, *s))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let nv = pairs.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    let mut counts = vec![vec![0usize; nv]; m];
    pairs.iter().for_each(|&(v, s)| counts[s][v] += 1);
    let n = pairs.len() as f64;
    let purity = counts
        .iter()
        .map(|r| r.iter().max().copied().unwrap_or(0))
        .sum::<usize>() as f64
        / n;
    let completeness = (0..nv)
        .map(|v| counts.iter().map(|r| r[v]).max().unwrap_or(0))
        .sum::<usize>() as f64
        / n;
    Some(
        json!({"purity": purity, "completeness": completeness, "counts_superclass_by_view": counts}),
    )
}
