//! `emclass rebalance2d`: CryoSPARC's Rebalance 2D Classes. The affinity of every pair of
//! class averages (rotation- and shift-invariant normalised cross-correlation), superclasses
//! by agglomerative clustering of that matrix (or one per class), then seeded random
//! dropping from the superclasses larger than the cap the rebalance factor (or
//! `max_superclass_size`) sets. Writes `selected.h5` / `excluded.h5` (with
//! `alignments2D/superclass`), the class averages passed on as templates
//! (`classes_selected.mrcs`, the classes of every superclass that keeps a particle, in
//! increasing class order, with the montage `plots/classes_selected.png`), `affinity.csv`,
//! `superclasses.csv`, plots (affinity matrix unsorted and sorted by superclass, superclass
//! sizes before/after, class averages grouped by superclass), `summary.json` and
//! `config.used.yaml`.

use std::fmt::Write as _;
use std::path::Path;

use ndarray::{Array2, Array3, Axis};
use serde_json::json;

use crate::cli::JobArgs;
use crate::comm::Comm;
use crate::config;
use crate::curate::affinity::{affinity_matrix, AffinityParams};
use crate::curate::cluster::{agglomerative, sorted_order};
use crate::curate::config::Rebalance2dConfig;
use crate::curate::rebalance::{choose_kept, superclass_cap};
use crate::dataset::ParticleTable;
use crate::error::{Error, Result};
use crate::jobs::classes2d::{self, Averages, Classes2d};
use crate::jobs::classify2d::class_montage;
use crate::jobs::collective;
use crate::jobs::output::check_writable;
use crate::jobs::selection::{
    create_output, keep_groups, plots_dir, selected_excluded, write_groups, Share,
};
use crate::report::affinity_plot::affinity_matrix_png;
use crate::report::plots3d::grouped_bars_png;

/// Runs the job on every rank: rank 0 computes the affinity and the superclasses of the
/// classes (every core), then each rank rebalances and writes its own block of rows.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let cfg: Rebalance2dConfig = collective(comm, config::load(&args.config, &args.set))?;
    collective(comm, check_writable(&cfg.output, args.overwrite))?;
    let share = Share::new(comm, &cfg.input)?;
    let classes = classes2d::load(
        comm,
        &share,
        cfg.classes_file.as_deref(),
        true,
        &args.config,
    )?;
    let k = classes.k;
    let m = cfg.num_superclasses;
    collective(comm, check_num_superclasses(&cfg, k, &args.config))?;
    let grouped = match &classes.averages {
        Some(avg) => superclasses(&cfg, avg).map(Some),
        None => Ok(None),
    };
    let grouped = collective(comm, grouped)?;
    let labels = broadcast_labels(comm, grouped.as_ref().map(|(_, l)| l.as_slice()));
    let reb = rebalance(comm, &cfg, &share, &classes, &labels);
    let truth = purity_vs_views(comm, &share, &reb.superclass, m)?;
    if let Some(t) = &truth {
        log::info!("superclasses vs simulated views: {t}");
    }

    let (out, staging) = create_output(comm, &cfg.output, args.overwrite)?;
    let source = format!("emclass rebalance2d {}", args.config.display());
    let (counts, true_particles) = write_rows(comm, &staging, &share, &reb, &source)?;
    let (Some(out), Some((affinity, _)), Some(avg)) = (out, grouped, &classes.averages) else {
        return collective(comm, Ok(()));
    };
    let finished = (|| {
        let order = write_tables_and_plots(out.path(), &affinity, &labels, &reb, &classes)?;
        let passed_on = classes_of_kept_superclasses(&labels, &reb.after);
        classes2d::write_selected_averages(out.path(), &classes, &passed_on, |c| {
            format!("#{c}  S{}  {} ptcls", labels[c], classes.sizes[c])
        })?;
        let summary = json!({
            "job": "rebalance2d",
            "input": cfg.input,
            "class_averages": avg.path,
            "num_particles": share.total,
            "num_true_particles": true_particles,
            "num_classes": k,
            "class_sizes": classes.sizes,
            "num_superclasses": m,
            "superclass_of_class": labels,
            "superclass_sizes_before": reb.before,
            "superclass_sizes_after": reb.after,
            "cap": reb.cap,
            "rebalance_factor": cfg.rebalance_factor,
            "max_superclass_size": cfg.max_superclass_size,
            "sorted_class_order": order,
            "classes_selected": passed_on,
            "superclasses_vs_ground_truth_views": truth,
            "subsets": counts,
        });
        out.finish(&summary, &cfg, "rebalance2d")
    })();
    collective(comm, finished)
}

/// The outcome of rebalancing this rank's rows.
struct Rebalanced {
    /// Superclass of each local row.
    superclass: Vec<usize>,
    /// Particles per superclass before and after rebalancing (all ranks).
    before: Vec<usize>,
    after: Vec<usize>,
    /// The cap on superclass sizes, if any.
    cap: Option<usize>,
    /// Whether each local row is kept.
    keep: Vec<bool>,
}

/// The classes passed on as templates, in increasing order: those whose superclass keeps at
/// least one particle after rebalancing (`after[superclass]`).
fn classes_of_kept_superclasses(labels: &[usize], after: &[usize]) -> Vec<usize> {
    (0..labels.len())
        .filter(|&c| after[labels[c]] > 0)
        .collect()
}

/// Refuses a `num_superclasses` that does not fit the `k` classes (or, with
/// `do_superclassification` off, is not `k`).
fn check_num_superclasses(cfg: &Rebalance2dConfig, k: usize, config: &Path) -> Result<()> {
    let m = cfg.num_superclasses;
    if !cfg.do_superclassification && m != k {
        Err(Error::config(
            config,
            "num_superclasses",
            format!("is {m}, but with do_superclassification off each of the {k} classes is its own superclass: set it to {k}"),
        ))
    } else if m > k {
        Err(Error::config(
            config,
            "num_superclasses",
            format!("is {m}, more than the {k} classes"),
        ))
    } else {
        Ok(())
    }
}

/// Rank 0's superclass of each class (`labels`, `None` on the other ranks), on every rank.
/// Collective.
fn broadcast_labels(comm: &dyn Comm, labels: Option<&[usize]>) -> Vec<usize> {
    let mut bytes: Vec<u8> = labels
        .map(|labels| {
            labels
                .iter()
                .flat_map(|&l| (l as u64).to_le_bytes())
                .collect()
        })
        .unwrap_or_default();
    comm.broadcast_bytes(0, &mut bytes);
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .collect()
}

/// The superclass of every local row, the superclass sizes before and after (summed over
/// ranks), the cap and the seeded choice of the rows kept. Collective.
fn rebalance(
    comm: &dyn Comm,
    cfg: &Rebalance2dConfig,
    share: &Share,
    classes: &Classes2d,
    labels: &[usize],
) -> Rebalanced {
    let m = cfg.num_superclasses;
    let superclass: Vec<usize> = classes.class.iter().map(|&c| labels[c as usize]).collect();
    let before = summed_sizes(comm, m, superclass.iter().copied());
    let cap = superclass_cap(&before, cfg.rebalance_factor, cfg.max_superclass_size);
    let first_row = share.rows.start as u64;
    let keep = choose_kept(comm, &superclass, first_row, m, cap, cfg.seed);
    let kept = superclass.iter().zip(&keep).filter(|(_, &k)| k);
    let after = summed_sizes(comm, m, kept.map(|(&s, _)| s));
    log::info!("superclass sizes before: {before:?}");
    log::info!(
        "superclass sizes after:  {after:?} (cap {})",
        cap.map_or("none".to_string(), |c| c.to_string())
    );
    Rebalanced {
        superclass,
        before,
        after,
        cap,
        keep,
    }
}

/// Particles per superclass (of `m`) over all ranks, from each rank's superclass of each
/// of its rows. Collective.
fn summed_sizes(comm: &dyn Comm, m: usize, superclass: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut sizes = vec![0u64; m];
    superclass.for_each(|s| sizes[s] += 1);
    comm.all_reduce_sum_u64(&mut sizes);
    sizes.into_iter().map(|n| n as usize).collect()
}

/// Writes `selected.h5` / `excluded.h5` into `staging`, with `alignments2D/superclass`
/// added; returns the subset counts and the true particles (simulated data). Collective.
fn write_rows(
    comm: &dyn Comm,
    staging: &Path,
    share: &Share,
    reb: &Rebalanced,
    source: &str,
) -> Result<(serde_json::Value, Option<u64>)> {
    let subsets = selected_excluded(
        "particles kept after rebalancing",
        "particles dropped by rebalancing",
    );
    let add_superclass = |t: &mut ParticleTable, local: std::ops::Range<usize>| {
        let s = reb.superclass[local].iter().map(|&s| s as u32).collect();
        t.set_u32("alignments2D/superclass", s);
    };
    write_groups(
        comm,
        staging,
        share,
        &subsets,
        &keep_groups(&reb.keep),
        &add_superclass,
        source,
    )
}

/// Rank 0's tables and plots in `dir`: `affinity.csv`, `superclasses.csv` and the plots.
/// Returns the class order sorted by superclass.
fn write_tables_and_plots(
    dir: &Path,
    affinity: &Array2<f64>,
    labels: &[usize],
    reb: &Rebalanced,
    classes: &Classes2d,
) -> Result<Vec<usize>> {
    write_csv(&dir.join("affinity.csv"), &affinity_csv(affinity))?;
    write_csv(
        &dir.join("superclasses.csv"),
        &superclass_csv(labels, classes),
    )?;
    let order = sorted_order(affinity.view(), labels);
    plots(
        dir,
        affinity,
        labels,
        &order,
        &reb.before,
        &reb.after,
        classes,
    )?;
    Ok(order)
}

/// The affinity of the class averages and the superclass of each class (rank 0).
fn superclasses(cfg: &Rebalance2dConfig, avg: &Averages) -> Result<(Array2<f64>, Vec<usize>)> {
    let k = avg.images.dim().0;
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
        agglomerative(affinity.view(), cfg.num_superclasses)
    } else {
        (0..k).collect()
    };
    Ok((affinity, labels))
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
        None,
        avg.psize_a,
        imgs.dim().1,
    )
}

/// On simulated data (`gt/view`): purity (particles in their superclass's most common view)
/// and completeness (particles in their view's most common superclass), over non-junk
/// particles; from (superclass, view) counts summed over ranks. Collective.
fn purity_vs_views(
    comm: &dyn Comm,
    share: &Share,
    superclass: &[usize],
    m: usize,
) -> Result<Option<serde_json::Value>> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut rows_with_truth = 0u64;
    let read = share.for_each_block(|local, block| {
        if let Some(view) = block.table().get("gt/view").and_then(|c| c.data.to_f64()) {
            rows_with_truth += view.len() as u64;
            for (v, &s) in view.iter().zip(&superclass[local]) {
                if *v >= 0.0 {
                    pairs.push((*v as usize, s));
                }
            }
        }
        Ok(())
    });
    collective(comm, read)?;
    let mut nv = [pairs.iter().map(|p| p.0 as f64 + 1.0).fold(0.0, f64::max)];
    comm.all_reduce_max_f64(&mut nv);
    let nv = nv[0] as usize;
    let mut flat = vec![0u64; m * nv + 1];
    pairs.iter().for_each(|&(v, s)| flat[s * nv + v] += 1);
    flat[m * nv] = rows_with_truth;
    comm.all_reduce_sum_u64(&mut flat);
    let n = flat[..m * nv].iter().sum::<u64>() as f64;
    if flat[m * nv] as usize != share.total || n == 0.0 {
        return Ok(None);
    }
    let counts: Vec<Vec<u64>> = flat[..m * nv].chunks(nv).map(|r| r.to_vec()).collect();
    let purity = counts
        .iter()
        .map(|r| r.iter().max().copied().unwrap_or(0))
        .sum::<u64>() as f64
        / n;
    let completeness = (0..nv)
        .map(|v| counts.iter().map(|r| r[v]).max().unwrap_or(0))
        .sum::<u64>() as f64
        / n;
    Ok(Some(
        json!({"purity": purity, "completeness": completeness, "counts_superclass_by_view": counts}),
    ))
}

#[cfg(test)]
mod tests {
    use super::classes_of_kept_superclasses;

    #[test]
    fn templates_are_the_classes_of_superclasses_that_keep_particles() {
        // Classes 0..6 in superclasses 2,0,1,0,2,1; superclass 1 keeps nothing.
        let labels = [2, 0, 1, 0, 2, 1];
        assert_eq!(
            classes_of_kept_superclasses(&labels, &[5, 0, 3]),
            [0, 1, 3, 4]
        );
        assert_eq!(
            classes_of_kept_superclasses(&labels, &[0, 0, 0]),
            Vec::<usize>::new()
        );
        assert_eq!(
            classes_of_kept_superclasses(&labels, &[1, 1, 1]),
            [0, 1, 2, 3, 4, 5]
        );
    }
}
