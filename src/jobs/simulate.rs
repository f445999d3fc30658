//! `emclass simulate`: loads the config, writes the simulated dataset into a fresh output
//! folder (renamed into place when complete) with `config.used.yaml` and `summary.json`.

use crate::cli::JobArgs;
use crate::config::{self, JobConfig};
use crate::error::{Error, Result};
use crate::jobs::output::OutputDir;
use crate::simulate::{self, config::SimulateConfig};

/// Runs the simulation (on the calling rank).
pub fn run(args: &JobArgs) -> Result<()> {
    let cfg: SimulateConfig = config::load(&args.config, &args.set)?;
    let out = OutputDir::create(cfg.output(), args.overwrite)?;
    let write = |name: &str, text: String| {
        let p = out.path().join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    write("config.used.yaml", config::to_yaml(&cfg))?;
    let summary = simulate::run(&cfg, out.path())?;
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::Internal(format!("summary.json: {e}")))?;
    write("summary.json", json + "\n")?;
    let done = out.commit()?;
    log::info!(
        "simulated {} particles ({} junk, {} duplicates) in {}",
        summary.num_particles,
        summary.num_junk,
        summary.num_duplicates,
        done.display()
    );
    Ok(())
}
