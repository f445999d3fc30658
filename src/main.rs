//! The `emclass` binary: parse the command line, set up ranks and logging, run the job,
//! and turn its result into one error line and an exit code.

use std::process::ExitCode;

use clap::Parser;

use emclass::cli::Cli;
use emclass::comm::mpi_comm::{abort_job_on_panic, launched_by_mpi, MpiComm};
use emclass::comm::{Comm, Single};
use emclass::{jobs, report, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mpi = if launched_by_mpi() {
        MpiComm::init()
    } else {
        None
    };
    let comm: &dyn Comm = match &mpi {
        Some(c) => c,
        None => &Single,
    };
    report::logger::init(comm.rank(), comm.size(), cli.verbosity());
    if comm.size() > 1 {
        log::info!("running on {} MPI ranks", comm.size());
        abort_job_on_panic();
    } else {
        emclass::panic_guard::quiet_when_caught();
    }
    match jobs::run(&cli.command, comm) {
        Ok(()) => ExitCode::SUCCESS,
        // The failing rank has printed the reason; the others exit quietly.
        Err(Error::Peer) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
