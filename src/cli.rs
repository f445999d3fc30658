//! The command line: one subcommand per job (see DESIGN.md). Parsing only; `jobs` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// emclass: classification and curation of cryo-EM particle images, from a workstation to
/// a Slurm cluster (run it under `mpirun`/`srun` for several ranks).
#[derive(Debug, Parser)]
#[command(name = "emclass", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// -1 quiet, 0 normal, 1+ verbose.
    pub fn verbosity(&self) -> i32 {
        if self.quiet {
            -1
        } else {
            i32::from(self.verbose)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import RELION STAR + MRC stacks, CryoSPARC .cs + stacks, or a bare MRC stack into a
    /// particle dataset (HDF5).
    Import(ImportArgs),
    /// Export a particle dataset to RELION STAR, CryoSPARC .cs and/or an MRC stack.
    Export(ExportArgs),
    /// Simulate a particle dataset with ground truth (2D views or 3D heterogeneity).
    Simulate(JobArgs),
    /// 2D classification (online-EM then full EM over in-plane rotation and shift).
    Classify2d(JobArgs),
    /// 3D classification without alignment (class volumes at known poses).
    Classify3d(JobArgs),
    /// Reconstruct 3D classes at the full box from their particles (after classify3d).
    Reconstruct3d(JobArgs),
    /// Subset particles by class probability or by any per-particle statistic.
    Subset(JobArgs),
    /// Keep or drop particles by 2D class.
    Select2d(JobArgs),
    /// Group 2D classes into superclasses and rebalance their populations.
    Rebalance2d(JobArgs),
    /// Print a summary of a particle dataset: size, images, and every field's range.
    Info {
        /// The particle dataset (.h5).
        dataset: PathBuf,
    },
    /// Check the MPI setup: partition, all-reduce, broadcast and gather across all ranks.
    CommCheck {
        /// Number of pretend particles to partition.
        #[arg(long, default_value_t = 1000)]
        particles: usize,
        /// Also check partitioned reads of this dataset: every rank reads only its block of
        /// particles; the reduced totals must equal rank 0's read of the whole file.
        #[arg(long)]
        dataset: Option<PathBuf>,
    },
}

impl Command {
    /// The config-driven job's arguments, if this is one.
    pub fn job_args(&self) -> Option<&JobArgs> {
        match self {
            Command::Simulate(a)
            | Command::Classify2d(a)
            | Command::Classify3d(a)
            | Command::Reconstruct3d(a)
            | Command::Subset(a)
            | Command::Select2d(a)
            | Command::Rebalance2d(a) => Some(a),
            _ => None,
        }
    }
}

/// Arguments shared by config-driven jobs.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's YAML config (see configs/ for every parameter and its default).
    pub config: PathBuf,
    /// Override a config value: `--set key=value` (dotted keys for nested values); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue a killed run from the checkpoint in OUTPUT_DIR's staging folder (the same
    /// config; the number of ranks may differ). classify2d only.
    #[arg(long, value_name = "OUTPUT_DIR", conflicts_with = "overwrite")]
    pub resume: Option<PathBuf>,
}

/// Storage precision of imported images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// RELION STAR file (3.1+ with data_optics, or an older single-block file).
    #[arg(long, conflicts_with_all = ["cs", "mrcs"])]
    pub star: Option<PathBuf>,
    /// CryoSPARC .cs file.
    #[arg(long, conflicts_with_all = ["star", "mrcs"])]
    pub cs: Option<PathBuf>,
    /// A bare MRC stack (needs --pixel-size).
    #[arg(long, conflicts_with_all = ["star", "cs"], requires = "pixel_size")]
    pub mrcs: Option<PathBuf>,
    /// Pixel size in Å (bare stacks; overrides the header).
    #[arg(long, value_name = "A")]
    pub pixel_size: Option<f32>,
    /// Folder that the .cs file's blob/path values are relative to (the CryoSPARC project
    /// folder); default: the .cs file's folder.
    #[arg(long, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Output particle dataset (.h5).
    #[arg(long)]
    pub out: PathBuf,
    /// Image precision in the dataset.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// gzip level (1-9) for the images; default: no compression.
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(1..=9))]
    pub gzip: Option<u8>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The particle dataset (.h5) to export.
    #[arg(long = "in", value_name = "DATASET")]
    pub input: PathBuf,
    /// Write a RELION 3.1 STAR file.
    #[arg(long)]
    pub star: Option<PathBuf>,
    /// Write a CryoSPARC .cs file.
    #[arg(long)]
    pub cs: Option<PathBuf>,
    /// Write the images as one MRC stack (the STAR/.cs then reference it).
    #[arg(long)]
    pub mrcs: Option<PathBuf>,
    /// Replace output files that exist.
    #[arg(long)]
    pub overwrite: bool,
}
