//! The MPI communicator (rsmpi over the system MPI). The only module that names `mpi::`.
//! MPI is initialised with `Threading::Funneled`: rayon threads compute, only the main
//! thread communicates. Dropping [`MpiComm`] finalises MPI.

use mpi::datatype::PartitionMut;
use mpi::traits::*;
use mpi::Count;

use super::Comm;

/// A communicator over `MPI_COMM_WORLD`.
pub struct MpiComm {
    world: mpi::topology::SimpleCommunicator,
    node_rank: usize,
    // Declared last so it is dropped (MPI_Finalize) after the communicators.
    _universe: mpi::environment::Universe,
}

/// Was this process started by an MPI launcher (mpirun, srun with PMI/PMIx)? A process run
/// by hand stays a single process without touching MPI. `EMCLASS_MPI=0/1` overrides.
pub fn launched_by_mpi() -> bool {
    if let Ok(v) = std::env::var("EMCLASS_MPI") {
        return v == "1";
    }
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "PMI_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some())
}

impl MpiComm {
    /// Initialises MPI; `None` when MPI cannot be initialised (already initialised, or no
    /// usable MPI library).
    pub fn init() -> Option<MpiComm> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
        let world = universe.world();
        let node_rank = world.split_shared(world.rank()).rank() as usize;
        Some(MpiComm {
            world,
            node_rank,
            _universe: universe,
        })
    }
    /// Rank among the ranks on this node (picks the GPU).
    pub fn node_rank(&self) -> usize {
        self.node_rank
    }
    /// Ends every rank of the job at once with `code` (used when one rank fails outside a
    /// collective, so the others do not wait forever).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// Makes a panic on any rank end the whole job at once: the panic message is printed as one
/// `error:` line naming the rank, then `MPI_Abort` stops every rank (otherwise the others
/// would wait forever in their next collective, and this one in `MPI_Finalize`).
pub fn abort_job_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let rank = mpi::topology::SimpleCommunicator::world().rank();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: rank {rank}: internal error: {msg}{at}; ending every rank");
        mpi::topology::SimpleCommunicator::world().abort(70)
    }));
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
    }
    fn all_reduce_sum_u64(&self, buf: &mut [u64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        let root_proc = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        root_proc.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        if len > 0 {
            root_proc.broadcast_into(&mut buf[..]);
        }
    }
    fn gather_bytes(&self, root: usize, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        let root_proc = self.world.process_at_rank(root as i32);
        let my_len = mine.len() as Count;
        if self.rank() == root {
            let mut counts = vec![0 as Count; self.size()];
            root_proc.gather_into_root(&my_len, &mut counts[..]);
            let displs: Vec<Count> = counts
                .iter()
                .scan(0, |acc, &c| {
                    let d = *acc;
                    *acc += c;
                    Some(d)
                })
                .collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            {
                let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                root_proc.gather_varcount_into_root(mine, &mut part);
            }
            let mut out = Vec::with_capacity(self.size());
            for (c, d) in counts.iter().zip(&displs) {
                out.push(all[*d as usize..(*d + *c) as usize].to_vec());
            }
            Some(out)
        } else {
            root_proc.gather_into(&my_len);
            root_proc.gather_varcount_into(mine);
            None
        }
    }
    fn barrier(&self) {
        self.world.barrier();
    }
}
