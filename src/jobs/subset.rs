//! `emclass subset`: CryoSPARC's Class Probability Filter and Subset Particles by Statistic.
//! The statistic is the best 2D class probability, the summed probability of chosen 3D
//! classes, or any numeric field; it is cut at one threshold (`selected.h5` /
//! `excluded.h5`), at several (`subset_XX.h5`, one per interval), or clustered by a
//! Gaussian mixture (`subset_XX.h5`, one per component in increasing order of the mean).
//! Writes `plots/statistic.png` (histogram with the thresholds or fitted components),
//! `summary.json` and `config.used.yaml`. Runs on every rank: each reads and writes its own
//! block of rows (see [`crate::jobs::selection`]).

use serde_json::json;

use crate::cli::JobArgs;
use crate::comm::{all_reduce_min_f64, Comm};
use crate::config;
use crate::curate::config::{Keep, SplitMethod, SubsetConfig, SubsetMode};
use crate::curate::gmm::Gmm1d;
use crate::curate::order_stats;
use crate::curate::statistic;
use crate::curate::thresholds::{interval_label, interval_of};
use crate::error::{Error, Result};
use crate::jobs::collective;
use crate::jobs::output::check_writable;
use crate::jobs::selection::{
    create_output, keep_groups, numbered, plots_dir, selected_excluded, write_groups, Share, Subset,
};
use crate::report::plot::{
    bin_counts, finite_range, histogram_counts_overlay_png, Density, PLOT_SIZE_PX,
};

/// Runs the job on every rank: each computes the statistic of its own rows and writes them
/// in turn; the mixture fit, the histogram and the quantiles are summed over ranks.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let cfg: SubsetConfig = collective(comm, config::load(&args.config, &args.set))?;
    collective(comm, check_writable(&cfg.output, args.overwrite))?;
    let share = Share::new(comm, &cfg.input)?;
    let (values, what, probe) = collective(comm, compute_statistic(&cfg, &args.config, &share))?;
    log::info!("subset: {} particles by {what}", share.total);
    warn_if_one_hot(comm, &probe);
    let (subsets, group, split_summary, gmm) = split(comm, &cfg, &args.config, &values)?;
    let quantiles = quantiles(comm, &values);
    let (lo, hi, counts) = histogram(comm, &cfg, &values);
    drop(values);
    let (out, staging) = create_output(comm, &cfg.output, args.overwrite)?;
    let source = format!("emclass subset {}", args.config.display());
    let (counts_json, true_particles) = write_groups(
        comm,
        &staging,
        &share,
        &subsets,
        &group,
        &|_, _| {},
        &source,
    )?;
    let Some(out) = out else {
        return collective(comm, Ok(()));
    };
    let finished = (|| {
        plot(
            &plots_dir(out.path())?.join("statistic.png"),
            &cfg,
            &what,
            (lo, hi, &counts),
            gmm.as_ref(),
        )?;
        let summary = json!({
            "job": "subset",
            "input": cfg.input,
            "num_particles": share.total,
            "num_true_particles": true_particles,
            "statistic": what,
            "statistic_quantiles": quantiles,
            "split": split_summary,
            "subsets": counts_json,
        });
        out.finish(&summary, &cfg, "subset")
    })();
    collective(comm, finished)
}

/// The class probability field a run thresholds, and how many of its values (on this rank)
/// are strictly between 0 and 1, out of how many.
#[derive(Default)]
struct OneHotProbe {
    field: Option<String>,
    fractional: u64,
    values: u64,
}

/// Collective: warns (rank 0, one line naming the field) when every value of the
/// probability field being thresholded is 0 or 1 over all ranks: then every threshold
/// keeps or drops every particle alike (issue 19: hard classification used to write
/// one-hot probabilities).
fn warn_if_one_hot(comm: &dyn Comm, probe: &OneHotProbe) {
    let mut c = [probe.fractional, probe.values];
    comm.all_reduce_sum_u64(&mut c);
    if let (Some(field), 0, 1..) = (&probe.field, c[0], c[1]) {
        if comm.rank() == 0 {
            log::warn!(
                "subset: every value of {field} is 0 or 1 (one-hot, as from a hard classification): any threshold keeps or drops all particles alike"
            );
        }
    }
}

/// The class probability field `cfg` thresholds in `table`, if it thresholds one.
fn probability_field(cfg: &SubsetConfig, table: &crate::dataset::ParticleTable) -> Option<String> {
    match cfg.mode {
        SubsetMode::ClassProbability2d if table.get(statistic::CLASS_PROBS_2D).is_some() => {
            Some(statistic::CLASS_PROBS_2D.into())
        }
        SubsetMode::ClassProbability2d => Some(statistic::CLASS_POSTERIOR_2D.into()),
        SubsetMode::ClassProbability3d => Some(statistic::CLASS_PROBS_3D.into()),
        SubsetMode::Statistic => cfg
            .field
            .clone()
            .filter(|f| statistic::is_probability_field(f)),
    }
}

/// The statistic of each of this rank's particles, a description of it (axis label,
/// summary), and the one-hot probe of the probability field it comes from.
fn compute_statistic(
    cfg: &SubsetConfig,
    cfg_path: &std::path::Path,
    share: &Share,
) -> Result<(Vec<f64>, String, OneHotProbe)> {
    let file = &share.input;
    let mut values = Vec::with_capacity(share.rows.len());
    let mut probe = OneHotProbe::default();
    share.for_each_block(|_, block| {
        let table = block.table();
        probe.field = probability_field(cfg, table);
        if let Some(f) = &probe.field {
            let (frac, n) = statistic::fractional_count(table, f);
            probe.fractional += frac;
            probe.values += n;
        }
        values.extend(match cfg.mode {
            SubsetMode::ClassProbability2d => statistic::best_class_probability_2d(table, file)?,
            SubsetMode::ClassProbability3d => statistic::summed_class_probability_3d(
                table,
                file,
                &cfg.classes,
                cfg_path,
                "classes",
            )?,
            SubsetMode::Statistic => {
                let field = cfg.field.as_deref().unwrap_or_default();
                statistic::field_values(table, file, field, cfg.component)?
            }
        });
        Ok(())
    })?;
    let what = match cfg.mode {
        SubsetMode::ClassProbability2d => "probability of the best 2D class".to_string(),
        SubsetMode::ClassProbability3d => {
            format!("summed probability of 3D classes {:?}", cfg.classes)
        }
        SubsetMode::Statistic => {
            let field = cfg.field.as_deref().unwrap_or_default();
            match cfg.component {
                Some(c) => format!("{field}[{c}]"),
                None => field.to_string(),
            }
        }
    };
    Ok((values, what, probe))
}

/// What [`split`] returns: the subsets, the subset of each of this rank's particles, a
/// summary of how they were made, and the fitted mixture if any.
type Split = (Vec<Subset>, Vec<u32>, serde_json::Value, Option<Gmm1d>);

/// The subsets, the subset of each of this rank's particles, a summary of how they were
/// made, and the fitted mixture if any; collective.
fn split(
    comm: &dyn Comm,
    cfg: &SubsetConfig,
    cfg_path: &std::path::Path,
    values: &[f64],
) -> Result<Split> {
    match cfg.method {
        SplitMethod::Threshold if cfg.thresholds().len() == 1 => {
            let t = cfg.thresholds()[0];
            let above: Vec<bool> = interval_of(values, &[t]).iter().map(|&i| i == 1).collect();
            let (keep, sel, exc) = match cfg.keep {
                Keep::Above => (above, format!("x >= {t}"), format!("x < {t}")),
                Keep::Below => (
                    above.iter().map(|a| !a).collect(),
                    format!("x < {t}"),
                    format!("x >= {t}"),
                ),
            };
            let summary = json!({"method": "threshold", "threshold": t, "keep": cfg.keep});
            Ok((
                selected_excluded(&sel, &exc),
                keep_groups(&keep),
                summary,
                None,
            ))
        }
        SplitMethod::Threshold => {
            let t = cfg.thresholds();
            let group = interval_of(values, &t).iter().map(|&g| g as u32).collect();
            let labels: Vec<String> = (0..=t.len()).map(|i| interval_label(i, &t)).collect();
            let summary = json!({"method": "thresholds", "thresholds": t});
            Ok((numbered(&labels), group, summary, None))
        }
        SplitMethod::Gmm => {
            let g = Gmm1d::fit(
                comm,
                values,
                cfg.gmm_components,
                cfg.gmm_max_iterations,
                cfg.gmm_tolerance,
            )
            .map_err(|e| Error::config(cfg_path, "gmm_components", e));
            let g = collective(comm, g)?;
            if !g.converged {
                log::warn!(
                    "GMM did not converge in {} iterations (mean log-likelihood {:.6}); using the last fit",
                    g.iterations,
                    g.mean_log_likelihood
                );
            }
            let group = values.iter().map(|&x| g.assign(x) as u32).collect();
            let labels: Vec<String> = (0..g.len())
                .map(|k| {
                    format!(
                        "GMM component {k}: mean {:.4}, sd {:.4}, weight {:.3}",
                        g.means[k], g.sds[k], g.weights[k]
                    )
                })
                .collect();
            let summary = json!({"method": "gmm", "gmm": g});
            Ok((numbered(&labels), group, summary, Some(g)))
        }
    }
}

/// `cfg.histogram_bins` equal bins over the range of every rank's values and the
/// thresholds, counted over all ranks; collective.
fn histogram(comm: &dyn Comm, cfg: &SubsetConfig, values: &[f64]) -> (f64, f64, Vec<u64>) {
    let markers = match cfg.method {
        SplitMethod::Threshold => cfg.thresholds(),
        SplitMethod::Gmm => Vec::new(),
    };
    let finite = || {
        values
            .iter()
            .chain(&markers)
            .copied()
            .filter(|v| v.is_finite())
    };
    let mut lo = [finite().fold(f64::INFINITY, f64::min)];
    let mut hi = [finite().fold(f64::NEG_INFINITY, f64::max)];
    all_reduce_min_f64(comm, &mut lo);
    comm.all_reduce_max_f64(&mut hi);
    let (lo, hi) = finite_range([lo[0], hi[0]].into_iter());
    let mut counts = bin_counts(values, lo, hi, cfg.histogram_bins);
    comm.all_reduce_sum_u64(&mut counts);
    (lo, hi, counts)
}

/// Histogram of the statistic with the thresholds (red lines) or the fitted components.
fn plot(
    path: &std::path::Path,
    cfg: &SubsetConfig,
    what: &str,
    (lo, hi, counts): (f64, f64, &[u64]),
    gmm: Option<&Gmm1d>,
) -> Result<()> {
    let markers = match cfg.method {
        SplitMethod::Threshold => cfg.thresholds(),
        SplitMethod::Gmm => Vec::new(),
    };
    let names: Vec<String> = gmm
        .map(|g| (0..g.len()).map(|k| format!("component {k}")).collect())
        .unwrap_or_default();
    let comps: Vec<Box<dyn Fn(f64) -> f64>> = gmm
        .map(|g| {
            (0..g.len())
                .map(|k| Box::new(move |x| g.weighted_density(k, x)) as Box<dyn Fn(f64) -> f64>)
                .collect()
        })
        .unwrap_or_default();
    let curves: Vec<Density> = names
        .iter()
        .zip(&comps)
        .map(|(n, f)| (n.as_str(), f.as_ref()))
        .collect();
    histogram_counts_overlay_png(
        path,
        &format!("Subset by {what}"),
        what,
        (lo, hi),
        counts,
        &markers,
        &curves,
        PLOT_SIZE_PX,
    )
}

/// Min, quartiles and max of every rank's values, exact (null for no particles);
/// collective.
fn quantiles(comm: &dyn Comm, values: &[f64]) -> serde_json::Value {
    let q = order_stats::quantiles(comm, values, &[0.0, 0.25, 0.5, 0.75, 1.0]);
    match q[..] {
        [Some(min), Some(q25), Some(median), Some(q75), Some(max)] => {
            json!({"min": min, "q25": q25, "median": median, "q75": q75, "max": max})
        }
        _ => serde_json::Value::Null,
    }
}
