//! The jobs behind the subcommands, and the rules every job follows under MPI: serial jobs
//! (import, export, simulate, info) run on rank 0 while the other ranks wait, the others on
//! every rank, and every rank ends
//! with the same success or failure.

pub mod classes2d;
pub mod classify2d;
pub mod classify3d;
pub mod comm_check;
pub mod em_shell;
pub mod export;
pub mod import;
pub mod info;
pub mod output;
pub mod rebalance2d;
pub mod reconstruct3d;
pub mod select2d;
pub mod selection;
pub mod simulate;
pub mod staged;
pub mod subset;
pub mod turns;

use crate::cli::Command;
use crate::comm::Comm;
use crate::error::{Error, Result};

/// Runs the job named by `cmd` on every rank of `comm`.
pub fn run(cmd: &Command, comm: &dyn Comm) -> Result<()> {
    let resuming = cmd.job_args().is_some_and(|a| a.resume.is_some());
    if resuming && !matches!(cmd, Command::Classify2d(_) | Command::Classify3d(_)) {
        return collective(
            comm,
            Err(Error::Usage(
                "--resume: only classify2d and classify3d can continue a killed run".into(),
            )),
        );
    }
    match cmd {
        Command::Import(args) => on_root(comm, || import::run(args)),
        Command::Export(args) => on_root(comm, || export::run(args)),
        Command::Simulate(args) => on_root(comm, || simulate::run(args)),
        Command::Classify2d(args) => classify2d::run(args, comm).inspect(|_| log_traffic(comm)),
        Command::Classify3d(args) => classify3d::run(args, comm).inspect(|_| log_traffic(comm)),
        Command::Reconstruct3d(args) => {
            reconstruct3d::run(args, comm).inspect(|_| log_traffic(comm))
        }
        Command::Subset(args) => subset::run(args, comm),
        Command::Select2d(args) => select2d::run(args, comm),
        Command::Rebalance2d(args) => rebalance2d::run(args, comm),
        Command::Info { dataset } => on_root(comm, || info::run(dataset)),
        Command::CommCheck { particles, dataset } => {
            comm_check::run(comm, *particles, dataset.as_deref())
        }
    }
}

/// Rank 0's communication totals of a job (the EM jobs gather nothing per particle: this
/// line shows it, and the tests check it does not grow with the particle count).
fn log_traffic(comm: &dyn Comm) {
    let t = comm.traffic();
    if comm.is_root() && comm.size() > 1 {
        log::info!(
            "communication (rank 0): all-reduced {} B, gathered {} B from other ranks, broadcast {} B, all-to-all {} B sent",
            t.all_reduced,
            t.gathered,
            t.broadcast,
            t.all_to_all
        );
    }
}

/// Runs `job` on rank 0 only; the other ranks wait for it. Every rank returns `Ok` when the
/// job succeeded, and an error otherwise (rank 0 its own, the others [`Error::Peer`]).
pub fn on_root(comm: &dyn Comm, job: impl FnOnce() -> Result<()>) -> Result<()> {
    collective(comm, if comm.is_root() { job() } else { Ok(()) })
}

/// Ends every rank with the same outcome (see [`crate::comm::agree`]).
pub fn collective<T>(comm: &dyn Comm, r: Result<T>) -> Result<T> {
    crate::comm::agree(comm, r)
}
