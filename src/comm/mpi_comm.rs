//! The MPI communicator (rsmpi over the system MPI). The only module that names `mpi::`.
//! MPI is initialised with `Threading::Funneled`: rayon threads compute, only the main
//! thread communicates. Dropping [`MpiComm`] finalises MPI.

use mpi::datatype::{Partition, PartitionMut};
use mpi::traits::*;
use mpi::Count;

use super::Comm;

/// A communicator over `MPI_COMM_WORLD`.
pub struct MpiComm {
    world: mpi::topology::SimpleCommunicator,
    node_rank: usize,
    node_size: usize,
    traffic: std::cell::Cell<super::Traffic>,
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
        let node = world.split_shared(world.rank());
        let (node_rank, node_size) = (node.rank() as usize, node.size() as usize);
        Some(MpiComm {
            world,
            node_rank,
            node_size,
            traffic: Default::default(),
            _universe: universe,
        })
    }
    fn count(&self, f: impl FnOnce(&mut super::Traffic)) {
        let mut t = self.traffic.get();
        f(&mut t);
        self.traffic.set(t);
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
/// A panic inside [`crate::panic_guard::catch`] is left to be caught (it is a reason to fall
/// back, such as a CUDA library failing to load), with the default hook's message.
pub fn abort_job_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        if crate::panic_guard::is_catching() {
            log::debug!("caught: {info}");
            return;
        }
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

/// Byte buffers as MPI sees them: never empty. An empty `Vec<u8>` or slice points at the
/// dangling address 0x1, which is OpenMPI's `MPI_IN_PLACE`; passed as a send or receive
/// buffer of `MPI_Gatherv` it fails with `MPI_ERR_ARG` (the crash at the end of classify2d
/// on imported data, where every rank's truth counts were empty). So every contribution
/// travels behind one leading byte, and the receiver drops it.
fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(0);
    v.extend_from_slice(bytes);
    v
}

/// An MPI count for a framed buffer of `len` bytes (MPI counts are `int`).
fn count(len: usize) -> Count {
    Count::try_from(len).unwrap_or_else(|_| {
        panic!("a message of {len} bytes exceeds MPI's 2 GiB count limit; use more ranks")
    })
}

/// Offsets of consecutive parts of the given sizes.
fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0 as Count, |acc, &c| {
            let d = *acc;
            *acc = acc.checked_add(c).expect("MPI displacement overflow");
            Some(d)
        })
        .collect()
}

/// Splits `all` into the framed parts `counts`/`displs` describe, dropping each frame byte.
fn unframe(all: &[u8], counts: &[Count], displs: &[Count]) -> Vec<Vec<u8>> {
    counts
        .iter()
        .zip(displs)
        .map(|(&c, &d)| all[d as usize + 1..(d + c) as usize].to_vec())
        .collect()
}

impl Comm for MpiComm {
    fn node_rank(&self) -> usize {
        self.node_rank
    }
    fn node_size(&self) -> usize {
        self.node_size
    }
    fn traffic(&self) -> super::Traffic {
        self.traffic.get()
    }
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) {
        if buf.is_empty() {
            return;
        }
        self.count(|t| t.all_reduced += 8 * buf.len() as u64);
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
    }
    fn all_reduce_sum_u64(&self, buf: &mut [u64]) {
        if buf.is_empty() {
            return;
        }
        self.count(|t| t.all_reduced += 8 * buf.len() as u64);
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
    }
    fn all_reduce_max_f64(&self, buf: &mut [f64]) {
        if buf.is_empty() {
            return;
        }
        self.count(|t| t.all_reduced += 8 * buf.len() as u64);
        // MPI's max of a NaN is undefined: a NaN takes part as -inf.
        let send: Vec<f64> = buf
            .iter()
            .map(|&v| if v.is_nan() { f64::NEG_INFINITY } else { v })
            .collect();
        self.world
            .all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::max());
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        let root_proc = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        root_proc.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        self.count(|t| t.broadcast += len);
        if len > 0 {
            root_proc.broadcast_into(&mut buf[..]);
        }
    }
    fn gather_bytes(&self, root: usize, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        let root_proc = self.world.process_at_rank(root as i32);
        let send = framed(mine);
        let my_len = count(send.len());
        if self.rank() == root {
            let mut counts = vec![0 as Count; self.size()];
            root_proc.gather_into_root(&my_len, &mut counts[..]);
            let displs = displacements(&counts);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            {
                let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                root_proc.gather_varcount_into_root(&send[..], &mut part);
            }
            let others = total - send.len();
            self.count(|t| t.gathered += others as u64);
            Some(unframe(&all, &counts, &displs))
        } else {
            root_proc.gather_into(&my_len);
            root_proc.gather_varcount_into(&send[..]);
            None
        }
    }
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Vec<Vec<u8>> {
        assert_eq!(
            send.len(),
            self.size(),
            "all_to_all_bytes: one part per rank"
        );
        let send_counts: Vec<Count> = send.iter().map(|p| count(p.len() + 1)).collect();
        let mut recv_counts = vec![0 as Count; self.size()];
        self.world
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let sendbuf: Vec<u8> = send.iter().flat_map(|p| framed(p)).collect();
        let others: usize = send
            .iter()
            .enumerate()
            .filter(|(r, _)| *r != self.rank())
            .map(|(_, p)| p.len())
            .sum();
        self.count(|t| t.all_to_all += others as u64);
        let send_displs = displacements(&send_counts);
        let recv_displs = displacements(&recv_counts);
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0u8; total];
        {
            let out = Partition::new(&sendbuf[..], &send_counts[..], &send_displs[..]);
            let mut inp = PartitionMut::new(&mut all[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&out, &mut inp);
        }
        unframe(&all, &recv_counts, &recv_displs)
    }
    fn barrier(&self) {
        self.world.barrier();
    }
}
