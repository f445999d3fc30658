//! `emclass select2d`: keep or drop particles by 2D class. The kept classes are `keep` (or
//! every class but `drop`), minus the classes with fewer than `min_class_size` particles and,
//! with `max_frc_res_A`, those whose FRC = 0.5 resolution is worse (a larger number) than it.
//! Writes `selected.h5` / `excluded.h5`, the kept class averages as `classes_selected.mrcs`
//! (in increasing class order) with a montage, `summary.json` and `config.used.yaml`.

use serde_json::json;

use crate::cli::JobArgs;
use crate::comm::Comm;
use crate::config;
use crate::curate::config::Select2dConfig;
use crate::curate::statistic::check_class_list;
use crate::error::{Error, Result};
use crate::jobs::classes2d::{self, Classes2d};
use crate::jobs::collective;
use crate::jobs::output::check_writable;
use crate::jobs::selection::{create_output, keep_groups, selected_excluded, write_groups, Share};

/// Why a class is not kept.
fn drop_reason(cfg: &Select2dConfig, c: usize, size: usize, frc: Option<f64>) -> Option<String> {
    if !cfg.keep.is_empty() && !cfg.keep.contains(&c) {
        return Some("not in keep".into());
    }
    if cfg.drop.contains(&c) {
        return Some("in drop".into());
    }
    if size < cfg.min_class_size {
        return Some(format!(
            "{size} particles < min_class_size {}",
            cfg.min_class_size
        ));
    }
    match (cfg.max_frc_res_a, frc) {
        (Some(max), Some(r)) if r.is_nan() || r > max => {
            Some(format!("FRC resolution {r:.1} Å worse than {max} Å"))
        }
        _ => None,
    }
}

/// Runs the job on every rank: each reads and writes its own block of rows.
pub fn run(args: &JobArgs, comm: &dyn Comm) -> Result<()> {
    let cfg: Select2dConfig = collective(comm, config::load(&args.config, &args.set))?;
    collective(comm, check_writable(&cfg.output, args.overwrite))?;
    let share = Share::new(comm, &cfg.input)?;
    let classes = classes2d::load(
        comm,
        &share,
        cfg.classes_file.as_deref(),
        false,
        &args.config,
    )?;
    let k = classes.k;
    let what = format!("the input's {k} 2D classes");
    let checked = (|| {
        if !cfg.keep.is_empty() {
            check_class_list(&cfg.keep, k, &args.config, "keep", &what)?;
        }
        if !cfg.drop.is_empty() {
            check_class_list(&cfg.drop, k, &args.config, "drop", &what)?;
        }
        match (cfg.max_frc_res_a, &classes.averages_path) {
            (Some(_), Some(p)) => Ok(Some(classes2d::frc_resolutions(p, k)?)),
            (Some(_), None) => Err(Error::config(
                &args.config,
                "max_frc_res_A",
                "needs the class averages and their summary.json (set classes_file)",
            )),
            (None, _) => Ok(None),
        }
    })();
    let frc = collective(comm, checked)?;
    let kept: Vec<bool> = (0..k)
        .map(|c| {
            let reason = drop_reason(&cfg, c, classes.sizes[c], frc.as_ref().map(|f| f[c]));
            if let Some(r) = &reason {
                log::debug!("class {c} dropped: {r}");
            }
            reason.is_none()
        })
        .collect();
    let kept_classes: Vec<usize> = (0..k).filter(|&c| kept[c]).collect();
    log::info!(
        "select2d: keeping {} of {k} classes: {kept_classes:?}",
        kept_classes.len()
    );
    let keep: Vec<bool> = classes.class.iter().map(|&c| kept[c as usize]).collect();
    let subsets = selected_excluded(
        "particles of the kept classes",
        "particles of the other classes",
    );
    let (out, staging) = create_output(comm, &cfg.output, args.overwrite)?;
    let source = format!("emclass select2d {}", args.config.display());
    let (counts, true_particles) = write_groups(
        comm,
        &staging,
        &share,
        &subsets,
        &keep_groups(&keep),
        &|_, _| {},
        &source,
    )?;
    let Some(out) = out else {
        return collective(comm, Ok(()));
    };
    let finished = write_kept_averages(out.path(), &classes, &kept_classes, frc.as_deref())
        .and_then(|_| {
            let summary = json!({
                "job": "select2d",
                "input": cfg.input,
                "class_averages": classes.averages_path,
                "num_particles": share.total,
                "num_true_particles": true_particles,
                "num_classes": k,
                "class_sizes": classes.sizes,
                "class_frc05_res_A": frc,
                "kept_classes": kept_classes,
                "subsets": counts,
            });
            out.finish(&summary, &cfg, "select2d")
        });
    collective(comm, finished)
}

/// `classes_selected.mrcs` and its montage, labelled with the original index, size and FRC
/// resolution.
fn write_kept_averages(
    dir: &std::path::Path,
    classes: &Classes2d,
    kept: &[usize],
    frc: Option<&[f64]>,
) -> Result<()> {
    classes2d::write_selected_averages(dir, classes, kept, |c| match frc.map(|f| f[c]) {
        Some(r) if r.is_finite() => format!("#{c}  {} ptcls  {r:.1} Å", classes.sizes[c]),
        _ => format!("#{c}  {} ptcls", classes.sizes[c]),
    })
}
