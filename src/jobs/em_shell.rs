//! What the EM jobs (classify2d, classify3d) share around the engine: the output folder or
//! the folder to resume, each rank's particle source by its memory plan, and reading and
//! writing checkpoints through the one codec ([`crate::em::checkpoint`]).

use std::ops::Range;
use std::path::Path;

use crate::cli::JobArgs;
use crate::comm::{partition, Comm};
use crate::dataset::Dataset;
use crate::em::checkpoint::{self, Keeper};
use crate::em::engine::{Problem, Resume};
use crate::error::{Error, Result};
use crate::jobs::collective;
use crate::jobs::output::{check_writable, checkpoint_bytes, OutputDir};
use crate::particles::{MemoryPlan, Needs, ParticleSource, WorkGrid};

/// The particle input as every rank sees it before reading particles: the count, this
/// rank's rows, and the box and pixel size from the header (the rank's rows are read in
/// full only if they are to be held).
pub struct Input {
    pub n_total: usize,
    pub rows: Range<usize>,
    pub box_px: usize,
    pub psize: f64,
    /// Whether the dataset has CTF parameters (`ctf/df1_A`).
    pub has_ctf: bool,
}

/// Counts the particles of `input` (refusing none), partitions them and reads the header
/// (once: box, pixel size, whether it has CTF parameters).
pub fn open_input(comm: &dyn Comm, input: &Path) -> Result<Input> {
    let n_total = collective(comm, Dataset::count(input))?;
    if n_total == 0 {
        return collective(
            comm,
            Err(Error::file(input, "has no particles to classify")),
        );
    }
    let rows = partition(n_total, comm.size(), comm.rank());
    let head = collective(comm, Dataset::open_range(input, rows.start..rows.start))?;
    Ok(Input {
        n_total,
        box_px: head.box_px(),
        psize: head.psize_a() as f64,
        has_ctf: head.table().get("ctf/df1_A").is_some(),
        rows,
    })
}

/// The output folder (rank 0), refused before any work if it exists; or, with `--resume`,
/// the staging folder of the killed run.
pub fn output_dir(comm: &dyn Comm, args: &JobArgs, output: &Path) -> Result<Option<OutputDir>> {
    if comm.is_root() {
        collective(
            comm,
            match &args.resume {
                Some(dir) => OutputDir::resume(dir),
                None => check_writable(output, args.overwrite)
                    .and_then(|_| OutputDir::create(output, args.overwrite)),
            }
            .map(Some),
        )
    } else {
        collective(comm, Ok(None))
    }
}

/// The rank's particles (global rows `rows` of `input`): held when the memory plan allows,
/// else streamed. The plan is logged per rank.
pub fn particle_source(
    comm: &dyn Comm,
    input: &Path,
    rows: Range<usize>,
    grid: &WorkGrid,
    needs: Needs,
    max_resident_gb: f64,
) -> Result<ParticleSource> {
    let plan = MemoryPlan::new(rows.len(), grid, needs, max_resident_gb);
    log::info!(
        "memory plan (rank {}): {}",
        comm.rank(),
        plan.describe(rows.len())
    );
    if plan.streamed {
        // Metadata, image references and the needed fields are checked once here, block by
        // block; a bad block of images found later ends the job.
        collective(
            comm,
            ParticleSource::check_streamed(input, rows.clone(), needs),
        )?;
        Ok(ParticleSource::streamed(input, rows, grid, needs))
    } else {
        // The rank's metadata table is not kept: the output re-reads it block by block.
        let ds = collective(comm, Dataset::open_range(input, rows.clone()))?;
        collective(comm, ParticleSource::resident(&ds, rows, grid, needs))
    }
}

/// Rank 0 reads the checkpoint in `keeper.dir` (the staging folder of `--resume dir`) and
/// sends it to every rank; each decodes it and reads its rows' states.
pub fn read_resume<P: Problem>(
    comm: &dyn Comm,
    keeper: &Keeper,
    resume_dir: &Path,
) -> Result<Resume<P>> {
    let path = keeper.dir.join(checkpoint::FILE);
    let read = checkpoint_bytes(comm, comm.is_root().then_some(path.as_path()), resume_dir)
        .and_then(|bytes| keeper.read::<P>(&bytes));
    collective(comm, read)
}
