//! `emclass subset`: CryoSPARC's Class Probability Filter and Subset Particles by Statistic.
//! The statistic is the best 2D class probability, the summed probability of chosen 3D
//! classes, or any numeric field; it is cut at one threshold (`selected.h5` /
//! `excluded.h5`), at several (`subset_XX.h5`, one per interval), or clustered by a
//! Gaussian mixture (`subset_XX.h5`, one per component in increasing order of the mean).
//! Writes `plots/statistic.png` (histogram with the thresholds or fitted components),
//! `summary.json` and `config.used.yaml`. Runs on one rank (the table is small).

use serde_json::json;

use crate::cli::JobArgs;
use crate::config;
use crate::curate::config::{Keep, SplitMethod, SubsetConfig, SubsetMode};
use crate::curate::gmm::Gmm1d;
use crate::curate::statistic;
use crate::curate::thresholds::{interval_label, interval_of};
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::jobs::output::{check_writable, OutputDir};
use crate::jobs::selection::{
    plots_dir, selected_excluded, subsets_by_group, true_particle_count, write_subsets, Subset,
};
use crate::report::plot::{histogram_overlay_png, Density, PLOT_SIZE_PX};

/// Runs the job (on one process).
pub fn run(args: &JobArgs) -> Result<()> {
    let cfg: SubsetConfig = config::load(&args.config, &args.set)?;
    check_writable(&cfg.output, args.overwrite)?;
    let input = Dataset::open(&cfg.input)?;
    let table = input.table();
    let (values, what) = compute_statistic(&cfg, &args.config, &input)?;
    log::info!("subset: {} particles by {what}", values.len());
    let (subsets, split_summary, gmm) = split(&cfg, &args.config, &values)?;
    let out = OutputDir::create(&cfg.output, args.overwrite)?;
    let dir = out.path().to_path_buf();
    let source = format!("emclass subset {}", args.config.display());
    let counts = write_subsets(&dir, &input, table, &subsets, &source)?;
    plot(
        &plots_dir(&dir)?.join("statistic.png"),
        &cfg,
        &what,
        &values,
        gmm.as_ref(),
    )?;
    let summary = json!({
        "job": "subset",
        "input": cfg.input,
        "num_particles": values.len(),
        "num_true_particles": true_particle_count(table),
        "statistic": what,
        "statistic_quantiles": quantiles(&values),
        "split": split_summary,
        "subsets": counts,
    });
    out.finish(&summary, &cfg, "subset")
}

/// The statistic per particle and a description of it (axis label, summary).
fn compute_statistic(
    cfg: &SubsetConfig,
    cfg_path: &std::path::Path,
    input: &Dataset,
) -> Result<(Vec<f64>, String)> {
    let (table, file) = (input.table(), input.path());
    Ok(match cfg.mode {
        SubsetMode::ClassProbability2d => (
            statistic::best_class_probability_2d(table, file)?,
            "probability of the best 2D class".to_string(),
        ),
        SubsetMode::ClassProbability3d => (
            statistic::summed_class_probability_3d(table, file, &cfg.classes, cfg_path, "classes")?,
            format!("summed probability of 3D classes {:?}", cfg.classes),
        ),
        SubsetMode::Statistic => {
            let field = cfg.field.as_deref().unwrap_or_default();
            let v = statistic::field_values(table, file, field, cfg.component)?;
            let name = match cfg.component {
                Some(c) => format!("{field}[{c}]"),
                None => field.to_string(),
            };
            (v, name)
        }
    })
}

/// The subsets, a summary of how they were made, and the fitted mixture if any.
fn split(
    cfg: &SubsetConfig,
    cfg_path: &std::path::Path,
    values: &[f64],
) -> Result<(Vec<Subset>, serde_json::Value, Option<Gmm1d>)> {
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
            Ok((selected_excluded(&keep, &sel, &exc), summary, None))
        }
        SplitMethod::Threshold => {
            let t = cfg.thresholds();
            let group = interval_of(values, &t);
            let labels: Vec<String> = (0..=t.len()).map(|i| interval_label(i, &t)).collect();
            let summary = json!({"method": "thresholds", "thresholds": t});
            Ok((subsets_by_group(&group, &labels), summary, None))
        }
        SplitMethod::Gmm => {
            let g = Gmm1d::fit(
                values,
                cfg.gmm_components,
                cfg.gmm_max_iterations,
                cfg.gmm_tolerance,
            )
            .map_err(|e| Error::config(cfg_path, "gmm_components", e))?;
            if !g.converged {
                log::warn!(
                    "GMM did not converge in {} iterations (mean log-likelihood {:.6}); using the last fit",
                    g.iterations,
                    g.mean_log_likelihood
                );
            }
            let group: Vec<usize> = values.iter().map(|&x| g.assign(x)).collect();
            let labels: Vec<String> = (0..g.len())
                .map(|k| {
                    format!(
                        "GMM component {k}: mean {:.4}, sd {:.4}, weight {:.3}",
                        g.means[k], g.sds[k], g.weights[k]
                    )
                })
                .collect();
            let summary = json!({"method": "gmm", "gmm": g});
            Ok((subsets_by_group(&group, &labels), summary, Some(g)))
        }
    }
}

/// Histogram of the statistic with the thresholds (red lines) or the fitted components.
fn plot(
    path: &std::path::Path,
    cfg: &SubsetConfig,
    what: &str,
    values: &[f64],
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
    histogram_overlay_png(
        path,
        &format!("Subset by {what}"),
        what,
        values,
        cfg.histogram_bins,
        &markers,
        &curves,
        PLOT_SIZE_PX,
    )
}

/// Min, quartiles and max (null for no particles).
fn quantiles(values: &[f64]) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    json!({"min": q(0.0), "q25": q(0.25), "median": q(0.5), "q75": q(0.75), "max": q(1.0)})
}
